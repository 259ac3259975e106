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

# One pytest worker per core (at most 4): each test is single-threaded, so on 2 cores the
# suite takes 6-8 minutes instead of 10. Whole files per worker (--dist loadfile), so a
# file's shared fixtures (a learned chain, the CI Slurm cluster) are built once.
# TEST_JOBS=0 runs it in one process.
TEST_JOBS ?= auto
test: install
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --maxprocesses 4 --dist loadfile

clean-demo:
	rm -rf $(DEMO_STORE)
