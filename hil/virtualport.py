"""What every in-process pyserial port of the HIL has in common (``sim://``, ``noblegas://``).

A simulated line has no output buffer and no modem control: writes reach the simulated device at
once, the control lines are always asserted (CTS, DSR, CD) or idle (RI), and setting them does
nothing.  One base class says so, so each URL handler (``protocol_sim.py``,
``protocol_noblegas.py``) holds only what its device does.
"""

from __future__ import annotations

from serial.serialutil import PortNotOpenError, SerialBase


class VirtualSerialBase(SerialBase):
    """pyserial's ``SerialBase`` for a port with no output buffer and no modem lines."""

    def reset_output_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    @property
    def out_waiting(self) -> int:
        return 0

    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True
