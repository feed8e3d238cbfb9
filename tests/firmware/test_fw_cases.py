"""The MicroPython-compatible firmware cases (fwcases.py), run here under CPython.

test_micropython.py runs the very same cases under the MicroPython unix port.
"""

from __future__ import annotations

import pytest

from tests.firmware import fwcases

CASES = fwcases.cases()


def test_there_are_cases_for_every_area():
    for area in ("cobs", "crc32", "hmac", "packet", "difference_packing", "deframer", "ring",
                 "timebase", "adc_driver", "digitizer_commands", "digitizer_resend", "gnss"):
        assert any(area in c for c in CASES), area


@pytest.mark.parametrize("name", CASES)
def test_case(name, vectors, sim_board):
    fwcases.setup(vectors, sim_board)
    getattr(fwcases, name)()
