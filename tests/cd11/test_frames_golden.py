"""Golden vectors: the real and reference frames in shared/samples/cd11 parse to exactly the values
of decoded_reference.json, re-encode byte-identically, and the spec's hex dumps (§9) are what our
builders produce."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ims_station import cd11
from ims_station.cd11.crc64 import crc64

SUBFRAME_KEYS = ["site", "chan", "loc", "auth_flag", "transformation", "sensor_type", "option_flag",
                 "data_format", "calib", "calper", "time_stamp", "subframe_time_length_ms",
                 "status_size", "status_hex", "data_size", "subframe_count", "auth_offset",
                 "channel_length", "auth_key_id", "auth_size"]
HEADER_KEYS = ["frame_type", "creator", "destination", "sequence", "series", "frame_auth_key_id",
               "frame_auth_size", "trailer_offset", "crc64_hex", "total_bytes"]


@pytest.fixture(scope="module")
def reference(cd11_samples):
    return json.loads((cd11_samples / "decoded_reference.json").read_text())


def _files(cd11_samples):
    return sorted(cd11_samples.glob("*.cd11"))


def test_every_sample_file_is_in_the_reference(cd11_samples, reference):
    names = {p.name for p in _files(cd11_samples)}
    assert names == set(reference)
    assert len(names) == 8


def test_every_field_and_sample_equals_the_reference(cd11_samples, reference):
    for path in _files(cd11_samples):
        ref = reference[path.name]
        buf = path.read_bytes()
        frame, end = cd11.parse_frame(buf)
        assert end == len(buf) == ref["total_bytes"]
        got = frame.to_dict()
        assert got["crc_ok"] is True
        assert {k: got[k] for k in HEADER_KEYS} == {k: ref[k] for k in HEADER_KEYS}, path.name
        assert frame.trailer.crc == crc64(buf[:-8]) == int(ref["crc64_hex"], 16)
        if ref["frame_type"] != 5:
            continue
        for k in ("frame_time_length_ms", "nominal_time", "channel_string"):
            assert got[k] == ref[k], (path.name, k)
        assert len(got["subframes"]) == len(ref["subframes"])
        for i, (g, r) in enumerate(zip(got["subframes"], ref["subframes"])):
            assert {k: g[k] for k in SUBFRAME_KEYS} == {k: r[k] for k in SUBFRAME_KEYS}, (path.name, i)
            assert g["nsamples"] == r["samples"]
            assert len(g["samples"]) == r["samples"]
            if "decoded_samples" in r:
                assert g["samples"] == r["decoded_samples"], (path.name, i)


def test_uncompressed_s3_and_s2_channels_decode(cd11_samples):
    # decoded_reference.json lists no samples for the s3/s2 channels of the mixed frame; their
    # size bookkeeping is checked above, and the values must be the same waveform's low rates.
    frame, _ = cd11.parse_frame((cd11_samples / "generated_data_5ch_mixed.cd11").read_bytes())
    lhz, shz = frame.subframes[3], frame.subframes[4]
    assert (lhz.description.data_format, shz.description.data_format) == ("s3", "s2")
    assert lhz.samples().dtype == np.int32 and lhz.samples().shape == (10,)
    assert shz.samples().shape == (200,)
    # Re-encoding the decoded values in the same format reproduces the bytes.
    assert cd11.data.encode_samples(lhz.samples(), "s3") == lhz.data
    assert cd11.data.encode_samples(shz.samples(), "s2") == shz.data


def test_decode_then_encode_is_byte_identical(cd11_samples):
    for path in _files(cd11_samples):
        buf = path.read_bytes()
        frame, _ = cd11.parse_frame(buf)
        assert frame.raw == buf
        assert frame.to_bytes() == buf, path.name


def test_real_signatures_and_ca_streams_are_carried_through(cd11_samples):
    buf = (cd11_samples / "real_LBTB_seq9720700.cd11").read_bytes()
    frame, _ = cd11.parse_frame(buf)
    assert frame.auth_key_id == 1 and len(frame.auth_value) == 40
    assert buf.find(frame.auth_value) == frame.header.trailer_offset + 8
    for sf in frame.subframes:
        assert sf.description.transformation == cd11.TRANSFORM_CA_AFTER_SIGNATURE
        assert len(sf.auth_value) == 40 and sf.auth_key_id > 10_000_000
        start, auth_offset = sf.span
        assert buf[start + auth_offset + 8:start + auth_offset + 48] == sf.auth_value
        assert sf.data in buf
    # A re-encoded subframe reproduces its original bytes, signature included.
    start, _ = frame.subframes[2].span
    sub = frame.subframes[2].to_bytes()
    assert buf[start:start + len(sub)] == sub


def test_concatenated_frames(cd11_samples):
    paths = _files(cd11_samples)
    blob = b"".join(p.read_bytes() for p in paths)
    frames = list(cd11.iter_frames(blob))
    assert [f.raw for f in frames] == [p.read_bytes() for p in paths]
    offsets = [f.offset for f in frames]
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_stream_decoder_reassembles_frames_fed_byte_by_byte(cd11_samples):
    paths = _files(cd11_samples)
    blob = b"".join(p.read_bytes() for p in paths)
    dec = cd11.FrameDecoder()
    got = []
    for i in range(0, len(blob), 7):
        got += dec.feed(blob[i:i + 7])
    assert [f.raw for f in got] == [p.read_bytes() for p in paths]
    assert dec.buffered == 0


def test_channel_status_format1_of_the_s4_frame(cd11_samples):
    frame, _ = cd11.parse_frame((cd11_samples / "generated_data_s4.cd11").read_bytes())
    st = frame.subframes[0].status_format1
    assert st is not None
    assert st.clock_differential_us == 12
    assert st.last_gps_sync == "2024060 12:00:10.000"
    assert st.flags() == []
    assert st.to_bytes() == frame.subframes[0].status


# --- spec §9 vectors built from objects ---------------------------------------------------------
def test_connection_request_vector(cd11_samples):
    f = cd11.ConnectionRequest(creator="STA01", destination="0", station="STA01", station_type="IMS",
                               service_type="TCP", ip="127.0.0.1", port=8100)
    assert f.to_bytes() == (cd11_samples / "generated_connreq.cd11").read_bytes()


def test_acknack_vector(cd11_samples):
    f = cd11.Acknack(creator="IDC", frame_set="STA01:0", lowest=100, highest=120,
                     gaps=[(103, 105), (110, 111)])
    assert f.to_bytes() == (cd11_samples / "generated_acknack.cd11").read_bytes()


def test_alert_vector(cd11_samples):
    f = cd11.Alert(creator="STA01", message="Shutting down")
    assert f.to_bytes() == (cd11_samples / "generated_alert.cd11").read_bytes()


def test_ca20_data_frame_vector_from_the_builder(cd11_samples):
    samples = [0, 5, 12, 20, 31, 40, 44, 45, 41, 30, 15, -3, -20, -36, -47, -52, -50, -41, -27, -10]
    wire = cd11.build_data_frame("STA01", 1, "2024060 12:00:10.000",
                                 [("STA01", "BHZ", "00", np.array(samples, np.int32), 20.0,
                                   "2024060 12:00:10.000", None, None)],
                                 frame_time_length_ms=1000)
    assert wire == (cd11_samples / "generated_data_ca20.cd11").read_bytes()
    assert cd11.parse_frame(wire)[0].subframes[0].data == \
        (cd11_samples / "generated_ca20_payload.bin").read_bytes()


def test_s4_data_frame_vector_from_the_builder(cd11_samples):
    status = cd11.ChannelStatus(last_gps_sync="2024060 12:00:10.000", clock_differential_us=12)
    wire = cd11.build_data_frame(
        "STA01", 2, "2024060 12:00:10.000",
        [cd11.ChannelInput("STA01", "BHZ", "00", np.array([1, -1, 256, -65536], np.int32), 4.0,
                           "2024060 12:00:10.000", status, None, calib=0.5, calper=1.0)],
        frame_time_length_ms=1000)
    assert wire == (cd11_samples / "generated_data_s4.cd11").read_bytes()


def test_sequence_from_time_counts_10_s_frames_since_2000():
    assert cd11.sequence_from_time("2000001 00:00:00.000") == 0
    assert cd11.sequence_from_time("2000001 00:00:19.999") == 1
    assert cd11.sequence_from_time("2000002 00:00:00.000") == 8640


def test_docs_hold_the_current_layout_tables():
    from pathlib import Path

    from ims_station.cd11.wire import LAYOUTS, markdown_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cd11.md").read_text()
    for layout in LAYOUTS:
        assert markdown_table(layout) in doc, f"docs/cd11.md: regenerate the {layout.name} table"
