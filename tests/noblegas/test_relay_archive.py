"""Driver to relay archive (must-show 3, nothing lost on the way): every IMS 2.0 message the driver
makes in a cycle with faults goes through the station's durable signed path
(``edge/station.message_emitter``, the outbox) and the relay's ``RelayCore.process`` (verify,
archive, acknowledge), and the archive holds each text byte-identical, in order, none missing."""

from __future__ import annotations

from ims_station.edge.outbox import Outbox
from ims_station.edge.station import message_emitter
from ims_station.hil.noblegas.faults import NobleGasFaults
from ims_station.relay.archive import FileArchive
from ims_station.relay.core import Incoming, RelayCore
from ims_station.relay.state import SqliteStateStore
from tests.relay.conftest import KEY_IDS, keys  # noqa: F401 - the relay tests' keystore and trust store

from .harness import advance, start, stop


def test_every_message_of_the_driver_is_archived_byte_identical(tmp_path, keys):  # noqa: F811
    name = "to-relay"
    faults = NobleGasFaults(garble=0.01, checksum=0.01).add("flow_fail", "5000:600")
    r = start(name, tmp_path, faults=faults, prel_interval_s=1200.0)
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1 << 30, max_age_s=1e12, clock=r.clock)
    signer = keys.keystore.signer(KEY_IDS["STA01"][0])
    emit = message_emitter("STA01", "ims20", box, r.clock, lambda: None, signer=lambda at: signer)
    texts = []

    def both(text: bytes):
        texts.append(text)
        emit(text)
    r.driver._emit_message = both
    core = RelayCore(keys.trust, SqliteStateStore(tmp_path / "state.sqlite"), FileArchive(tmp_path / "archive"),
                     clock=r.clock, acknack_interval_s=50.0, acknack_min_spacing_s=2.0)
    try:
        advance(r, 8500.0)
        items = [it for it, _ in box.items("ims20")]
        assert len(items) == len(texts) >= 10
        out = core.process([Incoming("ims/STA01/ims20", it.payload, i) for i, it in enumerate(items)])
        assert [o.result for o in out] == ["archived"] * len(items)
        for seq, text in enumerate(texts):
            assert core.archive.read_ims20("STA01:ims20", seq) == text
        kinds = {a.data_type for a in core.archive.iter_ims20("STA01")}
        assert {"DETBKPHD", "GASBKPHD", "SAMPLEPHD", "QCPHD", "RMSSOH", "ALERT_FLOW"} <= kinds
        st = core.states["STA01:ims20"]
        assert (st.lowest, st.highest, st.gaps) == (0, len(texts) - 1, [])
    finally:
        core.close()
        box.close()
        stop(name, r)
