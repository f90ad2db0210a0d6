"""The live dashboard (`python -m dashboard`, a `panel serve` app on Bokeh): the pipeline's flow from its metrics,
the fleet's verdicts and the alerts from Kafka. A runtime part: it imports `contract` and `runtime` only."""
