# mammoxai: `make run` starts the node on the bundled demo model; `make test` runs the whole suite.
# Both do all set-up on a fresh Debian machine (venv, torch CPU wheel first, the project, Debian tools).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.mammoxai-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := orthanc orthanc-dicomweb orthanc-webviewer dcmtk dicom3tools
PYTEST_ARGS ?=

.PHONY: run test venv system-deps demo-models clean

venv: $(STAMP)

# torch first, from its CPU build; then everything else constrained to it, or pip pulls a CUDA torch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/constraints.txt
	$(PIP) install --quiet -c $(VENV)/constraints.txt -e '.[test]'
	touch $@

system-deps:
	@if ! command -v Orthanc >/dev/null && [ ! -x /usr/sbin/Orthanc ] || ! command -v storescu >/dev/null \
	    || ! command -v dciodvfy >/dev/null; then \
	  echo "installing Debian packages: $(DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	fi

run: venv
	$(VENV)/bin/mammoxai serve

test: venv system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Re-train the bundled demo models (fixed seeds; ~20 min on 2 CPU cores).
demo-models: venv
	$(PY) scripts/train_demo_models.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
