# RecForge developer entry points. `make demo` and `make test` do all the set-up themselves.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1

.PHONY: help install peers constraints demo up down status migrate test test-fast lint check-structure format compose-config clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all,dev]'
	@touch $(STAMP)

install: $(STAMP)  ## Create .venv and install RecForge with every extra, at the versions of constraints.txt

peers: .venv-peers/.installed-stamp  ## Create .venv-peers: sentence-transformers for bench/training.py's comparison

.venv-peers/.installed-stamp: bench/peers/requirements.txt
	@test -d .venv-peers || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install --quiet -r bench/peers/requirements.txt
	@touch $@

constraints: install  ## Write the installed versions to constraints.txt (after a dependency change passes the tests)
	@{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

demo: install  ## Start the stack (embedded Postgres + Redis unless configured), walk a project from data to /recommend, leave it running
	@$(BIN)/recforge status >/dev/null 2>&1 || $(BIN)/recforge up --detach
	$(BIN)/recforge demo

up: install  ## Run the stack in the foreground (Ctrl-C stops it)
	$(BIN)/recforge up

down:  ## Stop everything `recforge up` started
	$(BIN)/recforge down

status:  ## Show the running services
	$(BIN)/recforge status

migrate: install  ## Apply database migrations
	$(BIN)/recforge migrate

test: install  ## Run the whole test suite against real Postgres and Redis
	$(BIN)/pytest

test-fast: install  ## Tests without the slow ones (process start-up, training)
	$(BIN)/pytest -m 'not slow'

lint: install  ## ruff (lint + format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check-structure: install  ## Import rules: shared/ imports no service, services stay apart, no import circles
	$(BIN)/lint-imports --no-cache

format: install  ## Format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

compose-config:  ## Validate docker-compose.yml (and the GPU override)
	docker-compose -f docker-compose.yml config -q
	docker-compose -f docker-compose.yml -f docker-compose.gpu.yml config -q

clean:  ## Remove the virtualenv and caches (not .recforge data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
