"""ims-station: software for the stations of an IMS-like monitoring network.

Package map (one home per concern):

* ``ims_station.cd11``    -- the CD-1.1 codec (frames, Canadian compression, CRC-64); no I/O.
* ``ims_station.auth``    -- keystore, trust store and signature algorithms.
* ``ims_station.config``  -- TOML loading and schema validation shared by every config file.
* ``ims_station.boards``  -- board definitions (``boards/``) validation and freezing for firmware.
* ``ims_station.firmware`` (folder ``firmware/``) -- MicroPython code for the digitizer board,
  including the one definition of the serial link protocol (``firmware/link.py``).
* ``ims_station.hil``     (folder ``hil/``)   -- the hardware-in-the-loop simulator.
* ``ims_station.edge``    (folder ``edge/``)  -- the station gateway.
* ``ims_station.relay``   (folder ``relay/``) -- the central relay.
"""

__version__ = "0.1.0"
