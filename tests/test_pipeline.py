"""Both runners, one pipeline: Snakemake and DVC run the same stages from one params.yaml and agree.

Each test runs the real `snakemake` / `dvc` commands in a fresh copy of the project (tests/pipeline_project.py)
on a tiny synthetic cohort. A test that starts from a finished Snakemake run copies the session's (the
`tiny_run` fixture, tests/conftest.py); the tests whose point is a run of their own (DVC's run of the whole
pipeline, the second run that must give the same bytes) make it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.pipeline_project import Project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import pipeline  # noqa: E402

pytestmark = pytest.mark.slow


def _all_declared_outputs(proj: Project) -> list[Path]:
    return [proj.root / p for s in pipeline.load_stages(proj.root).values() for p in s.all_outputs]


def _output_bytes(proj: Project) -> dict[str, bytes]:
    """Every metrics / plots / JSON report file the pipeline produced, by relative path."""
    files = {}
    for path in _all_declared_outputs(proj):
        if path.relative_to(proj.root).parts[0] == "curves":
            continue  # DVCLive training curves carry wall-clock timestamps by design
        candidates = [path] if path.is_file() else sorted(path.rglob("*.json"))
        for f in candidates:
            if f.suffix in {".json", ".parquet", ".csv", ".tsv"}:
                files[str(f.relative_to(proj.root))] = f.read_bytes()
    return files


def _downstream(stages, roots: set[str]) -> list[str]:
    """`roots` and every stage that depends on them, transitively."""
    edges = pipeline.edges(stages)
    found = set(roots)
    while True:
        more = {b for a, b in edges if a in found} - found
        if not more:
            return sorted(found)
        found |= more


@pytest.fixture(scope="module")
def snakemake_project(tmp_path_factory, tiny_run) -> Project:
    """A whole Snakemake run on the tiny params (a copy of the session's, committed to git)."""
    return tiny_run.copy_to(tmp_path_factory.mktemp("smk") / "proj")


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Project:
    proj = Project.create(tmp_path_factory.mktemp("dvc") / "proj")
    ran = proj.dvc_repro_ran()
    assert ran == sorted(pipeline.load_stages(proj.root)), ran
    return proj


def test_snakemake_run_produces_every_output_and_leaves_dvc_clean(snakemake_project):
    proj = snakemake_project
    missing = [str(p) for p in _all_declared_outputs(proj) if not p.exists()]
    assert not missing, f"declared outputs not produced: {missing}"
    for stage in pipeline.load_stages(proj.root):
        assert (proj.root / "logs" / f"{stage}.log").is_file()
        assert (proj.root / "logs" / f"{stage}.benchmark.tsv").is_file()
    assert (proj.root / "dvc.lock").is_file(), "the Snakemake run did not commit its stages to dvc.lock"
    assert proj.dvc_changed_stages() == []
    assert proj.dvc_repro_ran() == [], "dvc repro re-ran stages after a Snakemake run"


def test_python_bytecode_beside_the_code_leaves_both_runners_nothing_to_do(snakemake_project):
    """Python writes bytecode caches beside every module it imports (unless PYTHONDONTWRITEBYTECODE is set, as
    on CI): a dvc.lock recorded without them must stay clean where they appear, e.g. after the tests ran.
    DVC ignores them (.dvcignore); Snakemake gets a code folder's files, not the folder (pipeline.inputs),
    whose mtime changes when a cache appears in it. Both a `__pycache__/` cache and a legacy `<module>.pyc`
    beside the source (`compileall -b`: always a new entry of the folder, whatever ran before)."""
    import py_compile

    proj = snakemake_project
    code_folders = sorted({d for s in pipeline.load_stages(proj.root).values() for d in s.deps
                           if d.startswith("seqsetvae/") and (proj.root / d).is_dir()})
    assert "seqsetvae/models" in code_folders, code_folders
    written = []
    for folder in code_folders:
        for src in sorted((proj.root / folder).rglob("*.py")):
            written.append(Path(py_compile.compile(str(src), doraise=True)))  # __pycache__/<name>.cpython-*.pyc
            written.append(Path(py_compile.compile(str(src), cfile=str(src.with_suffix(".pyc")), doraise=True)))
    try:
        assert proj.dvc_changed_stages() == []
        assert proj.snakemake_planned_rules() == []
    finally:
        for pyc in written:
            pyc.unlink(missing_ok=True)


def test_a_module_edited_in_place_reruns_its_stages_under_both_runners(snakemake_project):
    """An edit that rewrites a module in place leaves its folder's mtime as it was: Snakemake must still see
    it (pipeline.inputs gives it the folder's files), as DVC does (it hashes the folder)."""
    proj = snakemake_project
    module = proj.root / "seqsetvae" / "models" / "setvae.py"  # a dep of pretrain only as part of its folder
    before, times = module.read_bytes(), module.stat()
    folder_mtime = module.parent.stat().st_mtime_ns
    module.write_bytes(before + b"\n# edited in place\n")
    try:
        assert module.parent.stat().st_mtime_ns == folder_mtime  # what Snakemake saw of a folder input
        assert "pretrain_0" in proj.snakemake_planned_rules()
        assert "pretrain@0" in proj.dvc_changed_stages()
    finally:
        module.write_bytes(before)
        os.utime(module, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert proj.snakemake_planned_rules() == [] and proj.dvc_changed_stages() == []


def test_dvc_repro_then_sync_leaves_snakemake_nothing_to_do(dvc_project, snakemake_project):
    proj = dvc_project
    assert all(p.exists() for p in _all_declared_outputs(proj))
    # Same params, same data: both runners produced the same bytes.
    assert _output_bytes(proj) == _output_bytes(snakemake_project)
    proj.sync_after_dvc()
    assert proj.snakemake_planned_rules() == []
    # The sync recorded Snakemake's metadata (params, code) for DVC's outputs, so Snakemake now notices
    # a later params change itself; without it, outputs it never ran have no params to compare.
    stages = pipeline.load_stages(proj.root)
    proj.set_param("finetune.lr", 0.02)
    expected = _downstream(stages, {s for s in stages if s.startswith(("finetune@", "finetune_ablation@"))})
    assert proj.snakemake_planned_rules() == sorted(pipeline.rule_name(s) for s in expected)


TEST_METRICS = {"auroc", "auprc", "brier", "ece"}


def test_metrics_hold_numbers_only_and_show_fits_a_terminal(snakemake_project):
    """Metrics files hold numbers worth comparing (no names, seeds, flags or counts): the same four keys in
    every test-metrics file, so `dvc metrics show` is one table a terminal wide; the rest is in details/."""
    proj = snakemake_project
    shown = json.loads(proj.dvc("metrics", "show", "--json").stdout)
    files = {path: data["data"] for rev in shown.values() for path, data in rev["data"].items()}
    assert {"metrics/evaluate/fold_0.json", "metrics/baseline/gbm/fold_0.json", "metrics/aggregate/SeqSetVAE.json",
            "metrics/aggregate/SeqSetVAE-minus-gbm.json", "metrics/finetune/fold_0.json",
            "metrics/pretrain/fold_0.json"} <= set(files), sorted(files)

    def leaves(obj, prefix=""):
        for k, v in obj.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]

    for path, data in files.items():
        for key, value in leaves(data):
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (path, key, value)
        if path.startswith(("metrics/evaluate/", "metrics/baseline/", "metrics/aggregate/")):
            assert set(data) == TEST_METRICS, (path, data)
    width = max(len(line) for line in proj.dvc("metrics", "show").stdout.splitlines())
    assert width <= 200, f"dvc metrics show is {width} columns wide"
    # One fold: the details record no spread (null), and the report prints none.
    agg = json.loads((proj.root / "details" / "aggregate.json").read_text())
    assert agg["n_splits"] == 1 and agg["models"]["SeqSetVAE"]["auroc"]["sd"] is None
    assert "+-" not in (proj.root / "reports" / "report.md").read_text()
    assert json.loads((proj.root / "details" / "evaluate" / "fold_0.json").read_text())["model"] == "SeqSetVAE"


def test_dags_are_the_same(snakemake_project):
    proj = snakemake_project
    dot = proj.dvc("dag", "--dot").stdout
    dvc_edges = {(a, b) for a, b in re.findall(r'"?([\w@.-]+)"?\s*->\s*"?([\w@.-]+)"?', dot)}
    smk_dot = proj.snakemake("--forceall", "--rulegraph", "dot").stdout
    labels = dict(re.findall(r"^\s*(\d+)\[label = \"([^\"]+)\"", smk_dot, flags=re.M))
    smk_edges = {
        (labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", smk_dot, flags=re.M)
    }
    smk_edges = {(a, b) for a, b in smk_edges if "all" not in (a, b)}
    stages = pipeline.load_stages(proj.root)
    rule = pipeline.rule_name
    assert {n for n in labels.values() if n != "all"} == {rule(s) for s in stages}
    assert {(rule(a), rule(b)) for a, b in dvc_edges} == smk_edges
    assert smk_edges == {(rule(a), rule(b)) for a, b in pipeline.edges(stages)}


def test_finetune_param_change_reruns_only_finetune_and_what_follows(tmp_path, tiny_run):
    proj = tiny_run.copy_to(tmp_path / "proj")  # a whole Snakemake run, committed ("pipeline run")
    assert proj.git("status", "--porcelain").stdout == ""
    stages = pipeline.load_stages(proj.root)
    proj.set_param("finetune.lr", 0.01)
    expected = _downstream(stages, {s for s in stages if s.startswith("finetune")})
    assert "pretrain@0" not in expected and "evaluate@0" in expected
    # Snakemake plans exactly those stages; DVC sees exactly those as changed.
    assert proj.snakemake_planned_rules() == sorted(pipeline.rule_name(s) for s in expected)
    # `dvc status` names the stages whose own deps changed; `dvc repro` then reruns what follows them.
    assert proj.dvc_changed_stages() == sorted(s for s in stages if s.startswith(("finetune@", "finetune_ablation@")))
    diff = proj.dvc("params", "diff").stdout
    assert "finetune.lr" in diff and "0.01" in diff
    before = (proj.root / "details" / "finetune" / "fold_0.json").read_text()
    assert proj.dvc_repro_ran() == expected
    after = (proj.root / "details" / "finetune" / "fold_0.json").read_text()
    assert before != after, "a 10x learning rate left the finetune results unchanged"
    metrics_diff = proj.dvc("metrics", "diff", "--json").stdout  # lists only the metrics that moved
    changed = {path: set(keys) for path, keys in json.loads(metrics_diff).items()}
    assert changed and not any(path.startswith("metrics/pretrain/") for path in changed), changed
    # Each change is listed once: the test figures are the evaluate stage's (and the headline means'),
    # the finetune metrics hold only what the head was chosen on.
    assert all(keys <= {"val.auroc", "val.auprc"} for path, keys in changed.items() if "/finetune/" in path)
    # and the Snakemake side agrees once synced
    proj.sync_after_dvc()
    assert proj.snakemake_planned_rules() == []


def test_same_params_twice_give_identical_bytes(dvc_project, snakemake_project):
    """Two runs of the same params, each in a fresh project of its own, give the same bytes. The two runs are
    the session's (Snakemake) and this module's DVC run (`dvc_project`, made from a fresh copy, not from the
    session's). A second Snakemake run of its own adds nothing to this comparison (a stage that gave other
    bytes on another run would fail it just the same) and costs a whole tiny run (docs/testing.md).
    test_dvc_repro_then_sync makes the same comparison as part of its point: both runners agree."""
    assert dvc_project.root != snakemake_project.root
    produced = _output_bytes(dvc_project)
    assert produced and produced == _output_bytes(snakemake_project)


@pytest.mark.parametrize(
    "dotted,value,named",
    [("preprocess.clipp", 3.0, "preprocess.clipp"), ("loader.batch_size", "big", "loader.batch_size")],
)
def test_invalid_params_stop_both_runners_naming_the_key(tmp_path, dotted, value, named):
    proj = Project.create(tmp_path / "proj")
    proj.set_param(dotted, value)
    smk = proj.snakemake(check=False)
    assert smk.returncode != 0
    assert named in smk.stdout + smk.stderr
    dvc = proj.dvc("repro", check=False)
    assert dvc.returncode != 0
    assert named in dvc.stdout + dvc.stderr
    produced = [str(p) for p in _all_declared_outputs(proj) if p.exists()]
    assert not produced, f"a stage produced output despite invalid params: {produced}"


def test_snakemake_report_holds_results_figures_and_metrics(snakemake_project):
    """`snakemake --report` after a run: the results (reports/report.md), every figure the report stage
    drew and every metrics JSON, in their categories; not only the rule graph."""
    import zipfile

    proj = snakemake_project
    proj.snakemake("--report", "report.zip")
    with zipfile.ZipFile(proj.root / "report.zip") as z:
        names = z.namelist()
        html = z.read("report/report.html").decode("utf-8")
        md = [n for n in names if n.endswith("/report.md")]
        assert len(md) == 1 and z.read(md[0]) == (proj.root / "reports" / "report.md").read_bytes()
    figures = sorted(p.name for p in (proj.root / "reports" / "figures").glob("*.png"))
    assert figures and sorted(Path(n).name for n in names if n.endswith(".png")) == figures
    metrics = [proj.root / p for s in pipeline.load_stages(proj.root).values() for p in s.metrics]
    expected = [f.name for p in metrics for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    expected.append("aggregate.json")  # details/aggregate.json: the sd and per-split values behind the headline
    expected.append("label_efficiency.json")  # details/label_efficiency.json: written (empty) with it off
    assert "SeqSetVAE-minus-gbm.json" in expected
    assert sorted(Path(n).name for n in names if n.endswith(".json")) == sorted(expected)
    for category in ("1. Results", "2. Figures", "3. Metrics"):
        assert category in html
    assert "metrics/evaluate/fold_0.json" in html
