"""The station gateway (edge): serial ingest, stream reassembly, framing, outbox and uplink.

Imported as ``ims_station.edge``.
"""
