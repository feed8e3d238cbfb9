# Board time base: turns the MCU's microsecond tick counter into UTC microseconds, disciplined by
# the GNSS receiver's PPS edge (precise instant) and its time message (which second that edge was).
#
# Owns: the tick -> UTC mapping, the frequency estimate of the tick counter, the time quality
# (locked / holdover / unlocked, the link's TQ_* values), whether the clock has ever been set
# (`has_time`: the first GNSS time naming a PPS edge; until then the board has no time to stamp
# samples with and withholds DATA), the clock differential at each PPS edge and clock-step
# detection (steps of a clock that had a time; setting it the first time is not a step).  Does not own the PPS interrupt or the GNSS UART parsing (the board
# entry point captures the edge with ticks_us() in the IRQ and calls on_pps(); a NMEA/UBX parser
# calls on_gnss_time()).  The HIL drives both directly.
#
# Integer arithmetic only: MicroPython's float is single precision on the RP2040, far too coarse
# for microseconds since 1970.  The tick period estimate is kept in 1/1024 tick units.
# ticks_us() wraps on MicroPython (2**30 us); differences go through the injected ticks_diff and
# the anchor is rolled forward so that no difference ever spans a wrap.

from . import link

_FRAC = 10                       # fixed-point bits of the period estimate
_ONE_S = 1000000
_ROLL = 0x10000000               # re-anchor after ~268 s without PPS (ticks_us wraps at 2**30)


def _sub(a, b):
    return a - b


class Timebase:
    def __init__(self, ticks_us, holdover_s=3600, ticks_diff=None, lock_timeout_s=2,
                 step_threshold_us=1000, max_freq_error_ppm=200):
        self._ticks = ticks_us
        self._diff = ticks_diff or _sub
        self.ticks_us = ticks_us             # the injected tick source, for the digitizer's timers
        self.ticks_diff = self._diff
        self.holdover_us = int(holdover_s) * _ONE_S
        self.lock_timeout_us = int(lock_timeout_s) * _ONE_S
        self.step_threshold_us = step_threshold_us
        self._max_err = max_freq_error_ppm     # us of disagreement allowed per second of interval
        t = ticks_us()
        self._anchor_ticks = t           # tick value ...
        self._anchor_utc = 0             # ... and the UTC it stands for (free-running from 1970 at boot)
        self._period_x = _ONE_S << _FRAC  # ticks per true second, fixed point
        self._period_known = False
        self._pps_ticks = None           # last accepted PPS edge
        self._pps_utc = None             # its UTC label (None until GNSS names it)
        self.last_sync_us = 0            # UTC of the last PPS edge the clock was disciplined to
        self.has_time = False            # set for good by the first GNSS time + PPS (never cleared)
        self.clock_diff_us = 0           # board clock minus PPS at the last disciplined edge
        self.steps = 0
        self.step_pending = False
        self.last_step_us = 0
        self.pps_count = 0
        self.pps_rejected = 0

    # ------------------------------------------------------------ reading the clock
    def now_us(self, ticks_us=None):
        """UTC microseconds at *ticks_us* (now if None)."""
        if ticks_us is None:
            ticks_us = self._ticks()
        d = self._diff(ticks_us, self._anchor_ticks)
        utc = self._anchor_utc + ((d << _FRAC) * _ONE_S) // self._period_x
        if d > _ROLL:
            self._anchor_ticks = ticks_us
            self._anchor_utc = utc
        return utc

    def quality(self, ticks_us=None):
        if not self.has_time:
            return link.TQ_UNLOCKED
        age = self.now_us(ticks_us) - self.last_sync_us
        if age <= self.lock_timeout_us:
            return link.TQ_LOCKED
        if age <= self.holdover_us:
            return link.TQ_HOLDOVER
        return link.TQ_UNLOCKED

    def ppm(self):
        """Frequency error of the tick counter in parts per million (positive = ticks run fast)."""
        return ((self._period_x >> _FRAC) - _ONE_S)

    def take_step(self):
        """True once after each clock step (the packetizer flags S_CLOCK_STEP)."""
        if self.step_pending:
            self.step_pending = False
            return True
        return False

    # ------------------------------------------------------------ inputs
    def set_time(self, utc_us, ticks_us=None):
        """Coarse time from an RTC or the operator: sets the clock without locking it, and without
        `has_time` (the board stamps DATA only with a time that came from GNSS + PPS)."""
        if ticks_us is None:
            ticks_us = self._ticks()
        self._step_to(ticks_us, utc_us, self.now_us(ticks_us) - utc_us)

    def on_pps(self, ticks_us):
        """A PPS edge was captured at *ticks_us*."""
        self.pps_count += 1
        utc = None
        if self._pps_ticks is not None:
            interval = self._diff(ticks_us, self._pps_ticks)
            period = self._period_x >> _FRAC
            nsec = (interval + period // 2) // period
            if nsec < 1 or abs(interval - nsec * period) > nsec * self._max_err + 2:
                # A glitch on the PPS line (or a pulse after a wrap-length silence): ignore it.
                self.pps_rejected += 1
                return
            if nsec == 1:
                x = interval << _FRAC
                if self._period_known:
                    self._period_x += (x - self._period_x) >> 2
                else:
                    self._period_x = x
                    self._period_known = True
            if self._pps_utc is not None:
                utc = self._pps_utc + nsec * _ONE_S
        self._pps_ticks = ticks_us
        self._pps_utc = utc
        if utc is not None:
            self._discipline(ticks_us, utc)

    def on_gnss_time(self, utc_us):
        """The GNSS receiver says the last PPS edge was at *utc_us* (a whole second)."""
        if self._pps_ticks is None:
            # Time message without any PPS yet: a coarse setting, not a lock.
            self.set_time(utc_us)
            return
        if self._pps_utc == utc_us:
            return
        self._pps_utc = utc_us
        self._discipline(self._pps_ticks, utc_us)

    # ------------------------------------------------------------ internals
    def _discipline(self, ticks_us, utc_us):
        if not self.has_time:
            # First time ever: the free-running clock (1970 + uptime, or a coarse set_time) meant
            # nothing and stamped nothing, so this is neither a step nor a clock differential.
            self._anchor_ticks = ticks_us
            self._anchor_utc = utc_us
            self.clock_diff_us = 0
            self.has_time = True
        else:
            diff = self.now_us(ticks_us) - utc_us
            self.clock_diff_us = diff
            self._step_to(ticks_us, utc_us, diff)
        self.last_sync_us = utc_us

    def _step_to(self, ticks_us, utc_us, diff):
        # Only a clock that had a time can step (see _discipline): a coarse set_time() before the
        # first GNSS time re-labels nothing anyone has seen.
        if self.has_time and (diff > self.step_threshold_us or diff < -self.step_threshold_us):
            self.steps += 1
            self.step_pending = True
            self.last_step_us = -diff
        self._anchor_ticks = ticks_us
        self._anchor_utc = utc_us
