"""MQTT topic layout: the one definition shared by the edge uplink and the relay.

Every topic sits under a configurable prefix (default ``ims``) and names the station, so that a broker
ACL can confine a station's credentials to its own subtree (see docs/topics.md and
docs/mosquitto/).  Each message kind has its own topic, so the outbox, uplink and relay can carry
more than CD-1.1 frames later (IMS 2.0 noble-gas messages get ``ims20``).

=================================  =========  ========  ==================================================
topic                              direction  retained  payload
=================================  =========  ========  ==================================================
``{p}/{sta}/cd11``                 sta->relay no        one CD-1.1 frame, raw bytes (data, alert, ...)
``{p}/{sta}/acknack``              relay->sta no        one CD-1.1 acknack frame, raw bytes
``{p}/{sta}/soh``                  sta->all   yes       station state of health, JSON
``{p}/{sta}/status``               sta->all   yes       ``online`` / ``offline`` (Last Will: no time), JSON
``{p}/{sta}/events``               sta->relay no        trigger event, signed envelope (kind event), JSON body
``{p}/{sta}/cmd``                  relay->sta no        command, signed envelope (edge/commands.py)
``{p}/{sta}/cmd/response``         sta->relay no        its answer, signed envelope
``{p}/{sta}/ims20``                sta->relay no        IMS 2.0 message, signed envelope (kind ims20), text body
=================================  =========  ========  ==================================================

Outbox items travel on the topic of their outbox kind (:data:`OUTBOX_TOPICS`, :func:`outbox_topic`):
the uplink publishes them and the relay acknowledges them the same way, by frame set.

The relay subscribes through a shared subscription group (``$share/{group}/{p}/+/cd11``,
``.../+/events`` and ``.../+/ims20``, :data:`RELAY_KINDS`) so several relay processes share the load.
"""

from __future__ import annotations

import re

from ims_station.errors import RemoteProtocolError

DEFAULT_PREFIX = "ims"
KINDS = ("cd11", "acknack", "soh", "status", "events", "cmd", "cmd/response", "ims20")
STATION_RE = re.compile(r"^[A-Z0-9]{1,8}$")  # CD-1.1 frame creator: up to 8 ASCII characters
# The creator of the relay's acknacks on ``{p}/{sta}/acknack`` when the relay's ``[relay] name`` is
# not set (relay/cli.py, RelayCore); a station expects it unless ``[uplink] relay_name`` says otherwise.
DEFAULT_RELAY_NAME = "RELAY"
#: Outbox kind (``edge/outbox.py`` rows) -> topic kind it is published on by the uplink.
OUTBOX_TOPICS = {"cd11": "cd11", "events": "events", "ims20": "ims20"}
#: Topic kinds the relay subscribes to (each a shared subscription) and archives.
RELAY_KINDS = ("cd11", "events", "ims20")


class TopicError(RemoteProtocolError):
    """A topic does not follow the layout (wrong prefix, bad station code, unknown kind)."""


def check_station(station: str) -> str:
    if not STATION_RE.match(station):
        raise TopicError(f"station code {station!r} must be 1-8 upper-case letters or digits")
    return station


def topic(prefix: str, station: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{prefix}/{check_station(station)}/{kind}"


def dotted(topic: str) -> str:
    """*topic* as the clustered engines' MQTT gateways name it: ``ims/STA01/cd11`` is NATS subject
    and RabbitMQ routing key ``ims.STA01.cd11`` (the relay's clustered inputs, relay/jetstream.py,
    relay/amqp.py).  Topics of this layout have no ``.`` of their own."""
    return topic.replace("/", ".")


def from_dotted(key: str) -> str:
    """The MQTT topic of a subject / routing key (inverse of :func:`dotted`)."""
    return key.replace(".", "/")


def outbox_topic(prefix: str, station: str, outbox_kind: str) -> str:
    """The topic an outbox item of *outbox_kind* is published on (ValueError for an unknown kind)."""
    try:
        return topic(prefix, station, OUTBOX_TOPICS[outbox_kind])
    except KeyError:
        raise ValueError(f"outbox kind {outbox_kind!r} has no topic (known: {', '.join(OUTBOX_TOPICS)})") from None


def events_frame_set(station: str) -> str:
    """The frame set of a station's events (``STA:events``): sequenced and acknowledged like data."""
    return f"{check_station(station)}:events"


#: Outbox kind of a station message in a signed envelope -> (envelope kind, frame-set suffix).
MESSAGE_KINDS = {"events": ("event", "events"), "ims20": ("ims20", "ims20")}


def message_frame_set(station: str, outbox_kind: str) -> str:
    """The frame set of a station's enveloped messages of *outbox_kind* (``STA:events``,
    ``STA:ims20``): each sequenced, deduplicated and acknowledged by the relay like data."""
    return f"{check_station(station)}:{MESSAGE_KINDS[outbox_kind][1]}"


def shared_subscription(prefix: str, kind: str, group: str | None) -> str:
    """Subscription filter for all stations' *kind*; with *group*, an MQTT 5 / Mosquitto shared one."""
    f = f"{prefix}/+/{kind}"
    return f"$share/{group}/{f}" if group else f


def parse(prefix: str, topic_name: str) -> tuple[str, str]:
    """Split a received topic into (station, kind); raise TopicError if it is not ours."""
    head = prefix + "/"
    if not topic_name.startswith(head):
        raise TopicError(f"topic {topic_name!r} is not under prefix {prefix!r}")
    rest = topic_name[len(head):]
    station, _, kind = rest.partition("/")
    if kind not in KINDS:
        raise TopicError(f"topic {topic_name!r}: unknown kind {kind!r}")
    return check_station(station), kind
