"""The Last Will against a real Mosquitto: it says when the connection was opened, labelled as such,
and no time of the loss, which the station cannot know (issue 7 §4: it carried the connect time as
if it were the time of the loss)."""

from __future__ import annotations

import socket

from ims_station.edge.uplink import Uplink

from .test_uplink import STA, _subscribe, outbox, wait_until  # noqa: F401  (outbox is a fixture)


def test_the_will_carries_no_time_of_the_loss_only_the_labelled_connect_time(mosquitto, outbox, clock):  # noqa: F811
    sub, got = _subscribe(mosquitto, f"ims/{STA}/status")
    up = Uplink(STA, [mosquitto.config], outbox, clock=clock, backoff_base_s=5.0, backoff_max_s=5.0)
    up.start()
    try:
        assert up.wait_connected(10)
        wait_until(lambda: any(d["status"] == "online" for _, d, _ in got), what="online")
        connected_at = clock.time()
        clock.advance(3600.0)                  # the connection was up for an hour when it broke
        # The network goes away under the client: no DISCONNECT, the broker publishes the will.
        up._mqtt.client.socket().shutdown(socket.SHUT_RDWR)
        wait_until(lambda: any(d["status"] == "offline" for _, d, _ in got), what="Last Will")
        will = next(d for _, d, _ in got if d["status"] == "offline")
        assert will["reason"] == "connection lost"
        assert will["time"] is None                          # the loss's time is the broker's to know
        assert will["connected_at"] == connected_at          # not presented as the time of the loss
    finally:
        up.stop()
        sub.loop_stop()
        sub.disconnect()
