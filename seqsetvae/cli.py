"""Command line: `seqsetvae <stage> [--params params.yaml] ...` (also `python -m seqsetvae <stage>`).

Params are loaded and validated once, here, before any stage does work: an invalid params.yaml stops the
command with exit code 2 and a message naming the key.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from seqsetvae.config import ParamsError, load_params
from seqsetvae.errors import DataError

# stage name -> module under seqsetvae.stages, in pipeline order
STAGES: dict[str, str] = {
    "ingest": "seqsetvae.stages.ingest",
    "split": "seqsetvae.stages.split",
    "preprocess": "seqsetvae.stages.preprocess",
}


def _available_stages() -> dict[str, object]:
    modules = {}
    for name, mod in STAGES.items():
        try:
            modules[name] = importlib.import_module(mod)
        except ModuleNotFoundError as e:  # a stage not built yet must not break the others
            if e.name != mod:
                raise
    return modules


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = argparse.ArgumentParser(prog="seqsetvae", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    modules = _available_stages()
    for name, module in modules.items():
        doc = (module.__doc__ or name).strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=module.__doc__)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        module.add_arguments(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("seqsetvae")
    module = modules[args.stage]
    try:
        params = load_params(args.params, overrides=getattr(module, "overrides", lambda a: None)(args))
        module.run(params, args)
    except ParamsError as e:
        log.error("%s", e)
        return 2
    except DataError as e:
        log.error("%s", e)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
