# Two entry points for a fresh Debian/Ubuntu machine with Python 3.11 (see README.md):
#   make run   -> set up, then run the default workflow and write the HTML report
#   make test  -> set up, then run the test suite
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := texlive-latex-base texlive-latex-recommended texlive-fonts-recommended latexmk lmodern
SNAKEMAKE := $(VENV)/bin/snakemake
# Rules call tools of the virtualenv (jupyter-nbconvert for the notebook rule).
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup run test lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@command -v latexmk >/dev/null && command -v pdflatex >/dev/null || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_PACKAGES); }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# pip byte-compiles one file at a time (71 s of the 147 s install on 2 cores); compileall
	# spreads it over the cores (41 s). The .pyc files matter: where PYTHONDONTWRITEBYTECODE is set
	# (CI images), every job would otherwise recompile torch. A few files of the wheels' own test
	# suites use Python 3.12 syntax and fail to compile; pip ignores those failures too.
	$(VENV)/bin/pip install -q --no-compile -r requirements.txt
	$(VENV)/bin/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# The default run's name (config/config.yaml `run:`): its claims table is printed at the end.
RUN_NAME := $(shell sed -n 's/^run: *\([A-Za-z0-9_.-]*\).*/\1/p' config/config.yaml)
CLAIMS_TABLE := data/processed/$(RUN_NAME)/claims.md

run: setup
	$(SNAKEMAKE) --cores all --report report.html --report-after-run
	@if [ -f $(CLAIMS_TABLE) ]; then echo; cat $(CLAIMS_TABLE); fi

test: setup
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(SNAKEMAKE) --lint

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/snakefmt Snakefile workflow/rules
