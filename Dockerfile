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
    && mkdir -p /models /checkpoints /var/lib/edge && chown -R iot /app /models /checkpoints /var/lib/edge
# (New named volumes mounted on /models, /checkpoints and /var/lib/edge take over this ownership.)
USER iot

# STACK_INSTALL_DIR: where the job looks for its connector cache (runtime/spark.py, ivy_dir() = $STACK_INSTALL_DIR/ivy).
ENV SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=python3 \
    STACK_INSTALL_DIR=/home/iot/.stack
# The Kafka and Kudu connectors (runtime/jvm/pom.xml), resolved into that cache at build time as `make setup` does
# (stack/install.py: spark-submit --packages, Maven Central only), so that no container downloads them at start.
RUN echo "print('Spark connectors resolved')" > /tmp/resolve_connectors.py \
    && python -c "import subprocess; from runtime.spark import connector_packages, spark_environment, spark_submit_command; subprocess.run(spark_submit_command('127.0.0.1', app=['/tmp/resolve_connectors.py'], packages=connector_packages(), master='local[1]', conf={'spark.ui.enabled': 'false'}), env=spark_environment('127.0.0.1'), check=True)" \
    && rm /tmp/resolve_connectors.py
# No usage telemetry from any service (runtime/settings.py, ENVIRONMENT_DEFAULTS: the same as the Makefile's).
ENV MLFLOW_DISABLE_TELEMETRY=true
CMD ["python", "-m", "gateway", "--help"]
