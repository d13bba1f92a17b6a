# Two commands for a fresh machine:
#   make demo   set up .venv and render a sample Deforum settings file into outputs/
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
# A CPU build of torch; on a GPU machine use e.g. `make demo TORCH=torch`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
-include mk/*.mk

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[render,test]"
	touch $@

# Tiny random models stand in for real weights: the frames are noise, the pipeline is real.
DEMO_SETTINGS ?= ../shared/deforum-settings/a1111-deforum-default.txt
DEMO_MODEL ?= models/tiny/tiny-wan2.1-vace

models/tiny/.built: | setup
	$(BIN)/deforum-wan make-tiny-models models/tiny
	touch $@

demo: setup models/tiny/.built
	$(BIN)/deforum-wan inspect $(DEMO_SETTINGS)
	$(BIN)/deforum-wan plan $(DEMO_SETTINGS) --model $(DEMO_MODEL)
	$(BIN)/deforum-wan render $(DEMO_SETTINGS) --model $(DEMO_MODEL) --steps 4 --width 128 --height 128 --outdir outputs

test: setup host-envs browser
	$(BIN)/python -m pytest
