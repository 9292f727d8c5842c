"""Hostile outputs (issue 30): where a stage writes, what it leaves after a failure, and training settings
that would never finish or build another model than params say. One test per defect; each failed before
its fix.

- the one output writer (seqsetvae/io.py) refuses to replace a folder it did not write, and removes the
  temporaries of a killed earlier run;
- finetune budgets its passes from the stays a label fraction keeps and refuses a fraction that keeps too
  few; it refuses a test split without a positive before training, and a failed training stage leaves no
  output that looks complete; it refuses a pretrained checkpoint whose architecture params contradict;
- split and preprocess refuse an empty train, val or test split, naming the fold and the split;
- evaluate refuses a bootstrap too small for an interval.
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqsetvae.cli import main
from seqsetvae.config import SplitParams, deep_merge, params_from_dict
from seqsetvae.data.preprocess import preprocess
from seqsetvae.data.splits import make_splits
from seqsetvae.data.synthetic import ingest_synthetic
from seqsetvae.errors import DataError
from seqsetvae.io import OUTPUT_MARKER, atomic_path, owner_tag, write_json
from tests.pipeline_project import TINY_OVERRIDES

pytestmark = pytest.mark.usefixtures("restore_torch_threads")  # (conftest.py)

P12_CORPUS = Path(__file__).parent / "bad_inputs" / "physionet2012"


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): what a SIGKILLed run leaves in its names."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _p12_params(tmp_path: Path, params_dict: dict) -> Path:
    params_dict["data"]["source"] = "physionet2012"
    params_dict["data"]["physionet2012"].update(dir=str(P12_CORPUS / "valid"), sets=["a"], download=False)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict))
    return path


# --------------------------------------------------------------------------------------------------
# Item 1: `ingest --out data`, where data/ holds the raw files, deleted them all.


def test_ingest_refuses_to_replace_a_folder_it_did_not_write(tmp_path, params_dict, caplog):
    raw = tmp_path / "data" / "raw" / "physionet2012" / "set-a" / "1001.txt"
    raw.parent.mkdir(parents=True)
    raw.write_text("Time,Parameter,Value\n")
    params = _p12_params(tmp_path, params_dict)
    with caplog.at_level(logging.ERROR):
        assert main(["ingest", "--params", str(params), "--out", str(tmp_path / "data")]) == 3
    assert raw.read_text() == "Time,Parameter,Value\n"  # untouched
    assert f"{tmp_path / 'data'}: is a folder this project did not write" in caplog.text
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]  # nothing added either
    # Its own output it replaces, run after run (as DVC and Snakemake rerun a stage whose outs they removed
    # or, for a direct run, kept).
    out = tmp_path / "data" / "ingested"
    for _ in range(2):
        assert main(["ingest", "--params", str(params), "--out", str(out)]) == 0
        assert (out / OUTPUT_MARKER).is_file()


@pytest.mark.parametrize(
    "existing, is_dir, replaced",
    [
        ("absent", True, True),
        ("empty_folder", True, True),  # e.g. made by hand or by a runner: nothing to lose
        ("marked_folder", True, True),  # written by this writer before
        ("foreign_folder", True, False),  # a user's files, or an output of a version before the marker
        ("file", True, False),  # a folder output where a file is
        ("empty_folder", False, False),  # a file output where a folder is (was IsADirectoryError)
        ("file", False, True),
    ],
)
def test_the_output_writer_replaces_only_what_it_wrote(tmp_path, existing, is_dir, replaced):
    path = tmp_path / "out"
    if existing == "file":
        path.write_text("old")
    elif existing != "absent":
        path.mkdir()
        if existing == "marked_folder":
            with atomic_path(path, is_dir=True) as tmp:
                (tmp / "old.json").write_text("{}")
        elif existing == "foreign_folder":
            (path / "notes.txt").write_text("mine")

    def write() -> None:
        with atomic_path(path, is_dir=is_dir) as tmp:
            (tmp / "new.json").write_text("{}") if is_dir else tmp.write_text("new")

    if replaced:
        write()
        assert sorted(p.name for p in path.iterdir()) == [OUTPUT_MARKER, "new.json"] if is_dir else path.read_text() == "new"
    else:
        before = sorted(p.name for p in path.iterdir()) if path.is_dir() else path.read_text()
        with pytest.raises(DataError, match=f"^{path}: is a (folder|file)"):
            write()
        assert (sorted(p.name for p in path.iterdir()) if path.is_dir() else path.read_text()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left in either case


# --------------------------------------------------------------------------------------------------
# Item 16: a SIGKILL during ingest or preprocess left `.ingested.*.tmp` and `.<name>.old.*` folders that no
# run ever removed. (The MEDS ingest's scratch folder of that time is gone: a shard job keeps its rows in memory.)


def test_a_rerun_removes_the_temporaries_of_a_killed_run_and_only_those(tmp_path, params_dict):
    out = tmp_path / "ingested"
    host = owner_tag().rsplit("_", 1)[0]
    dead = f"{host}_{_dead_pid()}"
    stale = [f".ingested.{dead}.k3j_x9q2.tmp", f".ingested.{dead}.0a1b2c3d.old"]
    kept = [
        f".ingested.{owner_tag()}.zzzzzzzz.tmp",  # a live process's (this one's)
        f".ingested.otherhost_{_dead_pid()}.yyyyyyyy.tmp",  # another host's, on a shared file system
        ".ingested.abcdefgh.tmp",  # no owner in the name: an older version's, which it cannot judge
        ".notes.tmp",  # not a temporary of this output at all
    ]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part.parquet").write_bytes(b"x")
    params = _p12_params(tmp_path, params_dict)
    assert main(["ingest", "--params", str(params), "--out", str(out)]) == 0
    left = {p.name for p in tmp_path.iterdir()}
    assert left.isdisjoint(stale) and set(kept) <= left


def test_file_outputs_remove_their_stale_temporaries_too(tmp_path):
    stale = tmp_path / f".m.json.{owner_tag().rsplit('_', 1)[0]}_{_dead_pid()}.abcd1234.tmp"
    stale.write_text("{")
    write_json(tmp_path / "m.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


# --------------------------------------------------------------------------------------------------
# Item 6: a fold with an empty train, val or test split passed split and preprocess; pretrain then failed
# on a zero-size array or a missing val/loss.


@pytest.fixture(scope="module")
def tiny_raw(base_params_dict) -> dict:
    return deep_merge(copy.deepcopy(base_params_dict), TINY_OVERRIDES)


@pytest.fixture(scope="module")
def cohort(tiny_raw):
    return ingest_synthetic(params_from_dict(tiny_raw).data.synthetic)


def _split_params(raw: dict, **split) -> SplitParams:
    raw = copy.deepcopy(raw)
    raw["split"].update(split)
    return params_from_dict(raw).split


@pytest.mark.parametrize("empty", ["val", "test"])
def test_split_refuses_an_empty_split_naming_the_fold_and_the_cause(tmp_path, tiny_raw, cohort, empty):
    ids = sorted(cohort.labels.column("subject_id").to_pylist())
    # A predefined CSV that lists no `empty` subject; split.unlisted: exclude leaves out those it omits.
    listed = {"val": "test", "test": "val"}[empty]
    csv = tmp_path / "splits.csv"
    csv.write_text("subject_id,split\n" + "".join(f"{s},{'train' if i % 3 else listed}\n" for i, s in enumerate(ids[:60])))
    params = _split_params(tiny_raw, protocol="predefined", predefined_csv=str(csv), unlisted="exclude")
    with pytest.raises(DataError, match=rf"^{csv}: fold 0: the {empty} split is empty: the predefined CSV lists "
                                        r"none .*split\.unlisted: exclude"):
        make_splits(cohort.subjects, cohort.labels, params, root=tmp_path)
    # The random protocol: a fraction that rounds to no subject.
    fractions = {"train": 0.998, "val": 0.001, "test": 0.001}
    with pytest.raises(DataError, match=rf"fold 0: the (val|test) split is empty: 150 labelled subject\(s\) leave it "
                                        r"none at split\.fractions\.(val|test) 0\.001"):
        make_splits(cohort.subjects, cohort.labels, _split_params(tiny_raw, fractions=fractions))


def test_preprocess_refuses_a_split_that_packs_no_stay(tmp_path, tiny_raw, cohort):
    splits, _ = make_splits(cohort.subjects, cohort.labels, params_from_dict(tiny_raw).split)
    raw = copy.deepcopy(tiny_raw)
    raw["preprocess"]["window_hours"] = 1e-9
    raw["preprocess"]["max_outside_window_share"] = 1.0  # accepted knowingly, so the empty split is what stops it
    with pytest.raises(DataError, match=r"fold 0 (train|val|test): no sample to pack: none of its \d+ sample\(s\) of "
                                        r"\d+ subject\(s\) has an event in its window \(preprocess\.window_hours 1e-09\)"):
        preprocess(cohort.events, cohort.subjects, cohort.labels, splits, params_from_dict(raw).preprocess,
                   tmp_path / "processed")
    assert not (tmp_path / "processed").exists() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Finetune (items 3, 5, 7): one tiny processed fold and pretrain run, shared.


@pytest.fixture(scope="module")
def fold(tmp_path_factory, tiny_raw, cohort) -> dict:
    from seqsetvae.stages.pretrain import pretrain

    raw = copy.deepcopy(tiny_raw)
    raw["pretrain"]["max_epochs"] = 1
    raw["finetune"]["max_epochs"] = 1
    params = params_from_dict(raw)
    root = tmp_path_factory.mktemp("hostile_finetune")
    splits, _ = make_splits(cohort.subjects, cohort.labels, params.split)
    preprocess(cohort.events, cohort.subjects, cohort.labels, splits, params.preprocess, root / "processed")
    pretrain(params, root / "processed", 0, root / "pretrain", root / "pretrain.json", None)
    return {"raw": raw, "root": root, "splits": splits, "ckpt": root / "pretrain" / "best.ckpt"}


def _finetune(fold: dict, out: Path, raw: dict | None = None, data: Path | None = None, **kw):
    from seqsetvae.stages.finetune import finetune

    params = params_from_dict(raw or fold["raw"])
    return finetune(params, data or fold["root"] / "processed", 0, fold["ckpt"], out, out.parent / f"{out.name}.json",
                    None, out.parent / f"{out.name}.parquet", **kw)


# Item 3: `--label-fraction 1e-6` kept 2 stays and budgeted 10^6 passes over them an epoch.


@pytest.mark.parametrize("n_train, kept, passes", [(120, 120, 1), (120, 30, 4), (120, 31, 4), (9600, 96, 100), (9600, 2, 4800)])
def test_finetune_budgets_its_passes_from_the_stays_kept(n_train, kept, passes):
    from seqsetvae.stages.finetune import passes_per_epoch

    assert passes_per_epoch(n_train, kept) == passes


def test_finetune_refuses_a_label_fraction_that_keeps_too_few_stays(tmp_path, fold, caplog):
    from seqsetvae.config import ParamsError

    out = tmp_path / "le"
    with pytest.raises(ParamsError, match=r"^--label-fraction 1e-06 keeps 2 of fold 0's \d+ train stays \(1 positive\); "
                                          r"a label subsample needs at least 20 stays and 3 positives"):
        _finetune(fold, out, label_fraction=1e-6)
    assert not out.exists()  # refused before anything was written


# Item 5: a test split without a positive trained, then failed on a NaN metric, leaving best.ckpt, last.ckpt,
# SHA256SUMS and calibration.json: a folder that looked finished.


def test_finetune_refuses_a_test_split_without_a_positive_before_training(tmp_path, fold, cohort):
    import pyarrow as pa
    import pyarrow.compute as pc

    splits = fold["splits"]
    test_ids = splits.filter(pc.equal(splits.column("split"), "test")).column("subject_id")
    labels = cohort.labels
    in_test = pc.is_in(labels.column("subject_id"), value_set=test_ids)
    labels = labels.set_column(labels.schema.get_field_index("boolean_value"), "boolean_value",
                               pc.and_(labels.column("boolean_value"), pc.invert(in_test)))
    assert pa.compute.sum(pc.and_(labels.column("boolean_value"), in_test).cast(pa.int8())).as_py() in (0, None)
    processed = tmp_path / "processed"
    preprocess(cohort.events, cohort.subjects, labels, splits, params_from_dict(fold["raw"]).preprocess, processed)
    out = tmp_path / "ft"
    with pytest.raises(DataError, match=rf"^{processed / 'fold_0' / 'test'}: fold 0: \d+ stays, 0 positive: AUROC and "
                                        "AUPRC need both classes"):
        _finetune(fold, out, data=processed)
    assert not out.exists()


def test_a_finetune_that_fails_after_training_leaves_no_finished_looking_output(tmp_path, fold, monkeypatch):
    from seqsetvae.stages import finetune as stage
    from seqsetvae.training.resume import INCOMPLETE, resume_store

    def fail(*args, **kwargs):
        raise ValueError("metric is not finite: nan")

    out = tmp_path / "ft"
    with monkeypatch.context() as m:
        m.setattr(stage, "predict", fail)
        with pytest.raises(ValueError, match="metric is not finite"):
            _finetune(fold, out)
    names = sorted(p.name for p in out.iterdir())
    assert "SHA256SUMS" not in names and "calibration.json" not in names, names
    assert INCOMPLETE in names and "metric is not finite" in (out / INCOMPLETE).read_text()
    assert (resume_store(out) / "last.ckpt").is_file()  # the resume state outlives the failure
    # The rerun resumes, finishes and leaves a finished folder: SHA256SUMS, no INCOMPLETE, no store.
    assert _finetune(fold, out) is not None
    names = sorted(p.name for p in out.iterdir())
    assert "SHA256SUMS" in names and INCOMPLETE not in names and not resume_store(out).exists()


# Item 7: finetune with model.d_model 32 in params and a d_model-16 checkpoint built the 16-wide model while
# params and the run fingerprint said 32.


def test_finetune_refuses_params_that_contradict_the_pretrained_architecture(tmp_path, fold):
    from seqsetvae.config import ParamsError

    raw = copy.deepcopy(fold["raw"])
    raw["model"]["d_model"] = 32
    raw["model"]["transformer"]["n_layers"] = 2
    out = tmp_path / "ft"
    with pytest.raises(ParamsError, match=r"does not describe the pretrained model .*best\.ckpt: model\.d_model is 32 in "
                                          r"params but 16 in the checkpoint; model\.transformer\.n_layers is 2 in params "
                                          r"but 1 in the checkpoint"):
        _finetune(fold, out, raw=raw)
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# Item 15: evaluate.n_bootstrap 1 reported AUROC 0.688 with the CI [0.73, 0.73], which excludes it.


def test_n_bootstrap_too_small_for_an_interval_is_refused(params_dict):
    import numpy as np

    from seqsetvae.config import ParamsError
    from seqsetvae.evaluation.metrics import evaluate_binary

    params_dict["evaluate"]["n_bootstrap"] = 1
    with pytest.raises(ParamsError, match=r"evaluate\.n_bootstrap"):
        params_from_dict(params_dict)
    y = np.r_[np.ones(10), np.zeros(30)]
    p = np.clip(y * 0.3 + np.random.default_rng(0).random(40) * 0.7, 0, 1)
    with pytest.raises(ValueError, match=r"1 of 1 bootstrap resample\(s\) hold both classes .* a confidence interval "
                                         r"needs at least 2: raise evaluate\.n_bootstrap"):
        evaluate_binary(y, p, n_bootstrap=1, seed=0)
    m = evaluate_binary(y, p, n_bootstrap=2, seed=0)["auroc"]
    assert m["ci_low"] < m["ci_high"]
