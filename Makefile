# Two commands do everything: `make demo` and `make test`. Both bootstrap idempotently:
# Debian packages for headless EGL rendering (and g++ for torch.compile), a virtualenv, and `pip install -e .[...]`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= rl,dev,ros
APT_PACKAGES := libegl1 libgl1-mesa-dri g++
# The stamp names what was installed, so editing setup.py, this file or EXTRAS re-installs.
STAMP := $(VENV)/.installed-$(shell (cat setup.py Makefile; echo "$(EXTRAS)") | sha1sum | cut -c1-12)

.PHONY: demo test fuzz bootstrap apt lint clean

demo: bootstrap
	$(PY) -m rtfm_env.cli demo --out demo_out

test: bootstrap
	$(PY) -m pytest -q tests

# >= 1,000 generated inputs per interface (env, vector env, memory API and files, checkpoints, shards, ROS);
# writes docs/results/fuzz.md and fuzz.json. `make test` runs a bounded slice (tests/fuzz/test_fuzz.py).
fuzz: bootstrap
	OMP_NUM_THREADS=1 $(PY) tests/fuzz/run.py --inputs 1000 --out docs/results/fuzz

lint: bootstrap
	$(VENV)/bin/ruff check rtfm_env tests benchmarks agents

bootstrap: apt $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP):
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || { \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q python3-venv; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*
	@touch $@

clean:
	rm -rf $(VENV) demo_out .pytest_cache
