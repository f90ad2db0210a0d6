#!/usr/bin/env bash
# `make compose-secrets`: write `.env` for docker-compose.yml with freshly generated secrets (mode 0600).
# An existing `.env` is kept: delete it first to rotate the secrets.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -f .env ]]; then
  echo ".env exists; keeping it (delete it to generate new secrets)"
  exit 0
fi
umask 077
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
cat > .env <<ENV
MQTT_USERNAME=iot
MQTT_PASSWORD=$(secret)
MODEL_ACCESS_KEY=$(secret)
BIND_ADDRESS=127.0.0.1
ENV
echo "wrote .env (mode 0600) with a generated MQTT password and model access key"
