"""The project's one output writer: every stage writes to a temporary name beside the target, then renames.

An interrupted stage therefore never leaves a half-written file or folder under the final name, where a
runner (Snakemake, DVC) or a user could take it as finished.

The temporary names come from `tempfile`, which creates them private (folder 0o700, file 0o600) whatever
the umask. Before the rename they get the mode a plain `mkdir` / `open` would have given them (0o777 or
0o666 less the umask), so outputs can be shared as the umask says: a group-shared DVC cache
(`dvc config cache.shared group`, umask 002) needs group-readable outputs.

An OS error while writing an output (a read-only folder, no permission, a full disk) is a DataError
naming the output, not the temporary, with what to do (`write_refusal`); the temporary is removed. A file
output whose path is an existing folder, and any output whose path is a device, FIFO or socket, is
refused before anything is written. Every file is fsynced before the rename.

Folder outputs and what they may replace. Every folder this writer creates holds a marker file,
`.seqsetvae-output` (`OUTPUT_MARKER`; fixed content, so equal outputs stay equal bytes and DVC restores it
with the folder). An existing folder at the target is replaced whole only when it holds the marker or is
empty; any other folder (`ingest --out data` where data/ holds the raw files, or an output written by a
version of this code older than the marker) is refused with a DataError naming it, and nothing in it is
touched. Neither runner is affected: DVC removes a stage's outs before running it, and Snakemake removes a
job's old outputs before rerunning it, so a stage they run never finds an unmarked folder of its own.

Litter of a killed run. The temporary names carry the host and the process id that made them:
`.<name>.<host>_<pid>.<random>.tmp` (the output being written) and `.<name>.<host>_<pid>.<random>.old` (the
output being replaced, between the two renames).
A process killed with SIGKILL cannot remove them; the next write of the same output (the next run of the
stage) does, through `remove_stale`, for every one made on this host by a process that is no longer alive.
A live process's temporaries (a concurrent run, which the run lock refuses anyway) and another host's (a
shared file system) are never touched. A recycled pid only keeps litter longer; it never removes a live
run's files.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqsetvae.errors import DataError

OUTPUT_MARKER = ".seqsetvae-output"
MARKER_TEXT = "This folder is an output of seqsetvae (seqsetvae/io.py): a rerun of its stage replaces it whole.\n"


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


# ------------------------------------------------------------------------------------------------------
# Temporary names: who made them, and removing those of dead processes


def _host() -> str:
    """This host's name as it goes into a temporary name: letters, digits and '-' only."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def owner_tag() -> str:
    """`<host>_<pid>` of this process: what a temporary name carries so a later run can tell it is stale."""
    return f"{_host()}_{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(folder: Path, prefix: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Remove the temporaries `<prefix><host>_<pid>.<random><suffix>` in `folder` that this host's dead
    processes left (a SIGKILLed run); returns what was removed. See the module docstring."""
    if not folder.is_dir():
        return []
    pattern = re.compile(
        re.escape(prefix) + r"(?P<host>[A-Za-z0-9-]+)_(?P<pid>\d{1,10})\.[A-Za-z0-9_]+(?:"
        + "|".join(re.escape(s) for s in suffixes) + r")"
    )
    host, removed = _host(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or m["host"] != host or _pid_alive(int(m["pid"])):
            continue
        _remove(Path(entry.path))
        removed.append(Path(entry.path))
    return removed


def _remove_stale_siblings(path: Path) -> None:
    remove_stale(path.parent, f".{path.name}.", (".tmp", ".old"))


@contextlib.contextmanager
def scratch_folder(prefix: str, dir: str | Path | None = None) -> Iterator[Path]:
    """A private temporary folder `<dir>/.<prefix>-<host>_<pid>.<random>`, removed on exit; first removes
    the ones dead processes of this host left there (e.g. a SIGKILLed preprocess `all` step's)."""
    parent = Path(tempfile.gettempdir() if dir is None else dir)
    remove_stale(parent, f".{prefix}-", ("",))
    with tempfile.TemporaryDirectory(prefix=f".{prefix}-{owner_tag()}.", dir=parent) as tmp:
        yield Path(tmp)


# ------------------------------------------------------------------------------------------------------
# Atomic outputs


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    _make_parent(path)
    _remove_stale_siblings(path)
    prefix = f".{path.name}.{owner_tag()}."
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _check_replaceable(path: Path, is_dir: bool) -> None:
    """Refuse (DataError) to replace what this writer did not create: see the module docstring."""
    if not os.path.lexists(path):
        return
    if not is_dir:
        if path.is_dir():
            raise DataError(path, "is a folder; this output is a file: give a file path, not a folder")
        return
    if not path.is_dir():
        raise DataError(path, "is a file; this output is a folder: remove it or give another path")
    if (path / OUTPUT_MARKER).is_file():
        return
    try:
        empty = not any(path.iterdir())
    except OSError as e:
        raise DataError(path, f"cannot list it to check that it may be replaced: {e.strerror}") from None
    if not empty:
        raise DataError(
            path,
            f"is a folder this project did not write (it has no {OUTPUT_MARKER} marker): refusing to replace "
            "it, which would delete everything in it. Give an output path of its own, or move the folder "
            "away (an output written by a seqsetvae version before the marker: delete it and rerun)",
        )


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path, is_dir: bool = False, marked: bool = True) -> Iterator[Path]:
    """Yield a temporary path; on success move it onto `path`, on error remove it.

    For a folder, an existing target is replaced whole (old contents never mix with new), but only one
    this writer created (it holds `OUTPUT_MARKER`) or an empty one; any other is a DataError, raised both
    before the caller writes anything and again just before the replacement. The result has the mode a
    plain mkdir / open would give it under the umask (`default_mode`). Stale temporaries of this output
    left by a killed run are removed first (module docstring).

    `marked=False` is for the one folder another library writes too: a training stage's DVCLive curves
    folder, which the resume store copies back and forth (training/resume.py). It is written without the
    marker (DVC reads every file of a plots folder) and replaces what is there unchecked: that folder is
    the stage's own declared output.
    """
    path = Path(path)
    _refuse_target(path, is_dir)
    if marked:
        _check_replaceable(path, is_dir)
    try:
        tmp = _tmp_sibling(path, is_dir)
    except OSError as e:
        raise write_refusal(path, e, is_dir) from None
    try:
        yield tmp
        os.chmod(tmp, default_mode(is_dir))  # tempfile made it private; see the module docstring
        if is_dir:
            if marked:
                marker = tmp / OUTPUT_MARKER
                marker.write_text(MARKER_TEXT, encoding="utf-8")
                os.chmod(marker, default_mode(False))
            for f in tmp.rglob("*"):
                if f.is_file():
                    _fsync_file(f)
            if marked:
                _check_replaceable(path, is_dir)
            if os.path.lexists(path):
                old = path.with_name(f".{path.name}.{owner_tag()}.{secrets.token_hex(4)}.old")
                os.replace(path, old)
                os.replace(tmp, path)
                _remove(old)
            else:
                os.replace(tmp, path)
        else:
            _fsync_file(tmp)
            _check_replaceable(path, is_dir)
            os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
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
