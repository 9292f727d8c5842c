# Two commands do everything on a fresh machine:
#   make demo   install into .venv, run the whole pipeline on the embedded synthetic cohort, print metrics
#   make test   install into .venv, run the test suite
# Both are idempotent: the install step reruns only when requirements.txt or pyproject.toml change.
# pip byte-compiles on one core; compileall -j 0 does the same on every core (97 -> 89 s on 2 cores). The
# .pyc files are needed: where PYTHONDONTWRITEBYTECODE is set, an uncompiled venv imports ~2.5x slower in
# every stage process (torch + lightning + dvc + snakemake: 14.4 vs 5.9 s).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2

.PHONY: install demo test bench clean-outputs

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true  # speed only: pip too skips files that do not compile
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The default DVC remote: the store shared by every clone on this machine or disk (workflow/scripts/setup_remote.py).
install: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python workflow/scripts/setup_remote.py

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --workflow-profile workflow/profiles/local --cores $(CORES)
	@echo; echo "Test metrics: the mean over folds per model, and SeqSetVAE minus each other model (dvc metrics show;"
	@echo "bootstrap CIs and the sd over folds: reports/report.md and details/)"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc metrics show --md metrics/aggregate

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

# Speed / memory / baseline figures on the real PhysioNet 2012 data (prints figures; asserts nothing).
P12 ?= ../shared/data/physionet2012
bench: install
	SEQSETVAE_PHYSIONET2012_DIR="$(abspath $(P12))" $(BIN)/python benchmarks/bench_ingest.py --dir "$(abspath $(P12))" --repeat 2
	SEQSETVAE_PHYSIONET2012_DIR="$(abspath $(P12))" $(BIN)/python benchmarks/bench_preprocess.py
	$(BIN)/python benchmarks/bench_train.py --p12 "$(abspath $(P12))"

clean-outputs:
	rm -rf data/ingested data/splits.parquet data/processed models predictions metrics details plots curves reports logs .snakemake
