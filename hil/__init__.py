"""The hardware-in-the-loop simulator: virtual boards running the real firmware code against
emulated peripherals, signal generators in physical units, and faulty lines.

Imported as ``ims_station.hil``.
"""
