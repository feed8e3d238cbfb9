"""docs/deployment.md stays true to the code: every systemd ``ExecStart`` is a command line the CLI
accepts, the gateway runs from the one station file (no separate ``uplink.toml``), and the tables
the doc lists for that file are the ones the station file's schema knows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deployment.md"


def exec_starts() -> list[list[str]]:
    text = DOC.read_text().replace("\\\n", " ")
    return [shlex.split(m) for m in re.findall(r"^ExecStart=(.+)$", text, re.M)]


def test_every_exec_start_parses_with_the_cli():
    from ims_station.cli import build_parser

    cmds = exec_starts()
    assert len(cmds) == 2                              # gateway and relay
    for argv in cmds:
        assert argv[0].endswith("/ims-station"), argv
        args = build_parser().parse_args(argv[1:])
        assert getattr(args, "handler", None) is not None, argv


def test_the_gateway_unit_runs_edge_run_with_the_one_station_file():
    gateway = next(a for a in exec_starts() if a[1] == "edge")
    assert gateway[1:] == ["edge", "run", "--config", "/etc/ims-station/station.toml"]
    text = DOC.read_text()
    assert "/etc/ims-station/uplink.toml" not in text and "python -m ims_station.edge.station" not in text


def test_the_tables_the_doc_names_for_the_station_file_exist_in_its_schema():
    from ims_station.edge.config import SCHEMA

    section = DOC.read_text().split("## 3. Configuration", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`\[\[?([a-z_.]+)\]\]?`", section))
    assert {"station", "link", "ports", "framer", "outbox", "keys", "uplink", "uplink.brokers"} <= named
    for table in named:
        node = SCHEMA
        for part in table.split("."):
            node = node["properties"][part]
            node = node.get("items", node)              # [[ports]], [[uplink.brokers]]: arrays of tables
        assert node.get("type") == "object", table
