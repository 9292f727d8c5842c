# Two commands do everything on a fresh machine:
#   make demo   install into .venv, run the whole pipeline on the embedded synthetic cohort, print metrics
#   make test   install into .venv, run the test suite
# Both are idempotent: the install step reruns only when requirements.txt or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= 2

.PHONY: install demo test bench clean-outputs

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --workflow-profile workflow/profiles/local --cores $(CORES)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python workflow/scripts/show_metrics.py

test: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python benchmarks/bench_data.py

clean-outputs:
	rm -rf data/ingested data/splits.parquet data/processed logs .snakemake
