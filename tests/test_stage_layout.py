"""seqsetvae/stages/ stays readable (issue 31): no function there is longer than MAX_LINES, and the training
lifecycle that pretrain and finetune share (seeds, threads, output folder, resume, Trainer, fit, checkpoints,
metrics and details, SHA256SUMS / INCOMPLETE) has one home, seqsetvae/training/lifecycle.py, which both call."""

from __future__ import annotations

import ast
from pathlib import Path

STAGES = Path(__file__).resolve().parents[1] / "seqsetvae" / "stages"
MAX_LINES = 60  # the aim is about 50; the test leaves a margin so that a docstring line does not fail it


def long_functions(source: str, limit: int = MAX_LINES) -> dict[str, int]:
    """Every function or method of `source` (nested ones too) longer than `limit` lines, from its `def` line
    to its last line (docstring and comments included, decorators not), by qualified name."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef) and child.end_lineno - child.lineno + 1 > limit:
                    found[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_the_measure_finds_long_functions_and_methods():
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    deeper = body.replace("    ", "        ")
    source = (f"def short():\n{body}\n\n"  # 60 lines: at the limit
              f"class Run:\n    def fit(self):\n{deeper}\n        pass\n\n"  # 61 lines
              f"def outer():\n    def inner():\n{deeper}\n        pass\n")  # 62 and 61 lines
    assert long_functions(source) == {"Run.fit": 61, "outer": 62, "outer.inner": 61}


def test_no_function_in_stages_is_longer_than_the_limit():
    too_long = {f"{path.name}: {name}": n for path in sorted(STAGES.glob("*.py"))
                for name, n in long_functions(path.read_text(encoding="utf-8")).items()}
    assert too_long == {}, f"functions in seqsetvae/stages/ longer than {MAX_LINES} lines (lines): {too_long}"


# The steps training/lifecycle.py owns: a training stage that calls one of them itself repeats the lifecycle.
LIFECYCLE_STEPS = {"seed_everything", "use_torch_threads", "prepare_out_dir", "incomplete_on_failure",
                   "resume_checkpoint", "remove_checksums", "build_trainer", "is_writer", "write_checksums",
                   "finish_run"}


def _called_names(source: str) -> set[str]:
    calls = {n.func for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)}
    return {c.id if isinstance(c, ast.Name) else c.attr for c in calls if isinstance(c, (ast.Name, ast.Attribute))}


def test_pretrain_and_finetune_run_the_one_training_lifecycle():
    for stage in ("pretrain", "finetune"):
        called = _called_names((STAGES / f"{stage}.py").read_text(encoding="utf-8"))
        assert {"start_run", "train_and_record"} <= called, stage
        assert called & LIFECYCLE_STEPS == set(), f"stages/{stage}.py runs lifecycle steps itself"
