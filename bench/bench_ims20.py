"""IMS 2.0 codec speed: parse and write of the real MIX58 SAMPLEPHD (142 kB, 256 x 256 histogram).

Reference in the same run: openSpex's own parser (``BGMeasurement.parsePHDData``, the text-to-lists
part of its reader, without its calibration and ROI loops) on the same text, when open-spex is
installed (``./run`` installs it for the tests; docs/ims20.md).  The ratio says how our strict,
bounded parser compares with a permissive one that checks nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.harness import Result, best_rate

GROUP = "ims20"
SAMPLE = Path(os.environ.get("IMS_SHARED", Path(__file__).resolve().parent.parent.parent / "shared")) / \
    "samples" / "ims20" / "SAMPLE20211203070613605.PHD"


def _openspex_parse():
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        from open_spex import BGMeasurement as bg
    except ImportError:
        return None

    def parse(text: str):
        meas = object.__new__(bg.BGMeasurement)
        meas.status = 0
        meas.verbose = False
        meas.parsePHDData(text)
        return meas

    return parse


def run(quick: bool) -> list[Result]:
    from ims_station.ims20 import parse, write

    data = SAMPLE.read_bytes()
    text = data.decode("ascii")
    msg = parse(data)
    min_time = 0.05 if quick else 1.0
    ref = _openspex_parse()
    ref_rate = best_rate(lambda: ref(text), 1, min_time=min_time) if ref else None
    parse_rate = best_rate(lambda: parse(data), 1, min_time=min_time)
    write_rate = best_rate(lambda: write(msg), 1, min_time=min_time)
    mb = len(data) / 1e6
    return [
        Result(GROUP, "parse real SAMPLEPHD (142 kB, 256x256)", parse_rate, "messages/s",
               "openSpex parsePHDData" if ref else "", ref_rate,
               note=f"{parse_rate * mb:.1f} MB/s"),
        Result(GROUP, "write the same message", write_rate, "messages/s", note=f"{write_rate * mb:.1f} MB/s"),
    ]
