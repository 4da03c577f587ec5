# `make test` and `make demo` each set up .venv on a fresh machine.
# torch is pinned to the CPU wheel that installs locally; unpinned, pip may pull a CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: test demo demo-depth bench clean chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,eval,hub]' $(TORCH)
	touch $(STAMP)

$(VENV)/.bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench,plot]' $(TORCH)
	touch $(VENV)/.bench

$(VENV)/.plot: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,plot]' $(TORCH)
	touch $(VENV)/.plot

# tests/test_page.py loads the solve page in Debian's chromium, driven by Playwright (dev extra).
# Installed here when missing, where apt-get can (as root or through sudo -n; about 45 s with
# the package lists); otherwise that test skips and says how to install it.
export CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo -n)

chromium:
	@test -x $(CHROMIUM) || ! command -v apt-get >/dev/null || { \
	  echo "installing chromium for tests/test_page.py (apt-get, about a minute)"; \
	  { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    >/dev/null 2>&1 || echo "could not install chromium; tests/test_page.py will skip"; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

# The main job on the embedded corpus: an Attractor and a Transformer, compared (about 5 minutes once set up).
demo: $(VENV)/.plot
	$(BIN)/python -m attractor demo --out runs/demo

# Test-time depth: the shipped parity model (trained on 16 bits) on a random 512-bit string (seconds).
demo-depth: $(STAMP)
	$(BIN)/python -c "import random; print(''.join(random.choice('01') for _ in range(512)))" | \
	  $(BIN)/python -m attractor solve parity - --checkpoint examples/parity --set solver=picard

bench: $(VENV)/.bench
	$(BIN)/python -m bench.solvers

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
