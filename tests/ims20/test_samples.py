"""Must-show 1: the real IMS 2.0 files parse, and writing the parsed message back gives a file that
parses to the same content (here even the same text, but for the trailing blanks MIX leaves)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from ims_station.ims20 import model as m
from ims_station.ims20 import parse, write
from tests.ims20.conftest import SAMPLE_FILES


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_every_real_file_parses_and_round_trips(path):
    msg = parse(path.read_bytes())
    text = write(msg)
    assert parse(text) == msg
    assert parse(text.encode("ascii")) == msg
    # The writer reproduces MIX's columns: only MIX's trailing blanks differ.
    original = [ln.rstrip() for ln in path.read_text("ascii").splitlines()]
    assert text.splitlines() == original


def test_there_are_real_files():
    assert len(SAMPLE_FILES) >= 2


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)


def test_the_full_sample_is_read_field_by_field(sample_phd):
    msg = parse(sample_phd.read_bytes())
    assert (msg.version, msg.msg_type, msg.msg_id, msg.source) == ("IMS2.0", "DATA", "20211203070613605", None)
    assert msg.data_type == "SAMPLEPHD"
    b = msg.body
    assert isinstance(b, m.PhdBody)
    assert b.header == m.PhdHeader("MIX58", "MIX58_222", "B", "CYLINDER", "FULL", "58202112020111X",
                                   "MIX58_222-2021/12/02-17:00:54.4", "MIX58_222-2021/08/16-06:20:34.8",
                                   "MIX58_222-2021/12/02-08:08:59.1", utc(2021, 12, 3, 7, 6, 13, 600000), "3")
    assert b.comment == m.Comment("Histogram data\n")
    assert b.collection == m.Collection(utc(2021, 12, 2, 1, 0, 25), utc(2021, 12, 2, 12, 59, 59), 22.347414)
    assert b.acquisition == m.Acquisition(utc(2021, 12, 2, 17, 0, 54, 400000), 50719.17, 50400.0)
    assert b.calibration == m.Calibration(utc(2021, 12, 2, 17, 0, 54, 400000))
    assert b.processing == m.Processing(0.99533, 0.08659, 0.61685, 0.05367, "17")
    assert b.g_energy.rows[2] == m.GEnergyRow(81.0, 31.55, 0.05)
    assert len(b.b_energy.rows) == 24 and b.b_energy.rows[0] == m.BEnergyRow(79.02, "C", 21.2, 0.1)
    assert b.g_resolution.rows[-1] == m.ResolutionRow(661.66, 51.1, 0.2)
    assert b.b_resolution.rows[0] == m.ResolutionRow(94.26, 8.3, 0.3)
    assert [r.roi for r in b.roi_limits.rows] == list(range(1, 11))
    assert b.roi_limits.rows[2] == m.RoiLimitsRow(3, 29.8, 352.5, 71.15, 99.83)
    assert b.g_efficiency.rows[2] == m.EfficiencyRow(59.537, 0.72, 0.1)
    assert b.bg_efficiency.rows[3] == m.BGEfficiencyRow("XE-131m", 5, 0.298, 0.005)
    assert len(b.ratios.rows) == 16 and b.ratios.rows[0] == m.RatioRow("PB214_352:242", 1, 2, 0.65, 0.0083)
    g, beta, h = b.g_spectrum, b.b_spectrum, b.histogram
    assert (g.counts.size, g.energy_span, g.first_channel) == (256, 720.0, 0)
    assert g.counts.dtype == np.int64 and g.counts[:6].tolist() == [0, 0, 0, 0, 2900, 6308]
    assert int(g.counts.sum()) == 267961 and int(beta.counts.sum()) == 39480
    assert beta.energy_span == 550.0 and beta.counts[4] == 8730
    assert h.counts.shape == (256, 256) and h.counts.dtype == np.int64
    assert (h.gamma_span, h.beta_span) == (720.0, 550.0)
    assert int(h.counts.sum()) == 3480
    assert b.total_efficiency is None and b.certificate is None and b.extra_blocks == ()


def test_the_prel_spike_file(ims20_samples):
    spike = next(p for p in ims20_samples if p.name.startswith("SPIKE"))
    msg = parse(spike.read_bytes())
    assert msg.data_type == "SPIKEPHD"   # non-standard MIX type, read as a PHD
    assert msg.body.header.qualifier == "PREL"
    assert msg.body.acquisition.live_time == 6986.41
    assert int(msg.body.histogram.counts.sum()) == 736255


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_measurement_ids_are_detector_and_acquisition_start(path):
    from ims_station.ims20 import measurement_id

    b = parse(path.read_bytes()).body
    assert measurement_id(b.header.detector, b.acquisition.start) == b.header.measurement_id
