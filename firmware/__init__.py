# MicroPython firmware for the ims-station digitizer board.
# Deployed to the board as the package /lib/imsfw (see docs/firmware.md); imported on CPython as
# ims_station.firmware.  Modules here use only the cross-runtime subset: no typing, dataclasses,
# numpy, construct, serial or cryptography (tests/firmware/test_portability.py enforces it).
