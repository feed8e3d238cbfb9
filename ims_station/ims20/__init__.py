"""IMS 2.0 messages: the radionuclide / noble-gas message format (PHD spectra, RMSSOH, ALERT_*).

A protocol core without I/O: :func:`parse` takes the bytes or text of one message from an untrusted
peer and returns a :class:`~ims_station.ims20.model.Message` of typed dataclasses (spectra and the
beta-gamma histogram as integer numpy arrays), or raises :class:`Ims20Error` naming the line, block
and field; :func:`write` turns a message back into text.  The format is defined once, in
:mod:`ims_station.ims20.format`; the dataclasses are :mod:`ims_station.ims20.model`.  Files and the
command line are :mod:`ims_station.ims20.cli` (``ims-station ims2 dump``); signing and transport are
:mod:`ims_station.envelope` and the uplink.  docs/ims20.md describes what is supported.
"""

from ims_station.ims20.errors import Ims20BuildError, Ims20Error
from ims_station.ims20.format import DEFAULT_LIMITS, Limits, measurement_id, parse, write
from ims_station.ims20.model import *  # noqa: F401,F403 - the dataclasses are the package's API
from ims_station.ims20.model import Message, to_jsonable

__all__ = ["DEFAULT_LIMITS", "Ims20BuildError", "Ims20Error", "Limits", "Message", "measurement_id", "parse", "to_jsonable",
           "write"]
