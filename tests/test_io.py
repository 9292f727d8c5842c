"""Atomic outputs (seqsetvae/io.py) get the modes the umask says, not tempfile's private ones."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pyarrow as pa
import pytest

from seqsetvae.io import OUTPUT_MARKER, atomic_path, current_umask, write_json, write_parquet, write_text


@pytest.fixture(params=[0o002, 0o022, 0o077])
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_folder_output_has_the_umask_mode(tmp_path, umask):
    out = tmp_path / "model"
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"x")
    assert _mode(out) == 0o777 & ~umask
    assert _mode(out / "sub") == 0o777 & ~umask
    assert _mode(out / "sub" / "weights.bin") == 0o666 & ~umask
    # replacing an existing folder output: the same
    with atomic_path(out, is_dir=True) as tmp:
        (tmp / "other").write_text("y")
    assert _mode(out) == 0o777 & ~umask and sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "other"]


def test_file_outputs_have_the_umask_mode(tmp_path, umask):
    write_json(tmp_path / "m.json", {"a": 1})
    write_text(tmp_path / "r.md", "# report\n")
    write_parquet(tmp_path / "t.parquet", pa.table({"x": [1, 2]}))
    for name in ("m.json", "r.md", "t.parquet"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
