# `make up` — set up and serve the app with a worker; `make test` — the whole test suite.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# TORCH picks the torch build that `make up` and `make test` both install (README, "Two commands"):
#   auto   (default) cuda when nvidia-smi sees a GPU, else cpu
#   cpu    the CPU-only build from TORCH_CPU_INDEX, about 200 MB to download
#   cuda   PyPI's default Linux build with its CUDA libraries, about 5.8 GB to download
#   any other value is a pip requirement installed as given (CI: TORCH=torch==2.13.0)
TORCH ?= auto
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

ifeq ($(TORCH),auto)
TORCH_BUILD := $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
TORCH_WHY := (auto: $(if $(filter cuda,$(TORCH_BUILD)),nvidia-smi sees a GPU,no GPU seen by nvidia-smi))
else
TORCH_BUILD := $(TORCH)
endif
ifeq ($(TORCH_BUILD),cpu)
TORCH_PIP := torch --index-url $(TORCH_CPU_INDEX)
TORCH_ABOUT := the CPU-only build of torch (about 200 MB) from $(TORCH_CPU_INDEX)
else ifeq ($(TORCH_BUILD),cuda)
TORCH_PIP := torch
TORCH_ABOUT := the CUDA build of torch (about 5.8 GB with its nvidia-* libraries) from PyPI
else
TORCH_PIP := '$(TORCH_BUILD)'
TORCH_ABOUT := '$(TORCH_BUILD)' as given, from your pip indexes (size depends on the build)
endif

.PHONY: up install torch test lint format

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Says which build and how big before pip starts; pip keeps a torch that already satisfies it
# (remove $(VENV) to switch builds).
torch: $(PY)
	@echo "torch: TORCH=$(strip $(TORCH) $(TORCH_WHY)) installs $(TORCH_ABOUT)."
	@$(PY) -c "import torch; print('torch:', torch.__version__, 'is already in $(VENV)')" 2>/dev/null || true
	$(PIP) install -q $(TORCH_PIP)

install: torch
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

test: torch
	$(PIP) install -q -e '.[train,qlora,dev]'
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
