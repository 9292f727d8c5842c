"""`num_threads: auto` means the cores the runner gave the job (seqsetvae/threads.py)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from seqsetvae import threads
from seqsetvae.config import ParamsError, params_from_dict
from tests.pipeline_project import Project


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    return monkeypatch


def test_a_count_is_used_as_given(clean_env):
    clean_env.setenv(threads.THREADS_ENV, "7")
    assert threads.resolve_num_threads(3) == 3


def test_auto_takes_the_runners_threads_then_slurms_then_every_core(clean_env):
    assert threads.resolve_num_threads("auto") == threads.available_cores() == threads.resolve_num_threads(0)
    clean_env.setenv("SLURM_CPUS_PER_TASK", "5")
    assert threads.resolve_num_threads("auto") == 5
    clean_env.setenv(threads.THREADS_ENV, "1")  # Snakemake's {threads} for this job wins
    assert threads.resolve_num_threads("auto") == 1


@pytest.mark.parametrize("bad", ["0", "two", "-1", "1.5"])
def test_a_bad_thread_environment_is_an_error_naming_it(clean_env, bad):
    clean_env.setenv(threads.THREADS_ENV, bad)
    with pytest.raises(ValueError, match=f"{threads.THREADS_ENV}="):
        threads.resolve_num_threads("auto")


def test_params_accept_auto_or_a_count_and_nothing_else(base_params_dict):
    base_params_dict = copy.deepcopy(base_params_dict)  # a session fixture: never mutate it
    for value in ("auto", 0, 2):
        base_params_dict["trainer"]["num_threads"] = value
        base_params_dict["baseline"]["num_threads"] = value
        assert params_from_dict(base_params_dict).trainer.num_threads == value
    base_params_dict["trainer"]["num_threads"] = "all"
    with pytest.raises(ParamsError, match="trainer.num_threads"):
        params_from_dict(base_params_dict)


@pytest.mark.parametrize(("cores", "expected"), [(1, "1"), (2, "2")])
def test_snakemake_passes_each_job_the_threads_it_was_given(tmp_path, cores, expected):
    """The training rules ask for 2 threads; Snakemake gives min(2, --cores) and the stage sees that count."""
    proj = Project.create(tmp_path / "proj")
    out = proj.run("snakemake", "--cores", str(cores), "-n", "-p", "--forceall", "pretrain_0").stdout
    for stage in ("pretrain",):
        exports = re.findall(rf"export SEQSETVAE_THREADS=(\d+); \(seqsetvae {stage} ", out)
        assert exports == [expected], (stage, out[-3000:])


def test_use_torch_threads_sets_the_count_and_seeding_leaves_it_alone(clean_env):
    import torch

    from seqsetvae.training.rng import seed_everything

    before = torch.get_num_threads()
    try:
        assert threads.use_torch_threads(1) == 1 == torch.get_num_threads()
        seed_everything(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_thread_environment_is_named_in_one_place_only():
    """seqsetvae/threads.py is the one home: the runners (Snakefile, workflow/) and the stages use its names."""
    root = Path(threads.__file__).resolve().parents[1]
    sources = [root / "Snakefile", *(root / "workflow").rglob("*.py"), *(root / "seqsetvae").rglob("*.py")]
    naming = [str(p.relative_to(root)) for p in sources if threads.THREADS_ENV in p.read_text(encoding="utf-8")]
    assert naming == ["seqsetvae/threads.py"], naming
