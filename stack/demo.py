"""`make demo`: with the stack up, run the simulator and show, every few seconds, what SQL sees arriving.

Every part is the real one: the simulator publishes on MQTT, the gateway bridges to Kafka, the streaming job
scores into Kudu, and this view asks SQL (impyla) for the row count and the machines whose latest reading is
predicted to break. Readings other clients publish on `iot/#` show up too. Ctrl+C stops the simulator and this
view; the stack keeps running until `make down`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from runtime.settings import connection_settings
from sql.client import query

SIMULATOR_CONFIG = Path(__file__).resolve().parent.parent / "simulator" / "mqtt.iot.config"
LIKELY_TO_BREAK = """
select sensor_id from (
  select sensor_id, is_healthy, row_number() over (partition by sensor_id order by sensor_ts desc) as newest
  from sensors) latest
where newest = 1 and is_healthy = 0 order by sensor_id"""


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def run_demo(interval_ms: float = 100, refresh_s: float = 5) -> None:
    settings = connection_settings()
    host, port = settings.get("SQL_HOST"), settings.get("SQL_PORT")
    simulator = subprocess.Popen([sys.executable, "-m", "simulator", str(SIMULATOR_CONFIG), "--quiet",
                                  "--interval-ms", str(interval_ms)])
    # `make down`, or a terminal closing, ends the demo the way Ctrl+C does: the simulator goes too.
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"simulator started ({1000 / interval_ms:.0f} readings/s); Ctrl+C stops the demo (`make down` the stack)")
    if settings.get("DASHBOARD_URL"):
        print(f"live dashboard: {settings['DASHBOARD_URL']}")
    try:
        while simulator.poll() is None:
            count, unhealthy = query("select count(*), sum(case when is_healthy = 0 then 1 else 0 end) "
                                     "from sensors", host, port)[0]
            breaking = [row[0] for row in query(LIKELY_TO_BREAK, host, port)]
            print(f"{time.strftime('%H:%M:%S')}  rows in Kudu: {count:,}  unhealthy readings: {unhealthy or 0:,}  "
                  f"machines likely to break now: {breaking or 'none'}", flush=True)
            time.sleep(refresh_s)  # refresh interval of the view
    except KeyboardInterrupt:
        print("\nstopping the simulator; the stack keeps running (`make down` stops it)")
    finally:
        # A second Ctrl+C or SIGTERM (make passes its own on) must not cut the clean-up short with a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        simulator.terminate()
        simulator.wait(timeout=30)
