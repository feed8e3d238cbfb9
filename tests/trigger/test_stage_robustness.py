"""Whatever the streams hand the trigger stage -- gaps, overlaps, rate changes, NaN, huge values,
clip bits, empty chunks, channels coming and going -- the Detector never raises, every ``on`` is
closed by one ``off`` with its id, and the stage counts its own failures instead of raising."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings as hsettings, strategies as st

from ims_station.edge import trigger_stage as TS
from ims_station.edge.ingest import sample_offset_us
from ims_station.edge.streams import Chunk

CODES = ("XX.S1.00.BHZ", "XX.S1.00.BHN", "XX.S1.00.BHE", "1/3")
T0 = 1_780_000_000_000_000

chunk_st = st.fixed_dictionaries({
    "rows": st.lists(st.sampled_from(range(len(CODES))), min_size=1, max_size=4, unique=True),
    "n": st.integers(0, 120),
    "rate": st.sampled_from([20_000, 40_000, 40_000, 40_000]),
    "jump_us": st.sampled_from([0, 0, 0, 0, 3_000_000, -2_000_000, 12_345]),
    "contiguous": st.booleans(),
    "clip": st.integers(0, 15),
    "tq": st.integers(0, 2),
    "kind": st.sampled_from(["noise", "noise", "burst", "nan", "inf", "huge", "zero"]),
})


def _samples(spec, rng):
    shape = (len(spec["rows"]), spec["n"])
    x = rng.standard_normal(shape) * 100
    if spec["kind"] == "burst":
        x *= 50
    elif spec["kind"] == "nan" and x.size:
        x.flat[rng.integers(x.size)] = np.nan
    elif spec["kind"] == "inf" and x.size:
        x.flat[rng.integers(x.size)] = np.inf
    elif spec["kind"] == "huge":
        x = np.full(shape, 2.0 ** 31 - 1)
    elif spec["kind"] == "zero":
        x = np.zeros(shape)
    return x


@hsettings(max_examples=40, deadline=None)
@given(st.lists(chunk_st, min_size=1, max_size=40), st.integers(0, 2 ** 32 - 1),
       st.sampled_from([1.0, 2.0]), st.sampled_from([0.0, 0.2]))
def test_no_chunk_sequence_breaks_the_detector(chunks, seed, thr_sum, min_duration):
    rng = np.random.default_rng(seed)
    det = TS.Detector(TS.settings_from_table({"sta": 0.2, "lta": 1.0, "on": 2.5, "off": 1.2,
                                              "filter": "highpass:1", "coincidence_sum": thr_sum,
                                              "min_duration": min_duration, "max_duration": 2.0}), "S1")
    t = T0
    out = []
    for spec in chunks:
        t += spec["jump_us"]
        out += det.push([CODES[r] for r in spec["rows"]], t, spec["rate"], _samples(spec, rng),
                        time_quality=spec["tq"], clip_mask=spec["clip"], contiguous=spec["contiguous"])
        t += sample_offset_us(spec["n"], spec["rate"])
    out += det.flush()
    open_ids: list[str] = []
    for d in out:
        if d.state == "on":
            assert d.event_id not in open_ids and d.end_us is None
            open_ids.append(d.event_id)
        else:
            assert d.event_id in open_ids and d.end_us is not None
            open_ids.remove(d.event_id)
    assert not open_ids and not det.active
    st_ = det.stats()
    assert st_["events"] + st_["retracted"] == sum(d.state == "off" for d in out)


class _Ctx(SimpleNamespace):
    pass


def _stage(tmp_path, emit):
    cfg = SimpleNamespace(file=tmp_path / "station.toml", code="S1", network="XX",
                          raw={"trigger": {"sta": 0.5, "lta": 5.0, "on": 3.0, "off": 1.5}},
                          ports=[SimpleNamespace(board="sim", channels={0: "XX.S1.00.BHZ"})])
    clock = SimpleNamespace(time=lambda: 1_780_000_100.0, monotonic=lambda: 0.0)
    return TS.TriggerStage(_Ctx(station_cfg=cfg, clock=clock, emit_event=emit))


def _chunks():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(4000) * 100).astype(np.int32)
    x[2000:2200] *= 40
    for i in range(0, 4000, 100):
        yield Chunk("XX.S1", ("XX.S1.00.BHZ",), T0 + sample_offset_us(i, 100_000), 100_000,
                    x[None, i:i + 100].copy(), 2, 0, 0, True)


def test_the_stage_emits_documents_and_counts_a_failing_commit_or_chunk(tmp_path):
    got = []
    stage = _stage(tmp_path, lambda doc: got.append(doc) or len(got))
    for c in _chunks():
        stage.push(c)
    assert [d["state"] for d in got] == ["on", "off"] and got[0]["time_quality"] == "locked"
    assert got[0]["decided_s"] == 1_780_000_100.0
    # a commit that fails (a full disk) is counted; the stage goes on
    def broken(doc):
        raise OSError("disk full")
    stage = _stage(tmp_path, broken)
    for c in _chunks():
        stage.push(c)
    assert stage.stats()["errors"] == 2 and stage.stats()["events"] == 1
    # a chunk the detector refuses (samples and codes disagree) is counted, not raised
    bad = Chunk("XX.S1", ("XX.S1.00.BHZ",), T0, 100_000, np.zeros((2, 5), np.int32), 2, 0, 0, True)
    stage.push(bad)
    assert stage.stats()["errors"] == 3
