# Two commands for a fresh machine:
#   make demo   set up .venv and render a sample Deforum settings file into outputs/
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch; on a GPU machine use e.g. `make demo TORCH=torch`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[render,test]"
	touch $@

demo: setup
	$(BIN)/deforum-wan inspect ../shared/deforum-settings/a1111-deforum-default.txt

test: setup
	$(BIN)/python -m pytest
