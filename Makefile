# mammoxai: `make run` starts the node on the bundled demo model; `make test` runs the whole suite.
# Both do all set-up on a fresh Debian machine (venv, torch CPU wheel first, the project, Debian tools).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.mammoxai-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages, each with a file that shows it is installed; only the missing ones are installed.
# chromium drives the OHIF test (tests/viewer); npm fetches the OHIF build (`make ohif`); orthanc-gdcm lets
# Orthanc transcode JPEG 2000 (our SEGs) when a DICOMweb client asks for another transfer syntax; redis-server is
# the broker tests/distributed start themselves (the package's own service is not used).
DEBIAN_NEEDS := /usr/sbin/Orthanc:orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb \
  /usr/share/orthanc/plugins/libOrthancWebViewer.so:orthanc-webviewer /usr/bin/storescu:dcmtk \
  /usr/share/orthanc/plugins/libOrthancGdcm.so:orthanc-gdcm /usr/bin/dciodvfy:dicom3tools /usr/bin/chromium:chromium \
  /usr/bin/redis-server:redis-server
PYTEST_ARGS ?=
# The OHIF viewer build for tests/viewer: the npm package's prebuilt dist, fetched once per machine.
OHIF_VERSION := 3.13.2
OHIF_CACHE := .cache/ohif-$(OHIF_VERSION)
OHIF_DIST := $(OHIF_CACHE)/package/dist

.PHONY: run test venv system-deps ohif demo-models clean

venv: $(STAMP)

# torch first, from its CPU build; then everything else constrained to it, or pip pulls a CUDA torch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	echo "torch==2.13.0" > $(VENV)/constraints.txt
	$(PIP) install --quiet -c $(VENV)/constraints.txt -e '.[test]'
	touch $@

system-deps:
	@missing=""; for need in $(DEBIAN_NEEDS); do [ -e "$${need%%:*}" ] || missing="$$missing $${need##*:}"; done; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# `npm pack` downloads the published package (about 50 MB) without installing it: its dist/ is the built app.
ohif: $(OHIF_DIST)/index.html

$(OHIF_DIST)/index.html: | system-deps
	rm -rf $(OHIF_CACHE) && mkdir -p $(OHIF_CACHE)
	cd $(OHIF_CACHE) && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null && tar xzf ohif-app-$(OHIF_VERSION).tgz \
	  && rm ohif-app-$(OHIF_VERSION).tgz
	test -f $@

run: venv
	$(VENV)/bin/mammoxai serve

test: venv system-deps ohif
	$(PY) -m pytest $(PYTEST_ARGS)

# Re-train the bundled demo models (fixed seeds; ~20 min on 2 CPU cores).
demo-models: venv
	$(PY) scripts/train_demo_models.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
