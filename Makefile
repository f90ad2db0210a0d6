# The project's commands. `make demo` sets up and runs everything; `make test` runs the tests.
PY := .venv/bin/python
# Every process `make` starts gets these unless the environment sets them: no MLflow usage telemetry. The same as
# runtime/settings.py's ENVIRONMENT_DEFAULTS (for what `python -m stack` starts) and the Dockerfile's ENV
# (tests/test_privacy.py checks all three).
export MLFLOW_DISABLE_TELEMETRY ?= true

.DEFAULT_GOAL := help
.PHONY: help setup up up-cluster down status demo dashboard test drills audit lint clean train experiments mlflow-ui bench bench-model bench-edge bench-job bench-pipeline simulate lab lab-reset compose-secrets compose-e2e

# `make lab-reset 9` as well as `make lab-reset N=9`: the words after lab-reset are its argument, not targets.
ifeq (lab-reset,$(firstword $(MAKECMDGOALS)))
  LAB_RESET_ARGS := $(wordlist 2,$(words $(MAKECMDGOALS)),$(MAKECMDGOALS))
  ifneq ($(LAB_RESET_ARGS),)
    N := $(LAB_RESET_ARGS)
    $(eval $(LAB_RESET_ARGS):;@:)
  endif
endif
ifneq ($(filter lab-reset,$(MAKECMDGOALS)),)
  ifneq ($(words $(N)),1)
    $(error which lab? usage: make lab-reset 9 (the lab's number right after lab-reset), or make lab-reset N=9)
  endif
endif

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-16s %s\n", $$1, $$2}'

setup: ## install everything (apt, .venv, Kafka/Kudu/Spark connectors from Maven Central); idempotent
	@bash stack/setup.sh

up: setup ## start the local stack on 127.0.0.1 and wait until every service is ready (STACK_PROFILE=cluster: the cluster)
	@$(PY) -m stack up

up-cluster: setup ## the cluster profile: 3 Kafka nodes, 3 Kudu masters + 3 tablet servers, Spark master + 2 workers
	@STACK_PROFILE=cluster $(PY) -m stack up

down: ## stop the local stack; no process is left behind
	@if [ -x $(PY) ]; then $(PY) -m stack down; fi

status: ## show each service: state (up, starting, degraded, crashed, crash-looping, down), pid, memory, restarts
	@$(PY) -m stack status

audit: ## reconcile the readings of the last 10 minutes stage by stage (python -m stack audit --help for more)
	@$(PY) -m stack audit --since 10m

demo: up ## set up, start everything, run the simulator and watch readings arrive in Kudu via SQL (Ctrl+C)
	@$(PY) -m stack demo

dashboard: up ## the live dashboard (flow, fleet, alerts; `make up` starts it): prints the URL to open
	@$(PY) -c 'from runtime.settings import connection_settings; print(connection_settings()["DASHBOARD_URL"])'

test: setup lint ## lint, then the whole test suite against real services (started by the tests themselves)
	@$(PY) -m pytest -v

drills: setup ## every fault drill (kill -9 of each process, outages, poison; the cluster's failovers), with a results table (~25 min)
	@DRILL_RESULTS=$${DRILL_RESULTS:-.stack/drills.json} $(PY) -m pytest -v -m drill tests/test_drills.py tests/test_cluster.py

train: setup ## lab 2: train the workshop's first model (20 trees, depth 20) as an MLflow run
	@$(PY) -m model.train --num-trees 20 --max-depth 20

experiments: setup ## lab 7: run the grid (20/20, 15/25, 25/20, 20/25), rank by auroc, serve the best
	@$(PY) -m model.experiments --promote-best

mlflow-ui: ## MLflow's UI over the project's runs, on http://127.0.0.1:5000
	@$(PY) -m mlflow ui --backend-store-uri "$$($(PY) -c 'from model.registry import tracking_uri; print(tracking_uri())')" \
		--host 127.0.0.1 --port 5000

bench: bench-model bench-edge bench-job bench-pipeline ## every benchmark

bench-edge: up ## simulator -> Mosquitto -> gateway -> Kafka msg/s, and the gateway's ceiling from an MQTT backlog
	@$(PY) -m bench.edge_bench

lab: up ## the workshop: JupyterLab over the lab notebooks; prints the URL to open, with its token (Ctrl+C)
	@$(PY) -m stack lab

lab-reset: up ## put the stack in the state lab N expects (make lab-reset 9, or N=9)
	@$(PY) notebooks/labkit.py reset $(N)

simulate: up ## lab 3: run the sensor simulator as the workshop did (one reading a second; Ctrl-C stops)
	@$(PY) -m simulator simulator/mqtt.iot.config

bench-job: up ## the streaming job alone draining a Kafka backlog into Kudu: records/s and CPU per record, cold and warm
	@$(PY) -m bench.job_bench

bench-pipeline: up ## MQTT in -> queryable in Kudu: records/s, p50/p99 latency, CPU per stage; batch vs per-record scoring
	@$(PY) -m bench.pipeline_bench

bench-model: setup ## model server over HTTP vs in-process predict: rows/s by batch size, single-call p50/p99
	@$(PY) -m bench.model_bench

compose-secrets: ## write .env for docker-compose.yml with generated secrets (kept if it exists)
	@bash compose/secrets.sh

compose-e2e: ## with Docker: docker-compose.yml up, end-to-end check through Impala, down (volumes too)
	@bash compose/e2e.sh

lint: ## ruff, and import-linter: the floors of the code (pyproject.toml, [tool.importlinter])
	@$(PY) -m ruff check .
	@.venv/bin/lint-imports

clean: down ## stop the stack and delete its data, logs and secrets (keeps downloaded parts)
	rm -rf .stack/data .stack/logs .stack/pids .stack/conf .stack/secrets.env .stack/connection.env
