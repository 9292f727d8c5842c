"""Packed format: save / load / mmap round trip, shape checks, corrupt files named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seqsetvae.data.packed import PackedSplit
from seqsetvae.errors import DataError


def _packed() -> PackedSplit:
    # 2 patients: 2 sets (2 + 1 events) and 1 set (3 events)
    return PackedSplit(
        codes=np.array([2, 3, 2, 4, 2, 3], np.int32),
        values=np.array([0.1, -1.0, 0.5, 0.0, 2.0, 3.0], np.float32),
        set_offsets=np.array([0, 2, 3, 6], np.int64),
        set_times=np.array([0.0, 1.5, 0.25], np.float32),
        patient_offsets=np.array([0, 2, 3], np.int64),
        subject_ids=np.array([11, 12], np.int64),
        labels=np.array([0.0, 1.0], np.float32),
    )


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip(tmp_path, mmap):
    p = _packed()
    p.save(tmp_path / "train")
    q = PackedSplit.load(tmp_path / "train", mmap=mmap)
    for name in ("codes", "values", "set_offsets", "set_times", "patient_offsets", "subject_ids", "labels"):
        a, b = getattr(p, name), getattr(q, name)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
        assert isinstance(b, np.memmap) == mmap
    assert q.counts() == {"n_patients": 2, "n_sets": 3, "n_events": 6}
    # each .npy is a plain numpy file
    np.testing.assert_array_equal(np.load(tmp_path / "train" / "codes.npy", mmap_mode="r"), p.codes)


def test_truncated_file_is_named(tmp_path):
    _packed().save(tmp_path / "s")
    f = tmp_path / "s" / "values.npy"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"values\.npy: corrupt or truncated"):
        PackedSplit.load(tmp_path / "s")


def test_garbage_file_is_named(tmp_path):
    _packed().save(tmp_path / "s")
    (tmp_path / "s" / "set_times.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"set_times\.npy: corrupt or truncated"):
        PackedSplit.load(tmp_path / "s")


def test_shape_mismatch_with_meta_is_named(tmp_path):
    _packed().save(tmp_path / "s")
    np.save(tmp_path / "s" / "labels.npy", np.zeros(3, np.float32))
    with pytest.raises(DataError, match=r"labels\.npy: holds float32\[3\], meta\.json says float32\[2\]"):
        PackedSplit.load(tmp_path / "s")


def test_wrong_format_version_and_missing(tmp_path):
    _packed().save(tmp_path / "s")
    meta = tmp_path / "s" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format_version": 99}))
    with pytest.raises(DataError, match="format_version 99"):
        PackedSplit.load(tmp_path / "s")
    with pytest.raises(DataError, match="missing"):
        PackedSplit.load(tmp_path / "nothing")


def test_bad_offsets_rejected_on_save(tmp_path):
    p = _packed()
    bad = PackedSplit(**{**p.__dict__, "set_offsets": np.array([0, 3, 2, 6], np.int64)})
    with pytest.raises(DataError, match="set_offsets"):
        bad.save(tmp_path / "s")
    assert not (tmp_path / "s").exists()
