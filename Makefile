# Two commands from a fresh clone:  `make run`  and  `make test`.
# Python 3.12 when the machine has it (its asyncio starts a request's handler, and minichat's provider
# pump, in the same loop step: ~0.5 ms less added time to first token under load); else python3 (>= 3.11).
PYTHON ?= $(shell for p in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 && { echo "$$p"; exit 0; }; \
	done; echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PLUGINS := plugins/policy_static plugins/audit_log plugins/storage_openai plugins/storage_azure
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test

.PHONY: run test install install-test lint typecheck pytest clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml $(foreach p,$(PLUGINS),$(p)/pyproject.toml)
	$(PIP) install --quiet -e . $(foreach p,$(PLUGINS),-e ./$(p))
	touch $@

$(TSTAMP): $(STAMP)
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(STAMP)
install-test: $(TSTAMP)

## make run: install and run the service on the embedded defaults (SQLite, local model, 127.0.0.1:8087)
run: $(STAMP)
	$(VENV)/bin/minichat serve

## make test: install and run the whole suite (lint, type check, tests on SQLite and PostgreSQL)
test: $(TSTAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy minichat_host
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .minichat build *.egg-info
