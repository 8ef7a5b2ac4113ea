# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
# The active virtual environment if there is one, else .venv in this checkout.
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(CURDIR)/.venv)
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Per-machine cache of the mmcv wheel built from source (shared by every clone on the machine).
CACHE_DIR ?= $(HOME)/.cache/mmseg_ext
WHEEL_DIR ?= $(CACHE_DIR)/wheels
STAMP := $(VENV)/.mmseg_ext-installed
TORCH_PIN := $(shell grep -m1 '^torch==' requirements.txt)
MMCV_PIN := $(shell grep -m1 '^mmcv==' requirements.txt)

MODEL ?= erfnet
DEMO_CONFIG := configs/_demo_/$(MODEL).py
DEMO_DATA ?= data/demo_cityscapes
DEMO_WORK_DIR ?= work_dirs/demo_$(MODEL)
PYTEST_ARGS ?=

.PHONY: help install demo demo-data test clean

help:
	@echo "make demo [MODEL=erfnet|segformer-b0|ocrnet-hr18s]  install, make demo data, train, evaluate"
	@echo "make test                                           install, then run the test suite"
	@echo "make install                                        only install (.venv or the active venv)"

install: $(STAMP)

$(STAMP): requirements.txt setup.py tools/build_mmcv_wheel.sh
	@if [ ! -x "$(PY)" ]; then echo "[install] creating $(VENV)"; $(PYTHON) -m venv "$(VENV)"; fi
	@echo "[install] $(TORCH_PIN) (CPU wheel from the machine's pip find-links)"
	$(PIP) install -q "$(TORCH_PIN)"
	tools/build_mmcv_wheel.sh "$(WHEEL_DIR)" "$(CACHE_DIR)/mmcv-build" "$(TORCH_PIN)" "$(MMCV_PIN)"
	@echo "[install] pinned stack from requirements.txt"
	$(PIP) install -q --find-links "$(WHEEL_DIR)" -r requirements.txt
	@echo "[install] mmseg_ext (editable)"
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import mmcv.ops, mmseg, mmseg_ext; print('[install] ok: mmcv', mmcv.__version__, '| mmseg', mmseg.__version__, '| mmseg_ext', mmseg_ext.__version__)"
	@touch "$@"

demo-data: install
	@if [ -f "$(DEMO_DATA)/.complete" ]; then echo "[demo] data already in $(DEMO_DATA)"; \
	else $(PY) tools/make_demo_data.py "$(DEMO_DATA)" && touch "$(DEMO_DATA)/.complete"; fi

demo: demo-data
	@test -f "$(DEMO_CONFIG)" || { echo "unknown MODEL=$(MODEL): choose one of $$(ls configs/_demo_ | grep -v demo_dataset | sed 's/\.py$$//' | tr '\n' ' ')" >&2; exit 2; }
	@echo "[demo] training $(MODEL) ($(DEMO_CONFIG)) into $(DEMO_WORK_DIR)"
	$(PY) tools/train.py "$(DEMO_CONFIG)" --work-dir "$(DEMO_WORK_DIR)"
	@echo "[demo] evaluating the last checkpoint on the demo val split"
	$(PY) tools/test.py "$(DEMO_CONFIG)" "$$(cat $(DEMO_WORK_DIR)/last_checkpoint)" --work-dir "$(DEMO_WORK_DIR)" --show-dir overlays

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf work_dirs "$(DEMO_DATA)" build *.egg-info
