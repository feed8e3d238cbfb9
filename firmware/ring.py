# RAM ring buffer of the packets the board sent most recently, so that the gateway's RESEND
# requests can be served after a corrupted packet or a short gateway outage.
#
# Owns: storage of whole, already signed packets (header | payload | tag | crc) by sequence number,
# eviction of the oldest packets, and the bookkeeping of what the gateway has acknowledged.
# Does not own: the resend policy (firmware/digitizer.py answers RESEND and UNAVAILABLE) nor the
# wire format (firmware/link.py).
#
# Memory is allocated once, in __init__: one bytearray of `capacity_bytes` holding the packets back
# to back as a circular log, and two index arrays of `max_packets` entries (offset, length) indexed
# by `seq % max_packets`.  Packets are stored in sequence order with no holes, so the held range is
# always the contiguous interval [oldest, newest].  Nothing is allocated per packet (the board's
# heap must not fragment during months of uptime).

import array


class Ring:
    """Circular log of packets keyed by a contiguous, increasing sequence number."""

    def __init__(self, capacity_bytes, max_packets):
        if capacity_bytes < 64 or max_packets < 2:
            raise ValueError("ring too small")
        self._buf = bytearray(capacity_bytes)
        self._mv = memoryview(self._buf)
        self._off = array.array("I", bytes(4 * max_packets))
        self._len = array.array("H", bytes(2 * max_packets))
        self.capacity_bytes = capacity_bytes
        self.max_packets = max_packets
        self.clear()

    def clear(self):
        self._head = 0          # byte offset where the next packet goes
        self.oldest = 0         # sequence number of the oldest packet held
        self.count = 0          # packets held
        self.used = 0           # bytes held (excluding the wasted tail before a wrap)
        self.acked = -1         # highest sequence number the gateway acknowledged (-1: none yet)
        self.overrun = 0        # packets evicted before they were acknowledged (after a first ACK)
        self.evicted = 0

    @property
    def newest(self):
        return self.oldest + self.count - 1

    def __len__(self):
        return self.count

    def __contains__(self, seq):
        return self.count > 0 and self.oldest <= seq <= self.oldest + self.count - 1

    def _evict(self):
        seq = self.oldest
        slot = seq % self.max_packets
        self.used -= self._len[slot]
        # Once the gateway has shown it acknowledges, losing an unacknowledged packet is an overrun
        # worth flagging; before the first ACK the board cannot tell a silent gateway from one
        # that does not use ACKs, so it does not count.
        if self.acked >= 0 and seq > self.acked:
            self.overrun += 1
        self.evicted += 1
        self.oldest = seq + 1
        self.count -= 1

    def put(self, seq, packet):
        """Store *packet* (bytes-like) as sequence number *seq*.  *seq* must follow the newest packet
        held; anything else (a new epoch, a restart) clears the ring first."""
        n = len(packet)
        cap = self.capacity_bytes
        if n > cap // 2 or n > 0xFFFF:
            raise ValueError("packet of %d bytes too large for a ring of %d" % (n, cap))
        if self.count and seq != self.oldest + self.count:
            self.clear()
        if self.count == 0:
            self.oldest = seq
        start = self._head
        if start + n > cap:
            # Wrap: the tail of the buffer stays unused.  Packets living in that tail are the oldest
            # ones (written during the previous lap), so they go first.
            while self.count and self._off[self.oldest % self.max_packets] >= start:
                self._evict()
            start = 0
        end = start + n
        while self.count:
            o = self._off[self.oldest % self.max_packets]
            if (o < end and o + self._len[self.oldest % self.max_packets] > start) or \
                    self.count >= self.max_packets:
                self._evict()
            else:
                break
        if self.count == 0:
            self.oldest = seq
        slot = seq % self.max_packets
        self._off[slot] = start
        self._len[slot] = n
        self._mv[start:end] = packet
        self._head = end
        self.count += 1
        self.used += n

    def get(self, seq):
        """The packet stored as *seq* (a memoryview into the ring, valid until the next put), or None
        when the ring no longer (or not yet) holds it."""
        if not self.count or seq < self.oldest or seq > self.oldest + self.count - 1:
            return None
        slot = seq % self.max_packets
        o = self._off[slot]
        return self._mv[o:o + self._len[slot]]

    def ack(self, seq):
        """The gateway holds everything up to *seq*; returns True if that moved the mark."""
        if seq > self.acked:
            self.acked = seq
            return True
        return False

    def unacked(self):
        """Packets held that the gateway has not acknowledged."""
        if not self.count:
            return 0
        first = max(self.oldest, self.acked + 1)
        return max(0, self.oldest + self.count - first)


def capacity_packets(capacity_bytes, max_packets, packet_bytes):
    """Packets of *packet_bytes* each that a ring is guaranteed to hold (worst case: one packet's
    worth of tail wasted at the wrap).  The same formula is used by ims_station.boards to state the
    ring capacity in seconds."""
    if packet_bytes <= 0:
        return max_packets
    return min(max_packets, (capacity_bytes - packet_bytes) // packet_bytes + 1)
