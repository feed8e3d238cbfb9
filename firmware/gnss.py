# GNSS time messages: the UTC second that the receiver's last PPS edge marked, from NMEA RMC
# sentences ($GPRMC / $GNRMC), for firmware/timebase.py's on_gnss_time().
#
# Owns: checksum verification and the date/time fields of RMC.  Does not own the UART (main.py reads
# lines) nor the PPS edge.  Only fix-valid sentences ('A' status) are accepted; the receiver's time
# of an RMC sentence is the PPS edge that preceded it (u-blox, MediaTek default behaviour).

_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a Gregorian date."""
    days = (y - 1970) * 365 + (y - 1969) // 4 - (y - 1901) // 100 + (y - 1601) // 400
    days += _DAYS_BEFORE_MONTH[m - 1] + d - 1
    if m > 2 and (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
        days += 1
    return days


def nmea_checksum_ok(line):
    """*line* (bytes or str, with or without CR/LF): True if the *hh checksum matches."""
    if isinstance(line, str):
        line = line.encode()
    line = line.strip()
    if len(line) < 4 or line[0] != 0x24 or line[-3] != 0x2A:    # '$' ... '*hh'
        return False
    acc = 0
    for b in line[1:-3]:
        acc ^= b
    try:
        return acc == int(line[-2:], 16)
    except ValueError:
        return False


def parse_rmc(line):
    """UTC microseconds of the second an RMC sentence reports, or None (not RMC, no fix, bad sum)."""
    if not nmea_checksum_ok(line):
        return None
    if isinstance(line, bytes):
        line = line.decode()
    fields = line.strip()[1:-3].split(",")
    if len(fields) < 10 or not fields[0].endswith("RMC") or fields[2] != "A":
        return None
    hms = fields[1]
    dmy = fields[9]
    if len(hms) < 6 or len(dmy) != 6:
        return None
    try:
        hh = int(hms[0:2])
        mi = int(hms[2:4])
        ss = int(hms[4:6])
        dd = int(dmy[0:2])
        mo = int(dmy[2:4])
        yy = 2000 + int(dmy[4:6])
    except ValueError:
        return None
    if not (0 <= hh < 24 and 0 <= mi < 60 and 0 <= ss <= 60 and 1 <= mo <= 12 and 1 <= dd <= 31):
        return None
    secs = days_from_civil(yy, mo, dd) * 86400 + hh * 3600 + mi * 60 + ss
    return secs * 1000000
