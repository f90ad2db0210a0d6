#!/usr/bin/env bash
# `make compose-e2e`: bring docker-compose.yml up, publish readings through the real Compose services, check
# through Impala (impyla) that every one became a scored row in Kudu and that Prometheus scrapes our services, and
# tear everything down (volumes too). READINGS=2000 by default; CLUSTER=1 runs the `cluster` profile
# (compose/cluster.env). Needs Docker with the Compose plugin (2.17 or later: two --env-file) and memory: the
# services' memory limits add up to 20 GiB, 28 GiB in the cluster profile and 20 GiB in the demo profile (what they
# use is typically far less).
set -euo pipefail
cd "$(dirname "$0")/.."
readings="${READINGS:-2000}"
compose=(docker compose)
if [[ "${CLUSTER:-0}" == 1 ]]; then
  compose+=(--env-file .env --env-file compose/cluster.env --profile cluster)
fi
if ! docker compose version >/dev/null 2>&1; then
  echo "compose-e2e needs Docker with the Compose plugin (docker compose version failed)" >&2
  exit 2
fi
bash compose/secrets.sh
trap 'echo "== tearing down"; "${compose[@]}" --profile demo down -v --remove-orphans' EXIT

echo "== building and starting the stack (waits for every healthcheck)"
"${compose[@]}" up -d --build --wait

count() {
  "${compose[@]}" run --rm --no-deps -T sql-init python -c \
    'from sql.client import query; print(query("select count(*) from sensors where is_healthy in (0, 1)")[0][0])'
}
before="$(count)"
echo "== rows before: ${before}; publishing ${readings} readings with the simulator"
"${compose[@]}" --profile demo run --rm --no-deps -T simulator \
  python -m simulator simulator/mqtt.iot.config --messages "${readings}" --interval-ms 0 --quiet

echo "== waiting for ${readings} more scored rows in Kudu, through Impala"
deadline=$((SECONDS + 600))
while now="$(count)"; [[ "${now}" -lt $((before + readings)) ]]; do
  if (( SECONDS > deadline )); then
    echo "FAILED: ${now} rows, expected $((before + readings)); docker compose logs streaming gateway" >&2
    exit 1
  fi
  sleep 5  # polling Impala
done
if [[ "${now}" -ne $((before + readings)) ]]; then
  echo "FAILED: ${now} rows, expected exactly $((before + readings))" >&2
  exit 1
fi
echo "== OK: ${readings} readings published on MQTT are ${readings} scored rows in Kudu, seen through Impala"

echo "== Prometheus scrapes the gateway, the model server and the job (compose/prometheus.yml)"
"${compose[@]}" run --rm --no-deps -T sql-init python - <<'PY'
import json
import urllib.request

answer = json.load(urllib.request.urlopen("http://prometheus:9090/api/v1/query?query=up", timeout=10))
up = {result["metric"]["job"]: result["value"][1] for result in answer["data"]["result"]}
down = [job for job in ("gateway", "model", "streaming") if up.get(job) != "1"]
if down:
    raise SystemExit(f"FAILED: Prometheus target(s) not up: {down} (up: {up})")
print(f"OK: up {up}")
PY
