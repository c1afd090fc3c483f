# Each target installs what it needs: Debian packages, a virtual environment, the native build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := liburing-dev fio etcd-server fuse3 libfuse3-dev pkg-config
NATIVE_SOURCES := $(wildcard shoal/engine/*.pyx shoal/engine/*.pxd shoal/engine/src/*.c shoal/engine/src/*.h) setup.py
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup build test test-unit test-integration demo bench lint clean

all: build

# Re-checked whenever the Makefile (and so the package list) changes.
$(VENV)/.apt: Makefile
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/.apt
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0"
	$(PY) -m pip install -q --no-build-isolation -e ".[dev]"
	@touch $@

$(VENV)/.built: $(VENV)/.installed $(NATIVE_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	@touch $@

setup: $(VENV)/.installed
build: $(VENV)/.built

test: build
	$(PY) -m pytest tests

test-unit: build
	$(PY) -m pytest tests/unit

test-integration: build
	$(PY) -m pytest tests/integration

demo: build
	$(PY) -m shoal.demo

bench: build
	$(PY) perf/engine.py
	$(PY) perf/pagestore.py
	$(PY) perf/read_path.py
	$(PY) perf/cluster.py
	$(PY) perf/frontends.py
	$(PY) perf/small_files.py
	$(PY) perf/policies.py
	$(PY) perf/checkpoint.py

lint: build
	$(VENV)/bin/ruff check shoal tests perf
	$(VENV)/bin/ruff format --check shoal tests perf

clean:
	rm -rf build $(VENV) shoal/engine/_*.c shoal/engine/*.so
