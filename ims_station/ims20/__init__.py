"""IMS 2.0 messages: the radionuclide / noble-gas message format (PHD spectra, RMSSOH, ALERT_*).

A protocol core without I/O: :func:`parse` takes the bytes or text of one message from an untrusted
peer and returns a :class:`~ims_station.ims20.model.Message` of typed dataclasses (spectra and the
beta-gamma histogram as integer numpy arrays), or raises :class:`Ims20Error` naming the line, block
and field; :func:`write` turns a message back into text.  The format is defined once, in
:mod:`ims_station.ims20.format`; the dataclasses are :mod:`ims_station.ims20.model`.  Files and the
command line are :mod:`ims_station.ims20.cli` (``ims-station ims2 dump``); signing and transport are
:mod:`ims_station.envelope` and the uplink.  docs/ims20.md describes what is supported.

    from ims_station import ims20
    msg = ims20.parse(data)            # Message; Ims20Error if invalid
    msg.body.histogram.counts          # np.int64, shape (gamma channels, beta channels)
    text = ims20.write(msg)            # parse(text) == msg
"""

import importlib
from typing import TYPE_CHECKING

# Names re-exported from the submodules, imported on first use (PEP 562) so that ``ims-station``
# (whose ``ims2`` command module lives in this package) starts without importing numpy.
_EXPORTS = {
    "errors": ["Ims20BuildError", "Ims20Error"],
    "format": ["ALERT_TYPES", "DEFAULT_LIMITS", "PHD_TYPES", "SOH_TYPE", "Limits", "measurement_id", "parse",
               "write"],
    "model": [
        "Acquisition", "AirSamplerEnv", "AirSamplerEnvRow", "AirSamplerFlow", "AirSamplerFlowRow",
        "AlertBody", "BEnergy", "BEnergyRow", "BGEfficiency", "BGEfficiencyRow", "BResolution", "Body",
        "Calibration", "Certificate", "CertificateRow", "Chromatogram", "ChromatogramRow", "Collection",
        "Comment", "DetEnv", "DetEnvRow", "EfficiencyRow", "EquipStatus", "EquipStatusRow", "GEfficiency",
        "GEnergy", "GEnergyRow", "GResolution", "Histogram", "Message", "NimBin", "NimBinRow", "PhdBody",
        "PhdHeader", "PowerSupply", "PowerSupplyRow", "ProcessSensors", "ProcessSensorsRow", "Processing",
        "ProdId", "RatioRow", "Ratios", "RawBlock", "RawBody", "RefId", "ResolutionRow", "RmsSohBody",
        "RoiLimits", "RoiLimitsRow", "Sample", "Section", "SohHeader", "Spectrum", "TamperEnv",
        "TamperEnvRow", "TotalEfficiency", "to_jsonable"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_WHERE))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from ims_station.ims20.errors import Ims20BuildError, Ims20Error  # noqa: F401
    from ims_station.ims20.format import (ALERT_TYPES, DEFAULT_LIMITS, PHD_TYPES, SOH_TYPE,  # noqa: F401
                                          Limits, measurement_id, parse, write)
    from ims_station.ims20.model import *  # noqa: F401,F403
