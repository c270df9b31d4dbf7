# Every target here is what CI runs; .ci/run calls `make test` and nothing else.
# Everything runs in the project's own virtualenv (.venv), built from nothing when missing, so a
# system Python (PEP 668) is never touched and a missing install step shows on a fresh clone.
BOOT_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
STAMP := $(VENV)/.install-stamp
PROTO_DIR := smoelib/keda_proto
PROTO_OUT := $(PROTO_DIR)/externalscaler_pb2.py $(PROTO_DIR)/externalscaler_pb2_grpc.py
# import-linter's `lint-imports`, run by the project's Python (the contracts: pyproject.toml)
LINT_IMPORTS := $(PYTHON) -c 'from importlinter.cli import lint_imports_command as c; c()' --no-cache

.PHONY: install proto test lint bench demo train train-ablations train-loaded examples clean

$(PYTHON):
	$(BOOT_PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# The CPU wheel of torch is pinned only here, and only when torch is missing: a looser
# requirement resolved with no torch installed would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PYTHON)
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[dev]"
	@touch $@

# The integration tests run a real Prometheus: Debian's package, installed when missing.
.prometheus-stamp:
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "note: install Debian's 'prometheus' package for the integration tests"; fi; }
	@touch $@

# A stamp left by another checkout is stale: check (outside this directory) that the installed
# package is this checkout and the dev tools import; else reinstall.
install:
	@$(PYTHON) -I -c "import os, smoelib, kmock, grpc_tools; \
	  assert os.path.samefile(os.path.dirname(smoelib.__file__), 'smoelib')" 2>/dev/null \
	  || rm -f $(STAMP)
	@command -v prometheus >/dev/null 2>&1 || rm -f .prometheus-stamp
	@$(MAKE) --no-print-directory $(STAMP) .prometheus-stamp

# The generated gRPC stubs are committed (they ship in the wheel; grpcio-tools is no run-time
# dependency); this regenerates them with the pinned grpcio-tools, and a test checks that it
# leaves them unchanged.
proto: install
	$(PYTHON) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. $(PROTO_DIR)/externalscaler.proto

# The layering contracts (pyproject.toml, [tool.importlinter]) are part of the tests.
test: install
	$(LINT_IMPORTS)
	$(PYTHON) -m pytest

lint: install
	$(PYTHON) -m ruff check smoelib tests benchmarks
	$(LINT_IMPORTS)

# The embedded default: simulated cluster, real scaler (gRPC) and controller, bundled policy.
demo: install
	$(PYTHON) -m smoelib.cli demo

# The training recipe (resumable: `make train TRAIN_ARGS=--resume`); the bundled policy is this
# run cut after 80 PPO updates, `make train TRAIN_ARGS="--updates 80"` (docs/training.md).
train: install
	$(PYTHON) -m smoelib.cli train --out runs/smoe --seed 1 --export smoelib/policy/pretrained/default.pt $(TRAIN_ARGS)

# The three ablations with the same budget and seed (docs/training.md): no DAGNN, no pointer,
# no shield (trained and run under the unshielded guard profile). The bundled ones are these
# runs cut after 80 PPO updates, like default.pt: make train-ablations TRAIN_ARGS="--updates 80".
train-ablations: install
	$(PYTHON) -m smoelib.cli train --out runs/smoe-mlp --architecture smoe-mlp --seed 1 --export smoelib/policy/pretrained/smoe-mlp.pt $(TRAIN_ARGS)
	$(PYTHON) -m smoelib.cli train --out runs/smoe-independent --architecture smoe-independent --seed 1 --export smoelib/policy/pretrained/smoe-independent.pt $(TRAIN_ARGS)
	$(PYTHON) -m smoelib.cli train --out runs/smoe-unshielded --guards unshielded --seed 1 --export smoelib/policy/pretrained/smoe-unshielded.pt $(TRAIN_ARGS)

# The three learned policies trained at 10x load, which examples/loaded.yaml loads through
# policy.pretrained (docs/results/loaded.md); same recipe, budget and seed, with the decoder's
# "spare" capacity masks (the even split cannot express the loaded teacher; docs/training.md).
train-loaded: install
	$(PYTHON) -m smoelib.cli train --config examples/loaded.yaml --capacity spare --out runs/smoe-loaded --seed 1 --export examples/loaded/default.pt $(TRAIN_ARGS)
	$(PYTHON) -m smoelib.cli train --config examples/loaded.yaml --capacity spare --out runs/smoe-mlp-loaded --architecture smoe-mlp --seed 1 --export examples/loaded/smoe-mlp.pt $(TRAIN_ARGS)
	$(PYTHON) -m smoelib.cli train --config examples/loaded.yaml --capacity spare --out runs/smoe-independent-loaded --architecture smoe-independent --seed 1 --export examples/loaded/smoe-independent.pt $(TRAIN_ARGS)

# The two example settings files, rendered from the settings tree's defaults (a test checks them).
examples: install
	$(PYTHON) -c 'from smoelib.settings import render_example as r; print(r(), end="")' > examples/config.yaml
	$(PYTHON) -c 'from smoelib.settings import render_example as r; print(r(part="experiment"), end="")' > examples/experiment.yaml

bench: install
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PYTHON) $$script || exit 1; done

clean:
	rm -rf $(VENV) .prometheus-stamp build dist *.egg-info
