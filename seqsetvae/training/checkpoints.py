"""Safe checkpoint loading, and the parts of a Lightning checkpoint the project reads.

Every checkpoint is loaded with `torch.load(weights_only=True)`: only tensors and plain containers are
unpickled, so a file carrying a pickled Python object (whose `__reduce__` could run code) is refused as
unsafe instead of executed. Failures become a `DataError` naming the file: missing, truncated / corrupt,
damaged after it was written, or refused because of a pickle payload.

Integrity, checked by `load_checkpoint` before anything is unpickled:

- every member of the checkpoint's zip archive must match the CRC-32 stored for it (a flipped byte in
  tensor data is named by its member, e.g. `best/data/3`; torch itself never checks these);
- if the folder holds a `SHA256SUMS` file (`sha256sum` format, written by the pretrain / finetune stages
  when they finish, see `write_checksums`) that lists the file, the file's sha256 must match it.

The CRC catches accidental damage (disk, copy, a partial overwrite); the recorded sha256 catches any change
to the bytes, including a consistent rewrite of a member and its CRC, but only for a file that still sits
beside the `SHA256SUMS` written with it. Neither says who wrote the file: a checksum is not a signature.

What a project checkpoint holds besides Lightning's own keys (`state_dict`, `global_step`, `epoch`,
`loops`, `optimizer_states`, `callbacks`, ...): a `seqsetvae` block written by the LightningModules in
this package,

    seqsetvae.format_version   int
    seqsetvae.kind             "pretrain" | "finetune"
    seqsetvae.architecture     {"model_config": ModelConfig.to_dict()} (backbone + vocabulary size), plus for
                               finetune the head settings and the pretrained file's sha256: rebuilds the model
    seqsetvae.schedule         {"global_step", "beta", "epoch"}: the schedule position, for humans and checks
    seqsetvae.rng              RNG states (torch, python, numpy) for a bit-identical resume
"""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from seqsetvae.errors import DataError
from seqsetvae.io import write_text
from seqsetvae.training.fingerprint import file_sha256

FORMAT_VERSION = 1
BLOCK = "seqsetvae"
# The LightningModules keep their network under this attribute, so its state-dict keys carry this prefix.
MODEL_PREFIX = "model."


# The files of a training stage's output folder (`--out`): the epoch with the best monitored validation
# metric, the end of the latest epoch (what a run resumes from, see resume.py), and their sha256 once final.
BEST = "best.ckpt"
LAST = "last.ckpt"
SUMS = "SHA256SUMS"  # beside the checkpoints of a finished training stage


def best_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / BEST


def last_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / LAST


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint argument: a file, or a training stage's output folder meaning its best checkpoint
    (the pipeline passes the folder, which is what both runners track as the pretrain output)."""
    path = Path(path)
    return best_path(path) if path.is_dir() else path


def checksums_file(folder: str | Path) -> Path:
    return Path(folder) / SUMS


def write_checksums(folder: str | Path, names: tuple[str, ...] = (BEST, LAST)) -> Path:
    """Record the sha256 of the checkpoints in `folder` in `folder/SHA256SUMS` (`sha256sum -c` format),
    atomically. Called by a training stage once its checkpoints are final; `load_checkpoint` verifies it."""
    folder = Path(folder)
    lines = [f"{file_sha256(folder / name)}  {name}\n" for name in names if (folder / name).is_file()]
    path = checksums_file(folder)
    write_text(path, "".join(lines))
    return path


def remove_checksums(folder: str | Path) -> None:
    """Drop `folder/SHA256SUMS` before training rewrites the checkpoints it describes (a stage that is
    interrupted then would leave new checkpoints beside old sums, which would read as damage)."""
    checksums_file(folder).unlink(missing_ok=True)


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 that the `SHA256SUMS` beside `path` records for it, or None (no such file or entry)."""
    path = Path(path)
    sums = checksums_file(path.parent)
    try:
        text = sums.read_text(encoding="utf-8")
    except FileNotFoundError:  # also: removed since, by the stage that is about to rewrite the checkpoints
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(sums, f"unreadable checksum file ({e})") from None
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SUMS_LINE.fullmatch(line)
        if m is None:
            raise DataError(sums, f"not a sha256sum line: {line[:80]!r}", line_no)
        if m.group(2) == path.name:
            return m.group(1).lower()
    return None


def _check_integrity(path: Path) -> None:
    """DataError if a zip member fails its CRC, or the file differs from the sha256 recorded beside it."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise DataError(path, f"truncated or corrupt checkpoint file ({type(e).__name__}: {e})") from None
        if bad is not None:
            raise DataError(
                path, f"corrupt checkpoint file: member {bad!r} fails its CRC-32 check (damaged after it was "
                "written); not loaded"
            )
    # A file that is not a zip is left to torch.load, which refuses it (legacy format, raw pickle, garbage).
    expected = recorded_sha256(path)
    if expected is not None:
        got = file_sha256(path)
        if got != expected:
            raise DataError(
                path, f"sha256 {got} differs from the {expected} recorded in {checksums_file(path.parent)}: "
                "the file changed after it was written; not loaded"
            )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU with weights_only=True; DataError naming the file on any failure.

    The archive's CRCs, and the sha256 recorded beside it if any, are checked first (see the module doc).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found" if not path.exists() else "checkpoint path is not a file")
    _check_integrity(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global outside torch's allow-list: a pickled object, possibly code. The
        # same refusal for a bare pickle can read as a parse error (an unsupported opcode), so the stream's
        # globals are looked at too. Any other unpickling error is a damaged file.
        unsafe = _unsafe_globals(path, str(e))
        if unsafe:
            named = ", ".join(unsafe[:3]) + (", ..." if len(unsafe) > 3 else "")
            raise DataError(
                path, "refused as unsafe: the file holds pickled Python objects outside the allowed set "
                f"(tensors, numbers, strings, plain containers): {named}; not loaded, nothing in it was run"
            ) from None
        if _pickle_stream(path) is not None and not zipfile.is_zipfile(path):
            raise DataError(path, f"not a PyTorch checkpoint archive: a bare pickle stream ({_torch_reason(e)}); "
                            "not loaded") from None
        raise DataError(path, f"truncated or corrupt checkpoint file ({_torch_reason(e)})") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        # torch reports a cut-off zip as OSError / RuntimeError, garbage as KeyError, an empty file as EOFError.
        raise DataError(path, f"truncated or corrupt checkpoint file ({_torch_reason(e)})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(path, "not a Lightning checkpoint: no 'state_dict' entry")
    return ckpt


def project_block(ckpt: dict[str, Any], path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The `seqsetvae` block of a checkpoint, checked for format version and (optionally) kind."""
    block = ckpt.get(BLOCK)
    if not isinstance(block, dict):
        raise DataError(path, f"not a SeqSetVAE checkpoint: no '{BLOCK}' block (written by another program?)")
    if block.get("format_version") != FORMAT_VERSION:
        raise DataError(path, f"checkpoint format_version {block.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    if kind is not None and block.get("kind") != kind:
        raise DataError(path, f"is a {block.get('kind')!r} checkpoint, expected a {kind!r} one")
    return block


def model_state_dict(ckpt: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The network's state dict: Lightning's `state_dict` with the LightningModule attribute prefix removed.

    Keys outside the prefix (there should be none) are an error, not silently dropped.
    """
    state = ckpt["state_dict"]
    outside = sorted(k for k in state if not k.startswith(MODEL_PREFIX))
    if outside:
        raise DataError(path, f"{len(outside)} state_dict key(s) outside '{MODEL_PREFIX}', e.g. {outside[0]!r}")
    return {k[len(MODEL_PREFIX) :]: v for k, v in state.items()}


# torch's own wording around a weights-only failure advises `weights_only=False` (the one setting that would
# run a payload) or allow-listing the global. Neither is ever repeated: only the specific reason is kept.
_ADVICE = re.compile(r"weights_only|safe_globals|allowlist|allow-list|trusted source|arbitrary code", re.IGNORECASE)
_GLOBAL = re.compile(r"GLOBAL\s+([A-Za-z_][\w.]*)")
_SUMS_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")
_SCAN_LIMIT = 64 << 20  # bytes of a pickle stream scanned for the globals it would import


def _torch_reason(e: BaseException) -> str:
    """`Type: detail` of a torch loading error, without torch's advice on how to bypass the check."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    keep = [line for line in lines if not _ADVICE.search(line)]
    detail = _ADVICE.split(keep[0], 1)[0].rstrip(" .(`") if keep else ""
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


def _unsafe_globals(path: Path, message: str) -> list[str]:
    """The globals outside torch's allow-list that a refused pickle would import (none: it is damaged, not
    unsafe). Taken from torch's message, or found by scanning the pickle's opcodes with pickletools, which
    only parses them: nothing is imported or run."""
    named = _GLOBAL.findall(message)
    if named:
        return list(dict.fromkeys(named))
    stream = _pickle_stream(path)
    if stream is None:
        return []
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # a private helper: without it, only torch's own names count as allowed
        allowed = set()
    return [g for g in _scan_globals(stream) if g not in allowed and not g.startswith("torch.")]


def _pickle_stream(path: Path) -> bytes | None:
    """The pickle bytes of a checkpoint: the `data.pkl` member of a zip checkpoint, or the file itself when
    it starts like a pickle (a raw pickle, or torch's legacy format)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                if not names:
                    return None
                with zf.open(names[0]) as f:
                    return f.read(_SCAN_LIMIT)
        with open(path, "rb") as f:
            head = f.read(_SCAN_LIMIT)
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return None
    return head if head[:1] == b"\x80" else None  # PROTO: every pickle of protocol 2 or above starts so


def _scan_globals(data: bytes) -> list[str]:
    """The globals (`module.name`) a pickle stream imports, parsed, never executed."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            if op.name == "STOP":
                break
    except Exception:  # a damaged or cut stream: what was parsed so far is the answer
        pass
    return list(dict.fromkeys(found))
