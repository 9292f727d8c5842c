"""Several tasks from one pretraining (issue 29 D): label rules, packing with the main task's statistics, the
finetune's refusal of other statistics, the per-task aggregate and report, and the stages under both runners."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from seqsetvae.config import ParamsError, TaskDefinition, params_from_dict
from seqsetvae.data.canonical import ADMISSION_EPOCH, SAMPLES_SCHEMA
from seqsetvae.data.tasks import split_counts, task_samples
from seqsetvae.errors import DataError

ADM = np.datetime64(ADMISSION_EPOCH, "us")
H = np.timedelta64(1, "h")

MORTALITY_24H = TaskDefinition(label="in_hospital_death", prediction_hours=24.0, length_of_stay_days=None,
                               in_unit_at_prediction=False)
LOS_3D = TaskDefinition(label="length_of_stay_over", prediction_hours=24.0, length_of_stay_days=3.0,
                        in_unit_at_prediction=True)


def _cohort(died: list[bool]) -> tuple[pa.Table, pa.Table]:
    """(subjects, main labels) as PhysioNet 2012 ingest writes them: one stay each, predicted at 48 h."""
    n = len(died)
    ids = np.arange(1, n + 1, dtype=np.int64) * 10
    adm = np.full(n, ADM)
    subjects = pa.table({"subject_id": ids, "admission_time": pa.array(adm, pa.timestamp("us")),
                         "group": ["set-a"] * n})
    labels = pa.Table.from_arrays([pa.array(ids), pa.array(adm + 48 * H, pa.timestamp("us")), pa.array(died),
                                   pa.array(adm, pa.timestamp("us"))], schema=SAMPLES_SCHEMA)
    return subjects, labels


def _outcomes(ids, los, surv, died) -> pa.Table:
    return pa.table({"subject_id": pa.array(ids, pa.int64()), "length_of_stay_days": pa.array(los, pa.int64()),
                     "survival_days": pa.array(surv, pa.int64()), "in_hospital_death": pa.array(died)})


# Hand-made Outcomes rows: (Length_of_stay, Survival, In-hospital_death) -> what los_3d makes of the stay.
ROWS = [
    (5, -1, False, "kept", True),   # 5 days > 3: positive
    (3, -1, False, "kept", False),  # 3 days is not > 3
    (2, 2, True, "kept", False),    # died on day 2: still there at 24 h
    (-1, -1, False, "length_of_stay_unknown", None),
    (1, -1, False, "left_unit_by_prediction_time", None),  # 1 day: gone by 24 h, or cannot tell
    (4, 1, True, "died_by_prediction_time", None),
    (4, 0, True, "died_by_prediction_time", None),
    (-1, 0, True, "length_of_stay_unknown", None),  # the first reason that applies
    (6, -23, False, "survival_invalid", None),
    (10, 30, False, "kept", True),  # died after discharge (out of hospital): a death time, beyond 24 h
]


def test_los_3d_labels_and_exclusions_from_outcomes_rows():
    subjects, labels = _cohort([r[2] for r in ROWS])
    ids = subjects.column("subject_id").to_numpy()
    out = _outcomes(ids, [r[0] for r in ROWS], [r[1] for r in ROWS], [r[2] for r in ROWS])
    table, report = task_samples("los_3d", LOS_3D, subjects, labels, out)
    kept = [i for i, r in enumerate(ROWS) if r[3] == "kept"]
    assert table.schema == SAMPLES_SCHEMA
    assert table.column("subject_id").to_pylist() == ids[kept].tolist()
    assert table.column("boolean_value").to_pylist() == [ROWS[i][4] for i in kept]
    pred = table.column("prediction_time").cast(pa.int64()).to_numpy()
    start = table.column("window_start").cast(pa.int64()).to_numpy()
    assert (pred - start == 24 * 3_600_000_000).all()
    assert report["stays"] == len(ROWS) and report["samples"] == len(kept) and report["positives"] == 2
    expected = {r: sum(row[3] == r for row in ROWS) for r in
                ("length_of_stay_unknown", "left_unit_by_prediction_time", "died_by_prediction_time", "survival_invalid")}
    assert report["excluded_by_reason"] == expected
    assert report["excluded"] == len(ROWS) - len(kept) == sum(expected.values())
    assert report["excluded_examples"]["died_by_prediction_time"] == ids[[5, 6]].tolist()


def test_length_of_stay_rule_without_the_in_unit_filter_still_needs_a_length():
    subjects, labels = _cohort([False, False, True])
    ids = subjects.column("subject_id").to_numpy()
    d = TaskDefinition(label="length_of_stay_over", prediction_hours=24.0, length_of_stay_days=3.0,
                       in_unit_at_prediction=False)
    table, report = task_samples("los", d, subjects, labels, _outcomes(ids, [1, -1, 7], [-1, -1, 0], [False, False, True]))
    assert table.column("subject_id").to_pylist() == [ids[0], ids[2]]  # day 1 and a death at day 0 kept
    assert table.column("boolean_value").to_pylist() == [False, True]
    assert report["excluded_by_reason"]["length_of_stay_unknown"] == 1 and report["excluded"] == 1


def test_mortality_24h_keeps_every_stay_and_the_main_label():
    died = [True, False, False, True]
    subjects, labels = _cohort(died)
    table, report = task_samples("mortality_24h", MORTALITY_24H, subjects, labels, None)
    assert table.column("boolean_value").to_pylist() == died
    assert table.column("subject_id").to_pylist() == labels.column("subject_id").to_pylist()
    pred = table.column("prediction_time").cast(pa.int64()).to_numpy()
    assert (pred == (np.full(4, ADM) + 24 * H).astype(np.int64)).all()
    assert report["excluded"] == 0 and report["positives"] == 2


def test_a_rule_that_needs_outcomes_refuses_a_source_without_them():
    subjects, labels = _cohort([True, False])
    with pytest.raises(DataError, match="needs length of stay and death times"):
        task_samples("los_3d", LOS_3D, subjects, labels, None)
    with pytest.raises(DataError, match="has no Outcomes row"):
        task_samples("los_3d", LOS_3D, subjects, labels, _outcomes([10], [4], [-1], [True]))


def test_split_counts_per_fold_and_split():
    subjects, labels = _cohort([True, False, False, True])
    splits = pa.table({"subject_id": pa.array([10, 20, 30, 40], pa.int64()), "fold": pa.array([0, 0, 0, 0], pa.int64()),
                       "split": ["train", "train", "val", "test"]})
    c = split_counts(labels.slice(0, 3), splits)  # subject 40 is not a sample of this task
    assert c["0"]["train"] == {"samples": 2, "positives": 1, "positive_rate": 0.5}
    assert c["0"]["val"]["samples"] == 1 and c["0"]["test"] == {"samples": 0, "positives": 0, "positive_rate": None}
    assert c["0"]["not_assigned"] == 0


def test_read_outcome_times_reads_every_column_and_names_bad_lines(tmp_path):
    from seqsetvae.data.physionet2012 import read_outcome_times

    (tmp_path / "Outcomes-a.txt").write_text(
        "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n20,6,1,5,-1,0\n10,16,8,2,1,1\n")
    t = read_outcome_times(tmp_path, ["a"])
    assert t.to_pydict() == {"subject_id": [10, 20], "length_of_stay_days": [2, 5], "survival_days": [1, -1],
                             "in_hospital_death": [True, False]}
    (tmp_path / "Outcomes-a.txt").write_text(
        "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n20,6,1,5.5,-1,0\n")
    with pytest.raises(DataError, match=r"Outcomes-a\.txt:2: Length_of_stay must be a whole number"):
        read_outcome_times(tmp_path, ["a"])


# --------------------------------------------------------------------------------------------------
# Params


def test_default_runs_no_extra_task(params_dict):
    p = params_from_dict(params_dict)
    assert p.tasks.run == [] and p.tasks.main == "mortality_48h"
    assert set(p.tasks.definitions) >= {"mortality_24h", "los_3d"}


@pytest.mark.parametrize("change, match", [
    ({"run": ["nope"]}, r"'tasks\.run': \['nope'\] not defined"),
    ({"run": ["mortality_48h"], "definitions": {"mortality_48h": {
        "label": "in_hospital_death", "prediction_hours": 48.0, "length_of_stay_days": None,
        "in_unit_at_prediction": False}}}, r"'tasks\.run': 'mortality_48h' is 'tasks\.main'"),
    ({"run": ["los_3d"]}, r"'tasks\.run': task 'los_3d' needs length of stay and death times.*'synthetic'"),
    ({"run": ["mortality_24h"], "definitions": {"mortality_24h": {"length_of_stay_days": 2.0}}},
     r"'tasks\.definitions\.mortality_24h\.length_of_stay_days'"),
])
def test_bad_task_params_name_the_key(params_dict, change, match):
    from seqsetvae.config import deep_merge

    params_dict["tasks"] = deep_merge(params_dict["tasks"], change)
    with pytest.raises(ParamsError, match=match):
        params_from_dict(params_dict)


# --------------------------------------------------------------------------------------------------
# Packing a task with the main task's statistics, and the finetune's check


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def packed(tmp_path_factory, base_params_dict):
    """A random cohort preprocessed for the main task (48 h), and for mortality_24h three ways: with the main
    task's statistics, refit on its own windows, and the main task again with its own statistics."""
    import copy
    import dataclasses

    from seqsetvae.data.fixed_stats import FixedStats
    from seqsetvae.data.preprocess import preprocess
    from tests.test_preprocess import random_cohort, split_table

    tmp = tmp_path_factory.mktemp("packed")
    events, subjects, labels = random_cohort(60, seed=3, n_codes=7)
    ids = subjects.column("subject_id").to_pylist()
    splits = split_table({s: "train" if s <= 40 else "val" if s <= 50 else "test" for s in ids})
    params = params_from_dict(copy.deepcopy(base_params_dict)).preprocess
    task_params = dataclasses.replace(params, max_outside_window_share=1.0)  # as the stage runs a task
    task, _ = task_samples("mortality_24h", MORTALITY_24H, subjects, labels, None)
    out = {name: tmp / name for name in ("main", "main_fixed", "task_fixed", "task_refit")}
    preprocess(events, subjects, labels, splits, params, out["main"])
    from seqsetvae.data.preprocess import preprocess_shards

    preprocess_shards([lambda columns=None: events], subjects, labels, splits, params, out["main_fixed"],
                      fixed_stats=FixedStats(out["main"]))
    preprocess_shards([lambda columns=None: events], subjects, task, splits, task_params, out["task_fixed"],
                      fixed_stats=FixedStats(out["main"]))
    preprocess(events, subjects, task, splits, task_params, out["task_refit"])
    return out, params


def test_the_main_task_packed_with_its_own_statistics_is_unchanged(packed):
    """Loading the statistics instead of fitting them gives the same bytes: the JSON round trip is exact."""
    out, _ = packed
    main, fixed = _files(out["main"] / "fold_0"), _files(out["main_fixed"] / "fold_0")
    assert main == fixed
    report = json.loads((out["main_fixed"] / "preprocess_report.json").read_text())
    assert report["statistics_from"] == str(out["main"])


def test_a_task_is_packed_with_the_main_tasks_vocabulary_and_statistics(packed):
    from seqsetvae.data.packed import PackedSplit

    out, _ = packed
    for name in ("vocab.json", "norm_stats.json"):
        assert (out["task_fixed"] / "fold_0" / name).read_bytes() == (out["main"] / "fold_0" / name).read_bytes()
    # Refit on the task's own (24 h) windows, the statistics differ: what the main task's copy prevents.
    assert (out["task_refit"] / "fold_0" / "norm_stats.json").read_bytes() != \
        (out["main"] / "fold_0" / "norm_stats.json").read_bytes()
    # Each 24 h sample is its stay's first 24 h of the 48 h sample, token for token and value for value.
    checked = 0
    for split in ("train", "val", "test"):
        a = PackedSplit.load(out["main"] / "fold_0" / split, mmap=False)
        b = PackedSplit.load(out["task_fixed"] / "fold_0" / split, mmap=False)
        pos = {int(s): i for i, s in enumerate(a.subject_ids)}
        for j, sid in enumerate(b.subject_ids.tolist()):
            i = pos[sid]
            sa = slice(int(a.patient_offsets[i]), int(a.patient_offsets[i + 1]))
            sb = slice(int(b.patient_offsets[j]), int(b.patient_offsets[j + 1]))
            n = sb.stop - sb.start
            assert n >= 1 and np.all(b.set_times[sb] <= 24.0)
            np.testing.assert_array_equal(b.set_times[sb], a.set_times[sa][:n])
            ea = slice(int(a.set_offsets[sa.start]), int(a.set_offsets[sa.start + n]))
            eb = slice(int(b.set_offsets[sb.start]), int(b.set_offsets[sb.stop]))
            np.testing.assert_array_equal(b.codes[eb], a.codes[ea])
            np.testing.assert_array_equal(b.values[eb], a.values[ea])
            checked += 1
    assert checked > 40


def test_the_finetune_check_refuses_a_task_packed_with_other_statistics(packed):
    from seqsetvae.data.fixed_stats import check_same_statistics

    out, _ = packed
    check_same_statistics(out["task_fixed"] / "fold_0", out["main"] / "fold_0")  # the same: accepted
    with pytest.raises(DataError, match=r"task_refit/fold_0/vocab\.json.*differs from .*main/fold_0/vocab\.json"
                                        r".*--stats"):
        check_same_statistics(out["task_refit"] / "fold_0", out["main"] / "fold_0")


def test_the_finetune_stage_stops_before_training_on_other_statistics(packed, tmp_path, base_params_dict):
    """The stage runs the check first: --backbone-data names the folder the backbone was pretrained on."""
    import copy

    from seqsetvae.stages.finetune import finetune

    out, _ = packed
    params = params_from_dict(copy.deepcopy(base_params_dict))
    with pytest.raises(DataError, match=r"task_refit/fold_0/vocab\.json.*differs from"):
        finetune(params, out["task_refit"], 0, tmp_path / "no_such_backbone.ckpt", tmp_path / "ft",
                 tmp_path / "m.json", None, tmp_path / "p.parquet", backbone_data=out["main"])
    assert not (tmp_path / "ft").exists() and not (tmp_path / "m.json").exists()


def test_fixed_statistics_made_with_other_preprocess_params_are_refused(packed):
    import dataclasses

    from seqsetvae.data.fixed_stats import FixedStats

    out, params = packed
    with pytest.raises(DataError, match=r"norm_stats\.json.*preprocess\.clip is 5\.0 in params"):
        FixedStats(out["main"]).check([0], dataclasses.replace(params, clip=5.0))
    with pytest.raises(DataError, match=r"fold_1/vocab\.json: missing"):
        FixedStats(out["main"]).check([0, 1], params)


# --------------------------------------------------------------------------------------------------
# Aggregate and report: one table per task


def _metrics(auroc: float) -> dict[str, float]:
    return {"auroc": auroc, "auprc": auroc - 0.3, "brier": 0.1, "ece": 0.02}


def test_aggregate_and_report_show_one_table_per_task(tmp_path, params_dict):
    import argparse

    from seqsetvae.io import write_json
    from seqsetvae.report.render import ReportInputs, markdown
    from seqsetvae.report.summary import headline_files, summarise, collect, summarise_tasks, task_folder

    ev, bl = tmp_path / "metrics" / "evaluate", tmp_path / "metrics" / "baseline"
    base = {"SeqSetVAE": 0.80, "logreg": 0.78, "gbm": 0.79, "no_backbone": 0.77}
    shift = {None: 0.0, "mortality_24h": -0.05, "los_3d": -0.10}
    for task, d in shift.items():
        e, b = (ev, bl) if task is None else (task_folder(ev, task), task_folder(bl, task))
        for k in (0, 1):
            write_json(e / f"fold_{k}.json", _metrics(base["SeqSetVAE"] + d + 0.01 * k))
            write_json(e / "ablation" / "no_backbone" / f"fold_{k}.json", _metrics(base["no_backbone"] + d))
            for m in ("logreg", "gbm"):
                write_json(b / m / f"fold_{k}.json", _metrics(base[m] + d))
    summary = summarise(collect(ev, bl, [0, 1], ["no_backbone"]))
    tasks = summarise_tasks(ev, bl, [0, 1], ["no_backbone"], ["mortality_24h", "los_3d"])
    assert tasks["los_3d"]["models"]["SeqSetVAE"]["auroc"]["per_split"] == [0.70, 0.71]
    assert tasks["mortality_24h"]["paired"]["SeqSetVAE - gbm"]["auroc"]["per_split"] == pytest.approx([0.01, 0.02])
    # Without tasks the headline files are the main task's only; with them, <task>.<model>.json beside.
    plain = headline_files(summary)
    with_tasks = headline_files({**summary, "tasks": tasks, "main_task": "mortality_48h"})
    assert set(with_tasks) - set(plain) == {f"{t}.{n}" for t in tasks for n in plain}
    assert with_tasks["los_3d.SeqSetVAE.json"]["auroc"] == pytest.approx(0.705)
    # The report: the main tables as before, then one section and table per task.
    inp = ReportInputs(summary={**summary, "tasks": tasks, "main_task": "mortality_48h"}, plots_dir=tmp_path,
                       baseline_predictions=tmp_path, curves_dir=tmp_path, variants=["no_backbone"],
                       calibration_bins=10, dpi=50,
                       task_settings={"los_3d": {"label": "length_of_stay_over", "prediction_hours": 24.0}})
    text = markdown(inp, {}, "figures")
    assert text.count("| **SeqSetVAE** |") == 3
    sections = text.split("### ")
    los = next(s for s in sections if s.startswith("los_3d"))
    assert "| **SeqSetVAE** | 0.705 +- 0.007 |" in los and "label length_of_stay_over, prediction_hours 24.0" in los
    assert "| SeqSetVAE - gbm | AUROC | +0.015 +- 0.007 | 2 / 2 |" in los
    assert "mortality_48h" in text
    plain_text = markdown(ReportInputs(summary=summary, plots_dir=tmp_path, baseline_predictions=tmp_path,
                                       curves_dir=tmp_path, variants=["no_backbone"], calibration_bins=10, dpi=50),
                          {}, "figures")
    assert "Other tasks" not in plain_text and plain_text.count("| **SeqSetVAE** |") == 1
    # The stage: a task missing its metrics is named.
    from seqsetvae.stages import aggregate

    params_dict["split"]["folds"] = [0, 1]
    params_dict["tasks"]["run"] = ["mortality_24h", "nope"]
    params_dict["tasks"]["definitions"]["nope"] = params_dict["tasks"]["definitions"]["mortality_24h"]
    args = argparse.Namespace(evaluate=ev, baseline=bl, out=tmp_path / "agg", details=tmp_path / "agg.json",
                              label_efficiency=tmp_path / "le.json", label_efficiency_plot=tmp_path / "le.csv")
    with pytest.raises(DataError, match=r"tasks/nope/fold_0\.json: missing"):
        aggregate.run(params_from_dict(params_dict), args)
    params_dict["tasks"]["run"] = ["mortality_24h"]
    aggregate.run(params_from_dict(params_dict), args)
    details = json.loads((tmp_path / "agg.json").read_text())
    assert details["main_task"] == "mortality_48h" and list(details["tasks"]) == ["mortality_24h"]
    assert (tmp_path / "agg" / "mortality_24h.SeqSetVAE-minus-gbm.json").is_file()


# --------------------------------------------------------------------------------------------------
# The stages under both runners: one pretrain per fold, a finetune per task


TWO_TASKS = {"tasks": {"run": ["mortality_24h", "mortality_12h"], "definitions": {"mortality_12h": {
    "label": "in_hospital_death", "prediction_hours": 12.0, "length_of_stay_days": None,
    "in_unit_at_prediction": False}}}}


def _pipeline():
    import sys

    from seqsetvae.config import PROJECT_ROOT

    sys.path.insert(0, str(PROJECT_ROOT / "workflow"))
    import pipeline

    return pipeline


def test_task_stages_follow_params_and_share_one_pretrain(tmp_path):
    from seqsetvae.report.summary import baseline_file, fold_file, task_folder
    from tests.pipeline_project import Project

    pipeline = _pipeline()
    proj = Project.create(tmp_path / "proj", TWO_TASKS)
    stages = pipeline.load_stages(proj.root)
    tasks = ("mortality_24h", "mortality_12h")
    assert sorted(s for s in stages if "task" in s) == sorted(
        [f"{kind}@{t}" for kind in ("task_labels", "preprocess_task") for t in tasks]
        + [f"{kind}@{t}-0" for kind in ("finetune_task", "evaluate_task", "baseline_task") for t in tasks]
        + [f"{kind}@{t}-no_backbone-0" for kind in ("finetune_task_ablation", "evaluate_task_ablation") for t in tasks])
    assert [s for s in stages if s.startswith("pretrain")] == ["pretrain@0"]
    edges = pipeline.edges(stages)
    for t in tasks:
        ft = stages[f"finetune_task@{t}-0"]
        assert "--pretrained models/pretrain/fold_0 " in ft.cmd and "--backbone-data data/processed " in ft.cmd
        assert ("pretrain@0", f"finetune_task@{t}-0") in edges
        assert ("pretrain@0", f"finetune_task_ablation@{t}-no_backbone-0") in edges
        assert ("preprocess", f"preprocess_task@{t}") in edges  # packed with the main task's statistics
        assert (f"task_labels@{t}", f"baseline_task@{t}-0") in edges
        assert (f"evaluate_task@{t}-0", "aggregate") in edges and (f"baseline_task@{t}-0", "aggregate") in edges
        # The paths the stages write are the paths the aggregate reads.
        assert str(fold_file(task_folder(Path("metrics/evaluate"), t), 0)) in stages[f"evaluate_task@{t}-0"].metrics
        assert str(fold_file(task_folder(Path("metrics/evaluate"), t), 0, "no_backbone")) in \
            stages[f"evaluate_task_ablation@{t}-no_backbone-0"].metrics
        assert str(baseline_file(task_folder(Path("metrics/baseline"), t), "gbm", 0)) in \
            stages[f"baseline_task@{t}-0"].metrics
    # Snakemake plans the same jobs from the same dvc.yaml: one pretrain, a finetune per task.
    planned = proj.snakemake_planned_rules()
    assert {pipeline.rule_name(s) for s in stages} == set(planned)
    assert sum(r.startswith("pretrain") for r in planned) == 1
    off = pipeline.load_stages(Project.create(tmp_path / "off").root)
    assert not any("task" in s for s in off), "the default pipeline runs the main task alone"


@pytest.mark.slow
def test_two_tasks_end_to_end_from_one_pretrain(tmp_path, tiny_run):
    """The session's tiny run plus two extra tasks: DVC plans only the tasks' stages and the summary stages
    (pretraining is kept), Snakemake runs them, and both runners then agree that all is up to date."""
    from seqsetvae.config import deep_merge

    pipeline = _pipeline()
    proj = tiny_run.copy_to(tmp_path / "proj")
    proj.write_params(deep_merge(proj.params(), deep_merge(TWO_TASKS, {"evaluate": {"n_bootstrap": 20}})))
    stages = pipeline.load_stages(proj.root)
    new = {s for s in stages if "task" in s}
    changed = set(proj.dvc_changed_stages())
    assert not any(s.startswith(("pretrain", "preprocess@", "finetune@")) for s in changed), changed
    assert new <= changed and changed - new <= {"aggregate", "report", "evaluate@0", "evaluate_ablation@no_backbone-0",
                                                 "baseline@0"}
    ran = proj.snakemake()
    assert "pretrain" not in " ".join(re.findall(r"rule (\w+):", ran.stdout + ran.stderr))
    assert proj.dvc_changed_stages() == [] and proj.snakemake_planned_rules() == []
    root = proj.root
    main = json.loads((root / "details" / "finetune" / "fold_0.json").read_text())
    for t, hours in (("mortality_24h", 24.0), ("mortality_12h", 12.0)):
        labels = json.loads((root / "details" / "tasks" / t / "labels.json").read_text())
        assert labels["excluded"] == 0 and labels["definition"]["prediction_hours"] == hours
        pre = json.loads((root / "data" / "tasks" / t / "processed" / "preprocess_report.json").read_text())
        assert pre["statistics_from"] == "data/processed"
        for name in ("vocab.json", "norm_stats.json"):
            assert (root / "data" / "tasks" / t / "processed" / "fold_0" / name).read_bytes() == \
                (root / "data" / "processed" / "fold_0" / name).read_bytes()
        ft = json.loads((root / "details" / "finetune" / "tasks" / t / "fold_0.json").read_text())
        assert ft["variant"]["backbone"] == "pretrained" and ft["test"]["n"] > 0
        assert ft["variant"]["train_stays"] <= main["variant"]["train_stays"]
        nb = json.loads((root / "details" / "finetune" / "tasks" / t / "ablation" / "no_backbone" / "fold_0.json")
                        .read_text())
        assert nb["variant"]["backbone"] == "none"
    agg = json.loads((root / "details" / "aggregate.json").read_text())
    assert agg["main_task"] == "mortality_48h" and sorted(agg["tasks"]) == ["mortality_12h", "mortality_24h"]
    for t in agg["tasks"]:
        assert set(agg["tasks"][t]["models"]) == set(agg["models"])
        got = json.loads((root / "metrics" / "evaluate" / "tasks" / t / "fold_0.json").read_text())
        assert agg["tasks"][t]["models"]["SeqSetVAE"]["auroc"]["per_split"] == [got["auroc"]]
    report = (root / "reports" / "report.md").read_text()
    assert "### mortality_24h" in report and "### mortality_12h" in report
    assert report.count("| **SeqSetVAE** |") == 3
