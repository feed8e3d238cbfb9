"""Issue 10, relay end: IMS 2.0 messages (``{p}/STA/ims20``, signed envelopes, kind ``ims20``).

Every case through ``RelayCore.process`` (real archive and state store in a tmp dir) with the real
beta-gamma PHD files of ``../shared/samples/ims20`` as the message text: a good message archived
with its text byte-identical in the station's day file, indexed (data type, MSG_ID, measurement
id, SRID, key id) and acknowledged for frame set ``STA:ims20``; the same text again a duplicate,
another text under the same seq a conflict; unsigned, badly signed, another station's key, another
station's topic, garbage text, oversize, an implausible time -- each quarantined with its reason,
counted and never archived.  ``ims-station relay ims2 list`` / ``get`` read the archive.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ims_station import cd11, envelope
from ims_station.cli import main
from ims_station.relay.core import Incoming, RelayCore
from ims_station.relay.verify import Verifier

from .conftest import KEY_IDS

T = "ims/STA01/ims20"
NOW = 1_700_000_000.0          # FakeClock's default time()


@pytest.fixture(scope="session")
def texts(shared_dir: Path) -> dict[str, bytes]:
    """The real MIX58 files: a FULL SAMPLEPHD and a PREL SPIKEPHD (``samples/ims20``)."""
    d = shared_dir / "samples" / "ims20"
    return {"sample": (d / "SAMPLE20211203070613605.PHD").read_bytes(),
            "spike": (d / "SPIKE20211228080107855.PHD").read_bytes()}


def make_msg(keys, text: bytes, seq: int = 0, *, sender: str = "STA01", key: str | None = "STA01",
             time_us: int | None = None) -> bytes:
    signer = keys.keystore.signer(KEY_IDS[key][0]) if key else None
    return envelope.pack("ims20", sender, text, time_us=int(NOW * 1e6) if time_us is None else time_us,
                         signer=signer, seq=seq)


def new_core(tmp_path, keys, clock, stores, **kw):
    return RelayCore(keys.trust, stores.state(tmp_path / "state.sqlite"), stores.archive(tmp_path / "archive"),
                     clock=clock, acknack_interval_s=50.0, acknack_min_spacing_s=2.0, **kw)


@pytest.fixture
def core(tmp_path, keys, clock, stores):
    c = new_core(tmp_path, keys, clock, stores)
    yield c
    c.close()


def run(core, *items):
    return [o.result for o in core.process([Incoming(t, p, i) for i, (t, p) in enumerate(items)])]


def test_a_real_phd_message_is_archived_byte_identical_indexed_and_acknowledged(core, keys, texts, tmp_path, stores):
    m0, m1 = make_msg(keys, texts["sample"], 0), make_msg(keys, texts["spike"], 1)
    assert run(core, (T, m0), (T, m1)) == ["archived", "archived"]
    assert core.archive.read_ims20("STA01:ims20", 0) == texts["sample"]
    assert core.archive.read_ims20("STA01:ims20", 1) == texts["spike"]
    assert core.archive.read_ims20("STA01:ims20", 0, envelope=True) == m0      # provenance kept
    assert core.counters.ims20_archived == 2 and core.counters.quarantined == 0
    [a0, a1] = list(core.archive.iter_ims20("STA01"))
    assert (a0.id, a0.data_type, a0.msg_id, a0.msg_type) == ("STA01:ims20:0", "SAMPLEPHD", "20211203070613605", "DATA")
    assert (a0.srid, a0.measurement_id, a0.msg_station, a0.qualifier) == \
        ("58202112020111X", "MIX58_222-2021/12/02-17:00:54.4", "MIX58", "FULL")
    assert a0.key_id == KEY_IDS["STA01"][0] and a1.qualifier == "PREL"
    # The file the index names holds the texts, byte-identical: SQLite, the station's UTC-day file,
    # one after the other; PostgreSQL, the commit's content-addressed object.
    for a, text in ((a0, texts["sample"]), (a1, texts["spike"])):
        assert (tmp_path / "archive" / a.file).read_bytes()[a.offset:a.offset + a.length] == text
    if not stores.pg:
        assert a0.file == "ims20/STA01/2023/STA01.2023.318.relay.msg" and a1.file == a0.file
        assert (tmp_path / "archive" / a0.file).read_bytes() == texts["sample"] + texts["spike"]
    st = core.states["STA01:ims20"]
    assert (st.lowest, st.highest, st.gaps) == (0, 1, [])
    due = {fs: (topic, raw) for topic, fs, raw in core.due_acknacks()}
    topic, raw = due["STA01:ims20"]
    ack, _ = cd11.parse_frame(raw)
    assert topic == "ims/STA01/acknack" and (ack.frame_set, ack.lowest, ack.highest, ack.gaps) == \
        ("STA01:ims20", 0, 1, [])
    assert core.archive.stats()["ims20"] == 2 and core.archive.stats()["events"] == 0


def test_a_missing_message_opens_a_gap_in_the_acknack(core, keys, texts):
    assert run(core, (T, make_msg(keys, texts["sample"], 0)), (T, make_msg(keys, texts["spike"], 2))) == \
        ["archived", "archived"]
    assert [(g.start, g.end) for g in core.states["STA01:ims20"].gaps] == [(1, 2)]


def test_same_seq_same_text_is_a_duplicate_other_text_a_conflict(core, keys, texts):
    m = make_msg(keys, texts["sample"], 0)
    resigned = make_msg(keys, texts["sample"], 0, time_us=int(NOW * 1e6) + 7)   # same text, other header
    assert run(core, (T, m), (T, m), (T, resigned)) == ["archived", "duplicate", "duplicate"]
    assert run(core, (T, make_msg(keys, texts["spike"], 0))) == ["duplicate_conflict"]
    assert core.archive.read_ims20("STA01:ims20", 0) == texts["sample"]     # never overwritten
    [q] = core.archive.quarantine_entries(reason="duplicate_conflict")
    assert q["frame_set"] == "STA01:ims20" and q["seq"] == 0
    assert core.counters.security_events == 1 and core.counters.duplicates == 2


def test_a_restarted_relay_does_not_archive_a_message_twice(tmp_path, keys, clock, texts, stores):
    m = make_msg(keys, texts["sample"], 0)
    c = new_core(tmp_path, keys, clock, stores)
    assert run(c, (T, m)) == ["archived"]
    c.close()
    c = new_core(tmp_path, keys, clock, stores)
    try:
        assert run(c, (T, m)) == ["duplicate"]
        assert len(list(c.archive.iter_ims20())) == 1
    finally:
        c.close()


def _bad_signature(keys, text):
    b = bytearray(make_msg(keys, text))
    b[-1] ^= 0x01
    return bytes(b)


def _text_changed_after_signing(keys, text):
    b = bytearray(make_msg(keys, text))
    b[envelope.HEADER_SIZE + 5] ^= 0x20                # BEGIN IMS2.0 -> a flipped letter: signature fails
    return bytes(b)


@pytest.mark.parametrize("case,reason,detail", [
    ("unsigned", "unsigned", "not signed"),
    ("bad_signature", "ims20_signature", "signature"),
    ("text_changed_after_signing", "ims20_signature", "signature"),
    ("other_stations_key", "wrong_station_key", "signature"),
    ("other_stations_topic", "station_mismatch", "STA02"),
    ("garbage_text", "malformed_ims20", "line 1"),
    ("truncated_text", "malformed_ims20", "IMS 2.0"),
    ("not_an_envelope", "malformed", "magic"),
    ("event_envelope_on_ims20_topic", "malformed", "kind"),
    ("cd11_frame_on_ims20_topic", "malformed", "magic"),
    ("future_time", "implausible_time", "after the relay's clock"),
    ("ancient_time", "implausible_time", "before the relay's clock"),
])
def test_bad_messages_are_quarantined_with_their_reason(core, keys, texts, case, reason, detail):
    text = texts["sample"]
    payload = {
        "unsigned": lambda: make_msg(keys, text, key=None),
        "bad_signature": lambda: _bad_signature(keys, text),
        "text_changed_after_signing": lambda: _text_changed_after_signing(keys, text),
        "other_stations_key": lambda: make_msg(keys, text, key="STA02"),
        "other_stations_topic": lambda: make_msg(keys, text, sender="STA02", key="STA02"),
        "garbage_text": lambda: make_msg(keys, b"\x00\xffnot an IMS 2.0 message at all\n"),
        "truncated_text": lambda: make_msg(keys, text[:len(text) // 2]),
        "not_an_envelope": lambda: text,
        "event_envelope_on_ims20_topic": lambda: envelope.pack_json(
            "event", "STA01", {"seq": 0, "station": "STA01"}, time_us=int(NOW * 1e6),
            signer=keys.keystore.signer(KEY_IDS["STA01"][0])),
        "cd11_frame_on_ims20_topic": lambda: cd11.Acknack(creator="STA01", destination="0", frame_set="STA01:0",
                                                          lowest=0, highest=0, gaps=[]).to_bytes(),
        "future_time": lambda: make_msg(keys, text, time_us=int((NOW + 10 * 86400) * 1e6)),
        "ancient_time": lambda: make_msg(keys, text, time_us=int((NOW - 400 * 86400) * 1e6)),
    }[case]()
    [o] = core.process([Incoming(T, payload, 0)])
    assert o.result == reason and detail in o.detail, o.detail
    [q] = core.archive.quarantine_entries()
    assert q["reason"] == reason and core.archive.read_quarantined(q) == payload
    assert list(core.archive.iter_ims20()) == [] and "STA01:ims20" not in core.states
    assert core.counters.quarantined == 1 and core.counters.internal_errors == 0


def test_a_message_above_max_payload_is_quarantined_unread(tmp_path, keys, clock, texts, stores):
    c = new_core(tmp_path, keys, clock, stores, verifier=Verifier(keys.trust, max_payload=64 << 10))
    try:
        assert run(c, (T, make_msg(keys, texts["sample"]))) == ["oversize"]       # 142 KB > 64 KiB
    finally:
        c.close()


def test_a_codec_error_names_line_and_block(core, keys, texts):
    bad = texts["sample"].replace(b"#Acquisition\n2021/12/02 17:00:54.4", b"#Acquisition\n2021/13/02 17:00:54.4")
    [o] = core.process([Incoming(T, make_msg(keys, bad), 0)])
    assert o.result == "malformed_ims20" and "line" in o.detail and "#Acquisition" in o.detail, o.detail
    assert o.frame_set == "STA01:ims20" and o.sequence == 0


def test_relay_ims2_list_and_get(core, keys, texts, tmp_path, capsys, stores):
    run(core, (T, make_msg(keys, texts["sample"], 0)), (T, make_msg(keys, texts["spike"], 1)),
        ("ims/STA02/ims20", make_msg(keys, texts["spike"], 0, sender="STA02", key="STA02")))
    root = str(tmp_path / "archive")

    def listed(*args):
        capsys.readouterr()
        assert main(["relay", "ims2", "list", *stores.cli(root), "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)["messages"]

    assert [m["id"] for m in listed()] == ["STA01:ims20:0", "STA01:ims20:1", "STA02:ims20:0"]
    assert [m["id"] for m in listed("--station", "STA01", "--type", "samplephd")] == ["STA01:ims20:0"]
    assert [m["id"] for m in listed("--type", "SPIKEPHD")] == ["STA01:ims20:1", "STA02:ims20:0"]
    assert listed("--since", "2030-01-01T00:00:00Z") == [] and len(listed("--until", "2030-01-01")) == 3
    m = listed("--station", "STA01")[0]
    assert m["data_type"] == "SAMPLEPHD" and m["srid"] == "58202112020111X" and m["bytes"] == len(texts["sample"])
    out = tmp_path / "got.phd"
    assert main(["relay", "ims2", "get", "STA01:ims20:0", *stores.cli(root), "--out", str(out)]) == 0
    assert out.read_bytes() == texts["sample"]
    assert main(["relay", "ims2", "get", "STA01:ims20:9", *stores.cli(root), "--out", str(out)]) == 2
    capsys.readouterr()
    assert main(["relay", "ims2", "list", *stores.cli(root)]) == 0
    assert "SAMPLEPHD" in capsys.readouterr().out
