"""Snakemake catches up with DVC by itself: after `dvc pull` in a fresh clone, `dvc checkout` or
`dvc exp apply`, a stage DVC reports up to date is not rerun by Snakemake, with no manual sync step
(the Snakefile's catch-up, workflow/pipeline.py: catch_up_with_dvc)."""

from __future__ import annotations

import pytest

from tests.pipeline_project import Project
from tests.test_dvc_remote import clone

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_run) -> Project:
    """Clone A: a Snakemake run (a copy of the session's), committed to git and pushed to the shared DVC
    remote."""
    a = tiny_run.copy_to(tmp_path_factory.mktemp("sync") / "a")
    a.run("python", "workflow/scripts/setup_remote.py")
    assert a.git("status", "--porcelain").stdout == ""  # the run is committed; the remote's config is not
    a.dvc("push")
    return a


def _assert_in_step(proj: Project) -> None:
    assert proj.dvc_changed_stages() == []
    assert proj.snakemake_planned_rules() == [], "Snakemake plans stages DVC reports up to date"
    out = proj.snakemake()  # a real run: nothing to do, nothing rerun
    assert "Nothing to be done" in out.stdout + out.stderr
    assert proj.dvc_changed_stages() == [], "Snakemake's catch-up changed what DVC sees"


def test_fresh_clone_after_dvc_pull(pushed, tmp_path):
    b = clone(pushed, tmp_path / "b")
    b.dvc("pull")
    _assert_in_step(b)
    # The catch-up recorded Snakemake's metadata (params, code), so a later params change is noticed.
    b.set_param("finetune.lr", 0.02)
    planned = b.snakemake_planned_rules()
    assert "pretrain_0" not in planned and "finetune_0" in planned and "evaluate_0" in planned, planned


def test_after_dvc_exp_run_checkout_and_exp_apply(pushed, tmp_path):
    b = clone(pushed, tmp_path / "b")
    b.dvc("pull")
    b.dvc("exp", "run", "-n", "lr02", "-S", "finetune.lr=0.02")  # like dvc repro: reruns finetune and after
    # The finetune details (val and test figures, calibration): what any change of the head moves.
    exp_metrics = (b.root / "details" / "finetune" / "fold_0.json").read_bytes()
    _assert_in_step(b)
    b.git("checkout", "HEAD", "--", ".")  # back to the committed run ...
    b.dvc("checkout")                      # ... and its outputs
    assert (b.root / "details" / "finetune" / "fold_0.json").read_bytes() != exp_metrics
    _assert_in_step(b)
    b.dvc("exp", "apply", "lr02")
    assert (b.root / "details" / "finetune" / "fold_0.json").read_bytes() == exp_metrics
    assert b.params()["finetune"]["lr"] == 0.02
    _assert_in_step(b)


def test_after_dvc_repro_where_snakemake_ran_before(pushed):
    """In the clone Snakemake ran in (its logs and benchmark files exist): a `dvc repro -f` of a stage,
    then Snakemake plans nothing and commits nothing (the catch-up's --touch runs no stage)."""
    lock = (pushed.root / "dvc.lock").read_bytes()
    pushed.dvc("repro", "-f", "-s", "evaluate@0")
    _assert_in_step(pushed)
    assert (pushed.root / "dvc.lock").read_bytes() == lock
