# The project's commands. `make demo` sets up and runs everything; `make test` runs the tests.
PY := .venv/bin/python

.DEFAULT_GOAL := help
.PHONY: help setup up down status demo test test-fast lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

setup: ## install everything (apt, .venv, Kafka/Kudu/Spark connectors from Maven Central); idempotent
	@bash stack/setup.sh

up: setup ## start the local stack on 127.0.0.1 and wait until every service is ready
	@$(PY) -m stack up

down: ## stop the local stack; no process is left behind
	@if [ -x $(PY) ]; then $(PY) -m stack down; fi

status: ## show each service: address, state, pid, memory, log file
	@$(PY) -m stack status

demo: up ## set up, start the stack and show its status (the pipeline joins as it is built)
	@$(PY) -m stack status

test: setup ## run the whole test suite against real services (started by the tests themselves)
	@$(PY) -m pytest -v

lint: ## ruff
	@$(PY) -m ruff check .

clean: down ## stop the stack and delete its data, logs and secrets (keeps downloaded parts)
	rm -rf .stack/data .stack/logs .stack/pids .stack/conf .stack/secrets.env .stack/connection.env
