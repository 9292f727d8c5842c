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


def inputs(stage: Stage, stages: dict[str, Stage]) -> list[str]:
    """The stage's deps as concrete files for Snakemake. DVC accepts a dep that is a parent folder of
    other stages' outputs (e.g. `metrics/evaluate`, holding every fold's metrics, however many folds
    params give) and links the stages itself; Snakemake needs the outputs themselves, so such a dep is
    replaced by the outputs inside it. Any other dep is kept as it is."""
    outputs = sorted(out for s in stages.values() if s.name != stage.name for out in s.all_outputs)
    result: list[str] = []
    for dep in stage.deps:
        inside = [out for out in outputs if _inside(out, dep)]
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
