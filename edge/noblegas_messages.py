"""IMS 2.0 messages of the noble-gas driver, built from what the detector reported: PHD spectra
(SAMPLEPHD PREL/FULL, GASBKPHD, DETBKPHD, QCPHD, CALIBPHD), RMSSOH and the ALERT_* messages; and the ROI
arithmetic of the driver's local alarms.

Owns: :class:`DetectorCalibration` (the calibration blocks a PHD message of this detector carries,
read from the JSON that ``ims-station hil noblegas --calibration`` prints, or written by hand in the
same shape), :class:`Measurement` (one count as the driver read it), the builders
(:func:`phd_message`, :func:`rmssoh_message`, :func:`alert_message`) and :func:`roi_gross` /
:func:`roi_net` (counts in the β-γ ROIs, limits converted to channels with the quadratic fit of
the energy calibration and rounded, as openSpex's ``calibrate`` does).

A core without I/O: the codec (``ims_station.ims20``) writes the text, the driver (``edge/noblegas.py``)
decides when.  Does not own the format (``ims_station/ims20/format.py``), the dialect
(``ims_station/mca.py``) or the physics (``ims_station/radioxenon.py``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ims_station.ims20 import model as m
from ims_station.ims20.format import measurement_id, write

PHD_KINDS = {"DETBK": "DETBKPHD", "CALIB": "CALIBPHD", "GASBK": "GASBKPHD", "ACQUIRE": "SAMPLEPHD", "QC": "QCPHD"}
CS137_HALF_LIFE_Y = 30.08
XE133_HALF_LIFE_D = 5.2475


def utc(t: float) -> datetime:
    """UTC seconds -> an aware datetime rounded to 0.1 s (the resolution IMS 2.0 times are written at)."""
    return datetime.fromtimestamp(round(float(t), 1), tz=timezone.utc)


class CalibrationError(ValueError):
    """The calibration file is not of the expected shape (the driver names the config key)."""


@dataclass(frozen=True)
class DetectorCalibration:
    """Calibration blocks for the PHD messages of one detector (tables of (energy, value) pairs)."""

    channels: int
    g_span_kev: float
    b_span_kev: float | None = None
    g_energy: tuple = ()
    b_energy: tuple = ()
    g_resolution: tuple = ()
    b_resolution: tuple = ()
    g_efficiency: tuple = ()
    roi_limits: dict = field(default_factory=dict)          # roi -> (β lo, β hi, γ lo, γ hi) keV
    bg_efficiency: tuple = ()                               # (nuclide, roi, efficiency)
    ratios: tuple = ()                                      # (name, upper roi, lower roi, ratio)
    rel_uncertainty: float = 0.01

    @classmethod
    def from_json(cls, doc: Any, rel_uncertainty: float = 0.01) -> "DetectorCalibration":
        if not isinstance(doc, dict):
            raise CalibrationError("not a JSON object")
        try:
            def pairs(key):
                return tuple((float(a), float(b)) for a, b in doc.get(key, ()))
            rois = {int(k): tuple(float(x) for x in v) for k, v in dict(doc.get("roi_limits", {})).items()}
            if any(len(v) != 4 for v in rois.values()):
                raise CalibrationError("roi_limits: each ROI needs 4 limits (β lo, β hi, γ lo, γ hi)")
            cal = cls(
                channels=int(doc["channels"]), g_span_kev=float(doc["g_span_kev"]),
                b_span_kev=float(doc["b_span_kev"]) if doc.get("b_span_kev") is not None else None,
                g_energy=pairs("g_energy"), b_energy=pairs("b_energy"), g_resolution=pairs("g_resolution"),
                b_resolution=pairs("b_resolution"), g_efficiency=pairs("g_efficiency"), roi_limits=rois,
                bg_efficiency=tuple((str(n), int(r), float(e)) for n, r, e in doc.get("bg_efficiency", ())),
                ratios=tuple((str(n), int(u), int(lo), float(v)) for n, u, lo, v in doc.get("ratios", ())),
                rel_uncertainty=float(rel_uncertainty))
        except CalibrationError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise CalibrationError(f"{type(err).__name__}: {err}") from None
        if not 1 <= cal.channels <= 65536 or not cal.g_span_kev > 0:
            raise CalibrationError("channels must be 1..65536 and g_span_kev > 0")
        for name, vals in (("g_energy", cal.g_energy), ("b_energy", cal.b_energy)):
            if vals and len(vals) < 3:
                raise CalibrationError(f"{name}: at least 3 points (a quadratic is fitted)")
        return cal

    @classmethod
    def load(cls, path: str | Path, rel_uncertainty: float = 0.01) -> "DetectorCalibration":
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise CalibrationError(f"cannot read {path}: {err.strerror or err}") from None
        if len(text) > 1 << 20:
            raise CalibrationError(f"{path}: larger than 1 MiB")
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise CalibrationError(f"{path}: not JSON: {err}") from None
        return cls.from_json(doc, rel_uncertainty)

    # -- ROI channels (openSpex's calibrate: quadratic energy -> channel fit, limits rounded)
    def _fit(self, pts: tuple) -> np.ndarray:
        e = np.array([p[0] for p in pts])
        c = np.array([p[1] for p in pts])
        return np.polyfit(e, c, 2)

    def roi_channels(self, roi: int) -> tuple[tuple[int, int], tuple[int, int]]:
        b_lo, b_hi, g_lo, g_hi = self.roi_limits[roi]
        cg = np.polyval(self._fit(self.g_energy), [g_lo, g_hi])
        cb = np.polyval(self._fit(self.b_energy), [b_lo, b_hi])
        return (int(cg[0] + 0.5), int(cg[1] + 0.5)), (int(cb[0] + 0.5), int(cb[1] + 0.5))

    # -- blocks
    def blocks(self, beta_gamma: bool) -> dict:
        u = self.rel_uncertainty
        out: dict = {}
        if self.g_energy:
            out["g_energy"] = m.GEnergy(tuple(m.GEnergyRow(e, c, 0.05) for e, c in self.g_energy))
        if self.g_resolution:
            out["g_resolution"] = m.GResolution(tuple(m.ResolutionRow(e, f, 0.05) for e, f in self.g_resolution))
        if self.g_efficiency:
            out["g_efficiency"] = m.GEfficiency(tuple(m.EfficiencyRow(e, f, abs(f) * u) for e, f in self.g_efficiency))
        if not beta_gamma:
            return out
        if self.b_energy:
            out["b_energy"] = m.BEnergy(tuple(m.BEnergyRow(e, "C", c, 0.1) for e, c in self.b_energy))
        if self.b_resolution:
            out["b_resolution"] = m.BResolution(tuple(m.ResolutionRow(e, f, 0.1) for e, f in self.b_resolution))
        if self.roi_limits:
            out["roi_limits"] = m.RoiLimits(tuple(m.RoiLimitsRow(r, *v) for r, v in sorted(self.roi_limits.items())))
        if self.bg_efficiency:
            out["bg_efficiency"] = m.BGEfficiency(tuple(
                m.BGEfficiencyRow(n, r, e, abs(e) * u) for n, r, e in self.bg_efficiency))
        if self.ratios:
            out["ratios"] = m.Ratios(tuple(m.RatioRow(n, up, lo, v, abs(v) * u) for n, up, lo, v in self.ratios))
        return out


@dataclass
class Measurement:
    """One count as the driver read it from the MCA (times UTC seconds of the detector's clock)."""

    kind: str                         # DETBK CALIB GASBK ACQUIRE QC (the cell phase counted)
    start: float                      # acquisition start
    real_s: float = 0.0
    live_s: float = 0.0
    gamma: np.ndarray | None = None   # γ spectrum (β-γ: singles; HPGe: the spectrum)
    beta: np.ndarray | None = None
    hist: np.ndarray | None = None    # γ rows × β columns
    sample: dict = field(default_factory=dict)   # SHOW_SAMPLE fields (strings)
    restarted: bool = False           # the detector restarted during the count (counts lost)
    preset_s: float = 0.0             # the true-time preset it was armed with (0: none)


def _f(fields: dict, key: str, default: float = 0.0) -> float:
    try:
        v = float(fields.get(key, default))
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def phd_message(meas: Measurement, *, qualifier: str, station: str, detector: str, beta_gamma: bool,
                calibration: DetectorCalibration | None, msg_id: str, transmit: float,
                detbk_id: str | None = None, gasbk_id: str | None = None) -> tuple[m.Message, str]:
    """The PHD message of *meas* and its text."""
    data_type = PHD_KINDS[meas.kind]
    start = utc(meas.start)
    mid = measurement_id(detector, start)
    s = meas.sample
    srid = str(s.get("SRID", "0")) or "0"
    header = m.PhdHeader(
        station=station, detector=detector, system_type="B" if beta_gamma else "G", geometry="CYLINDER",
        qualifier=qualifier, srid=srid, measurement_id=mid, detbk_measurement_id=detbk_id or "0",
        # a calibration count has no gas background (S3: the third ID is 0)
        gasbk_measurement_id=(gasbk_id if data_type != "CALIBPHD" else None) or "0", transmit_time=utc(transmit))
    kw: dict = {}
    if data_type == "SAMPLEPHD":
        kw["collection"] = m.Collection(utc(_f(s, "COLL_START")), utc(_f(s, "COLL_STOP")),
                                        round(_f(s, "AIR_VOLUME"), 5))
        kw["processing"] = m.Processing(_f(s, "XE_VOLUME"), _f(s, "XE_VOLUME_ERR"), _f(s, "XE_YIELD"),
                                        _f(s, "XE_YIELD_ERR"), str(s.get("ARCHIVE", "0")) or "0")
    if data_type == "QCPHD":
        bq = _f(s, "SOURCE_BQ")
        kw["certificate"] = m.Certificate(bq, start, "BQ", (m.CertificateRow(
            str(s.get("SOURCE", "CS-137")), CS137_HALF_LIFE_Y, "Y", bq, 3.0, 661.66, 85.1, "C", 624.2, 7.8),))
    if data_type == "CALIBPHD":
        # the Xe-133 calibration spike: 81.0 keV γ (36.9 %) in coincidence with β (Q 346 keV)
        bq = _f(s, "SOURCE_BQ")
        kw["certificate"] = m.Certificate(bq, start, "BQ", (m.CertificateRow(
            str(s.get("SOURCE", "XE-133")), XE133_HALF_LIFE_D, "D", bq, 3.0, 81.0, 36.9, "B", 346.4, 99.0),))
    if meas.restarted:
        kw["comment"] = m.Comment("The detector restarted during this count: the counts before the restart "
                                  "are lost; this count covers the rest of the phase.")
    if calibration is not None:
        kw.update(calibration.blocks(beta_gamma))
        kw["calibration"] = m.Calibration(start)
    if meas.gamma is not None:
        span = calibration.g_span_kev if calibration else float(len(meas.gamma))
        kw["g_spectrum"] = m.Spectrum(meas.gamma, span, 0 if beta_gamma else 1)
    if beta_gamma and meas.beta is not None:
        kw["b_spectrum"] = m.Spectrum(meas.beta, (calibration.b_span_kev if calibration and calibration.b_span_kev
                                                  else float(len(meas.beta))), 0)
    if beta_gamma and meas.hist is not None:
        g_span = calibration.g_span_kev if calibration else float(meas.hist.shape[0])
        b_span = calibration.b_span_kev if calibration and calibration.b_span_kev else float(meas.hist.shape[1])
        kw["histogram"] = m.Histogram(meas.hist, g_span, b_span)
    body = m.PhdBody(header=header, acquisition=m.Acquisition(start, round(meas.real_s, 2), round(meas.live_s, 2)),
                     **kw)
    msg = m.Message(msg_id=msg_id, sections=(m.Section(data_type, body),))
    return msg, write(msg)


def rmssoh_message(rows: list[tuple[float, dict]], *, station: str, detector: str, msg_id: str,
                   transmit: float, period_start: float, period_stop: float) -> tuple[m.Message, str]:
    """An RMSSOH message of the SOH readings *rows* ((detector UTC seconds, SHOW_SOH fields) in order):
    one row per reading in each block, its duration up to the next reading."""
    def dur(i: int) -> int:
        nxt = rows[i + 1][0] if i + 1 < len(rows) else period_stop
        return max(0, int(round(nxt - rows[i][0])))
    flow, env, det, power, equip, sensors = [], [], [], [], [], []
    for i, (t, f) in enumerate(rows):
        st, d = utc(t), dur(i)
        flow.append(m.AirSamplerFlowRow(_f(f, "FLOW"), _f(f, "FLOW_SD"), st, d))
        env.append(m.AirSamplerEnvRow(_f(f, "T_ROOM"), _f(f, "DP_TRAP"), _f(f, "P_AMB"), 0.0, st, d))
        det.append(m.DetEnvRow(_f(f, "T_ROOM"), "CLOSED", 0.0, _f(f, "HV"), _f(f, "T_DET"), "OFF", 0.0, 0.0, st, d))
        power.append(m.PowerSupplyRow("ON" if _f(f, "MAINS", 1) else "OFF", "OFF",
                                      "ON" if str(f.get("UPS", "")) == "BATTERY" else "OFF", st, d))
        equip.append(m.EquipStatusRow(str(f.get("COLL_SRID", "0")) or "0", str(f.get("PROC_SRID", "0")) or "0",
                                      str(f.get("ACQ_SRID", "0")) or "0", st, d))
        for typ, name, key in (("TEMP", "TRAP", "T_TRAP"), ("PRESSURE", "CELL", "P_CELL"),
                               ("PRESSURE", "TRAP_DP", "DP_TRAP"), ("VOLTAGE", "HV_SET", "HV_SET"),
                               ("COUNTS", "UPS_CHARGE", "UPS_CHARGE"), ("CO2VOLUME", "COLL_VOLUME", "COLL_VOLUME")):
            sensors.append(m.ProcessSensorsRow(typ, name, _f(f, key), st, d))
    body = m.RmsSohBody(
        header=m.SohHeader(station, detector, utc(period_start), utc(period_stop), utc(transmit)),
        air_sampler_flow=m.AirSamplerFlow(tuple(flow)), air_sampler_env=m.AirSamplerEnv(tuple(env)),
        det_env=m.DetEnv(tuple(det)), power_supply=m.PowerSupply(tuple(power)),
        equip_status=m.EquipStatus(tuple(equip)), process_sensors=m.ProcessSensors(tuple(sensors)))
    msg = m.Message(msg_id=msg_id, sections=(m.Section("RMSSOH", body),))
    return msg, write(msg)


def alert_message(alert_type: str, *, station: str, msg_id: str, time: float, description: str
                  ) -> tuple[m.Message, str]:
    """ALERT_FLOW / ALERT_TEMP / ALERT_SYSTEM / ALERT_UPS: one line of description (ASCII)."""
    text = " ".join(description.encode("ascii", "replace").decode().split())[:200]
    body = m.AlertBody(station=station, alert_type=alert_type.removeprefix("ALERT_"), time=utc(time),
                       description=text)
    msg = m.Message(msg_id=msg_id, sections=(m.Section(alert_type, body),))
    return msg, write(msg)


def roi_gross(cal: DetectorCalibration, hist: np.ndarray) -> dict[int, int]:
    """Counts of the histogram in each ROI of the calibration (channel lo <= c < hi)."""
    out = {}
    ng, nb = hist.shape
    for r in sorted(cal.roi_limits):
        (g0, g1), (b0, b1) = cal.roi_channels(r)
        out[r] = int(hist[max(g0, 0):min(g1, ng), max(b0, 0):min(b1, nb)].sum())
    return out


def roi_net(cal: DetectorCalibration, meas: Measurement, background: Measurement | None) -> dict[int, float]:
    """Net ROI counts of *meas*: gross minus the background count (the gas background, which
    contains the detector background) scaled by live time; gross when there is no background."""
    gross = roi_gross(cal, meas.hist)
    if background is None or background.hist is None or background.live_s <= 0:
        return {r: float(v) for r, v in gross.items()}
    bg = roi_gross(cal, background.hist)
    k = meas.live_s / background.live_s
    return {r: gross[r] - k * bg[r] for r in gross}
