"""Checksummed PhysioNet 2012 download, against a local mirror only (http.server on 127.0.0.1 or file://)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqsetvae.config import params_from_dict
from seqsetvae.data.download import parse_checksums
from seqsetvae.data.physionet2012 import ingest_physionet2012
from seqsetvae.errors import DataError

VALID = Path(__file__).parent / "bad_inputs" / "physionet2012" / "valid"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tar_set(mirror: Path, name: str = "set-a", top_level: bool = False, extra: tarfile.TarInfo | None = None) -> None:
    """set-a.tar.gz from the valid corpus: members under set-a/ (PhysioNet's layout) or at the top level."""
    with tarfile.open(mirror / f"{name}.tar.gz", "w:gz") as tar:
        for f in sorted((VALID / "set-a").glob("*.txt")):
            tar.add(f, arcname=f.name if top_level else f"set-a/{f.name}")
        if extra is not None:
            payload = b"pwned\n"
            extra.size = len(payload) if extra.isfile() else 0
            tar.addfile(extra, io.BytesIO(payload) if extra.isfile() else None)


def _write_sums(mirror: Path, override: dict[str, str] | None = None) -> None:
    sums = {f.name: _sha(f) for f in sorted(mirror.iterdir()) if f.name != "SHA256SUMS.txt"}
    sums.update(override or {})
    (mirror / "SHA256SUMS.txt").write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))


@pytest.fixture
def mirror(tmp_path) -> Path:
    """A mirror of the valid corpus in PhysioNet's layout: set-a.tar.gz, Outcomes-a.txt, SHA256SUMS.txt."""
    m = tmp_path / "mirror"
    m.mkdir()
    _tar_set(m)
    shutil.copy(VALID / "Outcomes-a.txt", m)
    _write_sums(m)
    return m


@pytest.fixture
def serve() -> Iterator:
    """serve(folder) -> base URL of an HTTP server on 127.0.0.1 for that folder (stopped after the test)."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

    def start(folder: Path) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _params(params_dict: dict, data_dir: Path, url: str, download: bool = True):
    params_dict["data"]["source"] = "physionet2012"
    params_dict["data"]["physionet2012"].update(dir=str(data_dir), sets=["a"], download=download, url=url)
    return params_from_dict(params_dict).data.physionet2012


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _ingest(params_dict, data_dir, url, download=True):
    return ingest_physionet2012(_params(params_dict, data_dir, url, download), Path("/nonexistent-root"))


def _tables(result):
    return result.events, result.labels, result.subjects.to_pandas()


def test_download_then_ingest_matches_local(params_dict, tmp_path, mirror, serve):
    data_dir = tmp_path / "data" / "physionet2012"
    downloaded = _ingest(params_dict, data_dir, serve(mirror))
    assert sorted(p.name for p in data_dir.iterdir()) == ["Outcomes-a.txt", "set-a"]
    for f in (VALID / "set-a").glob("*.txt"):
        assert (data_dir / "set-a" / f.name).read_bytes() == f.read_bytes()
    assert _leftovers(data_dir.parent) == []  # no temp folder, no tarball
    local = _ingest(params_dict, VALID, "unused", download=False)
    ev, lab, subj = _tables(downloaded)
    assert ev.equals(local.events) and lab.equals(local.labels) and subj.equals(local.subjects.to_pandas())


def test_second_run_does_not_download(params_dict, tmp_path, mirror, serve):
    data_dir = tmp_path / "p12"
    url = serve(mirror)
    _ingest(params_dict, data_dir, url)
    shutil.rmtree(mirror)  # a second fetch would now fail
    assert _ingest(params_dict, data_dir, url).report.subjects == 3


def test_only_missing_parts_are_fetched(params_dict, tmp_path, mirror, serve):
    data_dir = tmp_path / "p12"
    shutil.copytree(VALID / "set-a", data_dir / "set-a")
    (data_dir / "set-a" / "marker").write_text("kept")  # proves set-a/ is left alone
    _ingest(params_dict, data_dir, serve(mirror))
    assert (data_dir / "Outcomes-a.txt").read_bytes() == (VALID / "Outcomes-a.txt").read_bytes()
    assert (data_dir / "set-a" / "marker").read_text() == "kept"


def test_file_url_and_top_level_tarball_layout(params_dict, tmp_path, mirror):
    (mirror / "set-a.tar.gz").unlink()
    _tar_set(mirror, top_level=True)
    _write_sums(mirror)
    data_dir = tmp_path / "p12"
    data_dir.mkdir()  # an empty folder counts as "no data"
    result = _ingest(params_dict, data_dir, mirror.as_uri())  # no trailing slash: joined correctly
    assert result.report.subjects == 3
    assert sorted(p.name for p in (data_dir / "set-a").iterdir()) == ["1001.txt", "1002.txt", "1003.txt"]


def test_checksum_mismatch_leaves_nothing(params_dict, tmp_path, mirror, serve):
    _write_sums(mirror, {"set-a.tar.gz": "0" * 64})
    data_dir = tmp_path / "p12"
    with pytest.raises(DataError, match=r"set-a\.tar\.gz: sha256 mismatch: expected 0{64}, got [0-9a-f]{64}"):
        _ingest(params_dict, data_dir, serve(mirror))
    assert not data_dir.exists()
    assert _leftovers(tmp_path) == []


def test_unlisted_file_is_refused(params_dict, tmp_path, mirror, serve):
    sums = (mirror / "SHA256SUMS.txt").read_text().splitlines()
    (mirror / "SHA256SUMS.txt").write_text("\n".join(s for s in sums if "Outcomes" not in s) + "\n")
    with pytest.raises(DataError, match=r"Outcomes-a\.txt is not listed in SHA256SUMS\.txt"):
        _ingest(params_dict, tmp_path / "p12", serve(mirror))
    assert not (tmp_path / "p12").exists()


@pytest.mark.parametrize(
    "member",
    [
        ("../evil.txt", tarfile.REGTYPE, r"path outside the target"),
        ("/tmp/evil.txt", tarfile.REGTYPE, r"path outside the target"),
        ("set-a/link.txt", tarfile.SYMTYPE, r"link or special file"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_tarball_member_is_refused(params_dict, tmp_path, mirror, serve, member):
    name, kind, pattern = member
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "../../../../etc/passwd"
    (mirror / "set-a.tar.gz").unlink()
    _tar_set(mirror, extra=info)
    _write_sums(mirror)  # correctly checksummed: the archive itself is the attack
    data_dir = tmp_path / "work" / "p12"
    with pytest.raises(DataError, match=rf"refusing tarball member '{name}': {pattern}"):
        _ingest(params_dict, data_dir, serve(mirror))
    assert not data_dir.exists()
    assert not (tmp_path / "work" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert _leftovers(tmp_path / "work") == []


def test_missing_file_on_mirror_names_url(params_dict, tmp_path, mirror, serve):
    (mirror / "Outcomes-a.txt").unlink()
    url = serve(mirror)
    with pytest.raises(DataError, match=rf"{url}Outcomes-a\.txt: download failed: HTTP 404"):
        _ingest(params_dict, tmp_path / "p12", url)
    assert not (tmp_path / "p12").exists() and _leftovers(tmp_path) == []


def test_parse_checksums_formats_and_errors():
    h = "a" * 64
    assert parse_checksums(f"{h}  set-a.tar.gz\n{h.upper()} *./Outcomes-a.txt\n\n# note\n", "S") == {
        "set-a.tar.gz": h,
        "Outcomes-a.txt": h,
    }
    with pytest.raises(DataError, match=r"^S:2: not a sha256sum line"):
        parse_checksums(f"{h}  x\nnot-a-hash  y\n", "S")


@pytest.mark.parametrize("umask", [0o002, 0o022])
def test_downloaded_files_have_the_umask_mode(params_dict, tmp_path, mirror, serve, umask):
    """Tar members keep the modes they were packed with (here 0o644 / 0o755 or such); what lands in the
    data folder gets the umask's instead (a group-shared data folder needs group-writable files)."""
    import os
    import stat

    data_dir = tmp_path / "p12"
    old = os.umask(umask)
    try:
        _ingest(params_dict, data_dir, serve(mirror))
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    for p in [data_dir, *data_dir.rglob("*")]:
        assert mode(p) == (0o777 if p.is_dir() else 0o666) & ~umask, (p, oct(mode(p)))
