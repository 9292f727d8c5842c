"""Snakemake profiles: they parse, use only options Snakemake knows, and the SLURM one plans the pipeline.

No SLURM cluster is available to the tests: the SLURM profile is checked with a dry run (`-n`), which plans
every job with its resources but submits nothing. Fake SLURM commands on PATH prove that nothing is called.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from seqsetvae.config import PROJECT_ROOT
from tests.pipeline_project import Project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import pipeline  # noqa: E402

PROFILES = PROJECT_ROOT / "workflow" / "profiles"
SLURM = PROFILES / "slurm" / "config.yaml"
DEFAULT_FOLDS = range(5)  # the fold ids the SLURM profile gives GPU resources to
TRAINING_STAGES = ("pretrain", "finetune", "finetune_ablation_end_to_end")  # the ones that train a backbone
# Resources the SLURM executor plugin turns into sbatch options (its docs: "Standard resources").
SLURM_RESOURCES = {"slurm_account", "slurm_partition", "runtime", "mem_mb", "mem_mb_per_cpu", "cpus_per_task",
                   "cpus_per_gpu", "gpu", "gpu_model", "gres", "constraint", "nodes", "tasks", "slurm_extra"}


def _options() -> set[str]:
    from snakemake.cli import get_argument_parser

    return set(get_argument_parser()._option_string_actions)


@pytest.mark.parametrize("profile", sorted(p.parent.name for p in PROFILES.glob("*/config.yaml")))
def test_profile_keys_are_snakemake_options(profile):
    config = yaml.safe_load((PROFILES / profile / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(config, dict) and config
    unknown = sorted(k for k in config if f"--{k}" not in _options())
    assert not unknown, f"profile {profile}: not snakemake options: {unknown}"


def test_slurm_profile_gives_every_training_rule_a_gpu_and_leaves_the_account_to_the_user():
    config = yaml.safe_load(SLURM.read_text(encoding="utf-8"))
    assert config["executor"] == "slurm"
    defaults, per_rule = config["default-resources"], config["set-resources"]
    assert set(defaults) <= SLURM_RESOURCES
    assert defaults["slurm_account"] == "YOUR_ACCOUNT" and defaults["slurm_partition"].startswith("YOUR_")
    # Rule names are the DVC stage names with "@" replaced by "_" (see the Snakefile).
    expected = {f"{stage}_{k}" for stage in TRAINING_STAGES for k in DEFAULT_FOLDS}
    assert set(per_rule) == expected
    for rule, res in per_rule.items():
        assert set(res) <= SLURM_RESOURCES, rule
        assert res["gpu"] >= 1 and res["slurm_partition"] == "YOUR_GPU_PARTITION" and res["runtime"] > 0, rule


@pytest.fixture
def fake_slurm(tmp_path) -> tuple[Path, Path]:
    """A bin folder with SLURM commands that record their call and fail (no cluster); and the record file."""
    bin_dir, record = tmp_path / "fake-slurm-bin", tmp_path / "slurm-calls.txt"
    bin_dir.mkdir()
    for cmd in ("sbatch", "squeue", "sacct", "sinfo", "scancel", "scontrol", "srun", "sacctmgr"):
        script = bin_dir / cmd
        script.write_text(f'#!/bin/sh\necho "{cmd} $*" >> "{record}"\nexit 1\n', encoding="utf-8")
        script.chmod(0o755)
    return bin_dir, record


def test_slurm_dry_run_plans_every_stage_without_calling_slurm(tmp_path, fake_slurm):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="requirements.txt pins the SLURM plugin")
    proj = Project.create(tmp_path / "proj", overrides={"split": {"folds": [0, 1]}, "data": {"shards": [0, 1, 2]},
                                                         "ablation": {"run": ["no_backbone", "end_to_end"]}})
    bin_dir, record = fake_slurm
    proj.env["PATH"] = f"{bin_dir}{os.pathsep}{proj.env['PATH']}"
    out = proj.run("snakemake", "--profile", "workflow/profiles/slurm", "-n", timeout=300).stdout

    stages = proj.dvc("stage", "list", "--name-only").stdout.split()  # as DVC resolves them: pretrain@1, ...
    assert "pretrain@1" in stages and "finetune@1" in stages
    # Every job of the pipeline, one per stage, is planned; "all" on top.
    jobs = dict(re.findall(r"^rule (\S+):\n((?:    .*\n)+)", out, flags=re.MULTILINE))
    assert set(jobs) == {pipeline.rule_name(name) for name in stages} | {"all"}
    assert "finetune_ablation_end_to_end_1" in jobs and "finetune_ablation_no_backbone_1" in jobs
    for rule, body in jobs.items():
        resources = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"resources: (.*)", body).group(1)))
        assert resources["slurm_account"] == "YOUR_ACCOUNT", rule
        # the rules that train a backbone (pretrain_<k>, finetune_<k>, the end_to_end variant's); the frozen
        # variants' heads (finetune_ablation_no_backbone_<k>, ...) run on the CPU partition
        gpu = re.fullmatch(rf"({'|'.join(TRAINING_STAGES)})_\d+", rule) is not None
        assert resources.get("gpu") == ("1" if gpu else None), rule
        assert resources["slurm_partition"] == ("YOUR_GPU_PARTITION" if gpu else "YOUR_CPU_PARTITION"), rule
    # The shards are jobs (issue 28 item 5): one scan and one pack job per shard of data.shards, one fit per
    # fold, one assemble; each a SLURM job of its own with the resources of its stage's meta.snakemake.
    shard_jobs = sorted(r for r in jobs if r.startswith("preprocess"))
    assert shard_jobs == ["preprocess", "preprocess_fit_0", "preprocess_fit_1", "preprocess_pack_0", "preprocess_pack_1",
                          "preprocess_pack_2", "preprocess_scan_0", "preprocess_scan_1", "preprocess_scan_2"], shard_jobs
    meta = {name: pipeline.load_stages(proj.root)[name] for name in ("preprocess_scan@0", "preprocess_pack@2")}
    for rule in shard_jobs:
        resources = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"resources: (.*)", jobs[rule]).group(1)))
        if rule.startswith(("preprocess_scan", "preprocess_pack")):
            stage = meta["preprocess_scan@0" if "scan" in rule else "preprocess_pack@2"]
            assert resources["mem_mb"] == str(stage.resources["mem_mb"]), (rule, resources)
    # The scan jobs of different shards wait on the same inputs only, never on one another: side by side.
    for k in range(3):
        scan_inputs = re.search(r"input: (.*)", jobs[f"preprocess_scan_{k}"]).group(1)
        assert "data/preprocess/" not in scan_inputs, scan_inputs
    # Ingest too: one job per shard, each a SLURM job with its stage's resources, needing no other job (they
    # run side by side), then the merge, which needs every shard job.
    ingest_jobs = sorted(r for r in jobs if r.startswith("ingest"))
    assert ingest_jobs == ["ingest", "ingest_shard_0", "ingest_shard_1", "ingest_shard_2"], ingest_jobs
    shard_stage = pipeline.load_stages(proj.root)["ingest_shard@1"]
    for k in range(3):
        body = jobs[f"ingest_shard_{k}"]
        resources = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"resources: (.*)", body).group(1)))
        assert resources["mem_mb"] == str(shard_stage.resources["mem_mb"]), resources
        assert resources["slurm_partition"] == "YOUR_CPU_PARTITION", resources
        assert all(i.startswith("seqsetvae/") for i in re.search(r"input: (.*)", body).group(1).split(", ")), body
        assert f"data/ingested/data/{k}.parquet" in re.search(r"output: (.*)", body).group(1), body
    merge_inputs = re.search(r"input: (.*)", jobs["ingest"]).group(1)
    assert all(f"data/ingest/shard_{k}" in merge_inputs for k in range(3)), merge_inputs
    assert "This was a dry-run" in out
    # Nothing was submitted or run. (The plugin may query the cluster's settings, `scontrol show config`;
    # the fake one fails, as it would on a machine without SLURM, and the plan does not depend on it.)
    calls = record.read_text().splitlines() if record.exists() else []
    assert not [c for c in calls if c.split()[0] in ("sbatch", "srun", "scancel")], calls
