# The two commands of the README. Each sets up a fresh machine by itself.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := ffmpeg espeak-ng chromium
# A bare Debian/Ubuntu python3 has no venv/ensurepip: python3-venv brings them.
VENV_PACKAGE := python3-venv

.PHONY: quickstart test setup system-deps

## quickstart: build the sample dataset and fine-tune the tiny model on it (CPU, a few minutes)
quickstart: setup
	$(BIN)/python -m data_prep build data_prep/sample_footage --out runs/quickstart/dataset --config recipes/quickstart_data.yaml --encode
	$(BIN)/accelerate launch --config_file accelerate_configs/cpu.yaml hhtune/train.py recipes/quickstart.yaml

## test: run the whole test suite
test: setup
	$(BIN)/python -m pytest -q

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
	# The CPU wheel of torch first, so nothing below pulls a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@
