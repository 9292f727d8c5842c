"""A throwaway copy of the project (a git repo of its own) to run the real runners in, with tiny params.

Used by the pipeline tests: every run happens in a fresh copy under tmp_path, never in the checkout. A test
that needs a finished tiny run copies the one the session made (the `tiny_run` fixture, tests/conftest.py)
with `Project.copy_to`: the copy holds the run's outputs and the runners' state (.git, .dvc, .snakemake)
with the files' times kept, so both runners see it as up to date, as they saw the original.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from seqsetvae.config import PROJECT_ROOT, deep_merge, read_yaml
from tests.tiny import TINY_OVERRIDES, tiny_params  # noqa: F401 (TINY_OVERRIDES: re-exported)

# What a pipeline run in the checkout leaves behind: never copied, each test project starts clean.
PIPELINE_OUTPUT_DIRS = ("data/", "logs/", "models/", "metrics/", "details/", "plots/", "curves/", "predictions/",
                        "reports/")


class Project:
    """A copy of the repository's files (tracked and new, not ignored) in its own git repo."""

    def __init__(self, root: Path):
        self.root = root
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(root),  # the copy's own package, ahead of the editable install
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
            "DVC_NO_ANALYTICS": "1",
        }

    @classmethod
    def create(cls, dest: Path, overrides: dict | None = None) -> "Project":
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=PROJECT_ROOT, check=True, capture_output=True, text=True,
        ).stdout.split("\0")
        for rel in filter(None, files):
            src = PROJECT_ROOT / rel
            if not src.is_file() or rel.startswith(PIPELINE_OUTPUT_DIRS) or rel == "dvc.lock":
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        proj = cls(dest)
        params = tiny_params(read_yaml(PROJECT_ROOT / "params.yaml"), *([overrides] if overrides else []))
        proj.write_params(params)
        proj.git("init", "-q", "-b", "main")
        proj.git("add", "-A")
        proj.git("commit", "-qm", "initial")
        return proj

    def copy_to(self, dest: Path) -> "Project":
        """A copy of this project, its outputs and its runners' state (git, DVC, Snakemake) at `dest`: the
        files' contents and times (Snakemake compares modification times), links as links."""
        shutil.copytree(self.root, dest, symlinks=True)
        return type(self)(dest)

    # ---------------------------------------------------------------------------------------------
    def params(self) -> dict:
        return read_yaml(self.root / "params.yaml")

    def write_params(self, params: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")

    def set_param(self, dotted: str, value: Any) -> None:
        params = self.params()
        node = params
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
        self.write_params(params)

    def run(self, *cmd: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(cmd), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                f"\n--- stderr\n{proc.stderr[-6000:]}"
            )
        return proc

    def git(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("git", *args)

    def snakemake(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("snakemake", "--cores", "2", *args, check=check)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, check=check)

    def sync_after_dvc(self) -> subprocess.CompletedProcess:
        return self.run("python", "workflow/scripts/sync_runners.py", "after-dvc", "--cores", "2")

    # ---------------------------------------------------------------------------------------------
    def snakemake_planned_rules(self) -> list[str]:
        """Rules a `snakemake -n` would run (empty when nothing is to be done)."""
        out = self.snakemake("-n", "--quiet", "rules").stdout
        if "Nothing to be done" in out:
            return []
        rules = set()  # Snakemake may print its job-stats table more than once
        for line in out.splitlines():
            m = re.match(r"^\s*([A-Za-z_][\w]*)\s+(\d+)\s*$", line)
            if m and m.group(1) not in {"total", "all", "job"}:
                rules.add(m.group(1))
        return sorted(rules)

    def dvc_changed_stages(self) -> list[str]:
        """Stages `dvc status` reports as changed (empty when everything is up to date)."""
        import json

        out = self.dvc("status", "--json").stdout
        return sorted(k.split(":")[0] for k in json.loads(out or "{}"))

    def dvc_repro_ran(self, *args: str) -> list[str]:
        """Run `dvc repro` and return the stages it actually executed."""
        out = self.dvc("repro", *args).stdout
        return sorted(set(re.findall(r"Running stage '([^']+)'", out)))
