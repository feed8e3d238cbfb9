"""Our messages read by an independent IMS 2.0 reader: openSpex (FOI, PyPI ``open-spex``), the
beta-gamma analysis tool, installed without its GUI dependencies (tests/conftest.py
``need_openspex``; docs/ims20.md "Independent reader").

What openSpex must find in a file *we wrote*: the same acquisition times, spectra and histogram as
our parser (and as openSpex finds in the original file), no parse error, and ROI gross counts equal to
the sums of our histogram over the ROI channel limits openSpex derives from the calibration blocks --
which also pins the histogram's orientation (rows = gamma channels).
"""

from __future__ import annotations

import dataclasses
import io
from contextlib import redirect_stdout

import numpy as np
import pytest

from ims_station.ims20 import parse, write
from tests.conftest import need_openspex
from tests.ims20.conftest import SAMPLE_FILES


def read_with_openspex(path):
    bgm = need_openspex()
    with redirect_stdout(io.StringIO()):       # it prints warnings; the status bits say the same
        return bgm.BGMeasurement("SAUNA", str(path), makeHist=False)


def assert_openspex_sees(meas, msg):
    body = msg.body
    assert not meas.errors, f"openSpex status {meas.status:#x}"
    assert meas.data_type == msg.data_type and meas.msg_id == msg.msg_id
    assert (meas.station, meas.detector, meas.srid) == (body.header.station, body.header.detector,
                                                         body.header.srid)
    assert meas.acq_livetime == body.acquisition.live_time
    assert meas.acq_realtime == body.acquisition.real_time
    assert meas.gamma == body.g_spectrum.counts.tolist()
    assert meas.beta == body.b_spectrum.counts.tolist()
    assert (meas.nbg_gamma_chan, meas.nbg_beta_chan) == body.histogram.counts.shape
    assert meas.beta_gamma == body.histogram.counts.ravel().tolist()
    h = body.histogram.counts
    ours = [int(h[g_lo:g_hi, b_lo:b_hi].sum()) for _, b_lo, b_hi, g_lo, g_hi in meas.ROI_limits_chan]
    assert [int(c) for c in meas.roi_counts] == ours


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_openspex_reads_what_we_write_of_a_real_file_as_it_reads_the_original(path, tmp_path):
    msg = parse(path.read_bytes())
    ours = tmp_path / path.name
    ours.write_text(write(msg), "ascii")
    original, rewritten = read_with_openspex(path), read_with_openspex(ours)
    assert_openspex_sees(rewritten, msg)
    assert rewritten.status == original.status
    assert list(rewritten.roi_counts) == list(original.roi_counts)
    assert rewritten.bg_eff == original.bg_eff and rewritten.ratio == original.ratio
    assert rewritten.xe_vol == original.xe_vol and rewritten.air_volume == original.air_volume


def test_openspex_reads_a_message_we_built(sample_phd, tmp_path):
    """A message assembled from dataclasses (as the noble-gas driver will), with new counts and times."""
    rng = np.random.default_rng(10)
    real = parse(sample_phd.read_bytes())
    body = real.body
    hist = rng.poisson(3.0, size=(256, 256)).astype(np.int64)
    body = dataclasses.replace(
        body,
        acquisition=dataclasses.replace(body.acquisition, real_time=43210.5, live_time=43000.25),
        g_spectrum=dataclasses.replace(body.g_spectrum, counts=hist.sum(axis=1) + rng.poisson(50, 256)),
        b_spectrum=dataclasses.replace(body.b_spectrum, counts=hist.sum(axis=0) + rng.poisson(20, 256)),
        histogram=dataclasses.replace(body.histogram, counts=hist),
    )
    msg = dataclasses.replace(real, msg_id="20260101000000000",
                              sections=(dataclasses.replace(real.sections[0], body=body),))
    path = tmp_path / "built.PHD"
    path.write_text(write(msg), "ascii")
    assert parse(path.read_bytes()) == msg
    meas = read_with_openspex(path)
    assert_openspex_sees(meas, msg)
    assert meas.acq_livetime == 43000.25
