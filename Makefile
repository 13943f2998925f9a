# Developer entry points; each is a thin wrapper so CI and humans run the same thing.
.PHONY: help test demo lint typecheck services up

VENV := .venv
BIN := $(VENV)/bin

help:
	@echo "make test       venv + dev install, services, pytest, ruff, mypy (ARGS='...' for pytest)"
	@echo "make demo       the order-fulfillment demo, embedded (no services needed)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make typecheck  mypy (strict, sagas/)"
	@echo "make services   start PostgreSQL, Redis and RabbitMQ if they are down"
	@echo "make up         the Procfile topology under honcho (settings from .env: see .env.example)"

test:
	bash scripts/test $(ARGS)

demo:
	bash scripts/demo

$(BIN)/ruff $(BIN)/mypy $(BIN)/honcho:
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

lint: $(BIN)/ruff
	$(BIN)/ruff check sagas workers tests examples pytest_sagas.py
	$(BIN)/ruff format --check sagas workers tests examples pytest_sagas.py

typecheck: $(BIN)/mypy
	$(BIN)/mypy

services:
	bash scripts/services

up: $(BIN)/honcho
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start
