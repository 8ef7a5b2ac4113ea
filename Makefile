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

BENCH_DIR ?= work_dirs/bench
BENCH_ARGS ?= --repeats 5 --warmup 1
BENCH_OUT ?= docs/benchmark_cpu.md
BENCH_FAMILY_DIR ?= docs/bench

.PHONY: help install demo demo-data test bench accuracy wheel-check clean

help:
	@echo "make demo [MODEL=erfnet|segformer-b0|ocrnet-hr18s]  install, make demo data, train, evaluate"
	@echo "make test                                           install, then run the test suite"
	@echo "make bench                                          plugin vs mmseg speed tables ($(BENCH_OUT), $(BENCH_FAMILY_DIR)/)"
	@echo "make accuracy                                       mIoU and speed of every inference path on the demo models ($(ACCURACY_OUT))"
	@echo "make install                                        only install (.venv or the active venv)"
	@echo "make wheel-check                                    build the wheel, install it elsewhere and use it without this checkout"

install: $(STAMP)

$(STAMP): requirements.txt setup.py tools/misc/build_mmcv_wheel.sh
	@if [ ! -x "$(PY)" ]; then echo "[install] creating $(VENV)"; $(PYTHON) -m venv "$(VENV)"; fi
	@echo "[install] $(TORCH_PIN) (CPU wheel from the machine's pip find-links)"
	$(PIP) install -q "$(TORCH_PIN)"
	tools/misc/build_mmcv_wheel.sh "$(WHEEL_DIR)" "$(CACHE_DIR)/mmcv-build" "$(TORCH_PIN)" "$(MMCV_PIN)"
	@echo "[install] pinned stack from requirements.txt"
	$(PIP) install -q --find-links "$(WHEEL_DIR)" -r requirements.txt
	@echo "[install] mmseg_ext (editable)"
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import mmcv.ops, mmseg, mmseg_ext; print('[install] ok: mmcv', mmcv.__version__, '| mmseg', mmseg.__version__, '| mmseg_ext', mmseg_ext.__version__)"
	@touch "$@"

demo-data: install
	@if [ -f "$(DEMO_DATA)/.complete" ]; then echo "[demo] data already in $(DEMO_DATA)"; \
	else $(PY) tools/dataset_converters/make_demo_data.py "$(DEMO_DATA)" && touch "$(DEMO_DATA)/.complete"; fi

demo: demo-data
	@test -f "$(DEMO_CONFIG)" || { echo "unknown MODEL=$(MODEL): choose one of $$(ls configs/_demo_ | grep -v demo_dataset | sed 's/\.py$$//' | tr '\n' ' ')" >&2; exit 2; }
	@echo "[demo] training $(MODEL) ($(DEMO_CONFIG)) into $(DEMO_WORK_DIR)"
	$(PY) tools/train.py "$(DEMO_CONFIG)" --work-dir "$(DEMO_WORK_DIR)"
	@echo "[demo] evaluating the last checkpoint on the demo val split"
	$(PY) tools/test.py "$(DEMO_CONFIG)" "$$(cat $(DEMO_WORK_DIR)/last_checkpoint)" --work-dir "$(DEMO_WORK_DIR)" --show-dir overlays

# Tests run one torch thread each (tests/conftest.py), so two worker processes keep both cores busy.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

# Every family against mmseg's own implementation with the same weights, the variants alternating in one
# process (tools/analysis_tools/benchmark.py), each run measuring the machine's roof per precision first; the tables are
# generated from the JSON results, never copied by hand.
# Rows 1-3 time every inference path of a family at Cityscapes resolution: mmseg, the plugin's float32 paths,
# bf16 (the best float32 eager path plus bf16), and the exported file in ONNX Runtime (float32, int8) and
# OpenVINO (float32, bf16). They run under the tuned allocator (glibc keeps freed memory: no paging in the
# timings, so the ratios are the computation's); SegFormer-B0's also under glibc's default (a fresh process
# each), because mmseg's attention matrices make the two conditions differ most there. int8 calibrates on the
# config's train split, or on the embedded demo scenes where that is absent (the row says which). Compiled
# rows also time the family's fastest eager path, so the table shows whether compiling pays; compiling
# OCRNet-HR18 after folding takes minutes, so that path is left out. Rows of the slowest networks take 3
# timed calls per variant. One command per row, each announced by a progress line.
BENCH := $(PY) tools/analysis_tools/benchmark.py
BENCH_ROWS := erfnet ocrnet_hr18 segformer_b0 segformer_b2 segformer_b0_train erfnet_compiled ocrnet_hr18_compiled segformer_b0_compiled
ALL_PATHS := folded+channels-last folded+channels-last+bf16 onnxruntime onnxruntime-int8 openvino openvino-bf16
bench: install
	@mkdir -p "$(BENCH_DIR)"
	@echo "[bench 1/8] ERFNet 512x1024 inference: mmseg, configured and every path"
	$(BENCH) configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py --shape 512 1024 --variants mmseg configured $(ALL_PATHS) --allocator tuned $(BENCH_ARGS) --json "$(BENCH_DIR)/erfnet.json"
	@echo "[bench 2/8] OCRNet-HR18 512x1024 inference: mmseg and every path"
	$(BENCH) configs/ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py --shape 512 1024 --variants mmseg $(ALL_PATHS) --allocator tuned $(BENCH_ARGS) --repeats 3 --json "$(BENCH_DIR)/ocrnet_hr18.json"
	@echo "[bench 3/8] SegFormer-B0 512x1024 inference (both allocators): mmseg, configured and every path"
	$(BENCH) configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py --shape 512 1024 --mode whole --variants mmseg configured $(ALL_PATHS) --allocator both $(BENCH_ARGS) --json "$(BENCH_DIR)/segformer_b0.json"
	@echo "[bench 4/8] SegFormer-B2 1024x1024 inference: mmseg, configured"
	$(BENCH) configs/segformer/segformer_mit-b2_8xb1-160k_cityscapes-1024x1024.py --shape 1024 1024 --mode whole --variants mmseg configured --allocator default $(BENCH_ARGS) --repeats 3 --json "$(BENCH_DIR)/segformer_b2.json"
	@echo "[bench 5/8] SegFormer-B0 1024x1024 training step (both allocators): mmseg, configured"
	$(BENCH) configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py --task train-step --shape 1024 1024 --variants mmseg configured --allocator both --repeats 3 --warmup 1 --json "$(BENCH_DIR)/segformer_b0_train.json"
	@echo "[bench 6/8] ERFNet 512x1024 inference, torch.compile: mmseg, folded+channels-last, compiled, folded+channels-last+compiled"
	$(BENCH) configs/erfnet/erfnet_fcn_4xb4-160k_cityscapes-512x1024.py --shape 512 1024 --variants mmseg folded+channels-last compiled folded+channels-last+compiled --no-flops --repeats 3 --warmup 1 --json "$(BENCH_DIR)/erfnet_compiled.json"
	@echo "[bench 7/8] OCRNet-HR18 512x1024 inference, torch.compile: mmseg, folded+channels-last, compiled"
	$(BENCH) configs/ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py --shape 512 1024 --variants mmseg folded+channels-last compiled --no-flops --repeats 3 --warmup 1 --json "$(BENCH_DIR)/ocrnet_hr18_compiled.json"
	@echo "[bench 8/8] SegFormer-B0 512x1024 inference, torch.compile: mmseg, configured, compiled"
	$(BENCH) configs/segformer/segformer_mit-b0_8xb1-160k_cityscapes-1024x1024.py --shape 512 1024 --mode whole --variants mmseg configured compiled --no-flops --repeats 3 --warmup 1 --json "$(BENCH_DIR)/segformer_b0_compiled.json"
	$(PY) tools/analysis_tools/benchmark_table.py $(foreach row,$(BENCH_ROWS),"$(BENCH_DIR)/$(row).json") --out "$(BENCH_OUT)" --family-dir "$(BENCH_FAMILY_DIR)"

# The three demo models (trained once, seeded, or reused from `make demo`'s work dirs) evaluated along every
# inference path: float32, folded, bf16, ONNX Runtime float32/int8, OpenVINO float32/bf16
# (tools/analysis_tools/accuracy.py).
ACCURACY_MODELS ?= erfnet segformer-b0 ocrnet-hr18s
ACCURACY_OUT ?= docs/accuracy.md
accuracy: demo-data
	$(PY) tools/analysis_tools/accuracy.py --models $(ACCURACY_MODELS) --data-root "$(DEMO_DATA)" --work-root work_dirs --out "$(ACCURACY_OUT)" --chart docs/speed_vs_miou.svg

# The wheel built from this checkout, installed into a throwaway environment that reuses the installed stack,
# used from outside the checkout: models register, shipped configs load as mmseg_ext::..., a config inheriting
# one trains, a published checkpoint converts and exports (tools/misc/check_wheel.sh).
wheel-check: install
	tools/misc/check_wheel.sh "$(PY)"

clean:
	rm -rf work_dirs "$(DEMO_DATA)" build *.egg-info
