# qvl: `make demo` sets up and runs the built-in default job; `make test` sets up and runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
# torch with torchvision (the Qwen2.5-VL processor needs it); these builds install from local wheels where present
TORCH := $(if $(filter aarch64,$(ARCH)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)

.PHONY: setup demo test check-sync lint notebooks outputs pytest browser lab

setup: $(VENV)/.qvl-setup

$(VENV)/.qvl-setup: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/qvl sweep vram_sweep --runs-dir runs

# notebooks and qvl/ agree, notebooks are clean: both commands must leave the tree unchanged
check-sync: setup
	@before="$$(git status --porcelain -- qvl nbs)"; \
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nbdev_export && PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nbdev_clean; \
	after="$$(git status --porcelain -- qvl nbs)"; \
	if [ "$$before" != "$$after" ]; then echo "nbdev_export/nbdev_clean changed files: run them and commit"; \
	  git status --porcelain -- qvl nbs; git --no-pager diff --stat -- qvl nbs; exit 1; fi

# pyflakes' checks (unused or undefined names, syntax): the compact one-line style of the notebooks stays
lint: setup
	$(BIN)/ruff check --isolated --select F,E9 qvl tests benchmarks

notebooks: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nbdev_test --n_workers 0

# run the notebooks' CPU cells and store their outputs (tables, figures) in them, then clean; commit the result
outputs: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python tests/store_outputs.py $(NBS) && PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/nbdev_clean

# Debian's chromium and chromium-driver for the JupyterLab browser tests (tests/test_lab.py), installed where missing;
# where they cannot be installed this says why, and those tests fail saying so
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null ) \
	    || echo "could not install chromium and chromium-driver with apt-get: the JupyterLab browser tests will fail"; \
	else echo "no apt-get to install chromium and chromium-driver: the JupyterLab browser tests will fail"; fi

pytest: setup browser
	$(BIN)/python -m pytest -q tests

# JupyterLab on the notebooks (nbs/) and the experiment templates (experiments/), with the project's kernel "Python (qvl)";
# more options in LAB_ARGS (make lab LAB_ARGS="--no-browser --port 8899")
lab: setup
	$(BIN)/python -m ipykernel install --sys-prefix --name qvl --display-name "Python (qvl)" >/dev/null
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/nbs/index.ipynb \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

test: check-sync lint notebooks pytest
