"""The central relay: verification, dedupe, gap lists, acknack and archive (``docs/relay.md``).

Imported as ``ims_station.relay``.  One home per concern:

* ``gaps``    -- CD-1.1 frame-set state (lowest, highest, gap list), pure;
* ``state``   -- :class:`StateStore` interface, SQLite default;
* ``archive`` -- :class:`Archive` interface, :class:`FileArchive` (day files + index, quarantine);
* ``mseed``   -- miniSEED export (pymseed);
* ``verify``  -- acceptance policy and reason codes;
* ``core``    -- :class:`RelayCore`, transport-independent processing, acknack schedule, counters;
* ``relay``   -- :class:`Relay`, the MQTT client around the core;
* ``kpi``     -- quality figures per station, channel and day (tables in the archive index, report, PNG);
* ``status``  -- per-station network view and the silent-station alarm;
* ``cli``     -- ``ims-station relay ...`` (``cli_network``: its ``status`` and ``kpi`` commands).

Submodules are imported on use, so ``ims-station`` starts without paho or numpy.
"""
