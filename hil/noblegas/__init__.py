"""The noble-gas detector emulator: a β-γ coincidence (or HPGe) detector with its MCA and process
controller, behind a serial line speaking the ORTEC-style dialect of :mod:`ims_station.mca`.

* ``physics.py`` -- detector response and synthesis (expected counts, Poisson events);
* ``process.py`` -- the sampling cycle, the samples, the state of health;
* ``faults.py`` -- reply faults and time-windowed device/process faults;
* ``device.py`` -- the emulator itself (command semantics, counting, clocks);
* ``analysis.py`` -- the net-count analysis that turns spectra back into concentrations;
* ``ptyrun.py`` -- the emulator behind a pseudo-terminal; ``hil/protocol_noblegas.py`` is the
  in-process ``noblegas://`` pyserial port.

docs/noblegas.md describes the dialect, the cycle, the physics and the faults.
"""
