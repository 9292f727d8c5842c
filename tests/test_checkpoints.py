"""Checkpoint safety: weights_only loading, clear errors for pickle payloads / truncated / corrupt files,
integrity on load (zip CRCs, the SHA256SUMS beside a stage's checkpoints), atomic checkpoint writes, RNG
state round trip, metric rounding. No training here (fast)."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from seqsetvae.errors import DataError
from seqsetvae.training.checkpoints import (
    BLOCK,
    FORMAT_VERSION,
    best_path,
    last_path,
    load_checkpoint,
    model_state_dict,
    project_block,
    remove_checksums,
    write_checksums,
)
from seqsetvae.training.metrics import round_metrics
from seqsetvae.training.resume import finish_run, prepare_out_dir, restore_from_store, resume_checkpoint, resume_store
from seqsetvae.training.rng import rng_state, set_rng_state
from seqsetvae.training.trainer import AtomicCheckpointIO


class _Payload:
    """Unpickling this runs os.mkdir(marker): a stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _valid_checkpoint(kind: str = "pretrain") -> dict:
    return {
        "state_dict": {"model.layer.weight": torch.arange(1000, dtype=torch.float32).reshape(10, 100)},
        "global_step": 7,
        BLOCK: {"format_version": FORMAT_VERSION, "kind": kind, "architecture": {"model_config": {"d": 1}},
                "schedule": {"global_step": 7, "epoch": 1}, "fingerprint": "run-a"},
    }


def test_valid_checkpoint_loads_with_weights_only(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save(_valid_checkpoint(), path)
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["state_dict"]["model.layer.weight"], _valid_checkpoint()["state_dict"]["model.layer.weight"])
    assert project_block(ckpt, path, kind="pretrain")["schedule"]["global_step"] == 7
    assert list(model_state_dict(ckpt, path)) == ["layer.weight"]


def test_pickle_payload_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({**_valid_checkpoint(), "extra": _Payload(marker)}, path)
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert "pickled Python objects" in str(err.value)
    assert not marker.exists(), "the payload ran during loading"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_file_gives_clear_error_naming_it(tmp_path, damage):
    path = tmp_path / "damaged.ckpt"
    torch.save(_valid_checkpoint(), path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint" * 64}[damage])
    with pytest.raises(DataError, match="truncated or corrupt checkpoint") as err:
        load_checkpoint(path)
    assert err.value.path == str(path)
    assert "weights_only" not in str(err.value)  # torch's advice to switch the check off is never repeated


class _Custom:
    """A plain class, harmless here, but not a tensor, number, string or container: outside the allowed set."""

    def __init__(self):
        self.x = 1


def _assert_refused_as_unsafe(err: pytest.ExceptionInfo, path: Path, global_name: str) -> None:
    msg = str(err.value)
    assert err.value.path == str(path)
    assert "Python objects outside the allowed set" in msg and "refused as unsafe" in msg
    assert global_name in msg
    assert "corrupt" not in msg
    # torch's message advises weights_only=False (which would run the payload) or allow-listing the global.
    for advice in ("weights_only", "=False", "safe_globals", "allowlist", "trusted"):
        assert advice not in msg, msg


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_raw_pickle_payload_is_refused_as_unsafe_not_as_corrupt(tmp_path, protocol):
    """A bare pickle (no torch zip around it) whose unpickling would call os.mkdir."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "raw.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=protocol))
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    _assert_refused_as_unsafe(err, path, f"{os.mkdir.__module__}.mkdir")
    assert not marker.exists(), "the payload ran during loading"


def test_checkpoint_holding_a_custom_class_is_refused_as_unsafe(tmp_path):
    path = tmp_path / "custom.ckpt"
    torch.save({**_valid_checkpoint(), "extra": _Custom()}, path)
    with pytest.raises(DataError) as err:
        load_checkpoint(path)
    _assert_refused_as_unsafe(err, path, f"{__name__}._Custom")


def test_bare_pickle_of_plain_data_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}}, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(DataError, match="not a PyTorch checkpoint archive") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value)


def _member_data_offset(path: Path, suffix: str) -> tuple[int, str]:
    """(offset of the first data byte, name) of the zip member whose name ends with `suffix`."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)  # the local file header: name and extra field lengths at bytes 26..29
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.filename


def test_flipped_bytes_in_tensor_data_are_refused_naming_the_member(tmp_path):
    """torch.load itself reads such a file without complaint (issue 15: -75.89 where 0.0567 was)."""
    path = tmp_path / "best.ckpt"
    torch.save(_valid_checkpoint(), path)
    start, member = _member_data_offset(path, "/data/0")  # the 4000 bytes of model.layer.weight
    data = bytearray(path.read_bytes())
    data[start + 1000 : start + 1016] = bytes(b ^ 0x5A for b in data[start + 1000 : start + 1016])
    path.write_bytes(bytes(data))
    for load in (load_checkpoint, AtomicCheckpointIO().load_checkpoint):  # stage loads and Lightning's resume
        with pytest.raises(DataError, match="CRC") as err:
            load(path)
        assert err.value.path == str(path)
        assert repr(member) in str(err.value)


def test_checkpoint_sha256_is_recorded_beside_it_and_checked_on_load(tmp_path):
    out = tmp_path / "fold_0"
    out.mkdir()
    torch.save(_valid_checkpoint(), best_path(out))
    torch.save({**_valid_checkpoint(), "global_step": 9}, last_path(out))
    sums = write_checksums(out)
    assert sums == out / "SHA256SUMS"
    assert sums.read_text().splitlines() == [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in (best_path(out), last_path(out))
    ]
    if shutil.which("sha256sum"):  # the coreutils format: a user can check the files by hand
        subprocess.run(["sha256sum", "--check", "--quiet", sums.name], cwd=out, check=True)
    assert load_checkpoint(best_path(out))["global_step"] == 7

    # A consistent rewrite (a valid archive, every CRC right) passes the CRC check, not the recorded sha256.
    torch.save({**_valid_checkpoint(), "global_step": 8}, best_path(out))
    with pytest.raises(DataError, match=r"sha256 [0-9a-f]{64} differs from the [0-9a-f]{64} recorded in") as err:
        load_checkpoint(best_path(out))
    assert err.value.path == str(best_path(out)) and str(sums) in str(err.value)
    assert load_checkpoint(last_path(out))["global_step"] == 9  # its own entry still matches
    remove_checksums(out)
    assert not sums.exists() and load_checkpoint(best_path(out))["global_step"] == 8
    write_checksums(out)
    assert load_checkpoint(best_path(out))["global_step"] == 8


def test_malformed_checksum_file_is_named(tmp_path):
    torch.save(_valid_checkpoint(), tmp_path / "best.ckpt")
    (tmp_path / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(DataError, match="not a sha256sum line") as err:
        load_checkpoint(tmp_path / "best.ckpt")
    assert err.value.path == str(tmp_path / "SHA256SUMS") and err.value.line == 1


def test_missing_file_and_non_checkpoint(tmp_path):
    with pytest.raises(DataError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.ckpt")
    path = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(DataError, match="no 'state_dict'"):
        load_checkpoint(path)


def test_project_block_checks_kind_version_and_presence(tmp_path):
    path = tmp_path / "x.ckpt"
    ckpt = _valid_checkpoint("finetune")
    with pytest.raises(DataError, match="is a 'finetune' checkpoint, expected a 'pretrain'"):
        project_block(ckpt, path, kind="pretrain")
    with pytest.raises(DataError, match="format_version"):
        project_block({**ckpt, BLOCK: {**ckpt[BLOCK], "format_version": 999}}, path)
    with pytest.raises(DataError, match="not a SeqSetVAE checkpoint"):
        project_block({"state_dict": {}}, path)


def test_model_state_dict_refuses_keys_outside_the_module_prefix(tmp_path):
    ckpt = {"state_dict": {"model.a": torch.zeros(1), "stray.b": torch.zeros(1)}}
    with pytest.raises(DataError, match="outside 'model.'"):
        model_state_dict(ckpt, tmp_path / "x.ckpt")


def test_atomic_checkpoint_io_writes_whole_files_and_loads_safely(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "out" / "last.ckpt"
    io.save_checkpoint(_valid_checkpoint(), path)
    assert io.load_checkpoint(path)["global_step"] == 7
    # A save that fails half-way (an object torch.save cannot pickle) leaves the old file and no temp file.
    with pytest.raises(Exception):
        io.save_checkpoint({**_valid_checkpoint(), "bad": lambda: None}, path)
    assert io.load_checkpoint(path)["global_step"] == 7
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    # Resume goes through the same loader, so a payload is refused there too.
    torch.save({**_valid_checkpoint(), "extra": _Payload(tmp_path / "ran")}, path)
    with pytest.raises(DataError, match="pickled"):
        io.load_checkpoint(path)
    assert not (tmp_path / "ran").exists()


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path):
    """torch.save names the zip's inner folder after the file it writes to; the atomic write goes to a
    random temporary name, so without care every save of the same content had other bytes (another sha256
    for DVC, another backbone id in the finetune fingerprint)."""
    io = AtomicCheckpointIO()
    first, second = tmp_path / "a" / "best.ckpt", tmp_path / "b" / "best.ckpt"
    io.save_checkpoint(_valid_checkpoint(), first)
    io.save_checkpoint(_valid_checkpoint(), second)
    assert first.read_bytes() == second.read_bytes()
    io.save_checkpoint(_valid_checkpoint(), first)  # overwritten in place: still the same bytes
    assert first.read_bytes() == second.read_bytes()


def test_resume_refuses_corrupt_last_checkpoint(tmp_path):
    class _Module:
        kind = "pretrain"
        run_fingerprint = "run-a"

        def architecture(self):
            return {"model_config": {"d": 1}}

    out = tmp_path / "run"
    prepare_out_dir(out)
    assert resume_checkpoint(out, _Module()) is None  # nothing to resume
    torch.save(_valid_checkpoint(), last_path(out))
    assert resume_checkpoint(out, _Module()) == last_path(out)
    last_path(out).write_bytes(last_path(out).read_bytes()[:100])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        resume_checkpoint(out, _Module())
    assert err.value.path == str(last_path(out))


@pytest.mark.parametrize(
    "architecture,fingerprint",
    [({"model_config": {"d": 2}}, "run-a"), ({"model_config": {"d": 1}}, "run-b")],
    ids=["another architecture", "other params or inputs"],
)
def test_a_last_checkpoint_of_another_run_is_dropped_not_resumed(tmp_path, architecture, fingerprint):
    class _Module:
        kind = "pretrain"
        run_fingerprint = fingerprint

        def architecture(self):
            return architecture

    out = tmp_path / "run"
    prepare_out_dir(out)
    torch.save(_valid_checkpoint(), last_path(out))
    torch.save(_valid_checkpoint(), best_path(out))
    assert resume_checkpoint(out, _Module()) is None
    assert not last_path(out).exists() and not best_path(out).exists()


def test_prepare_out_dir_removes_only_interrupted_temp_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.ckpt.abc123.tmp").write_bytes(b"half")
    (out / "best.ckpt").write_bytes(b"keep")
    prepare_out_dir(out)
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt"]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected = (torch.rand(4), random.random(), np.random.rand(2))
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    set_rng_state(torch.load(path, weights_only=True))
    got = (torch.rand(4), random.random(), np.random.rand(2))
    assert torch.equal(expected[0], got[0]) and expected[1] == got[1] and np.array_equal(expected[2], got[2])


def test_round_metrics_keeps_significant_digits_and_types():
    out = round_metrics({"b": 1234.56789, "a": 0.000123456789, "n": 5, "s": "x", "z": 0.0, "l": [np.float32(0.5)]})
    assert out == {"b": 1234.57, "a": 0.000123457, "n": 5, "s": "x", "z": 0.0, "l": [0.5]}
    assert all(type(v) is float for v in (out["b"], out["a"], out["l"][0]))
    with pytest.raises(ValueError, match="not finite"):
        round_metrics({"x": float("nan")})


def test_last_checkpoint_is_mirrored_into_the_resume_store_and_restored_from_it(tmp_path):
    out, curves = tmp_path / "models" / "fold_0", tmp_path / "curves" / "fold_0"
    (curves / "plots").mkdir(parents=True)
    (curves / "plots" / "loss.tsv").write_text("step\tloss\n0\t1.5\n")
    io = AtomicCheckpointIO(curves)
    io.save_checkpoint(_valid_checkpoint(), best_path(out))
    assert not resume_store(out).exists()  # only a save of last.ckpt mirrors (best.ckpt comes first)
    io.save_checkpoint(_valid_checkpoint(), last_path(out))
    store = resume_store(out)
    assert store == tmp_path / "models" / ".fold_0.resume"
    for name in ("best.ckpt", "last.ckpt"):
        assert os.path.samefile(out / name, store / name)  # hard links: no second copy on disk
    assert (store / "curves" / "plots" / "loss.tsv").read_text() == "step\tloss\n0\t1.5\n"
    saved = {p.name: p.read_bytes() for p in out.iterdir()}

    # A runner removes the declared outputs (checkpoint folder and curves) before it reruns the stage.
    shutil.rmtree(out)
    shutil.rmtree(curves)
    assert restore_from_store(out, curves)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == saved
    assert (curves / "plots" / "loss.tsv").read_text() == "step\tloss\n0\t1.5\n"
    assert not restore_from_store(out, curves)  # out has its last.ckpt: nothing to restore
    finish_run(out)
    assert not store.exists() and (out / "last.ckpt").exists()
