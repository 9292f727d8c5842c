"""Atomic file output: every stage writes to a temporary name beside the target, then renames.

An interrupted stage therefore never leaves a half-written file or folder under the final name, where a
runner (Snakemake, DVC) or a user could take it as finished.

The temporary names come from `tempfile`, which creates them private (folder 0o700, file 0o600) whatever
the umask. Before the rename they get the mode a plain `mkdir` / `open` would have given them (0o777 or
0o666 less the umask), so outputs can be shared as the umask says: a group-shared DVC cache
(`dvc config cache.shared group`, umask 002) needs group-readable outputs.

An OS error while writing an output (a read-only folder, no permission, a full disk) is a DataError
naming the output, not the temporary, with what to do (`write_refusal`); the temporary is removed. A file
output whose path is an existing folder, and any output whose path is a device, FIFO or socket, is
refused before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqsetvae.errors import DataError


# What an OS error while writing an output means to the user (the rest: the system's own words).
_WRITE_ADVICE = {
    errno.ENOSPC: "the disk is full; no partial output was left, so free space and rerun",
    errno.EDQUOT: "the disk quota is exhausted; no partial output was left, so free space and rerun",
    errno.EROFS: "the file system is read-only; write the output elsewhere (--out) or remount it",
    errno.EACCES: "no permission to write here; write the output elsewhere (--out) or change the folder's mode",
    errno.EPERM: "the operation is not permitted here; write the output elsewhere (--out)",
}


def write_refusal(path: Path, e: OSError, is_dir: bool = False) -> DataError:
    """The DataError for an OS error `e` met while writing output `path`: it names the output (not the
    temporary name beside it) and says what to do, without a traceback."""
    reason = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    advice = _WRITE_ADVICE.get(e.errno)
    what = "folder" if is_dir else "file"
    return DataError(path, f"cannot write this output {what}: {reason}" + (f" ({advice})" if advice else ""))


def _is_inside(name: Any, tmp: Path) -> bool:
    return name is None or str(name) == str(tmp) or str(name).startswith(str(tmp) + os.sep)


def _refuse_target(path: Path, is_dir: bool) -> None:
    """Refuse an existing target that an output must not replace: a folder where a file goes, and a device,
    FIFO or socket (`--out /dev/full` would otherwise replace the device node with a file). A regular file
    or folder of the right kind, or a symbolic link (replaced itself, not its target), may be replaced."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # absent (or unreadable: the write reports it)
    if stat.S_ISDIR(mode):
        if not is_dir:
            raise DataError(path, "is a folder: cannot write a file over it (give a file path, or move the folder away)")
    elif not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise DataError(path, "is a device, FIFO or socket, not a file: cannot write an output over it")


def _make_parent(path: Path) -> None:
    """Create the folder that `path` goes in; a regular file in the way is a DataError naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), path.parent)
        raise DataError(blocker, f"is a file, not a folder: cannot write {path} under it") from None


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc/self/status, since 4.7);
    elsewhere by setting and restoring it (a brief window in which another thread would create files
    with mode 0o777 / 0o666 unmasked)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(is_dir: bool) -> int:
    """The mode `mkdir` (folder) or `open` (file) gives a new path under the current umask."""
    return (0o777 if is_dir else 0o666) & ~current_umask()


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    _make_parent(path)
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success move it onto `path`, on error remove it.

    For a directory, an existing target is replaced whole (old contents never mix with new). The result
    has the mode a plain mkdir / open would give it under the umask (`default_mode`).
    """
    path = Path(path)
    _refuse_target(path, is_dir)
    try:
        tmp = _tmp_sibling(path, is_dir)
    except OSError as e:
        raise write_refusal(path, e, is_dir) from None
    try:
        yield tmp
        os.chmod(tmp, default_mode(is_dir))  # tempfile made it private; see the module docstring
        if is_dir:
            for f in tmp.rglob("*"):
                if f.is_file():
                    _fsync_file(f)
            if path.exists():
                old = path.with_name(f".{path.name}.old.{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            _fsync_file(tmp)
            os.replace(tmp, path)
    except BaseException as e:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        # An error of the system (it has an errno) on the output, the temporary or the final name (pyarrow's
        # name none, and carry the errno), is a refusal naming the output; one on another path (an input read
        # inside the block) goes on as it is.
        on_output = isinstance(e, OSError) and (_is_inside(e.filename, tmp) or str(e.filename) == str(path))
        if on_output and e.errno is not None:
            raise write_refusal(path, e, is_dir) from None
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, with sorted keys so equal content gives equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_parquet(path: str | Path, table: Any) -> None:
    """Write a pyarrow Table (or pandas DataFrame) to parquet atomically, deterministically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        # No creation timestamps or writer version drift inside a run: same table -> same bytes.
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
