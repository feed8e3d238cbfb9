"""The central relay: verification, dedupe, gap lists, acknack and archive.

Imported as ``ims_station.relay``.
"""
