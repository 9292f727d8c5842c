"""Read dvc.yaml (the single stage definition) into plain stage specs for the Snakefile and the tests.

Kept free of Snakemake imports so tests can compare the DVC and Snakemake DAGs from one parser.
"""

from __future__ import annotations

import json
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
            stages[st.addressing] = Stage(
                name=st.addressing,
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


def edges(stages: dict[str, Stage]) -> set[tuple[str, str]]:
    """(producer, consumer) pairs: a stage depends on another when it reads one of its outputs."""
    producer = {out: s.name for s in stages.values() for out in s.all_outputs}
    result = set()
    for s in stages.values():
        for dep in s.deps:
            for out, prod in producer.items():
                if dep == out or dep.startswith(out.rstrip("/") + "/"):
                    result.add((prod, s.name))
    return result
