# Every target sets up .venv on first use, with only Python 3.10+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean venv install cluster serve

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "zchat needs Python 3.10 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/zchat-broker $(ARGS)

# The full-screen client in a browser on http://127.0.0.1:8000 (loopback only);
# ARGS go to zchat and need --nick: make serve ARGS="--nick alice".
serve: $(STAMP)
	$(BIN)/python -m client._serve $(ARGS)

# Two workers; the heaviest tests one at a time on one of them (tests/conftest.py).
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m tests.bench $(ARGS)

# Redis and three broker nodes on loopback (5554; 5555, 5565, 5575), to try cluster mode.
cluster: $(STAMP)
	$(BIN)/python -m tests.run_cluster $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check broker client messages tests
	$(BIN)/ruff format --check broker client messages tests
	$(BIN)/mypy broker client messages

# zchat and zchat-broker on PATH without activating the venv.
install: $(STAMP)
	mkdir -p $(HOME)/.local/bin
	ln -sf $(CURDIR)/$(BIN)/zchat $(CURDIR)/$(BIN)/zchat-broker $(HOME)/.local/bin/
	@echo "zchat and zchat-broker are in ~/.local/bin (is it on your PATH?)"

clean:
	rm -rf $(VENV) build *.egg-info .cluster
