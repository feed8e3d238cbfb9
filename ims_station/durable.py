"""Durable names: what makes a new file's or directory's *name* survive a power cut.

Owns the directory half of durability, shared by every store (edge outbox, relay archive and
state): ``os.fsync`` of a file makes its bytes durable, not its directory entry -- fsync(2):
"Calling fsync() does not necessarily ensure that the entry in the directory containing the file
has also reached disk.  For that an explicit fsync() on a file descriptor for the directory is also
needed."  So a directory created at start-up (``mkdir -p``) must have each new level's parent
fsync'd, or a power cut can take the whole store with it although every commit was fsync'd.
It does not own the stores' own syncing (SQLite ``synchronous=FULL``, the archive's file fsyncs).
Tested by the power-loss tests (tests/powerloss/, docs/testing.md).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory *path* (new, renamed, removed names) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: str | os.PathLike[str], mode: int = 0o777) -> list[Path]:
    """``mkdir -p`` *path* durably: each directory created is fsync'd into its parent before the
    next level is made.  Returns the directories created (outermost first)."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir(mode)
            created.append(d)
        except FileExistsError:
            if not d.is_dir():
                raise
            # Made by another process at the same moment, which may not have synced it yet.
        fsync_dir(d.parent)
    return created
