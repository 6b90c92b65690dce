# The commands of the README. Each sets up a fresh machine by itself.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# gcc/g++: torch.compile (model.compile) builds its CPU kernels with a C++ compiler.
# chromium: the browser tests of the data_prep report and the evaluation report.
APT_PACKAGES := ffmpeg espeak-ng gcc g++ chromium
# A bare Debian/Ubuntu python3 has no venv/ensurepip: python3-venv brings them.
VENV_PACKAGE := python3-venv

.PHONY: quickstart test check setup system-deps

## quickstart: build the sample dataset and fine-tune the tiny model on it (CPU; about 11 min on a busy 2-core machine)
quickstart: setup
	$(BIN)/python -m data_prep build data_prep/sample_footage --out runs/quickstart/dataset --config recipes/quickstart_data.yaml --encode
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml --num_cpu_threads_per_process 2 hhtune/train.py recipes/quickstart.yaml

## test: run the whole test suite (PYTEST_ARGS adds options, e.g. PYTEST_ARGS=--durations=20)
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## check: while working: the linter and the fast tier (everything not marked slow), a few minutes on 2 cores
check: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	$(PY) -c "import ensurepip, venv" 2>/dev/null || missing="$$missing $(VENV_PACKAGE)"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing:$$missing — run: sudo apt-get install -y$$missing"; exit 1; fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so nothing below pulls another build. pip takes it from its configured sources: a local
	# CPU wheel where pip has one (find-links), else PyPI's default build (CUDA on x86-64 Linux); see the README.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@
