# Snakemake entry point. The stages are defined once, in dvc.yaml; this file generates one rule per DVC
# stage (as DVC resolves it), so `snakemake --cores N` and `dvc repro` run the same DAG.
#
# - Each rule's params are the stage's params.yaml keys, so Snakemake's params trigger sees what DVC sees.
# - Each rule has a log (logs/<stage>.log) and a benchmark file (logs/<stage>.benchmark.tsv).
# - params.yaml is validated against workflow/schemas/params.schema.json (generated from seqsetvae/config.py)
#   before anything runs.
# - After a successful run the stages that ran are committed to dvc.lock (workflow/pipeline.py: dvc_commit),
#   so `dvc status` is clean and `dvc repro` has nothing to do; and at start, when DVC changed the workspace
#   since (dvc pull / checkout / exp apply / repro) and `dvc status` is clean, Snakemake's records are
#   synced to it first (pipeline.catch_up_with_dvc), so it reruns nothing DVC reports up to date.
# - Never override values with `snakemake --config`: DVC would not see them. This file refuses it.
# - `snakemake --report report.html` after a run: results, figures and metrics (workflow/pipeline.py:
#   report_options). `snakemake --use-conda` runs every rule in workflow/envs/seqsetvae.yaml.

import os
import sys
import time
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))
import pipeline  # noqa: E402  (workflow/pipeline.py)

from seqsetvae import runlock  # noqa: E402
from seqsetvae.threads import SNAKEMAKE_EXPORT  # noqa: E402
from seqsetvae.config import ParamsError, load_params, read_yaml  # noqa: E402


configfile: "params.yaml"


# `snakemake --report report.html`: this page, the results, figures and metrics (pipeline.report_options).
report: "workflow/report/workflow.rst"


try:
    load_params("params.yaml")  # the checks every stage runs; its message names the offending key
except ParamsError as e:
    raise WorkflowError(str(e))
# Refuse overrides before the schema sees them: an override such as --config split='{folds: [1]}' arrives
# with strings for numbers and would otherwise fail validation with a type error that hides the reason.
if config != read_yaml("params.yaml"):
    raise WorkflowError(
        "snakemake --config/--configfile overrides are refused: edit params.yaml so DVC sees the same values"
    )
validate(config, "workflow/schemas/params.schema.json")  # the same schema, through Snakemake

# One run at a time per project, against DVC too (seqsetvae/runlock.py). The main process holds the lock
# for the whole run; the stage commands it launches inherit SEQSETVAE_RUN_LOCK_HELD and skip it.
# It also holds DVC's own repository lock, so a `dvc repro` is refused before it removes any output (DVC
# deletes a stage's outputs before it runs the stage command, where our lock would stop it), and releases
# that lock only after the onsuccess handler has committed the run to dvc.lock (under the same lock).
_DVC_LOCK = None
_NESTED = os.environ.get(runlock.HELD_ENV) == "1"  # launched under a holder (e.g. the catch-up below)
if workflow.is_main_process and not workflow.dryrun and not _NESTED:
    try:
        _DVC_LOCK = runlock.acquire_dvc_lock(workflow.basedir)
        _RUN_LOCK = runlock.acquire(workflow.basedir, "snakemake")
    except runlock.RunLockedError as e:
        runlock.release_dvc_lock(_DVC_LOCK)
        raise WorkflowError(str(e))
    os.environ[runlock.HELD_ENV] = "1"


envvars:
    runlock.HELD_ENV,


RUN_STARTED = time.time()
STAGES = pipeline.load_stages(Path(workflow.basedir))
RULE_NAMES = pipeline.rule_names(STAGES)

# Catch up with DVC: after `dvc pull`, `dvc checkout`, `dvc exp apply` or `dvc repro`, the outputs are ones
# DVC reports up to date but Snakemake has no (or stale) records of, and it would rerun everything. When
# dvc.lock or an output changed since Snakemake's last run and `dvc status` is clean, Snakemake's records
# are brought in line first (pipeline.catch_up_with_dvc: `snakemake --touch --forceall`). This happens
# under the locks taken above, so no DVC command runs between the check, the sync and this run; a dry run
# takes both locks just for the catch-up (and skips it when another run holds them).
if workflow.is_main_process and not _NESTED:
    _sync_dvc_lock = _sync_run_lock = None
    if workflow.dryrun:
        try:
            _sync_dvc_lock = runlock.acquire_dvc_lock(workflow.basedir)
            _sync_run_lock = runlock.acquire(workflow.basedir, "snakemake -n (catching up with DVC)")
        except runlock.RunLockedError:
            pass  # another run holds them: leave the records to it
    try:
        if _DVC_LOCK is not None or (_sync_dvc_lock is not None and _sync_run_lock is not None):
            _note = pipeline.catch_up_with_dvc(
                Path(workflow.basedir), workflow.main_snakefile, STAGES, lock_held=True
            )
            if _note:
                print(_note, file=sys.stderr)
    finally:
        if _sync_run_lock is not None:
            runlock.release(_sync_run_lock)
        runlock.release_dvc_lock(_sync_dvc_lock)


def _output(path):
    out = directory(path) if pipeline.is_directory(path) else path
    options = pipeline.report_options(path)
    return report(out, **options) if options is not None else out


rule all:
    input:
        [p for s in STAGES.values() for p in s.all_outputs],
    default_target: True


for _stage in STAGES.values():

    rule:
        name:
            RULE_NAMES[_stage.name]
        input:
            pipeline.inputs(_stage, STAGES, Path(workflow.basedir)),
        output:
            [_output(p) for p in _stage.all_outputs],
        params:
            # The command travels as a param: Snakemake runs `shell:` lazily, after the loop has moved
            # on, so an f-string of _stage there would run the last stage's command for every rule.
            cmd=_stage.cmd,
            stage_params=pipeline.select_params(config, _stage.params),
        log:
            f"logs/{_stage.name}.log",
        benchmark:
            f"logs/{_stage.name}.benchmark.tsv"
        threads: _stage.threads
        resources:
            **_stage.resources,
        conda:
            pipeline.CONDA_ENV  # used only with --use-conda (workflow/envs/seqsetvae.yaml)
        shell:
            # The cores this job was given, for `num_threads: auto` (seqsetvae/threads.py), so --cores N is
            # shared without oversubscription.
            SNAKEMAKE_EXPORT + "({params.cmd}) > {log} 2>&1"


onsuccess:
    # Commit what ran to dvc.lock while still holding DVC's lock (in-process, pipeline.dvc_commit), and
    # only then release it: a `dvc repro` that got the lock before dvc.lock records this run would see
    # these stages as changed and delete their outputs.
    # --touch (the catch-up, sync_runners.py after-dvc) runs no stage, but touches the benchmark files too.
    _ran = [] if workflow.touch else pipeline.stages_ran_since(Path(workflow.basedir), RUN_STARTED)
    if _ran:
        pipeline.dvc_commit(Path(workflow.basedir), _ran, lock_held=_DVC_LOCK is not None)
        print(f"sync: committed {len(_ran)} stage(s) to dvc.lock: {', '.join(_ran)}")
    else:
        print("sync: no stage ran; dvc.lock unchanged")
    if _DVC_LOCK is not None:
        pipeline.record_runner_state(Path(workflow.basedir), STAGES)  # Snakemake's records match the workspace
    runlock.release_dvc_lock(_DVC_LOCK)
