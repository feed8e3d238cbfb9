"""Prometheus metrics of the gateway and of the relay, read from their status documents at scrape time.

Owns the metric names, types, labels and help texts (:data:`STATION_METRICS`,
:data:`RELAY_METRICS`; docs/status-api.md lists every one, a test keeps the two in step) and the
``prometheus-client`` collectors that produce them (:class:`StationCollector`,
:class:`RelayCollector`).  A collector calls its status function once per scrape and translates the
document: no counter is kept twice, and what ``/metrics`` says is what ``/status`` and the SOH say.

It does not own the documents (``edge/station.py`` ``status()``, ``relay/relay.py``
``Relay.stats()``) nor the HTTP server (``ims_station/statusapi.py``).  A value missing from the
document (a component not configured, e.g. no uplink or no trigger stage, or a key a version does
not have) gives no sample, never a wrong zero.

Names: ``ims_station_*`` (labels ``station`` = ``NET.STA``, and ``port``, ``channel`` = SEED code,
``stage``, ``key_id`` where they apply) and ``ims_relay_*`` (labels ``instance``, and ``station``,
``reason``, ``result``, ``frame_set``).  Counters end in ``_total`` on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

# A sample: (label values, value)
Samples = Iterable[tuple[tuple[str, ...], float]]


@dataclass(frozen=True)
class Metric:
    name: str                                   # without the _total of a counter
    kind: str                                   # "counter" or "gauge"
    help: str
    labels: tuple[str, ...]
    samples: Callable[[dict], Samples]          # document -> samples

    @property
    def exposed(self) -> str:
        """The sample name on the wire (what docs/status-api.md lists)."""
        return self.name + "_total" if self.kind == "counter" else self.name


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


# -- the gateway -----------------------------------------------------------------------------------

def _sta(doc: dict) -> str:
    return str(doc.get("station", ""))


def _ports(doc: dict) -> Iterator[dict]:
    for p in doc.get("ports") or []:
        if isinstance(p, dict):
            yield p


def _port_value(section: str, key: str) -> Callable[[dict], Samples]:
    def get(doc: dict) -> Samples:
        for p in _ports(doc):
            v = _num((p.get(section) or {}).get(key)) if section else _num(p.get(key))
            if v is not None:
                yield (_sta(doc), str(p.get("name"))), v
    return get


def _channel_value(key: str, scale: float = 1.0) -> Callable[[dict], Samples]:
    def get(doc: dict) -> Samples:
        for p in _ports(doc):
            for code, s in ((p.get("streams") or {}).get("channels") or {}).items():
                v = _num((s or {}).get(key))
                if v is not None:
                    yield (_sta(doc), str(p.get("name")), str(code)), v * scale
    return get


def _at(*path: str, scale: float = 1.0) -> Callable[[dict], Samples]:
    """The number at *path* in the document, labelled with the station."""
    def get(doc: dict) -> Samples:
        v: Any = doc
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        n = _num(v)
        if n is not None:
            yield (_sta(doc),), n * scale
    return get


def _stage_value(stage: str, key: str) -> Callable[[dict], Samples]:
    return _at("gateway", "stages", stage, key)


def _key_ids(doc: dict) -> Samples:
    keys = ((doc.get("gateway") or {}).get("framer") or {}).get("keys")
    for kid in (keys.get("key_ids") or []) if isinstance(keys, dict) else []:
        yield (_sta(doc), str(kid)), 1.0


def _clock_holds(doc: dict) -> Samples:
    holds = (doc.get("gateway") or {}).get("clock_hold")
    if isinstance(holds, list):
        yield (_sta(doc),), float(len(holds))


_S, _SP, _SPC = ("station",), ("station", "port"), ("station", "port", "channel")

# Per port: the pump's counters (serialport.PortPump) and the link decoder's (ingest.LinkDecoder).
_PORT_COUNTERS = [
    ("opens", "port", "times the serial port was opened"),
    ("open_failures", "port", "failed attempts to open the serial port"),
    ("disconnects", "port", "times the serial port was lost"),
    ("bytes_in", "port", "bytes read from the serial port"),
    ("bytes_out", "port", "bytes written to the serial port"),
]
_LINK_COUNTERS = [
    ("packets_ok", "link packets decoded and authenticated"),
    ("crc_errors", "link frames with a bad CRC"),
    ("hmac_errors", "link packets with a bad HMAC (not authentic)"),
    ("framing_errors", "link frames that could not be unframed (COBS)"),
    ("garbage_bytes", "bytes between link frames that were no frame"),
    ("resend_requests", "resend requests sent to the board"),
    ("packets_recovered", "lost packets recovered by a resend"),
    ("packets_unrecoverable", "lost packets the board could no longer send (data gaps)"),
    ("gaps_reported", "link gaps reported to the streams"),
    ("duplicates", "duplicate packets dropped"),
    ("board_restarts", "new runs (epochs) of the board seen"),
    ("data_blocks", "data blocks delivered"),
    ("samples_delivered", "samples delivered to the streams"),
    ("soh", "board state-of-health packets received"),
    ("acks_sent", "acknowledgements sent to the board"),
    ("command_timeouts", "board commands not answered in time"),
]
_FRAMER_COUNTERS = [
    ("frames", "CD-1.1 data frames committed to the outbox"),
    ("frame_bytes", "bytes of data frames committed"),
    ("samples", "samples framed"),
    ("late_samples", "samples that arrived after their window was committed (dropped)"),
    ("partial_frames", "frames committed with channels missing or incomplete"),
    ("outbox_errors", "frames the outbox failed to store"),
    ("implausible_time_samples", "samples refused for a time no clock can place"),
    ("alarms", "framer alarms raised"),
    ("unsigned_frames", "frames committed without a signature"),
    ("gateway_clock_alarms", "alarms that the gateway's clock disagrees with a GNSS-locked board"),
]
_GATEWAY_COUNTERS = [
    ("blocks", "data blocks taken by the gateway"),
    ("acks", "ACK points given to the boards"),
    ("ack_point_errors", "ACK points that could not be persisted"),
    ("clock_holds", "times a board was put on clock hold"),
    ("clock_releases", "clock holds released"),
    ("board_restarts", "board restarts or replacements alarmed"),
    ("stage_errors", "exceptions raised by stream stages (counted, the data goes on)"),
]
_TRIGGER_COUNTERS = [
    ("events", "trigger events declared"),
    ("retracted", "trigger events retracted"),
    ("resets_gap", "trigger resets after a data gap"),
    ("clipped_chunks", "chunks with clipped samples seen by the trigger"),
    ("errors", "trigger stage errors"),
    ("dropped_triggers", "channel triggers dropped (bounded memory)"),
]
_OUTBOX_GAUGES = [
    ("frames", "frames", "frames stored in the outbox (not yet acknowledged by the relay)"),
    ("bytes", "bytes", "payload bytes stored in the outbox"),
    ("max_bytes", "max_bytes", "byte bound of the outbox"),
    ("fill", "fill_ratio", "outbox bytes / max_bytes"),
    ("oldest_age_s", "oldest_age_seconds", "age of the oldest unacknowledged frame (nominal time)"),
    ("pending", "pending", "frames not yet sent"),
    ("in_flight", "in_flight", "frames sent and awaiting the relay's acknack"),
    ("held", "held", "frames held (auxiliary mode) until released"),
    ("resends_queued", "resends_queued", "frames queued for resending (acknack gaps)"),
]
_OUTBOX_COUNTERS = [
    ("evicted", "evicted_frames", "frames evicted unsent (byte or age bound): data lost"),
    ("evicted_bytes", "evicted_bytes", "bytes evicted unsent"),
    ("alarms", "alarms", "outbox alarms raised (full, nearly full, disk space)"),
]
_UPLINK_COUNTERS = [
    ("connects", "connections to a broker"),
    ("connect_failures", "failed connection attempts"),
    ("disconnects", "connections lost"),
    ("failovers", "switches to another broker"),
    ("published", "frames published"),
    ("resent", "frames published again (acknack gaps, timeouts)"),
    ("pubacks", "PUBACKs received"),
    ("acknacks", "acknacks received from the relay"),
    ("acknacks_invalid", "acknacks that could not be decoded"),
    ("acknacks_unsigned", "unsigned acknacks dropped"),
    ("acknacks_bad_signature", "acknacks with a bad signature dropped"),
    ("frames_acked", "frames acknowledged by the relay (deleted from the outbox)"),
    ("events_published", "trigger events published"),
    ("events_acked", "trigger events acknowledged by the relay"),
    ("requeued_ack_timeout", "frames requeued because the relay did not acknowledge them in time"),
    ("soh_published", "state-of-health documents published"),
]

STATION_METRICS: list[Metric] = [
    Metric("ims_station_port_connected", "gauge", "1 if the serial port is open", _SP, _port_value("", "connected")),
    *[Metric(f"ims_station_port_{k}", "counter", h, _SP, _port_value(sec, k)) for k, sec, h in _PORT_COUNTERS],
    *[Metric(f"ims_station_link_{k}", "counter", h, _SP, _port_value("link", k)) for k, h in _LINK_COUNTERS],
    Metric("ims_station_link_gaps", "counter", "gaps in the link reported to the stream assembler", _SP,
           lambda d: (((_sta(d), str(p.get("name"))), float((p.get("streams") or {}).get("link_gaps", 0)))
                      for p in _ports(d) if _num((p.get("streams") or {}).get("link_gaps")) is not None)),
    Metric("ims_station_channel_samples", "counter", "samples assembled per channel", _SPC, _channel_value("samples")),
    Metric("ims_station_channel_gaps", "counter", "gaps in a channel's stream", _SPC, _channel_value("gaps")),
    Metric("ims_station_channel_gap_seconds", "counter", "total length of the gaps in a channel's stream", _SPC,
           _channel_value("gap_us", 1e-6)),
    Metric("ims_station_channel_overlaps", "counter", "overlaps in a channel's stream", _SPC,
           _channel_value("overlaps")),
    Metric("ims_station_channel_samples_dropped", "counter", "samples dropped (overlapping) per channel", _SPC,
           _channel_value("samples_dropped")),
    Metric("ims_station_channel_next_sample_timestamp_seconds", "gauge", "time of the next sample expected on a "
           "channel (end of the last one received); time() minus it is the channel's latency", _SPC,
           _channel_value("next_us", 1e-6)),
    Metric("ims_station_channel_rate_hertz", "gauge", "sample rate of a channel", _SPC,
           _channel_value("rate_mhz", 1e-3)),
    *[Metric(f"ims_station_framer_{k}", "counter", h, _S, _at("gateway", "framer", k)) for k, h in _FRAMER_COUNTERS],
    Metric("ims_station_framer_open_windows", "gauge", "frame windows waiting for data", _S,
           _at("gateway", "framer", "open_windows")),
    Metric("ims_station_framer_committed_seq", "gauge", "highest frame sequence number committed", _S,
           _at("gateway", "framer", "committed_seq")),
    *[Metric(f"ims_station_gateway_{k}", "counter", h, _S, _at("gateway", k)) for k, h in _GATEWAY_COUNTERS],
    Metric("ims_station_gateway_unacknowledged_blocks", "gauge", "data blocks not yet acknowledged to a board",
           _S, _at("gateway", "unacknowledged_blocks")),
    Metric("ims_station_gateway_clock_holds_active", "gauge", "boards on clock hold now", _S, _clock_holds),
    *[Metric(f"ims_station_trigger_{k}", "counter", h, _S, _stage_value("trigger", k)) for k, h in _TRIGGER_COUNTERS],
    Metric("ims_station_trigger_active", "gauge", "1 while a trigger event is open", _S,
           _stage_value("trigger", "active")),
    Metric("ims_station_trigger_channels", "gauge", "channels taking part in the trigger", _S,
           _stage_value("trigger", "channels")),
    *[Metric(f"ims_station_outbox_{name}", "gauge", h, _S, _at("outbox", k)) for k, name, h in _OUTBOX_GAUGES],
    *[Metric(f"ims_station_outbox_{name}", "counter", h, _S, _at("outbox", k)) for k, name, h in _OUTBOX_COUNTERS],
    Metric("ims_station_uplink_connected", "gauge", "1 if connected to a broker (and subscribed)", _S,
           _at("uplink", "connected")),
    Metric("ims_station_uplink_awaiting_puback", "gauge", "frames published and awaiting the broker's PUBACK", _S,
           _at("uplink", "awaiting_puback")),
    *[Metric(f"ims_station_uplink_{k}", "counter", h, _S, _at("uplink", k)) for k, h in _UPLINK_COUNTERS],
    Metric("ims_station_key_expires_in_days", "gauge", "days until the signing keys can no longer sign", _S,
           _at("gateway", "framer", "keys", "key_expires_in_days")),
    Metric("ims_station_key_in_use", "gauge", "1 for each signing key in use now", ("station", "key_id"), _key_ids),
    Metric("ims_station_soh_state_bad", "gauge", "1 while a state of health is bad (docs/soh.md)", ("station", "state"),
           lambda d: (((_sta(d), str(k)), 1.0 if v == "bad" else 0.0) for k, v in (d.get("states") or {}).items())
           if isinstance(d.get("states"), dict) else ()),
    Metric("ims_station_soh_alarms_recent", "gauge", "alarms in the state of health's recent list", _S,
           lambda d: [((_sta(d),), float(len(d["alarms"])))] if isinstance(d.get("alarms"), list) else []),
]


# -- the relay -------------------------------------------------------------------------------------

def _inst(doc: dict) -> str:
    return str(doc.get("instance", ""))


def _r(*path: str) -> Callable[[dict], Samples]:
    def get(doc: dict) -> Samples:
        v: Any = doc
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        n = _num(v)
        if n is not None:
            yield (_inst(doc),), n
    return get


def _by_reason(doc: dict) -> Samples:
    for reason, n in sorted((doc.get("rejected") or {}).items()):
        if _num(n) is not None:
            yield (_inst(doc), str(reason)), float(n)


def _per_station(doc: dict) -> Samples:
    for sta, results in sorted((doc.get("per_station") or {}).items()):
        for result, n in sorted((results or {}).items()):
            if _num(n) is not None:
                yield (_inst(doc), str(sta), str(result)), float(n)


def _station_verification_failures(doc: dict) -> Samples:
    from ims_station.relay.core import SECURITY_REASONS

    for sta, results in sorted((doc.get("per_station") or {}).items()):
        yield (_inst(doc), str(sta)), float(sum(n for r, n in (results or {}).items() if r in SECURITY_REASONS))


def _frame_set(key: str) -> Callable[[dict], Samples]:
    def get(doc: dict) -> Samples:
        for fs, st in sorted((doc.get("frame_sets") or {}).items()):
            v = _num((st or {}).get(key))
            if v is not None:
                yield (_inst(doc), str(fs)), v
    return get


_RELAY_COUNTERS = [
    ("received", "messages received"),
    ("bytes_received", "payload bytes received"),
    ("verified", "data frames and events that passed every check"),
    ("archived", "frames and events archived"),
    ("events_archived", "trigger events archived (included in archived)"),
    ("duplicates", "messages already archived (identical bytes)"),
    ("control", "acknack and alert frames from stations"),
    ("quarantined", "messages quarantined (any reason)"),
    ("security_events", "verification failures: signatures, replays, wrong station or key"),
    ("clock_events", "frames with an implausible time"),
    ("internal_errors", "messages that made the relay's code raise (quarantined)"),
    ("acknacks_sent", "acknacks sent to stations"),
    ("gaps_opened", "gaps opened in frame sets"),
    ("gaps_expired", "gaps given up after gap_expiry_days"),
    ("frames_given_up", "frames lost for good (in expired gaps)"),
    ("batches", "batches processed"),
    ("store_errors", "batches that could not be stored (redelivered)"),
]

_RI = ("instance",)
RELAY_METRICS: list[Metric] = [
    *[Metric(f"ims_relay_{k}", "counter", h, _RI, _r(k)) for k, h in _RELAY_COUNTERS],
    Metric("ims_relay_quarantined_by_reason", "counter", "messages quarantined, by reason code", ("instance", "reason"),
           _by_reason),
    Metric("ims_relay_station_messages", "counter", "messages per station and result (archived, duplicate or a "
           "quarantine reason)", ("instance", "station", "result"), _per_station),
    Metric("ims_relay_station_verification_failures", "counter", "verification failures per station",
           ("instance", "station"), _station_verification_failures),
    Metric("ims_relay_frame_set_highest_seq", "gauge", "highest sequence number seen in a frame set",
           ("instance", "frame_set"), _frame_set("highest")),
    Metric("ims_relay_frame_set_gaps", "gauge", "open gaps in a frame set", ("instance", "frame_set"),
           _frame_set("gaps")),
    Metric("ims_relay_frame_set_missing", "gauge", "frames missing in a frame set (in open gaps)",
           ("instance", "frame_set"), _frame_set("missing")),
    Metric("ims_relay_connected", "gauge", "1 if connected to a broker and subscribed", _RI,
           _r("transport", "connected")),
    Metric("ims_relay_acked", "counter", "messages acknowledged (PUBACK) to the broker after storing", _RI,
           _r("transport", "acked")),
]


# -- collectors ------------------------------------------------------------------------------------

class DocumentCollector:
    """A ``prometheus_client`` collector: *status()* once per scrape, then every metric of *metrics*."""

    def __init__(self, status: Callable[[], dict], metrics: list[Metric]) -> None:
        self.status = status
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        doc = self.status()
        for m in self.metrics:
            fam = (CounterMetricFamily if m.kind == "counter" else GaugeMetricFamily)(m.name, m.help, labels=m.labels)
            for labels, value in m.samples(doc):
                fam.add_metric(list(labels), value)
            if fam.samples:
                yield fam


class StationCollector(DocumentCollector):
    """The gateway's metrics from ``Station.status()``."""

    def __init__(self, status: Callable[[], dict]) -> None:
        super().__init__(status, STATION_METRICS)


class RelayCollector(DocumentCollector):
    """The relay's metrics from ``{"instance": ..., **Relay.stats()}``."""

    def __init__(self, status: Callable[[], dict]) -> None:
        super().__init__(status, RELAY_METRICS)
