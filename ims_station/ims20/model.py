"""The IMS 2.0 message as typed Python values: one dataclass per block, one per table row.

Owns the data model only: what a message *is* once parsed, and what the writer takes.  The text layout
of every block (columns, formats, which block goes with which class) is defined once in
:mod:`ims_station.ims20.format`, which parses and writes these classes; nothing here does I/O or knows
about columns.

Conventions:

* Times are timezone-aware UTC :class:`~datetime.datetime` values (IMS 2.0 times are UTC, written
  ``yyyy/mm/dd hh:mm:ss.s``).
* Spectra and the beta-gamma histogram are integer numpy arrays (``int64``): :class:`Spectrum`
  ``counts`` has one value per channel, :class:`Histogram` ``counts`` has shape
  ``(gamma_channels, beta_channels)`` (row = gamma channel, as in the file and openSpex).
* Optional blocks are ``None`` when absent; table blocks hold a tuple of frozen row dataclasses.
* Blocks this codec does not know are kept as :class:`RawBlock` (name, argument, lines) and written
  back unchanged; data types it does not know are kept as :class:`RawBody`.
* Equality is by content (numpy arrays compare element-wise), so ``parse(write(m)) == m``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime, timezone
from typing import Any, Union

import numpy as np

# ----------------------------------------------------------------------------------------- PHD blocks


@dataclass(frozen=True)
class PhdHeader:
    """``#Header 3`` of a pulse-height-data message (four lines)."""

    station: str                       # station code, e.g. MIX58
    detector: str                      # detector code, e.g. MIX58_222
    system_type: str                   # P particulate, B 3-D beta-gamma, G other gas system
    geometry: str                      # sample geometry, e.g. CYLINDER
    qualifier: str                     # PREL (during acquisition) or FULL
    srid: str                          # sample reference identification
    measurement_id: str                # <detector>-<yyyy/mm/dd>-<hh:mm:ss.s> or 0
    detbk_measurement_id: str | None   # detector-background measurement id (absent in 2-id files)
    gasbk_measurement_id: str | None   # gas-background measurement id
    transmit_time: datetime
    version: str | None = "3"          # the token after ``#Header``


@dataclass(frozen=True)
class Comment:
    """``#Comment``: free text (lines kept, trailing blanks removed)."""

    text: str


@dataclass(frozen=True)
class Collection:
    """``#Collection`` (samples only): collection start, stop, air volume (m3)."""

    start: datetime
    stop: datetime
    air_volume: float


@dataclass(frozen=True)
class Acquisition:
    """``#Acquisition``: acquisition start, real time (s), live time (s)."""

    start: datetime
    real_time: float
    live_time: float


@dataclass(frozen=True)
class Processing:
    """``#Processing`` (noble-gas samples): stable Xe volume (cm3), Xe yield, archive bottle id."""

    xe_volume: float
    xe_volume_uncertainty: float
    xe_yield: float
    xe_yield_uncertainty: float
    archive_id: str


@dataclass(frozen=True)
class Sample:
    """``#Sample`` (particulate): two sample dimensions (mm)."""

    dimension1: float
    dimension2: float


@dataclass(frozen=True)
class Calibration:
    """``#Calibration``: date and time of the calibration in use."""

    time: datetime


@dataclass(frozen=True)
class GEnergyRow:
    energy: float          # keV
    channel: float         # centroid channel
    uncertainty: float     # channels


@dataclass(frozen=True)
class BEnergyRow:
    energy: float          # keV
    mode: str              # decay mode: B beta, C conversion electron
    channel: float
    uncertainty: float


@dataclass(frozen=True)
class ResolutionRow:
    energy: float          # keV
    fwhm: float            # keV
    uncertainty: float


@dataclass(frozen=True)
class EfficiencyRow:
    energy: float          # keV
    efficiency: float
    uncertainty: float


@dataclass(frozen=True)
class RoiLimitsRow:
    roi: int
    beta_low: float        # keV
    beta_high: float
    gamma_low: float
    gamma_high: float


@dataclass(frozen=True)
class BGEfficiencyRow:
    nuclide: str
    roi: int
    efficiency: float
    uncertainty: float


@dataclass(frozen=True)
class RatioRow:
    ratio_id: str
    upper_roi: int         # ROI of the interfering source peak
    lower_roi: int         # ROI receiving the interference
    ratio: float
    uncertainty: float


@dataclass(frozen=True)
class CertificateRow:
    nuclide: str
    half_life: float
    half_life_unit: str    # Y D H M S
    activity: float
    activity_uncertainty: float   # percent
    energy: float                 # keV
    intensity: float              # percent
    electron_mode: str            # B or C
    electron_energy: float        # keV
    electron_intensity: float     # percent


@dataclass(frozen=True)
class GEnergy:
    rows: tuple[GEnergyRow, ...] = ()


@dataclass(frozen=True)
class BEnergy:
    rows: tuple[BEnergyRow, ...] = ()


@dataclass(frozen=True)
class GResolution:
    rows: tuple[ResolutionRow, ...] = ()


@dataclass(frozen=True)
class BResolution:
    rows: tuple[ResolutionRow, ...] = ()


@dataclass(frozen=True)
class GEfficiency:
    rows: tuple[EfficiencyRow, ...] = ()


@dataclass(frozen=True)
class TotalEfficiency:
    rows: tuple[EfficiencyRow, ...] = ()


@dataclass(frozen=True)
class RoiLimits:
    rows: tuple[RoiLimitsRow, ...] = ()


@dataclass(frozen=True)
class BGEfficiency:
    rows: tuple[BGEfficiencyRow, ...] = ()


@dataclass(frozen=True)
class Ratios:
    rows: tuple[RatioRow, ...] = ()


@dataclass(frozen=True)
class Certificate:
    """``#Certificate`` (QC / calibration source): total activity, assay time, unit, nuclide rows."""

    total_activity: float
    assay_time: datetime
    unit: str
    rows: tuple[CertificateRow, ...] = ()


def _int_array(values: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu" and arr.size:
        raise TypeError(f"counts must be integers, not {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.ndim != ndim:
        raise ValueError(f"counts must have {ndim} dimension(s), not {arr.ndim}")
    return arr


@dataclass(frozen=True, eq=False)
class Spectrum:
    """``#g_Spectrum`` / ``#b_Spectrum``: counts per channel and the energy span (keV).

    ``first_channel`` is the label of the first row: 0 for beta-gamma producers (MIX, openSpex), 1 for
    HPGe producers and SpecUtils (see docs/ims20.md).
    """

    counts: np.ndarray
    energy_span: float
    first_channel: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", _int_array(self.counts, 1))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Spectrum):
            return NotImplemented
        return (self.energy_span == other.energy_span and self.first_channel == other.first_channel
                and np.array_equal(self.counts, other.counts))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class Histogram:
    """``#Histogram``: beta-gamma coincidence counts, shape (gamma channels, beta channels)."""

    counts: np.ndarray
    gamma_span: float
    beta_span: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", _int_array(self.counts, 2))

    @property
    def gamma_channels(self) -> int:
        return int(self.counts.shape[0])

    @property
    def beta_channels(self) -> int:
        return int(self.counts.shape[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.gamma_span == other.gamma_span and self.beta_span == other.beta_span
                and np.array_equal(self.counts, other.counts))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class RawBlock:
    """A block this codec does not know, kept as it was: ``#name arg`` and its lines."""

    name: str                 # without the '#'
    arg: str = ""             # the rest of the block line
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class PhdBody:
    """A pulse-height-data section: SAMPLEPHD, GASBKPHD, DETBKPHD, QCPHD, CALIBPHD, BLANKPHD,
    SPIKEPHD, REGENPHD."""

    header: PhdHeader
    acquisition: Acquisition
    comment: Comment | None = None
    collection: Collection | None = None
    sample: Sample | None = None
    calibration: Calibration | None = None
    processing: Processing | None = None
    g_energy: GEnergy | None = None
    b_energy: BEnergy | None = None
    g_resolution: GResolution | None = None
    b_resolution: BResolution | None = None
    roi_limits: RoiLimits | None = None
    g_efficiency: GEfficiency | None = None
    total_efficiency: TotalEfficiency | None = None
    bg_efficiency: BGEfficiency | None = None
    ratios: Ratios | None = None
    g_spectrum: Spectrum | None = None
    b_spectrum: Spectrum | None = None
    histogram: Histogram | None = None
    certificate: Certificate | None = None
    extra_blocks: tuple[RawBlock, ...] = ()


# ------------------------------------------------------------------------------------ RMSSOH blocks


@dataclass(frozen=True)
class SohHeader:
    """RMSSOH ``#Header``: station, detector, SOH period start and stop, transmit time (one line)."""

    station: str
    detector: str
    start: datetime
    stop: datetime
    transmit_time: datetime
    version: str | None = None


@dataclass(frozen=True)
class AirSamplerFlowRow:
    flow: float              # mean flow, SCM/h
    flow_std: float
    start: datetime
    duration: int            # s


@dataclass(frozen=True)
class AirSamplerEnvRow:
    temperature: float       # ambient, degC
    filter_pressure: float   # differential pressure across the filter / trap
    pressure: float          # ambient, hPa
    humidity: float          # percent
    start: datetime
    duration: int


@dataclass(frozen=True)
class DetEnvRow:
    room_temperature: float
    shield_status: str       # OPEN / CLOSED
    room_humidity: float
    high_voltage: float      # V
    crystal_temperature: float
    cooler_status: str       # ON / OFF
    fill_fraction: float
    leakage_current: float
    start: datetime
    duration: int


@dataclass(frozen=True)
class NimBinRow:
    polarity: str            # + or -
    voltage: float
    start: datetime
    duration: int


@dataclass(frozen=True)
class PowerSupplyRow:
    main: str                # ON / OFF
    aux: str
    ups: str
    start: datetime
    duration: int


@dataclass(frozen=True)
class EquipStatusRow:
    collection_srid: str     # C
    processing_srid: str     # P
    acquisition_srid: str    # A
    start: datetime
    duration: int


@dataclass(frozen=True)
class TamperEnvRow:
    sensor: str
    state: str               # OPEN / CLOSED
    start: datetime
    duration: int


@dataclass(frozen=True)
class ProcessSensorsRow:
    sensor_type: str         # TEMP PRESSURE PROCESSFLOW VOLTAGE COUNTS DEWPOINT CO2VOLUME
    sensor: str
    reading: float
    start: datetime
    duration: int


@dataclass(frozen=True)
class ChromatogramRow:
    time: float              # s
    response: float


@dataclass(frozen=True)
class AirSamplerFlow:
    rows: tuple[AirSamplerFlowRow, ...] = ()


@dataclass(frozen=True)
class AirSamplerEnv:
    rows: tuple[AirSamplerEnvRow, ...] = ()


@dataclass(frozen=True)
class DetEnv:
    rows: tuple[DetEnvRow, ...] = ()


@dataclass(frozen=True)
class NimBin:
    rows: tuple[NimBinRow, ...] = ()


@dataclass(frozen=True)
class PowerSupply:
    rows: tuple[PowerSupplyRow, ...] = ()


@dataclass(frozen=True)
class EquipStatus:
    rows: tuple[EquipStatusRow, ...] = ()


@dataclass(frozen=True)
class TamperEnv:
    rows: tuple[TamperEnvRow, ...] = ()


@dataclass(frozen=True)
class ProcessSensors:
    rows: tuple[ProcessSensorsRow, ...] = ()


@dataclass(frozen=True)
class Chromatogram:
    srid: str
    rows: tuple[ChromatogramRow, ...] = ()


@dataclass(frozen=True)
class RmsSohBody:
    """An RMSSOH section (radionuclide station state of health)."""

    header: SohHeader
    comment: Comment | None = None
    air_sampler_flow: AirSamplerFlow | None = None
    air_sampler_env: AirSamplerEnv | None = None
    det_env: DetEnv | None = None
    nimbin: NimBin | None = None
    power_supply: PowerSupply | None = None
    equip_status: EquipStatus | None = None
    tamper_env: TamperEnv | None = None
    process_sensors: ProcessSensors | None = None
    chromatogram: Chromatogram | None = None
    extra_blocks: tuple[RawBlock, ...] = ()


# ------------------------------------------------------------------------------------------ alerts


@dataclass(frozen=True)
class AlertBody:
    """ALERT_FLOW / ALERT_TEMP / ALERT_SYSTEM / ALERT_UPS: station, alert type, time, description."""

    station: str
    alert_type: str
    time: datetime
    description: str = ""


@dataclass(frozen=True)
class RawBody:
    """A data type this codec does not know (MET, ARR, ...): its lines, kept as they were."""

    lines: tuple[str, ...] = ()


Body = Union[PhdBody, RmsSohBody, AlertBody, RawBody]


# ----------------------------------------------------------------------------------------- envelope


@dataclass(frozen=True)
class RefId:
    """``REF_ID ref_str [ref_src] [PART seq [OF total]]`` (responses to a request)."""

    ref: str
    source: str | None = None
    part: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class ProdId:
    """``PROD_ID product_id delivery_id`` (subscription deliveries)."""

    product_id: int
    delivery_id: int


@dataclass(frozen=True)
class Section:
    """One ``DATA_TYPE`` section of a message and its body."""

    data_type: str
    body: Body
    format: str | None = None       # optional token after the data type, e.g. IMS2.0


@dataclass(frozen=True)
class Message:
    """``BEGIN IMS2.0`` ... ``STOP``."""

    msg_id: str
    sections: tuple[Section, ...]
    msg_type: str = "DATA"
    source: str | None = None       # the optional token after the MSG_ID
    ref_id: RefId | None = None
    prod_id: ProdId | None = None
    version: str = "IMS2.0"

    @property
    def body(self) -> Body:
        """The body of a single-section message (the usual station message)."""
        if len(self.sections) != 1:
            raise ValueError(f"message has {len(self.sections)} sections, not one")
        return self.sections[0].body

    @property
    def data_type(self) -> str:
        if len(self.sections) != 1:
            raise ValueError(f"message has {len(self.sections)} sections, not one")
        return self.sections[0].data_type


# --------------------------------------------------------------------------------------------- JSON


def format_time(t: datetime) -> str:
    """ISO 8601 with a ``Z`` (the JSON form of a time; the message form is in format.py)."""
    return t.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def to_jsonable(value: Any) -> Any:
    """A JSON-ready form of any model value: dataclasses become objects (with a ``block`` / ``type``
    key naming the class), times ISO strings, numpy arrays (nested) lists of ints."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return format_time(value)
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            out[f.name] = to_jsonable(getattr(value, f.name))
        if isinstance(value, Histogram):
            out["gamma_channels"] = value.gamma_channels
            out["beta_channels"] = value.beta_channels
        if isinstance(value, Spectrum):
            out["channels"] = int(value.counts.size)
        return out
    if isinstance(value, (tuple, list)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


__all__ = [
    "PhdHeader",
    "Comment",
    "Collection",
    "Acquisition",
    "Processing",
    "Sample",
    "Calibration",
    "GEnergyRow",
    "BEnergyRow",
    "ResolutionRow",
    "EfficiencyRow",
    "RoiLimitsRow",
    "BGEfficiencyRow",
    "RatioRow",
    "CertificateRow",
    "GEnergy",
    "BEnergy",
    "GResolution",
    "BResolution",
    "GEfficiency",
    "TotalEfficiency",
    "RoiLimits",
    "BGEfficiency",
    "Ratios",
    "Certificate",
    "Spectrum",
    "Histogram",
    "RawBlock",
    "PhdBody",
    "SohHeader",
    "AirSamplerFlowRow",
    "AirSamplerEnvRow",
    "DetEnvRow",
    "NimBinRow",
    "PowerSupplyRow",
    "EquipStatusRow",
    "TamperEnvRow",
    "ProcessSensorsRow",
    "ChromatogramRow",
    "AirSamplerFlow",
    "AirSamplerEnv",
    "DetEnv",
    "NimBin",
    "PowerSupply",
    "EquipStatus",
    "TamperEnv",
    "ProcessSensors",
    "Chromatogram",
    "RmsSohBody",
    "AlertBody",
    "RawBody",
    "RefId",
    "ProdId",
    "Section",
    "Message",
    "Body",
    "format_time",
    "to_jsonable",
]
