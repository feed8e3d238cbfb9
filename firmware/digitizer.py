# The digitizer application: samples the ADC, time-stamps every sample, packs DATA packets, keeps
# them in the RAM ring, reports state of health, and serves the gateway's ACK / RESEND / COMMAND.
#
# Owns: the packetizer (blocks of samples_per_packet samples per channel, difference packing via
# link.pack_data), per-sample timing checks (a block never spans a clock step or a missed sample),
# per-channel clipping detection, status flags (tamper, supply, calibration, clock step, ring
# overrun, ADC fault), periodic SOH, HELLO at start, RESEND served from the ring with ranges no
# longer held answered by UNAVAILABLE, commands (set rate, start/stop calibration, reboot, hello)
# and their REPLYs (set rate, set packet length, ...), and the board's own counters.  No DATA before the time base has a time (the
# first GNSS time + PPS): conversions before that are read and discarded (counted,
# `samples_discarded_no_time`) and SOH says so (S_NO_TIME, time 0), because a sample stamped
# "1970 + uptime" is worse than none.  After a later loss of lock the time is still known, so
# samples keep flowing stamped holdover / unlocked.
# Does not own: the wire format (link.py), the ring storage (ring.py), the clock discipline
# (timebase.py), the ADC protocol (ads131m0x.py), nor any machine.* object (main.py builds them;
# the HIL passes emulated ones).  Nothing here blocks or sleeps.
#
# Work split for a real board: on_drdy() runs from the DRDY interrupt (through micropython.schedule)
# and only reads the ADC and appends samples; poll() runs in the main loop and does everything that
# takes time (HMAC, packing, UART).  Completed blocks wait in a short queue between the two.

from . import link
from .ring import Ring, capacity_packets

FIRMWARE_VERSION = "imsfw-0.1.0"
_MAX_PENDING = 8          # completed blocks waiting for poll(); beyond that on_drdy packs inline
_TX_LIMIT = 16384         # bytes queued for the UART; more is dropped (the ring still holds it)
_TEMP_UNKNOWN = -32768


class Digitizer:
    def __init__(self, board, uart, adc, timebase, key, epoch=0, tamper=None, supply=None,
                 calibrator=None, reboot=None, temperature=None, configure_adc=True, boot=None):
        self.board = board
        ident = board["board"]
        acq = board["acquisition"]
        self.board_id = ident["id"]
        self.name = ident["name"]
        self.uart = uart
        self.adc = adc
        self.tb = timebase
        self.auth = link.Authenticator(key)
        self.epoch = epoch & 0xFFFF
        # This run's boot number (link header): drawn at random unless given (the HIL passes a
        # seeded one).  With it the gateway tells a new run from an old one even when the epoch
        # file was wiped or the board was replaced (both restart at an epoch seen before).
        self.boot = (boot & 0xFFFF) if boot else draw_boot()
        self.tamper = tamper
        self.supply = supply
        self.calibrator = calibrator
        self._reboot = reboot
        self.temperature = temperature
        self.reboot_requested = False

        chans = board["channels"]
        self.nchan = len(chans)
        self.chan_ids = bytes(range(self.nchan))
        self._inputs = [c["adc_input"] for c in chans]
        self._identity = self._inputs == list(range(len(self._inputs)))
        self.rates_mhz = list(acq["rates_mhz"])
        self.packet_ms = acq["packet_ms"]
        self.default_packet_ms = self.packet_ms
        self.diff_packing = acq.get("diff_packing", True)
        self.soh_interval_us = int(acq.get("soh_interval_s", 10)) * 1000000
        self.ring = Ring(acq["ring_bytes"], acq["ring_packets"])
        sup = board.get("supply", {})
        self._sup_scale = sup.get("vref_mv", 3300) * sup.get("divider", 1.0)
        self._sup_low = sup.get("low_mv", 0)
        self._tamper_active = board.get("pins", {}).get("tamper_active", 1)
        self.cal_enabled = board.get("calibration", {}).get("enabled", False)

        self.counters = {
            "packets_sent": 0, "data_packets": 0, "soh_packets": 0, "hello_packets": 0,
            "replies": 0, "unavailable_packets": 0, "packets_resent": 0, "resend_requests": 0,
            "unavailable_seqs": 0, "acks": 0, "commands": 0, "bad_commands": 0, "duplicate_commands": 0,
            "rx_packets": 0, "rx_framing_errors": 0, "rx_crc_errors": 0, "rx_hmac_errors": 0,
            "rx_version_errors": 0, "rx_length_errors": 0, "rx_payload_errors": 0,
            "rx_invalid_errors": 0, "rx_garbage_bytes": 0, "rx_rejected_frame_bytes": 0, "wrong_board": 0, "bad_type": 0,
            "resend_future": 0, "samples": 0, "samples_discarded_no_time": 0, "adc_errors": 0, "timeline_breaks": 0,
            "clock_steps": 0, "tx_dropped_packets": 0, "ring_overrun": 0, "tamper_events": 0,
            "other_boot": 0,
        }
        self._deframer = link.Deframer()
        self._out = bytearray()
        self._pending = []
        self._cond = 0              # conditions seen since the last DATA packet (S_* flags)
        self._overrun_seen = 0
        self._tamper_state = None
        self._cal_start = None
        self._cal_len = 0
        self.cal_mask = 0
        self._last_cmd = None       # (gateway epoch, gateway seq, reply seq) of the last COMMAND
        self.seq = 0
        rate = acq["default_rate_mhz"]
        if configure_adc:
            # The firmware owns the rate: the ADC is (re)configured here and by CMD_SET_RATE.
            adc.configure(rate)
        self._set_rate(rate)
        self._last_soh = self.tb.ticks_us()
        self._send_hello()
        self._flush()

    # ------------------------------------------------------------ rate and blocks
    def _set_rate(self, rate_mhz):
        self.rate_mhz = rate_mhz
        self.spp = rate_mhz * self.packet_ms // 1000000
        self._half_us = 500000000 // rate_mhz
        self._new_block(0)

    def _new_block(self, status):
        self._bufs = [[] for _ in range(self.nchan)]  # type: ignore[var-annotated]  # lists of int samples
        self._n = 0
        self._t0 = 0
        self._tq = link.TQ_LOCKED
        self._clip = 0
        self._bstatus = status

    def _close_block(self):
        if self._n:
            self._pending.append((self._t0, self.rate_mhz, self._tq, self._bstatus, self._clip, self._bufs))
            if len(self._pending) > _MAX_PENDING:
                self._finish(self._pending.pop(0))
        self._new_block(0)

    def ring_capacity(self):
        """Guaranteed capacity of the ring in DATA packets at the current rate (worst-case size)."""
        size = link.OVERHEAD + link.data_size(self.spp, self.nchan, [link.ENC_I32] * self.nchan)
        return min(0xFFFF, capacity_packets(self.ring.capacity_bytes, self.ring.max_packets, size))

    # ------------------------------------------------------------ sampling (DRDY)
    def on_drdy(self, ticks_us=None):
        """Read one conversion of every channel and time-stamp it (*ticks_us*: the DRDY edge as the
        IRQ captured it; now if None)."""
        tb = self.tb
        if ticks_us is None:
            ticks_us = tb.ticks_us()
        try:
            codes = self.adc.read()
        except OSError:
            # The sample is lost; the next one will not fit the block's timeline, so the gap shows.
            self.counters["adc_errors"] += 1
            self._cond |= link.S_ADC_FAULT
            return
        if not tb.has_time:
            # (The conversion is read all the same: the ADC must be serviced to keep converting.)
            self.counters["samples_discarded_no_time"] += 1
            return
        t = tb.now_us(ticks_us)
        if tb.step_pending:
            tb.take_step()
            self.counters["clock_steps"] += 1
            self._close_block()
            self._bstatus |= link.S_CLOCK_STEP
        n = self._n
        if n:
            dt = t - self._t0 - (n * 1000000000) // self.rate_mhz
            if dt > self._half_us or dt < -self._half_us:
                self.counters["timeline_breaks"] += 1
                self._close_block()
                n = 0
        if n == 0:
            self._t0 = t
            self._tq = tb.quality(ticks_us)
        if not self._identity:
            inputs = self._inputs
            codes = [codes[i] for i in inputs]
        fs = self.adc.full_scale
        bufs = self._bufs
        clip = self._clip
        for i in range(self.nchan):
            v = codes[i]
            bufs[i].append(v)
            if v >= fs or v < -fs:
                clip |= 1 << i
        self._clip = clip
        self._n = n + 1
        self.counters["samples"] += 1
        if n + 1 >= self.spp:
            q = tb.quality(ticks_us)
            if q < self._tq:
                self._tq = q
            self._close_block()

    # ------------------------------------------------------------ main loop
    def poll(self):
        """Main-loop work; never blocks."""
        ticks = self.tb.ticks_us()
        self._check_conditions(ticks)
        while self._pending:
            self._finish(self._pending.pop(0))
        if self.tb.ticks_diff(ticks, self._last_soh) >= self.soh_interval_us:
            self._last_soh = ticks
            self._send_soh()
        self._receive()
        self._flush()
        if self.reboot_requested and self._reboot is not None and not self._out:
            self._reboot()

    def flush_block(self):
        """Close the partial block now (before a rate change, a reboot, or at the end of a run)."""
        self._close_block()
        while self._pending:
            self._finish(self._pending.pop(0))
        self._flush()

    def _check_conditions(self, ticks):
        cond = 0
        if self.tamper is not None:
            active = self.tamper.value() == self._tamper_active
            if active != self._tamper_state:
                previous = self._tamper_state
                self._tamper_state = active
                if previous is not None:
                    # Report an opened enclosure at once, not at the next periodic SOH.
                    self.counters["tamper_events"] += 1
                    self._send_soh()
            if active:
                cond |= link.S_TAMPER
        if self.supply is not None and self.supply_mv() < self._sup_low:
            cond |= link.S_SUPPLY_LOW
        if self._cal_start is not None:
            if self.tb.ticks_diff(ticks, self._cal_start) >= self._cal_len:
                self._stop_calibration()
            else:
                cond |= link.S_CALIBRATION
        ov = self.ring.overrun
        if ov != self._overrun_seen:
            self.counters["ring_overrun"] += ov - self._overrun_seen
            self._overrun_seen = ov
            cond |= link.S_RING_OVERRUN
        self._cond |= cond
        return cond

    def status_now(self):
        return self._cond | self._check_conditions(self.tb.ticks_us())

    def supply_mv(self):
        if self.supply is None:
            return 0
        return int(self.supply.read_u16() * self._sup_scale / 65535)

    def _finish(self, block):
        t0, rate, tq, status, clip, bufs = block
        status |= self._cond
        self._cond = 0
        payload = link.pack_data(t0, rate, self.chan_ids, bufs, tq, status, clip, self.diff_packing)
        self._send(link.T_DATA, payload)
        self.counters["data_packets"] += 1

    # ------------------------------------------------------------ sending
    def _send(self, ptype, payload):
        seq = self.seq
        self.seq = seq + 1
        pkt = link.build_packet(self.auth, ptype, self.board_id, self.epoch, seq, payload, 0, self.boot)
        self.ring.put(seq, pkt)
        self._queue(link.frame(pkt))
        self.counters["packets_sent"] += 1
        return seq

    def _queue(self, wire):
        if len(self._out) + len(wire) > _TX_LIMIT:
            # The line is slower than the data (or stalled): keep the packet in the ring only; the
            # gateway sees the sequence gap and asks for it.
            self.counters["tx_dropped_packets"] += 1
            return
        self._out += wire

    def _flush(self):
        if self._out:
            n = self.uart.write(self._out)
            if n:
                # (MicroPython's bytearray has no slice deletion.)
                self._out = self._out[n:]

    def _send_hello(self):
        caps = link.C_RESEND | link.C_SET_RATE | link.C_SET_PACKET_MS
        if self.diff_packing:
            caps |= link.C_DIFF_PACKING
        if self.cal_enabled:
            caps |= link.C_CALIBRATION
        self._send(link.T_HELLO, link.pack_hello(caps, self.rate_mhz, self.ring_capacity(), self.spp,
                                                 self.chan_ids, FIRMWARE_VERSION, self.name))
        self.counters["hello_packets"] += 1

    def _send_soh(self):
        tb = self.tb
        ticks = tb.ticks_us()
        temp = self.temperature() if self.temperature is not None else _TEMP_UNKNOWN
        status = self._cond | self._bstatus
        if self._tamper_state:
            status |= link.S_TAMPER
        t_us = tb.now_us(ticks)
        if not tb.has_time:
            status |= link.S_NO_TIME
            t_us = 0                # "never set", not a date in 1970
        payload = link.pack_soh(t_us, tb.last_sync_us, _clamp32(tb.clock_diff_us),
                                min(0xFFFF, self.supply_mv()), temp, tb.quality(ticks), status,
                                min(0xFFFF, len(self.ring)), self.ring_capacity())
        self._send(link.T_SOH, payload)
        self.counters["soh_packets"] += 1

    def _resend(self, seq):
        pkt = self.ring.get(seq)
        self._queue(link.frame(link.retransmit_copy(self.auth, pkt)))
        self.counters["packets_resent"] += 1

    # ------------------------------------------------------------ receiving
    def _receive(self):
        uart = self.uart
        while uart.any():
            data = uart.read(min(uart.any(), 1024))
            if not data:
                break
            for wire in self._deframer.feed(data):
                self._handle_frame(wire)
        self.counters["rx_garbage_bytes"] = self._deframer.garbage_bytes

    def feed(self, data):
        """Bytes from the gateway, for callers that read the UART themselves."""
        for wire in self._deframer.feed(data):
            self._handle_frame(wire)

    def _handle_frame(self, wire):
        try:
            hdr, payload = link.decode(self.auth, wire)
        except link.LinkError as err:
            key = "rx_%s_errors" % err.reason
            self.counters[key] = self.counters.get(key, 0) + 1
            self.counters["rx_rejected_frame_bytes"] += len(wire)
            return
        if hdr.board_id != self.board_id:
            self.counters["wrong_board"] += 1
            return
        if hdr.boot and hdr.boot != self.boot:
            # Meant for an earlier run of this board (or the board it replaced): its ACK or RESEND
            # numbers name packets of that run, not ours.  (0: the gateway has not heard us yet.)
            self.counters["other_boot"] += 1
            return
        self.counters["rx_packets"] += 1
        try:
            if hdr.ptype == link.T_ACK:
                self._on_ack(link.unpack_ack(payload))
            elif hdr.ptype == link.T_RESEND:
                first, last = link.unpack_range(payload)
                self._on_resend(first, last)
            elif hdr.ptype == link.T_COMMAND:
                self._on_command(hdr, payload)
            else:
                self.counters["bad_type"] += 1
        except link.LinkError as err:
            key = "rx_%s_errors" % err.reason
            self.counters[key] = self.counters.get(key, 0) + 1

    def _on_ack(self, seq):
        if seq >= self.seq:
            self.counters["rx_payload_errors"] += 1     # acknowledges something never sent
            return
        self.counters["acks"] += 1
        self.ring.ack(seq)

    def _on_resend(self, first, last):
        self.counters["resend_requests"] += 1
        if last - first + 1 > link.MAX_RESEND:
            last = first + link.MAX_RESEND - 1
        newest_sent = self.seq - 1
        if last > newest_sent:
            self.counters["resend_future"] += 1
            last = newest_sent
            if last < first:
                return
        ring = self.ring
        oldest = ring.oldest if len(ring) else self.seq
        # Copies first: they are queued without touching the ring, whereas UNAVAILABLE is a new
        # packet whose put() may evict the oldest one held.
        for s in range(max(first, oldest), last + 1):
            self._resend(s)
        if first < oldest:
            # Everything below the oldest held packet is gone, also beyond the range asked for:
            # saying so settles a long outage in one round trip, whatever order the gateway asks in.
            gone_last = oldest - 1
            self.counters["unavailable_seqs"] += gone_last - first + 1
            self._send(link.T_UNAVAILABLE, link.pack_range(first, gone_last))
            self.counters["unavailable_packets"] += 1

    def _on_command(self, hdr, payload):
        code, args = link.unpack_command(payload)
        key = (hdr.epoch, hdr.seq)
        if self._last_cmd is not None and self._last_cmd[0] == key and self._last_cmd[1] in self.ring:
            # The gateway did not get our REPLY and sent the same COMMAND again: answer again,
            # do not execute twice (a second reboot, a second calibration).
            self.counters["duplicate_commands"] += 1
            self._resend(self._last_cmd[1])
            return
        self.counters["commands"] += 1
        status, result, after = self._execute(code, args)
        if status != link.R_OK:
            self.counters["bad_commands"] += 1
        reply_seq = self._send(link.T_REPLY, link.pack_reply(hdr.seq, status, code, result))
        self.counters["replies"] += 1
        self._last_cmd = (key, reply_seq)
        if after is not None:
            after()

    def _execute(self, code, args):
        if code == link.CMD_SET_RATE:
            if len(args) != 4:
                return link.R_BAD_ARGS, b"set_rate takes u32 mHz", None
            rate = (args[0] << 24) | (args[1] << 16) | (args[2] << 8) | args[3]
            if rate not in self.rates_mhz:
                return link.R_BAD_ARGS, b"rate not supported by this board", None
            if rate * self.packet_ms % 1000000:
                return link.R_BAD_ARGS, b"rate gives a fractional packet", None
            return link.R_OK, b"", lambda: self._change_rate(rate)
        if code == link.CMD_START_CALIBRATION:
            if not self.cal_enabled:
                return link.R_UNSUPPORTED, b"no calibration output on this board", None
            if len(args) != 5:
                return link.R_BAD_ARGS, b"start_calibration takes u16 s, u16 ms, u8 mask", None
            duration = (args[0] << 8) | args[1]
            period = (args[2] << 8) | args[3]
            mask = args[4]
            if duration == 0 or period == 0 or mask == 0 or mask >> self.nchan:
                return link.R_BAD_ARGS, b"duration, period and channel mask must be valid", None
            self._start_calibration(duration, period, mask)
            return link.R_OK, b"", None
        if code == link.CMD_STOP_CALIBRATION:
            if args:
                return link.R_BAD_ARGS, b"no arguments", None
            self._stop_calibration()
            return link.R_OK, b"", None
        if code == link.CMD_REBOOT:
            if args:
                return link.R_BAD_ARGS, b"no arguments", None
            return link.R_OK, b"", self._request_reboot
        if code == link.CMD_HELLO:
            if args:
                return link.R_BAD_ARGS, b"no arguments", None
            return link.R_OK, b"", self._send_hello
        if code == link.CMD_SET_PACKET_MS:
            if len(args) != 2:
                return link.R_BAD_ARGS, b"set_packet_ms takes u16 ms", None
            ms = (args[0] << 8) | args[1]
            if ms == 0:
                ms = self.default_packet_ms
            if self.rate_mhz * ms % 1000000:
                return link.R_BAD_ARGS, b"length gives a fractional packet at this rate", None
            spp = self.rate_mhz * ms // 1000000
            worst = link.data_size(spp, self.nchan, [link.ENC_I32] * self.nchan)
            if spp < 1 or worst > link.MAX_PAYLOAD or link.OVERHEAD + worst > self.ring.capacity_bytes // 2:
                return link.R_BAD_ARGS, b"packet length outside 1 sample .. payload/ring limit", None
            return link.R_OK, b"", lambda: self._change_packet_ms(ms)
        return link.R_UNSUPPORTED, b"unknown command", None

    def _change_rate(self, rate):
        self.flush_block()
        self.adc.configure(rate)
        self._set_rate(rate)
        self._send_hello()

    def _change_packet_ms(self, ms):
        # Like a rate change: the partial packet is closed (every packet stays evenly sampled and
        # self-describing) and HELLO announces the new samples per packet and ring capacity.
        self.flush_block()
        self.packet_ms = ms
        self._set_rate(self.rate_mhz)
        self._send_hello()

    def _start_calibration(self, duration_s, period_ms, mask):
        self._cal_start = self.tb.ticks_us()
        self._cal_len = duration_s * 1000000
        self.cal_mask = mask
        self._cond |= link.S_CALIBRATION
        self._bstatus |= link.S_CALIBRATION
        if self.calibrator is not None:
            self.calibrator.start(period_ms, mask)

    def _stop_calibration(self):
        if self._cal_start is not None and self.calibrator is not None:
            self.calibrator.stop()
        self._cal_start = None

    @property
    def calibrating(self):
        return self._cal_start is not None

    def _request_reboot(self):
        self.flush_block()
        self.reboot_requested = True


def draw_boot():
    """A random boot number, 1..65535 (the hardware RNG through os.urandom where there is one)."""
    b = 0
    while not b:
        try:
            import os
            r = os.urandom(2)
            b = (r[0] << 8) | r[1]
        except (ImportError, AttributeError, OSError, NotImplementedError):
            import random
            b = random.getrandbits(16)
    return b


def _clamp32(v):
    if v > 0x7FFFFFFF:
        return 0x7FFFFFFF
    if v < -0x80000000:
        return -0x80000000
    return v
