# The project's own services for docker-compose.yml: simulator, gateway, model server, the streaming job's driver
# (spark-submit in client mode) and the Spark workers that run its Python code. One image, so the driver and the
# executors have the same Python (3.11) and the same pinned packages (pyproject.toml, the one place for pins).
FROM python:3.11.14-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 iot
WORKDIR /app
COPY pyproject.toml README.md ./
COPY contract contract
COPY runtime runtime
COPY world world
COPY simulator simulator
COPY gateway gateway
COPY streaming streaming
COPY model model
COPY sql sql
COPY dashboard dashboard
COPY edge edge
RUN pip install --no-cache-dir . \
    && mkdir -p /models /checkpoints && chown -R iot /app /models /checkpoints
# (New named volumes mounted on /models and /checkpoints take over this ownership.)
USER iot

# spark-submit resolves the Kafka and Kudu connectors (runtime/jvm/pom.xml) from Maven Central into this cache.
ENV SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=python3 \
    IVY_CACHE=/home/iot/.ivy2
# No usage telemetry from any service (runtime/settings.py, ENVIRONMENT_DEFAULTS: the same as the Makefile's).
ENV MLFLOW_DISABLE_TELEMETRY=true
CMD ["python", "-m", "gateway", "--help"]
