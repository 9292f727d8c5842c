"""seqsetvae/training/ keeps one home per concept: every module imports on its own (no import cycle), no
function or class is defined in two of its modules, and runner.py defines nothing, only re-exports."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import seqsetvae.training.runner as runner

TRAINING = Path(runner.__file__).parent
MODULES = sorted(f.stem for f in TRAINING.glob("*.py") if f.stem != "__init__")


def test_every_training_module_imports_first_without_a_cycle():
    """Each module imported into a fresh package state: a cycle fails whichever of its modules comes first."""
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        f"for name in {MODULES!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'seqsetvae' or m.startswith('seqsetvae.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module('seqsetvae.training.' + name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc(limit=-1))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_function_or_class_is_defined_in_two_training_modules():
    homes: dict[str, list[str]] = defaultdict(list)
    for name in MODULES:
        for node in ast.parse((TRAINING / f"{name}.py").read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                homes[node.name].append(name)
    assert {k: v for k, v in homes.items() if len(v) > 1} == {}


def test_runner_only_re_exports_from_the_concern_modules():
    tree = ast.parse((TRAINING / "runner.py").read_text(encoding="utf-8"))
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    for name in runner.__all__:
        home = getattr(runner, name).__module__
        assert home != runner.__name__ and home.startswith("seqsetvae.training."), (name, home)
