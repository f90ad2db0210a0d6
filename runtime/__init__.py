"""The bottom floor every runtime part stands on (beside `contract`): connection settings, names, health reports,
metrics endpoints, backoff, waiting, and how to run Spark. It imports nothing of the project; see runtime/README.md."""
