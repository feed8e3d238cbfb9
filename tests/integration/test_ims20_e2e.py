"""Issue 10, IMS 2.0 messages end to end with a real Mosquitto: a station's
``StageContext.emit_message("ims20", text)`` with the real MIX58 SAMPLEPHD and SPIKEPHD goes outbox
-> ``{p}/STA/ims20`` -> relay process (``ims-station relay run``) -> relay archive, where the text is
byte-identical; ``ims-station relay ims2 list --json`` lists it, ``relay ims2 get`` gives back the
same bytes, the relay's acknack of frame set ``STA:ims20`` removes it from the station's outbox (and
nothing else); messages emitted while the relay is down are all archived, once each, when it is
back, and the restarted relay given the same message again does not archive it twice.

The station is the production assembly (``harness.PacedStation``: ``edge/station.assemble`` from a
station file), its board not sampling; the test takes the ``StageContext`` the assembly hands its
stages (the noble-gas driver's path) and emits through it.  The relay is a child process, as
deployed.  Printed: the wall time from ``emit_message`` to the archive's index row and to the
deletion from the station's outbox.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from .conftest import Collector
from .harness import PacedStation, RelayProcess, archived_sequences, wait_for
from .test_faults import relay_stats

STA = "NGS1"
IFS = f"{STA}:ims20"


def archived(root, frame_set: str = IFS) -> dict[int, str]:
    """seq -> SHA-256 of the IMS 2.0 texts archived for *frame_set* (``STA:ims20``) in the relay
    archive at *root*, read-only while the relay keeps writing; a seq archived twice fails.  Compare
    with ``hashlib.sha256(text)`` of what the station emitted: nothing lost, nothing doubled."""
    return archived_sequences(root, frame_set, "ims20")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ims_station", *args], capture_output=True, timeout=60)


def test_an_emitted_ims20_message_is_archived_byte_identical_listed_acknowledged_once(
        mosquitto, tmp_path, shared_dir, monkeypatch):
    import hashlib

    from ims_station.edge import station as station_mod

    texts = [(shared_dir / "samples" / "ims20" / f).read_bytes()
             for f in ("SAMPLE20211203070613605.PHD", "SPIKE20211228080107855.PHD")]
    contexts = []
    real = station_mod.stages_from_config
    monkeypatch.setattr(station_mod, "stages_from_config", lambda ctx: (contexts.append(ctx), real(ctx))[1])
    sta = PacedStation(tmp_path / "station", STA, mosquitto, speed=1.0)
    [ctx] = contexts
    relay = RelayProcess(tmp_path / "relay", mosquitto.config, sta.trust, acknack_interval_s=1.0)
    archive = relay.root / "data" / "archive"
    diag = lambda: relay.logs() + f"\nuplink: {sta.uplink.stats()}"  # noqa: E731
    outbox = lambda: [it.seq for it, _ in sta.outbox.items("ims20")]  # noqa: E731
    try:
        relay.start()
        wait_for(lambda: relay_stats(relay).get("transport", {}).get("connected"), 30, "the relay subscribed",
                 on_timeout=diag)
        sta.uplink.start()
        wait_for(lambda: sta.uplink.connected, 30, "the station connected", on_timeout=diag)

        latencies = []
        for text in texts:
            t0 = time.monotonic()
            seq = ctx.emit_message("ims20", text)
            assert seq in outbox()                     # durable before anything was sent
            wait_for(lambda: seq in archived(archive), 20, f"message {seq} archived", on_timeout=diag, pause=0.005)
            t_arch = time.monotonic() - t0
            wait_for(lambda: seq not in outbox(), 20, f"message {seq} acknowledged", on_timeout=diag, pause=0.005)
            latencies.append((t_arch, time.monotonic() - t0))
        assert archived(archive) == {i: hashlib.sha256(t).hexdigest() for i, t in enumerate(texts)}
        assert outbox() == []
        up = sta.uplink.stats()
        assert up["ims20_published"] >= 2 and up["ims20_acked"] == 2 and up["events_acked"] == 0
        print(f"\nims20 latency (wall, {len(texts[0])} and {len(texts[1])} bytes): emit -> relay archive "
              f"{', '.join(f'{a * 1000:.0f} ms' for a, _ in latencies)}; emit -> deleted from the station "
              f"outbox by the acknack {', '.join(f'{b * 1000:.0f} ms' for _, b in latencies)}")

        out = cli("relay", "ims2", "list", "--archive", str(archive), "--station", STA, "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)["messages"]
        assert [(r["id"], r["data_type"], r["qualifier"]) for r in rows] == \
            [(f"{IFS}:0", "SAMPLEPHD", "FULL"), (f"{IFS}:1", "SPIKEPHD", "PREL")]
        assert rows[0]["msg_id"] == "20211203070613605" and rows[0]["srid"] == "58202112020111X"
        assert {r["key_id"] for r in rows} == {sta.framer.station_key_id}     # verified with the station's key
        for i, text in enumerate(texts):
            got = tmp_path / f"got{i}.PHD"
            out = cli("relay", "ims2", "get", f"{IFS}:{i}", "--archive", str(archive), "--out", str(got))
            assert out.returncode == 0, out.stderr
            assert got.read_bytes() == text                                   # byte-identical
        [day_file] = (archive / "ims20" / STA).rglob("*.msg")
        assert day_file.read_bytes() == texts[0] + texts[1]

        # A restarted relay: the messages emitted while it was down wait in the outbox and all
        # arrive, once each; the same message given again (a broker redelivery, a station resend)
        # is a duplicate, never a second copy.
        env = cli("relay", "ims2", "get", f"{IFS}:0", "--archive", str(archive), "--out", "-", "--envelope")
        assert env.returncode == 0
        relay.stop()
        more = [texts[i % 2] for i in range(10)]
        seqs = [ctx.emit_message("ims20", t) for t in more]
        assert seqs == list(range(2, 12)) and outbox() == seqs
        relay.start()
        wait_for(lambda: relay_stats(relay).get("transport", {}).get("connected"), 30, "the relay subscribed again",
                 on_timeout=diag)
        pub = Collector(mosquitto.config.host, mosquitto.config.port)
        pub.connect()
        pub.client.publish(f"ims/{STA}/ims20", env.stdout, qos=1).wait_for_publish(10)
        pub.close()
        wait_for(lambda: len(archived(archive)) == 12 and outbox() == [], 60, "the backlog archived and acknowledged",
                 on_timeout=diag)
        wait_for(lambda: relay_stats(relay).get("duplicates", 0) >= 1, 20, "the duplicate counted", on_timeout=diag)
        assert archived(archive) == {i: hashlib.sha256(t).hexdigest() for i, t in enumerate(texts + more)}
        st = relay_stats(relay)
        assert st["quarantined"] == 0 and st["archived"] == 10 and st["ims20_archived"] == 10, st
        assert sta.uplink.stats()["ims20_acked"] == 12
    finally:
        con.close()
    out: dict[int, str] = {}
    for seq, digest in rows:
        assert seq not in out, f"message {seq} archived twice"
        out[int(seq)] = digest
    return out


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ims_station", *args], capture_output=True, timeout=60)


def test_an_emitted_ims20_message_is_archived_byte_identical_listed_acknowledged_once(
        mosquitto, tmp_path, shared_dir, monkeypatch):
    import hashlib

    from ims_station.edge import station as station_mod

    texts = [(shared_dir / "samples" / "ims20" / f).read_bytes()
             for f in ("SAMPLE20211203070613605.PHD", "SPIKE20211228080107855.PHD")]
    contexts = []
    real = station_mod.stages_from_config
    monkeypatch.setattr(station_mod, "stages_from_config", lambda ctx: (contexts.append(ctx), real(ctx))[1])
    sta = PacedStation(tmp_path / "station", STA, mosquitto, speed=1.0)
    [ctx] = contexts
    relay = RelayProcess(tmp_path / "relay", mosquitto.config, sta.trust, acknack_interval_s=1.0)
    archive = relay.root / "data" / "archive"
    diag = lambda: relay.logs() + f"\nuplink: {sta.uplink.stats()}"  # noqa: E731
    outbox = lambda: [it.seq for it, _ in sta.outbox.items("ims20")]  # noqa: E731
    try:
        relay.start()
        wait_for(lambda: relay_stats(relay).get("transport", {}).get("connected"), 30, "the relay subscribed",
                 on_timeout=diag)
        sta.uplink.start()
        wait_for(lambda: sta.uplink.connected, 30, "the station connected", on_timeout=diag)

        latencies = []
        for text in texts:
            t0 = time.monotonic()
            seq = ctx.emit_message("ims20", text)
            assert seq in outbox()                     # durable before anything was sent
            wait_for(lambda: seq in archived(archive), 20, f"message {seq} archived", on_timeout=diag, pause=0.005)
            t_arch = time.monotonic() - t0
            wait_for(lambda: seq not in outbox(), 20, f"message {seq} acknowledged", on_timeout=diag, pause=0.005)
            latencies.append((t_arch, time.monotonic() - t0))
        assert archived(archive) == {i: hashlib.sha256(t).hexdigest() for i, t in enumerate(texts)}
        assert outbox() == []
        up = sta.uplink.stats()
        assert up["ims20_published"] >= 2 and up["ims20_acked"] == 2 and up["events_acked"] == 0
        print(f"\nims20 latency (wall, {len(texts[0])} and {len(texts[1])} bytes): emit -> relay archive "
              f"{', '.join(f'{a * 1000:.0f} ms' for a, _ in latencies)}; emit -> deleted from the station "
              f"outbox by the acknack {', '.join(f'{b * 1000:.0f} ms' for _, b in latencies)}")

        out = cli("relay", "ims2", "list", "--archive", str(archive), "--station", STA, "--json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)["messages"]
        assert [(r["id"], r["data_type"], r["qualifier"]) for r in rows] == \
            [(f"{IFS}:0", "SAMPLEPHD", "FULL"), (f"{IFS}:1", "SPIKEPHD", "PREL")]
        assert rows[0]["msg_id"] == "20211203070613605" and rows[0]["srid"] == "58202112020111X"
        assert {r["key_id"] for r in rows} == {sta.framer.station_key_id}     # verified with the station's key
        for i, text in enumerate(texts):
            got = tmp_path / f"got{i}.PHD"
            out = cli("relay", "ims2", "get", f"{IFS}:{i}", "--archive", str(archive), "--out", str(got))
            assert out.returncode == 0, out.stderr
            assert got.read_bytes() == text                                   # byte-identical
        [day_file] = (archive / "ims20" / STA).rglob("*.msg")
        assert day_file.read_bytes() == texts[0] + texts[1]

        # A restarted relay given the same message again (a broker redelivery, a station resend).
        env = cli("relay", "ims2", "get", f"{IFS}:0", "--archive", str(archive), "--out", "-", "--envelope")
        assert env.returncode == 0
        relay.stop()
        relay.start()
        wait_for(lambda: relay_stats(relay).get("transport", {}).get("connected"), 30, "the relay subscribed again",
                 on_timeout=diag)
        pub = Collector(mosquitto.config.host, mosquitto.config.port)
        pub.connect()
        pub.client.publish(f"ims/{STA}/ims20", env.stdout, qos=1).wait_for_publish(10)
        pub.close()
        wait_for(lambda: relay_stats(relay).get("duplicates", 0) >= 1, 20, "the duplicate counted", on_timeout=diag)
        assert sorted(archived(archive)) == [0, 1]
        st = relay_stats(relay)
        assert st["quarantined"] == 0 and st["archived"] == 0, st

        # Messages emitted while the relay is down wait in the outbox; none is lost, none doubled.
        relay.stop()
        more = [texts[i % 2] for i in range(10)]
        seqs = [ctx.emit_message("ims20", t) for t in more]
        assert seqs == list(range(2, 12)) and outbox() == seqs
        relay.start()
        wait_for(lambda: len(archived(archive)) == 12 and outbox() == [], 60, "the backlog archived and acknowledged",
                 on_timeout=diag)
        assert archived(archive) == {i: hashlib.sha256(t).hexdigest() for i, t in enumerate(texts + more)}
        assert sta.uplink.stats()["ims20_acked"] == 12
    finally:
        relay.stop()
        sta.close()
