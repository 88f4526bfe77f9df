# `make up` — set up and serve the app with a worker; `make test` — the whole test suite.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# A GPU host takes torch's default build; CI pins the CPU build before calling make.
TORCH ?= torch

.PHONY: up install test lint format

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[train]'

up: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	@echo "Serving http://127.0.0.1:8000 with a Celery worker; Ctrl-C stops both."
	@trap 'trap - INT TERM EXIT; kill 0' INT TERM EXIT; \
	$(VENV)/bin/celery -A config worker -Q default,gpu --concurrency 1 --beat \
		--schedule var/celerybeat-schedule --loglevel INFO & \
	$(PY) manage.py runserver 127.0.0.1:8000

up: export DEBUG ?= 1

test: $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[train,dev]'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
