"""Command line: `seqsetvae <stage> [--params params.yaml] ...` (also `python -m seqsetvae <stage>`);
`seqsetvae --version` prints the package version.

Params are loaded and validated once, here, before any stage does work: an invalid params.yaml stops the
command with exit code 2 and a message naming the key.

Exit codes: 0 done; 2 bad params or arguments (ParamsError, argparse); 3 a file problem (DataError: bad
input data, `path:line: what`; or an OS error reading or writing a named path: a read-only folder, a full
disk, no permission, a folder where a file goes; or a worker process that died); 4 another run holds the
project's run lock. None of them prints a traceback (`-v` logs it, for an OS error, at debug level).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from seqsetvae import __version__
from seqsetvae.config import ParamsError, load_params
from seqsetvae.errors import DataError
from seqsetvae.runlock import RunLockedError, run_lock

# stage name -> (module under seqsetvae.stages, one-line help), in pipeline order. Only the chosen stage's
# module is imported, so light stages do not pay for importing torch / Lightning.
STAGES: dict[str, tuple[str, str]] = {
    "ingest": ("seqsetvae.stages.ingest", "read a cohort into canonical MEDS tables + ingest report"),
    "split": ("seqsetvae.stages.split", "assign subjects to train / val / test per fold"),
    "preprocess": ("seqsetvae.stages.preprocess", "normalise (train-only stats), vocabulary, packed sets"),
    "task-labels": ("seqsetvae.stages.task_labels", "an extra task's label table (params tasks) + its report"),
    "pretrain": ("seqsetvae.stages.pretrain", "self-supervised pretraining of SeqSetVAEPretrain"),
    "finetune": ("seqsetvae.stages.finetune", "finetune SeqSetVAE (frozen backbone) for mortality"),
    "train": ("seqsetvae.stages.train", "standalone training: --mode pretrain|finetune"),
    "evaluate": ("seqsetvae.stages.evaluate", "AUROC / AUPRC / Brier / ECE with bootstrap CIs, curves"),
    "baseline": ("seqsetvae.stages.baseline", "logistic regression and gradient boosting on per-variable summaries"),
    "aggregate": ("seqsetvae.stages.aggregate", "mean / sd over splits per model, paired differences vs baselines"),
    "report": ("seqsetvae.stages.report", "reports/report.md with figures: model vs baselines vs ablations"),
}


def _chosen_stage(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="seqsetvae", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    chosen = _chosen_stage(argv)
    module = None
    for name, (mod, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        if name == chosen:
            module = importlib.import_module(mod)
            p.description = module.__doc__
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            module.add_arguments(p)
    return parser, module


def path_argument_problem(args: argparse.Namespace) -> str | None:
    """A path argument that lies under a regular file can be neither read nor created: the message naming
    the argument and the file in the way, or None when every path argument is fine."""
    for name, value in vars(args).items():
        if not isinstance(value, Path):
            continue
        blocker = next((p for p in value.parents if p.exists()), None)  # nearest existing ancestor
        if blocker is not None and not blocker.is_dir():
            return f"argument --{name.replace('_', '-')} {value}: {blocker} is a file, not a folder"
    return None


def os_error_message(e: OSError) -> str:
    """`path: reason` for an OS error (both paths of a rename), bounded, without a traceback."""
    reason = e.strerror or (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(paths)
    return f"{where}: {reason}" if where else f"{type(e).__name__}: {reason}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("seqsetvae")
    problem = path_argument_problem(args)
    if problem is not None:
        log.error("%s", problem)
        return 2
    try:
        params = load_params(args.params, overrides=getattr(module, "overrides", lambda a: None)(args))
        with run_lock(params.root, f"seqsetvae {args.stage}"):
            module.run(params, args)
    except RunLockedError as e:
        log.error("%s", e)
        return 4
    except ParamsError as e:
        log.error("%s", e)
        return 2
    except DataError as e:
        log.error("%s", e)
        return 3
    except OSError as e:  # the system refused a read or write that no stage turned into a DataError
        log.debug("OS error", exc_info=True)
        log.error("%s", os_error_message(e))
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
