"""Channel status, format 1 (32 bytes; spec §4.5): every flag bit named.

Owns the mapping between the 32-byte block and :class:`ChannelStatus`.  A channel subframe keeps
its status as raw bytes (the field is variable-size and "may vary among implementations"); this
module interprets and builds format-1 blocks.  Bit numbering: spec "bit 1" is the least significant
bit (GMS and the public Python reader agree; real frames carry all flags 0, so the order could not
be checked against data).  Undefined ("future") bits and the 3 unused bytes are kept so that
``from_bytes(b).to_bytes() == b`` for every format-1 block.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ims_station.cd11.wire import STATUS1, ascii_reason

STATUS_FORMAT_1 = 1
STATUS1_SIZE = STATUS1.size  # 32

# (status byte, bit value, attribute name) -- the one table of named bits.
BITS: tuple[tuple[str, int, str], ...] = (
    ("data_status", 0x01, "dead_sensor_channel"),
    ("data_status", 0x02, "zeroed_data"),
    ("data_status", 0x04, "clipped"),
    ("data_status", 0x08, "calibration_underway"),
    ("security", 0x01, "equipment_housing_open"),
    ("security", 0x02, "digitizing_equipment_open"),
    ("security", 0x04, "vault_door_opened"),
    ("security", 0x08, "authentication_seal_broken"),
    ("security", 0x10, "equipment_moved"),
    ("misc", 0x01, "clock_differential_too_large"),
    ("misc", 0x02, "gps_receiver_off"),
    ("misc", 0x04, "gps_receiver_unlocked"),
    ("misc", 0x08, "digitizer_analog_input_shorted"),
    ("misc", 0x10, "digitizer_calibration_loop_back"),
    ("voltage", 0x01, "main_power_failure"),
    ("voltage", 0x02, "backup_power_unstable"),
)
_BYTES = ("data_status", "security", "misc", "voltage")
_BITS_BY_INDEX = tuple((_BYTES.index(b), bit, name) for b, bit, name in BITS)
_NAMED_MASK = {b: sum(v for bb, v, _ in BITS if bb == b) for b in _BYTES}


@dataclass(kw_only=True)
class ChannelStatus:
    """Channel status format 1.  ``last_gps_sync`` is the 20-character time stamp text ('' if the
    field is all NUL); ``future_bits`` holds the undefined bits of the four flag bytes, in order."""

    dead_sensor_channel: bool = False
    zeroed_data: bool = False
    clipped: bool = False
    calibration_underway: bool = False
    equipment_housing_open: bool = False
    digitizing_equipment_open: bool = False
    vault_door_opened: bool = False
    authentication_seal_broken: bool = False
    equipment_moved: bool = False
    clock_differential_too_large: bool = False
    gps_receiver_off: bool = False
    gps_receiver_unlocked: bool = False
    digitizer_analog_input_shorted: bool = False
    digitizer_calibration_loop_back: bool = False
    main_power_failure: bool = False
    backup_power_unstable: bool = False
    last_gps_sync: str = ""
    clock_differential_us: int = 0
    future_bits: tuple[int, int, int, int] = (0, 0, 0, 0)
    unused: bytes = b"\0\0\0"

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ChannelStatus | None":
        """Interpret a status field; None unless it is a 32-byte format-1 block with ASCII time."""
        if len(raw) != STATUS1_SIZE or raw[0] != STATUS_FORMAT_1:
            return None
        fmt, ds, sec, misc, volt, unused, gps, clock = STATUS1.struct.unpack(raw)
        if ascii_reason(gps):
            return None
        values = dict(zip(_BYTES, (ds, sec, misc, volt)))
        kw = {name: bool(values[byte] & bit) for byte, bit, name in BITS}
        return cls(**kw, last_gps_sync=gps.rstrip(b"\0").decode("ascii"),
                   clock_differential_us=clock,
                   future_bits=tuple(values[b] & ~_NAMED_MASK[b] & 0xFF for b in _BYTES),
                   unused=unused)

    def to_bytes(self) -> bytes:
        from ims_station.cd11.wire import encode_ascii

        values = list(self.future_bits)
        for index, bit, name in _BITS_BY_INDEX:
            if getattr(self, name):
                values[index] |= bit
        gps = encode_ascii(self.last_gps_sync, 20, "status.last_gps_sync")
        return STATUS1.struct.pack(STATUS_FORMAT_1, *values, self.unused, gps,
                                   self.clock_differential_us)

    def flags(self) -> list[str]:
        """Names of the flags that are set."""
        return [name for _, _, name in BITS if getattr(self, name)]

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["future_bits"] = list(self.future_bits)
        d["unused"] = self.unused.hex()
        return d
