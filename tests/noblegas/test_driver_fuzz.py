"""Whatever the line brings, the driver's poll never raises: random records, valid records of the
wrong type, overlong lines, binary noise, a port that breaks -- each counted, the driver goes on
(the driver's per-reply path is a poison-message boundary)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ims_station import mca
from ims_station.clock import FakeClock
from ims_station.edge.noblegas import NobleGasDriver, NobleGasSettings

RECORDS = [mca.encode_reply(r) for r in (
    mca.Ack(0, 0), mca.Ack(1, 0), mca.Ack(130, 2), mca.Value("G", 15000), mca.Value("C", 1),
    mca.Value("C", 256), mca.Text("NGEMU"), mca.Block(0, (1, 2, 3)), mca.Block(0, tuple(range(64))),
    mca.Fields({"TIME": "1767225600.0", "PHASE": "ACQUIRE", "PHASE_ELAPSED": "10", "PHASE_LEFT": "9000",
                "HV": "1150", "HV_SET": "1150", "FLOW": "0", "MAINS": "0", "UPS": "BATTERY"}),
    mca.Fields({"TIME": "nan", "PHASE": "QC", "PHASE_LEFT": "-5"}), mca.Fields({}))]

chunk = st.one_of(st.sampled_from(RECORDS), st.binary(max_size=80),
                  st.builds(lambda n: b"$D" + b"9" * n + b"\r\n", st.integers(0, 3000)),
                  st.just(b"\r\n"), st.just(None))          # None: the port breaks


class FuzzPort:
    def __init__(self, replies):
        self.replies = list(replies)
        self.rx = b""
        self.written = []

    def _next(self):
        if self.replies:
            r = self.replies.pop(0)
            if r is None:
                raise OSError("port gone")
            self.rx += r

    @property
    def in_waiting(self):
        self._next()
        return len(self.rx)

    def read(self, n):
        out, self.rx = self.rx[:n], self.rx[n:]
        return out

    def write(self, data):
        self.written.append(data)
        return len(data)

    def reset_input_buffer(self):
        self.rx = b""

    def close(self):
        pass


@settings(max_examples=60, deadline=None)
@given(st.lists(chunk, max_size=60))
def test_no_reply_sequence_makes_the_driver_raise(replies):
    clock = FakeClock()
    ports = []

    def opener(url, baudrate):
        ports.append(FuzzPort(replies if not ports else replies[len(replies) // 2:]))
        return ports[-1]
    msgs, events = [], []
    d = NobleGasDriver(NobleGasSettings(url="fuzz://", station="S", detector="D", reply_timeout_s=1.0,
                                        resync_quiet_s=0.5, status_interval_s=2.0),
                       clock, emit_message=msgs.append, emit_event=events.append, opener=opener)
    for _ in range(80):
        d.poll()
        clock.advance(0.5)
    st_ = d.stats()
    assert st_["faults"]["task_errors"] == 0, st_
    c = st_["counters"]
    assert c["commands"] > 0 and all(isinstance(v, int) and v >= 0 for v in c.values())
