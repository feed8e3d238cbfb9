"""Terminal output shared by commands: JSON for machines, rich for people."""

from __future__ import annotations

import json
import sys
from typing import Any


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
