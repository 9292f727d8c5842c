"""Checksummed download of the PhysioNet 2012 challenge files into the data directory.

PhysioNet publishes `SHA256SUMS.txt` beside each project's files. We fetch it first, then only the parts
that are missing (`set-<x>.tar.gz` for a set directory, `Outcomes-<x>.txt`), check every file's sha256
against it before using it, and unpack tarballs with members restricted to plain files and directories
inside the target (no absolute paths, no `..`, no links or devices). Everything lands in a temporary
directory beside the target and is renamed into place at the end, so an interrupted or failed download
leaves nothing under the data directory that looks like data. What lands there has the modes the umask
gives (not the tarball's).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from seqsetvae.errors import DataError
from seqsetvae.io import default_mode

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "SHA256SUMS.txt"
CHUNK = 1 << 20
TIMEOUT_S = 60


def _url(base: str, name: str) -> str:
    return urllib.parse.urljoin(base if base.endswith("/") else base + "/", name)


def _fetch(url: str, dest: Path) -> str:
    """Stream `url` into `dest` with a progress bar; return the sha256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(dest, "wb") as out:
            total = resp.headers.get("Content-Length")
            with tqdm(
                total=int(total) if total else None, unit="B", unit_scale=True, desc=dest.name,
                leave=False, disable=None,  # None: no bar when stderr is not a terminal (logs, CI)
            ) as bar:  # fmt: skip
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DataError(url, f"download failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(url, f"download failed: {reason}") from None
    return digest.hexdigest()


def parse_checksums(text: str, source: str) -> dict[str, str]:
    """`sha256sum` output (`<hex>  <name>` or `<hex> *<name>`) -> {name: hex}."""
    sums: dict[str, str] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(source, f"not a sha256sum line: {line[:80]!r}", line_no)
        name = parts[1].strip().lstrip("*")
        sums[name.removeprefix("./")] = digest
    return sums


def _verified(url: str, dest: Path, sums: dict[str, str]) -> Path:
    expected = sums.get(dest.name)
    if expected is None:
        raise DataError(url, f"{dest.name} is not listed in {CHECKSUMS_FILE}: refusing an unverified file")
    got = _fetch(url, dest)
    if got != expected:
        raise DataError(url, f"sha256 mismatch: expected {expected}, got {got} (corrupt or tampered download)")
    return dest


def _safe_extract(archive: Path, url: str, into: Path) -> None:
    """Unpack `archive` into `into`, refusing any member that could land outside it or is not a plain
    file or directory. Checked up front, so nothing is written from a tarball that has such a member."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                path = PurePosixPath(m.name)
                if path.is_absolute() or ".." in path.parts or not (m.isfile() or m.isdir()):
                    kind = "link or special file" if not (m.isfile() or m.isdir()) else "path outside the target"
                    raise DataError(url, f"refusing tarball member {m.name!r}: {kind}")
            # The "data" filter re-checks the same (and drops permissions bits we do not want).
            tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DataError(url, f"cannot unpack: {e}") from None


def _set_dir_from(extracted: Path, name: str, url: str) -> Path:
    """The extracted set directory: `<name>/` inside the tarball, or the files at its top level."""
    inner = extracted / name
    if inner.is_dir():
        return inner
    if any(extracted.glob("*.txt")):
        return extracted
    raise DataError(url, f"unexpected tarball layout: neither {name}/ nor *.txt files at the top level")


def _apply_umask(root: Path) -> None:
    """Give `root` and everything under it the mode mkdir / open would under the umask: tar members keep
    the modes they were packed with, so a shared data folder (umask 002) would otherwise not be
    group-writable, or a private one (umask 077) readable by all."""
    folder_mode, file_mode = default_mode(is_dir=True), default_mode(is_dir=False)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, folder_mode if path.is_dir() else file_mode)


def download_physionet2012(url: str, data_dir: Path, items: list[str]) -> None:
    """Download the missing `items` (`set-<x>` directories, `Outcomes-<x>.txt` files) into `data_dir`."""
    data_dir = Path(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading PhysioNet 2012 (%s) from %s into %s", ", ".join(items), url, data_dir)
    # Beside the target, so the final moves are renames on one file system.
    tmp = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.download.", dir=data_dir.parent))
    try:
        sums_path = tmp / CHECKSUMS_FILE
        sums_url = _url(url, CHECKSUMS_FILE)
        _fetch(sums_url, sums_path)
        sums = parse_checksums(sums_path.read_text(encoding="utf-8"), sums_url)
        staged = tmp / "staged"
        staged.mkdir()
        for item in items:
            if item.endswith(".txt"):
                _verified(_url(url, item), staged / item, sums)
                continue
            tarball = f"{item}.tar.gz"
            archive = _verified(_url(url, tarball), tmp / tarball, sums)
            extracted = tmp / f"{item}.extracted"
            extracted.mkdir()
            _safe_extract(archive, _url(url, tarball), extracted)
            os.replace(_set_dir_from(extracted, item, _url(url, tarball)), staged / item)
            archive.unlink()
        _apply_umask(staged)
        # Into place: the whole folder when there is none yet (or an empty one), else item by item;
        # each rename is atomic, and only items that were missing are moved.
        if not data_dir.exists() or (data_dir.is_dir() and not any(data_dir.iterdir())):
            os.replace(staged, data_dir)
        else:
            for item in items:
                os.replace(staged / item, data_dir / item)
        log.info("PhysioNet 2012 download complete and verified: %s", ", ".join(items))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
