"""Regenerate the console's screenshots in docs/ (80x24 SVG): ``python -m tests.console.screenshots``.

The station view is the console attached to a running ``sim://`` station (tests/console/conftest.py)
over its Unix socket; the relay view is the console on a broker (``ims_station.broker.start_broker``:
Mosquitto when installed) where three stations published their retained SOH and status -- MET1's
SOH is the running station's own status document.  Not a test: docs change only when someone runs it.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
SIZE = (80, 24)


async def _shot(app, path: Path, keys: tuple[str, ...] = ()) -> None:
    async with app.run_test(size=SIZE) as pilot:
        await app.refresh_data()
        await pilot.pause()
        if keys:
            await pilot.press(*keys)
        await app.refresh_data()
        await pilot.pause(0.3)
        path.write_text(app.export_screenshot(title=path.stem))
        print(f"wrote {path}")


def main() -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from ims_station.broker import BrokerConfig, start_broker
    from ims_station.console.app import ConsoleApp
    from ims_station.console.sources import RelaySource, StationSource

    from .conftest import start_station

    with tempfile.TemporaryDirectory() as tmp:
        gen = start_station(Path(tmp) / "st")
        rs = next(gen)
        try:
            src = StationSource(socket_path=str(rs.socket))
            asyncio.run(_shot(ConsoleApp(src, refresh_s=3600), DOCS / "console-station.svg"))
            doc = src.poll()["status"]
            with start_broker("mosquitto", Path(tmp) / "broker") as broker:
                pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="console-shots")
                pub.connect(broker.host, broker.port)
                pub.loop_start()
                now = time.time()
                sohs = {"MET1": {"station": "MET1", "time": now - 4, **{k: doc[k] for k in ("outbox", "uplink", "gateway")}},
                        "MET2": {"station": "MET2", "time": now - 12, "outbox": {"frames": 3, "oldest_age_s": 8.0,
                                                                                  "alarms": 0},
                                 "uplink": {"frames_acked": 8630, "connected": True}},
                        "ARR3": {"station": "ARR3", "time": now - 5400, "outbox": {"frames": 5212, "oldest_age_s": 5410.0,
                                                                                   "alarms": 2},
                                 "uplink": {"frames_acked": 120, "connected": False}}}
                for sta, soh in sohs.items():
                    status = "offline" if sta == "ARR3" else "online"
                    pub.publish(f"ims/{sta}/soh", json.dumps(soh, default=str), qos=1, retain=True).wait_for_publish(10)
                    pub.publish(f"ims/{sta}/status", json.dumps({"station": sta, "status": status}), qos=1,
                                retain=True).wait_for_publish(10)
                relay = RelaySource(BrokerConfig(host=broker.host, port=broker.port), prefix="ims")
                relay.start()
                deadline = time.monotonic() + 10
                while len(relay.snapshot()[0]) < 3 and time.monotonic() < deadline:
                    time.sleep(0.05)
                pub.publish("ims/MET2/events", json.dumps({"body": {"id": "MET2-1780000123450000",
                                                                    "onset": "2026-06-01T12:02:03.45Z"}}),
                            qos=1).wait_for_publish(10)
                time.sleep(0.5)
                try:
                    asyncio.run(_shot(ConsoleApp(relay=relay, refresh_s=3600), DOCS / "console-relay.svg"))
                finally:
                    relay.stop()
                    pub.loop_stop()
                    pub.disconnect()
        finally:
            gen.close()


if __name__ == "__main__":
    main()
