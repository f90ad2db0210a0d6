"""Edge agents (`python -m edge`): one process per edge site that installs the model versions sent to it and scores
its site's readings locally with ONNX Runtime, publishing a verdict for each.

    python -m edge --agent-id plant-7 --readings-filter 'iot/#' --health-file /run/edge.health

What it does (the protocol is in `contract`: model jobs, job statuses, verdicts; topic names in runtime.settings):

- Subscribes (QoS 1) to `jobs/<agent_id>/model` (retained job documents: `python -m model rollout` writes them)
  and to its readings filter; publishes its status, retained, on `jobs/<agent_id>/status` (IDLE before its first
  job, else the last one) at every connection.
- A job: QUEUED -> IN_PROGRESS -> SUCCEEDED | FAILED. It downloads the artifact from the model server with its
  own MODEL_ACCESS_KEY (never from the job, never logged), resuming a partial download with HTTP Range, retrying
  transient failures with backoff, checks size and sha256, loads the model beside the running one and swaps it in
  only once it gives the workshop examples their verdicts; then keeps it as `<state-dir>/model-v<N>.onnx`.
  Any failure leaves the previous model scoring. See edge/jobs.py.
- Each reading on its filter becomes a verdict on `verdicts/<sensor_id>` (QoS 1, contract.verdict_json) once it
  has a model; a payload that is not a reading is counted and logged, never fatal. See edge/scoring.py.
  Its MQTT session outlives it (24 h) and a reading is acknowledged only once the broker has its verdict: a
  kill -9 loses no verdict; readings published while it is away are scored when it is back.
- Its log lines go to stderr and to `logs/<agent_id>` (QoS 0); its health to `--health-file` (up while
  connected and scoring works); Prometheus metrics with `--metrics-port` (edge/metrics.py).
- Restarted, it scores at once with its last good model (state.json) and resumes an unfinished job (the
  retained job document comes back).

Floor: a runtime part, beside the gateway. Imports `contract`, `runtime` and the model's ONNX helpers
(`model.edge_model`) only.
"""
