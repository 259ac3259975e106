# The two commands of the README. Both work on a fresh machine with nothing but Python 3.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_STORE ?= .demo-store

.PHONY: demo test install clean-demo

$(BIN)/cluctl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

install: $(BIN)/cluctl

# Learn the 5 digits tasks with GEM one `cluctl learn` at a time, then print per-task accuracies.
demo: install
	@rm -rf $(DEMO_STORE)
	@CLUCTL_STORE=$(DEMO_STORE) PATH="$(CURDIR)/$(BIN):$$PATH" sh scripts/demo.sh

test: install
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO_STORE)
