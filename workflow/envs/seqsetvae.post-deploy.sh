#!/usr/bin/env bash
# Run by Snakemake once, inside the new conda env (workflow/envs/seqsetvae.yaml), from the project root:
# installs this checkout's seqsetvae package into it, as the Makefile does for .venv (the pins are in the
# env already, hence --no-deps).
set -euo pipefail
python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
