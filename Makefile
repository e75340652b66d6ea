# Two commands for a fresh machine: `make run` (set up, build the default workspace, serve the app)
# and `make test` (the whole test suite). Both are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt | md5sum | cut -c1-12)

.PHONY: run test setup workspace bench clean-workspace

setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-* && touch $@

workspace: $(STAMP)
	$(BIN)/python -m core.pipeline build

run: workspace
	$(BIN)/streamlit run app.py --server.address 127.0.0.1

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_index
	$(BIN)/python -m benchmarks.bench_probes
	$(BIN)/python -m benchmarks.bench_train
	$(BIN)/python -m benchmarks.bench_app
	$(BIN)/python -m benchmarks.bench_ingest
	$(BIN)/python -m benchmarks.bench_simulate

clean-workspace:
	rm -rf workspace
