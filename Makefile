# Two commands do everything on a fresh machine:
#   make reproduce   set up .venv, then run notebooks 01-05 with papermill (profile cpu by default)
#   make test        set up .venv, then run the test suite
# Both are idempotent: the environment is (re)installed only when requirements.txt or pyproject.toml change.

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
PROFILE    ?= cpu
SEED       ?= 0
BAGNET     ?= bagnet33
SEEDS      ?= 1 2
# NPROC=N: notebooks 02 and 03 train with torchrun on N processes (one per GPU; docs/distributed.md)
NPROC      ?=
RUN_DIR    ?= runs/$(PROFILE)
SHARED_DATA     := ../shared/data/flowers
SHARED_MANIFEST := ../shared/data/flowers_paper_split.csv
# The data: $BAGNET_DATA if set, else the shared flowers beside the repo if present (else the CLI falls
# back to a download, then to the embedded synthetic dataset, and says so).
DATA       ?= $(or $(BAGNET_DATA),$(wildcard $(SHARED_DATA)))
# absolute, so that notebooks run from notebooks/ (JupyterLab) see the same folder
DATA_ABS    = $(if $(DATA),$(abspath $(DATA)))
MANIFEST_ABS = $(if $(MANIFEST),$(abspath $(MANIFEST)))
# The paper's exact split when the shared flowers are used; override with MANIFEST= for a fresh split.
MANIFEST   ?= $(if $(and $(DATA),$(filter $(abspath $(DATA)),$(abspath $(SHARED_DATA)))),$(wildcard $(SHARED_MANIFEST)),)
PYTEST_ARGS ?=
# the ImageNet validation folder (<wnid>/*.JPEG) of `make imagenet` (docs/imagenet.md)
IMAGENET_VAL ?=

.PHONY: help setup test test-fast lint test-browser reproduce reference verify seeds seeds-gather imagenet lab clean

help:
	@echo "make test        create .venv, install, run ruff and import-linter (make lint), then pytest (all but the browser test)"
	@echo "make test-fast   the quick lane: pytest without the tests marked slow (about 3 minutes)"
	@echo "make test-browser  the blackout explorer in JupyterLab, driven in headless Chromium (needs chromium on PATH)"
	@echo "make reproduce   create .venv, install, run notebooks 01-05 headless (PROFILE=$(PROFILE), RUN_DIR=$(RUN_DIR), BAGNET=$(BAGNET))"
	@echo "make seeds       after make reproduce: the course again with training seeds $(SEEDS) beside $(RUN_DIR), the seed table in its report (a whole course per seed: its measured time is in docs/performance.md; resumable)"
	@echo "make seeds-gather  the seed table from $(RUN_DIR)-seedN directories run on other machines and copied here"
	@echo "make imagenet    the blackout study on ImageNet validation with the published $(BAGNET) (IMAGENET_VAL=DIR; docs/imagenet.md)"
	@echo "make reference   a ready run directory (runs/reference) from the networks shipped in results/$(PROFILE)/networks: the course without training"
	@echo "make verify      recompute every published number that needs no training from the shipped networks (exit 1 on a mismatch)"
	@echo "make lab         open JupyterLab on a ready run: your finished runs/$(PROFILE), else the shipped networks (make reference)"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@echo ">>> creating $(VENV) and installing requirements.txt + bagnet_lib (editable)"
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)
	@echo ">>> environment ready: $$($(PY) -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"

test: $(STAMP) lint
	@echo ">>> running the test suite (data: $(or $(DATA),none; data tests skip))"
	BAGNET_DATA=$(DATA_ABS) $(PY) -m pytest -m "not browser" $(PYTEST_ARGS)

# ruff (pyflakes, import order), then the layer contracts of pyproject.toml's [tool.importlinter] (docs/architecture.md)
lint: $(STAMP)
	$(PY) -m ruff check bagnet_lib tests
	$(VENV)/bin/lint-imports --no-cache

# The quick lane while iterating (about 3 minutes on 2 cores): everything but the tests marked `slow` (notebook runs, training subprocesses,
# smoke pipelines, benchmarks) and the browser test.
test-fast: $(STAMP)
	BAGNET_DATA=$(DATA_ABS) $(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

# Notebook 04 in a real JupyterLab in headless Chromium (Debian's `chromium` on PATH; skips, saying why,
# without it): runs the notebook, moves the explorer's controls, checks that it redraws. 1-2 min.
test-browser: $(STAMP)
	@echo ">>> the blackout explorer in JupyterLab, in headless Chromium ($(or $(shell command -v chromium),no chromium on PATH: the test will skip))"
	BAGNET_DATA=$(DATA_ABS) $(PY) -m pytest -m browser tests/test_browser.py $(PYTEST_ARGS)

reproduce: $(STAMP)
	@echo ">>> running the experiment: profile $(PROFILE), run directory $(RUN_DIR), data $(or $(DATA),<none found>)$(if $(MANIFEST), with the paper's split $(MANIFEST))"
	$(PY) -m bagnet_lib reproduce --profile $(PROFILE) --run-dir $(RUN_DIR) --seed $(SEED) --bagnet $(BAGNET) \
		$(if $(NPROC),--nproc $(NPROC)) $(if $(DATA),--data-dir $(DATA)) $(if $(MANIFEST),--manifest $(MANIFEST)) $(if $(filter-out smoke,$(PROFILE)),--publish)

# The seed study: the same course with more training seeds, each in $(RUN_DIR)-seedN, then results/seeds.csv and
# the write-up of $(RUN_DIR) again with the seed table. Resumable: run it again after an interruption.
seeds: $(STAMP)
	$(PY) -m bagnet_lib seeds --run-dir $(RUN_DIR) --seeds $(SEEDS) $(if $(NPROC),--nproc $(NPROC)) $(if $(filter-out smoke,$(PROFILE)),--publish)

# Seeds run on other machines (make seeds SEEDS=2 there), their $(RUN_DIR)-seedN copied beside $(RUN_DIR): one table
seeds-gather: $(STAMP)
	$(PY) -m bagnet_lib seeds --run-dir $(RUN_DIR) --gather $(if $(filter-out smoke,$(PROFILE)),--publish)

# The ImageNet study (docs/imagenet.md): the published weights, streaming, resumable (run it again after an interruption)
imagenet: $(STAMP)
	$(PY) -m bagnet_lib imagenet --val-dir "$(IMAGENET_VAL)" --model $(BAGNET)

# The networks shipped with the repository, laid out as a run directory: notebooks 02 and 03 skip training
reference: $(STAMP)
	BAGNET_DATA=$(DATA_ABS) $(PY) -m bagnet_lib reference --profile $(PROFILE) --run-dir runs/reference

# The published numbers recomputed from the shipped networks (docs/verify.md)
verify: $(STAMP)
	BAGNET_DATA=$(DATA_ABS) $(PY) -m bagnet_lib verify --profile $(PROFILE) $(VERIFY_ARGS)

# JupyterLab on a ready run: runs/$(PROFILE) when it holds a finished course, else the shipped networks laid out in
# runs/reference (seconds), else runs/$(PROFILE) to train in. The notebooks' RUN_DIR = None opens it ($BAGNET_RUN_DIR).
lab: $(STAMP)
	@run_dir=$$(BAGNET_DATA=$(DATA_ABS) $(PY) -m bagnet_lib reference --profile $(PROFILE) --run-dir runs/reference --for-lab); \
	echo ">>> JupyterLab on $$run_dir with BAGNET_DATA=$(DATA) BAGNET_MANIFEST=$(MANIFEST) (the same data and split as make reproduce)"; \
	BAGNET_RUN_DIR=$$run_dir BAGNET_DATA=$(DATA_ABS) BAGNET_MANIFEST=$(MANIFEST_ABS) $(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf runs/smoke .pytest_cache
