"""Terminal output shared by commands: JSON for machines, rich for people.

Also owns what happens when the reader of our stdout goes away (``ims-station cd11 dump F | head``):
:func:`stdout_gone` -- the command ends quietly with :data:`EXIT_BROKEN_PIPE`, like a Unix tool
killed by SIGPIPE, instead of a ``BrokenPipeError`` traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# 128 + SIGPIPE: what the shell reports for ``cat`` or ``grep`` whose reader closed the pipe, so a
# pipeline with ``set -o pipefail`` treats us like any other tool (docs/cd11.md, "CLI").
EXIT_BROKEN_PIPE = 141


def stdout_broken() -> bool:
    """Is our stdout a pipe or socket whose reader has gone?  (So that a ``BrokenPipeError`` from
    somewhere else -- a socket -- is not mistaken for it and hidden.)"""
    import select

    try:
        fd = sys.stdout.fileno()
        p = select.poll()
        p.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def stdout_gone() -> int:
    """The reader of stdout closed it: point stdout at /dev/null (so the interpreter's final flush
    at exit cannot raise again and print "Exception ignored ... BrokenPipeError") and return
    :data:`EXIT_BROKEN_PIPE`.  The recipe of the Python documentation (signal module, "Note on
    SIGPIPE"); we do not restore SIG_DFL for SIGPIPE, which would kill a daemon without its
    clean-up (the gateway closes its outbox on the way out)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):     # stdout already closed or not a real file
        pass
    return EXIT_BROKEN_PIPE


def print_json(obj: Any, *, stream=None) -> None:
    """One JSON document on one line (so ``--json`` output can be piped to ``jq`` or read per line)."""
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, sort_keys=False, default=_default) + "\n")
    stream.flush()


def _default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, (bytes, bytearray)):
        return o.hex()
    if isinstance(o, set):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
