"""The central relay: verification, dedupe, gap lists, acknack and archive (``docs/relay.md``).

Imported as ``ims_station.relay``.  One home per concern:

* ``gaps``    -- CD-1.1 frame-set state (lowest, highest, gap list), pure;
* ``state``   -- :class:`StateStore` interface, SQLite default;
* ``archive`` -- :class:`Archive` interface, :class:`FileArchive` (day files + index, quarantine);
* ``mseed``   -- miniSEED export (pymseed);
* ``verify``  -- acceptance policy and reason codes;
* ``core``    -- :class:`RelayCore`, transport-independent processing, acknack schedule, counters;
* ``relay``   -- :class:`Relay`, the MQTT client around the core;
* ``cli``     -- ``ims-station relay ...``.

Submodules are imported on use, so ``ims-station`` starts without paho or numpy.
"""
