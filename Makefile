# Two commands do everything on a fresh machine:
#   make demo   install into .venv, run the whole pipeline on the embedded synthetic cohort, print metrics
#   make test   install into .venv, run the whole test suite (what CI runs: .ci/run)
# and one is for the edit loop:
#   make check  the tests not marked slow, printing the 15 slowest (docs/testing.md)
# Both are idempotent: the install step reruns only when requirements.txt or pyproject.toml change.
# The pinned set is installed by uv (itself pinned, installed by pip): it installs and byte-compiles faster than
# pip, which spends most of its time per package. The .pyc files are needed: where PYTHONDONTWRITEBYTECODE is
# set, an uncompiled venv imports several times slower in every stage process (torch + lightning + dvc +
# snakemake). Measured figures: docs/benchmark.md, "Speed figures behind code choices".
# uv does not read pip's config files; it is given pip's find-links from the environment (PIP_FIND_LINKS, where
# this machine's CPU torch wheel lies) unless UV_FIND_LINKS is set. `make INSTALLER=pip` installs with pip alone.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2
UV     := uv==0.13.9
INSTALLER ?= uv

.PHONY: install demo test check bench clean-outputs

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(INSTALLER),uv)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(UV)
	UV_FIND_LINKS="$${UV_FIND_LINKS:-$$PIP_FIND_LINKS}" $(BIN)/uv pip install --quiet --python $(BIN)/python \
		--compile-bytecode -r requirements.txt
else
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true  # speed only: pip too skips files that do not compile
endif
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

# Two pytest-xdist workers (pinned in requirements.txt), each test file whole in one worker: with xdist's default
# (--dist load) the tests of one file are spread over both workers and every module-scoped fixture (a DVC run, a
# pretrained checkpoint) is made in each. `make PYTEST_WORKERS= test` runs one process. Measured: docs/testing.md.
PYTEST_WORKERS ?= -n 2 --dist loadfile

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_WORKERS)

check: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_WORKERS) -m "not slow" --durations=15

# Speed / memory / baseline figures on the real PhysioNet 2012 data (prints figures; asserts nothing).
P12 ?= ../shared/data/physionet2012
bench: install
	SEQSETVAE_PHYSIONET2012_DIR="$(abspath $(P12))" $(BIN)/python benchmarks/bench_ingest.py --dir "$(abspath $(P12))" --repeat 2
	SEQSETVAE_PHYSIONET2012_DIR="$(abspath $(P12))" $(BIN)/python benchmarks/bench_preprocess.py
	$(BIN)/python benchmarks/bench_train.py --p12 "$(abspath $(P12))"

clean-outputs:
	rm -rf data/ingest data/ingested data/splits.parquet data/processed models predictions metrics details plots curves reports logs .snakemake
