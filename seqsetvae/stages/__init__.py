"""Pipeline stages: one module per stage, each with `add_arguments(parser)` and `run(params, args)`.

Every stage reads its section of params.yaml (validated by the CLI before the stage starts), reads its
input paths, and writes its output paths atomically (`seqsetvae.io`).
"""
