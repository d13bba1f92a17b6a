# Host environments as users have them: the web UIs' own pins, their stock torch and their old
# optional packages, which the worker must never see.
#   .venv-a1111  Automatic1111 1.10.1: torch 2.1.2, gradio 3.41.2, fastapi 0.94, pydantic 1,
#                transformers 4.30.2, kornia 0.6.7
#   .venv-forge  Forge f2.0.1:         torch 2.3.1, gradio 4.40.0, pydantic 2, diffusers 0.31.0,
#                transformers 4.46.1, peft 0.13.2, kornia 0.6.7
# Each gets this package core-only (`pip install -e .`), pytest and what the API tests need.
# PyPI's CUDA builds of these torches are what the hosts install; they run on a CPU.
# Renders from these envs run in a worker started with the env's own python (tests/test_hosts.py).
# Included by the Makefile; `make test` builds them, plus Debian's chromium for the browser test.
# Included before the Makefile's own targets: keep its first target (setup) the default goal.
_hosts_saved_goal := $(.DEFAULT_GOAL)
HOST_PYTHON ?= $(PYTHON)
HOST_COMMON := "pytest>=7" uvicorn httpx requests
# gradio 3.41.2 still imports today only with the versions A1111 1.10 pins or ones close to them.
A1111_PINS := torch==2.1.2 torchvision==0.16.2 kornia==0.6.7 transformers==4.30.2 \
	gradio==3.41.2 fastapi==0.94.0 "pydantic<2" httpx==0.24.1 "huggingface_hub<0.26" \
	"numpy<2" "uvicorn<0.30" "websockets<12" "starlette<0.27"
# gradio 4.40.0 as Forge runs it; newer pydantic 2 releases break gradio_client 1.2's schema reader.
FORGE_PINS := torch==2.3.1 torchvision==0.18.1 diffusers==0.31.0 transformers==4.46.1 peft==0.13.2 kornia==0.6.7 \
	gradio==4.40.0 "pydantic>=2,<2.11" "huggingface_hub<1" "fastapi<0.113" "numpy<2"
# Browser test: playwright drives Debian's chromium (it cannot download its own browser here).
BROWSER_PINS := playwright>=1.40

.PHONY: host-envs browser

host-envs: .venv-a1111/.installed .venv-forge/.installed

.venv-a1111/.installed: pyproject.toml mk/hosts.mk
	$(HOST_PYTHON) -m venv .venv-a1111
	echo '*' > .venv-a1111/.gitignore
	.venv-a1111/bin/pip install --quiet --upgrade pip
	.venv-a1111/bin/pip install --quiet $(A1111_PINS) $(HOST_COMMON) -e .
	touch $@

.venv-forge/.installed: pyproject.toml mk/hosts.mk
	$(HOST_PYTHON) -m venv .venv-forge
	echo '*' > .venv-forge/.gitignore
	.venv-forge/bin/pip install --quiet --upgrade pip
	.venv-forge/bin/pip install --quiet $(FORGE_PINS) $(HOST_COMMON) -e .
	touch $@

# Debian's chromium + chromedriver (as root on a fresh machine) and playwright in the test runner's venv.
browser: $(VENV)/.browser

$(VENV)/.browser: mk/hosts.mk | setup
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
		else \
			echo "chromium missing: run as root, or apt-get install chromium chromium-driver"; \
		fi; \
	fi
	$(BIN)/pip install --quiet "$(BROWSER_PINS)"
	touch $@

.DEFAULT_GOAL := $(_hosts_saved_goal)
