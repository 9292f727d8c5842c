"""seqsetvae/training/ keeps one home per concept: every module imports on its own (no import cycle), no
import cycle anywhere in the package, between modules or between folders (arrows point down only), no
function or class is defined in two of its modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seqsetvae"
TRAINING = PACKAGE / "training"
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


def _package_imports() -> dict[str, set[str]]:
    """module -> the seqsetvae modules it imports, anywhere in its body (a lazy import in a function is an arrow
    too), read from the source: `from seqsetvae.x import name` counts seqsetvae.x.name where that is a module."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _folder(module: str) -> str:
    """seqsetvae.models.setvae -> models; a module beside the folders (seqsetvae.config) is its own node."""
    return module.split(".")[1] if "." in module else module


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` (a path that ends where it starts), or [] where it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_the_package_has_no_import_cycle_between_modules():
    """Static, over the whole package (the test above imports training/ only, and a lazy import inside a
    function hides a cycle from it)."""
    assert _cycle(_package_imports()) == []


def test_the_package_has_no_import_cycle_between_folders():
    """Arrows point down only, at folder level too: data below models below evaluation below training below
    stages; a folder that imports one that imports it back (models <-> evaluation, training <-> evaluation
    before issue 31) fails here, with the modules that draw each arrow of the loop."""
    arrows: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, targets in _package_imports().items():
        for target in targets:
            if _folder(module) != _folder(target):
                arrows[_folder(module), _folder(target)].append(f"{module} -> {target}")
    folders: dict[str, set[str]] = defaultdict(set)
    for a, b in arrows:
        folders[a].add(b)
    loop = _cycle(folders)
    assert loop == [], [arrows[a, b] for a, b in zip(loop, loop[1:])]
    assert ("models", "evaluation") not in arrows and ("evaluation", "training") not in arrows, arrows

def test_no_function_or_class_is_defined_in_two_training_modules():
    homes: dict[str, list[str]] = defaultdict(list)
    for name in MODULES:
        for node in ast.parse((TRAINING / f"{name}.py").read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                homes[node.name].append(name)
    assert {k: v for k, v in homes.items() if len(v) > 1} == {}
