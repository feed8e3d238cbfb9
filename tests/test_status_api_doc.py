"""docs/status-api.md and docs/configuration.md stay true to the status API's code: the metric
tables list exactly the metrics the collectors can emit (name, type, labels), and the ``[status]``
table's keys and defaults are documented as ims_station/statusapi.py has them."""

from __future__ import annotations

import re
from pathlib import Path

from ims_station import statusapi
from ims_station.metrics import RELAY_METRICS, STATION_METRICS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _rows(section: str) -> dict[str, tuple[str, str]]:
    text = (DOCS / "status-api.md").read_text()
    start = text.index(section)
    end = text.find("\n#", start + len(section))
    rows = re.findall(r"^\| `([a-z_]+)` \| (\w+) \| ([a-z_, ]*) \|", text[start:end if end > 0 else None], re.M)
    return {name: (kind, labels.strip()) for name, kind, labels in rows}


def test_the_metric_tables_list_every_metric_the_collectors_emit():
    for section, metrics in (("### Gateway metrics", STATION_METRICS), ("### Relay metrics", RELAY_METRICS)):
        documented = _rows(section)
        declared = {m.exposed: (m.kind, ", ".join(m.labels)) for m in metrics}
        assert documented == declared, section
        assert len(declared) == len(metrics)          # no name declared twice
    assert all(m.name.startswith("ims_station_") for m in STATION_METRICS)
    assert all(m.name.startswith("ims_relay_") for m in RELAY_METRICS)


def test_the_status_table_is_documented_with_its_defaults():
    text = (DOCS / "configuration.md").read_text()
    section = text[text.index("## `[status]`"):]
    section = section[:section.index("\n## ")]
    shown = {k: v for k, v in re.findall(r"^\| `(\w+)` \| [^|]+ \| `([^`]*)` \|", section, re.M)}
    assert set(shown) == set(statusapi.SCHEMA["properties"]) == set(statusapi.DEFAULTS)
    for key, value in statusapi.DEFAULTS.items():
        if key == "socket":
            assert shown[key] == "<data_dir>/status.sock"
        elif isinstance(value, bool):
            assert shown[key] == str(value).lower(), key
        else:
            assert shown[key] == f'"{value}"', key
    relay = (DOCS / "relay.md").read_text()
    assert all(f"# {k} =" in relay or f"\n{k} =" in relay for k in statusapi.DEFAULTS)
