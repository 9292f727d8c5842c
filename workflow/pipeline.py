"""Read dvc.yaml (the single stage definition) into plain stage specs for the Snakefile and the tests.

Kept free of Snakemake imports so tests can compare the DVC and Snakemake DAGs from one parser.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    params: tuple[str, ...]  # dotted keys of params.yaml
    outs: tuple[str, ...]  # cached outputs (data, checkpoints)
    metrics: tuple[str, ...] = ()  # git-tracked (cache: false) JSON metrics
    plots: tuple[str, ...] = ()  # git-tracked plot data
    threads: int = 1
    resources: dict[str, Any] = field(default_factory=dict)

    @property
    def all_outputs(self) -> tuple[str, ...]:
        return self.outs + self.metrics + self.plots


def load_stages(root: Path = ROOT) -> dict[str, Stage]:
    """The stages of dvc.yaml as DVC itself resolves them (foreach/matrix expanded, ${} interpolated),
    so both runners see exactly the same commands, deps, params and outs."""
    from dvc.repo import Repo

    stages = {}
    with Repo(str(root)) as repo:
        for st in repo.index.stages:
            smk = (st.meta or {}).get("snakemake") or {}
            deps, params = [], []
            for d in st.deps:
                if type(d).__name__ == "ParamsDependency":
                    if Path(d.def_path).name != "params.yaml":
                        raise ValueError(f"dvc.yaml stage {st.addressing}: params must come from params.yaml")
                    params.extend(d.params)
                else:
                    deps.append(d.def_path)
            outs = tuple(o.def_path for o in st.outs if not (o.metric or o.plot))
            # st.name, not st.addressing: addressing is prefixed with the dvc.yaml path relative to the
            # current directory when that is not `root` (e.g. tests loading a project copy elsewhere).
            if Path(st.path).resolve() != Path(root).resolve() / "dvc.yaml":
                raise ValueError(f"{st.path}: stages must be defined in the root dvc.yaml only")
            stages[st.name] = Stage(
                name=st.name,
                cmd=" ".join(str(st.cmd).split()),
                deps=tuple(deps),
                params=tuple(params),
                outs=outs,
                metrics=tuple(o.def_path for o in st.outs if o.metric),
                plots=tuple(o.def_path for o in st.outs if o.plot),
                threads=int(smk.get("threads", 1)),
                resources=dict(smk.get("resources", {})),
            )
    return stages


def is_directory(path: str) -> bool:
    """Convention of this dvc.yaml: an output without a file suffix is a folder."""
    return Path(path).suffix == ""


# The software every rule runs with under `snakemake --use-conda` (relative to the Snakefile): the pins
# of requirements.txt, and the package itself installed from the checkout by the env's post-deploy script.
CONDA_ENV = "workflow/envs/seqsetvae.yaml"


def report_options(path: str) -> dict[str, Any] | None:
    """How output `path` appears in `snakemake --report`: keyword arguments of Snakemake's report()
    (category, subcategory, labels, patterns), or None for an output the report leaves out.

    In: the report (reports/report.md: the results tables and text), its figures (reports/figures/*.png)
    and every metrics JSON (the aggregate over folds with its details and the label-efficiency summary, then
    per stage and fold). Out: data,
    checkpoints, predictions and plot / curve data, which are large or are drawn in the figures already."""
    if path == "reports/report.md":
        return {"category": "1. Results", "labels": {"file": "report.md"}}
    if path == "reports/figures":
        return {"category": "2. Figures", "patterns": ["{name}.png"]}
    if path == "metrics/aggregate":  # the headline folder: <model>.json, SeqSetVAE-minus-<model>.json
        return {"category": "3. Metrics", "subcategory": "aggregate over folds", "patterns": ["{name}.json"]}
    if path in ("details/aggregate.json", "details/label_efficiency.json"):  # sd and per-split values
        return {"category": "3. Metrics", "subcategory": "aggregate over folds", "labels": {"file": path}}
    if path.startswith("metrics/") and path.endswith(".json"):
        # metrics/<stage>[/<model>|/ablation/<variant>|/label_efficiency/frac_<f>/<model>]/fold_<k>.json
        stage = "/".join(Path(path).parent.parts[1:])
        return {"category": "3. Metrics", "subcategory": stage, "labels": {"file": path}}
    return None


def select_params(config: dict[str, Any], keys: tuple[str, ...]) -> str:
    """The stage's params as one canonical JSON string (Snakemake's params trigger compares it)."""
    chosen = {}
    for key in keys:
        node: Any = config
        for part in key.split("."):
            node = node[part]
        chosen[key] = node
    return json.dumps(chosen, sort_keys=True)


def rule_name(stage: str) -> str:
    """The Snakemake rule name of DVC stage `stage`: every character that is not a letter, digit or `_`
    becomes `_` (`finetune@0` -> `finetune_0`, `finetune_ablation@labels_10-0` -> `finetune_ablation_labels_10_0`),
    so any foreach / matrix key gives a valid rule name."""
    return re.sub(r"\W", "_", stage)


def rule_names(stages: dict[str, Stage]) -> dict[str, str]:
    """stage name -> rule name; refuses two stages that would map to one rule."""
    names = {s: rule_name(s) for s in stages}
    clashes = sorted({r for r in names.values() if list(names.values()).count(r) > 1})
    if clashes:
        raise ValueError(
            f"dvc.yaml stages map to the same Snakemake rule name(s) {clashes}: rename a stage or matrix key"
        )
    return names


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def folder_files(root: Path, folder: str) -> list[str]:
    """The files DVC hashes for folder dep `folder`: every file under it that `.dvcignore` does not name
    (Python's bytecode caches, Snakemake's marker), as sorted paths relative to `root`."""
    import os

    import pathspec

    ignore = Path(root) / ".dvcignore"
    spec = pathspec.PathSpec.from_lines(
        "gitwildmatch", ignore.read_text(encoding="utf-8").splitlines() if ignore.is_file() else []
    )
    files = []
    for dirpath, dirnames, filenames in os.walk(Path(root) / folder):
        here = Path(dirpath).relative_to(root).as_posix()
        dirnames[:] = [d for d in dirnames if not spec.match_file(f"{here}/{d}/")]
        files.extend(f"{here}/{f}" for f in filenames if not spec.match_file(f"{here}/{f}"))
    return sorted(files)


def inputs(stage: Stage, stages: dict[str, Stage], root: Path = ROOT) -> list[str]:
    """The stage's deps as concrete files for Snakemake.

    - DVC accepts a dep that is a parent folder of other stages' outputs (e.g. `metrics/evaluate`, holding
      every fold's metrics, however many folds params give) and links the stages itself; Snakemake needs the
      outputs themselves, so such a dep is replaced by the outputs inside it.
    - A folder of the project that no stage writes (code: `seqsetvae/models`) is replaced by the files DVC
      hashes in it (folder_files). Snakemake dates a folder input by the folder's own mtime, which changes
      when Python writes a `__pycache__` into it (any import, unless PYTHONDONTWRITEBYTECODE is set) and does
      not when a module in it is edited in place: the first reran every stage after the tests ran, the second
      missed a code change.
    - A dep that is a file inside another stage's folder output (DVC hashes the file alone, so only what
      reads it reruns when it changes) becomes the folder output: Snakemake links a rule to a `directory()`
      output only by the folder's own path. (The ingest shards, `data/ingested/data/<k>.parquet`, are file
      outputs of their own jobs, `ingest_shard@<k>`, so a preprocess job links to its shard's job alone.)
    - Any other dep is kept as it is."""
    outputs = sorted(out for s in stages.values() if s.name != stage.name for out in s.all_outputs)
    result: list[str] = []
    for dep in stage.deps:
        inside = [out for out in outputs if _inside(out, dep)]
        holder = [out for out in outputs if _inside(dep, out) and is_directory(out)]
        written = any(dep == out or _inside(dep, out) for out in outputs)
        if holder:
            inside = holder
        elif not inside and not written and (Path(root) / dep).is_dir():
            inside = folder_files(root, dep)
        result.extend(inside or [dep])
    return list(dict.fromkeys(result))  # unique, order kept


def edges(stages: dict[str, Stage]) -> set[tuple[str, str]]:
    """(producer, consumer) pairs: a stage depends on another when it reads one of its outputs, a file
    inside one of its output folders, or a folder that holds one of its outputs."""
    producer = {out: s.name for s in stages.values() for out in s.all_outputs}
    result = set()
    for s in stages.values():
        for dep in s.deps:
            for out, prod in producer.items():
                if dep == out or _inside(dep, out) or _inside(out, dep):
                    result.add((prod, s.name))
    return result


def stages_ran_since(root: Path, since: float) -> list[str]:
    """The stages whose Snakemake job ran in this run: their benchmark file was written at or after `since`."""
    return [
        name
        for name in load_stages(root)
        if (bench := Path(root) / "logs" / f"{name}.benchmark.tsv").exists() and bench.stat().st_mtime >= since
    ]


def dvc_commit(root: Path, stages: list[str], *, lock_held: bool) -> None:
    """`dvc commit --force` the given stages in-process, so dvc.lock records their deps, params and outs.

    lock_held: the caller already holds DVC's repository lock (`runlock.acquire_dvc_lock`), as the Snakefile
    does for its whole run. DVC would then refuse itself (its lock is a second open of the same file), and
    releasing ours first would open a window in which a concurrent `dvc repro` takes the lock and deletes
    the outputs this run just made (the stages are not in dvc.lock yet, so DVC sees them as changed). So
    DVC's own lock is replaced by a no-op for this call: the held lock already excludes every other DVC
    command.
    """
    from dvc.lock import LockNoop
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        if lock_held:
            repo.lock = LockNoop()
        for name in stages:
            repo.commit(name, force=True)


# ------------------------------------------------------------------------------------------------------
# Snakemake catching up with DVC. After `dvc pull`, `dvc checkout`, `dvc exp apply` or `dvc repro`, the
# workspace holds outputs DVC reports up to date but Snakemake has no records for (or stale ones: other
# params, older mtimes), so it would rerun everything, pretraining included. The Snakefile calls
# catch_up_with_dvc at start: when dvc.lock or any output changed since Snakemake's last run or sync (the
# fingerprint below) and `dvc status` is clean, it records every output as current in Snakemake's
# metadata (`snakemake --touch --forceall`), as `workflow/scripts/sync_runners.py after-dvc` does by hand.

STATE_FILE = Path(".snakemake") / "seqsetvae-dvc-state"
IGNORED_NAMES = {".snakemake_timestamp"}  # Snakemake's own marker in folder outputs (.dvcignore, .gitignore)


def runner_state(root: Path, stages: dict[str, Stage] | None = None) -> str:
    """A fingerprint of what DVC and Snakemake share: dvc.lock's bytes and every declared output file's
    path, size and mtime. It changes when a DVC command rewrites dvc.lock or any output."""
    import hashlib

    root = Path(root)
    stages = stages if stages is not None else load_stages(root)
    h = hashlib.sha256()
    lock = root / "dvc.lock"
    h.update(lock.read_bytes() if lock.is_file() else b"<no dvc.lock>")
    for out in sorted({p for s in stages.values() for p in s.all_outputs}):
        path = root / out
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.name in IGNORED_NAMES:
                continue
            try:
                st = f.stat()
            except FileNotFoundError:
                h.update(f"{f.relative_to(root)} missing\n".encode())
                continue
            h.update(f"{f.relative_to(root)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def record_runner_state(root: Path, stages: dict[str, Stage] | None = None) -> None:
    """Record that Snakemake's metadata now matches the workspace (after a run or a sync)."""
    path = Path(root) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(runner_state(root, stages) + "\n", encoding="utf-8")


def snakemake_behind_dvc(root: Path, stages: dict[str, Stage] | None = None) -> bool:
    """dvc.lock exists and it or an output changed since Snakemake's last run or sync."""
    root = Path(root)
    if not (root / "dvc.lock").is_file():
        return False
    recorded = root / STATE_FILE
    return not recorded.is_file() or recorded.read_text(encoding="utf-8").strip() != runner_state(root, stages)


def dvc_changed(root: Path, *, lock_held: bool) -> dict:
    """`dvc status` in-process: {} when every stage is up to date. lock_held: as for dvc_commit."""
    from dvc.lock import LockNoop
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        if lock_held:
            repo.lock = LockNoop()
        return repo.status()


def catch_up_with_dvc(root: Path, snakefile: str, stages: dict[str, Stage], *, lock_held: bool) -> str | None:
    """Sync Snakemake's records to DVC's workspace when DVC moved it and reports it up to date.

    Call with DVC's repository lock and the run lock held (lock_held=True), so no DVC command can change
    the workspace between the check and the sync. Returns a line to print, or None when nothing was due.
    """
    import os
    import subprocess
    import sys

    from seqsetvae import runlock

    root = Path(root)
    if not snakemake_behind_dvc(root, stages):
        return None
    changed = dvc_changed(root, lock_held=lock_held)
    if changed:
        return (
            f"sync: DVC changed the workspace since Snakemake's last run, but `dvc status` lists "
            f"{len(changed)} stage(s) as changed ({', '.join(sorted(changed)[:5])}), so Snakemake's records "
            "were left as they are; `dvc repro` (or `dvc checkout`) first to reuse DVC's outputs"
        )
    env = {**os.environ, runlock.HELD_ENV: "1"}  # the nested Snakemake runs under this one's locks
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(root),
           "--touch", "--forceall", "--cores", "1", "--quiet", "all"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sync: `snakemake --touch` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    record_runner_state(root, stages)
    return "sync: DVC reports the workspace up to date (after dvc pull / checkout / exp apply / repro); " \
           "Snakemake's records now match it"
