"""powerfs: a FUSE file system that forgets, at a simulated power cut, everything not yet synced.

Owns the crash model of the power-loss tests (docs/testing.md, "Power-loss tests").  The code
under test runs unmodified on the mount point; the file system keeps two states:

* the **current** state, what every read, ``stat`` and ``readdir`` sees (the page cache);
* the **durable** state, what a disk would hold after a power cut.  It changes only on

  - ``fsync``/``fdatasync`` of a file (or a write to a file opened with ``O_SYNC``/``O_DSYNC``):
    the file's current bytes and size become durable -- not its name;
  - ``fsync`` of a directory: the directory's current entries (names -> files and
    sub-directories, including creations, unlinks and renames) become durable -- not the
    contents of the files or sub-directories they point to.

  That is the strict POSIX contract (what ext4/XFS guarantee without relying on their journal
  ordering): a new file needs an fsync of its parent directory to survive, a new directory an
  fsync of *its* parent, and so on up to a directory that already was durable.

The control channel is standard input/output, one line each way, so that the test process
decides the instant of the cut exactly, between two file system operations:

* ``cut``   -> every later operation fails with ``EIO`` (the power is off), the durable state is
  written to the backing directory, reply ``cut {json stats}``;
* ``stats`` -> reply ``stats {json stats}``.

``ready`` is printed once the mount is up.  Operations run one at a time (``nothreads``), and the
cut takes the same lock, so no operation straddles it.

With ``POWERFS_TRACE=FILE`` in the environment, every operation (and the cut) is appended to FILE
as one line: ``time.monotonic()``, the operation, its path and, for a write, offset and length --
the clock the writer's own logs can use, to see what a cut fell between (docs/testing.md).

Usage: ``python powerfs.py BACKING MOUNTPOINT`` (foreground; unmount with ``fusermount3 -u``).
The backing directory is read into memory at start (it is the disk after the previous cut) and
only written at a cut: a test's files are small.  Hand-written because no maintained file system
does this and installs from Debian or PyPI (LazyFS, the closest, is C++ built from source); it is
a test tool, ~300 lines over ``mfusepy`` (maintained ctypes bindings of libfuse 3).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import stat
import sys
import threading
import time
from pathlib import Path

# libfuse 3 (Debian fuse3, with fusermount3), even where libfuse 2 is installed too: mfusepy
# would prefer the older one.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy as fuse  # noqa: E402 - after choosing the library


class Node:
    """A file or a directory: its current and its durable content."""

    __slots__ = ("is_dir", "data", "synced", "entries", "synced_entries", "mode", "mtime_ns")

    def __init__(self, is_dir: bool, mode: int, data: bytes = b"") -> None:
        self.is_dir = is_dir
        self.mode = mode
        self.mtime_ns = time.time_ns()
        self.data = bytearray(data)          # current bytes (files)
        self.synced = bytes(data)            # durable bytes (files)
        self.entries: dict[str, Node] = {}           # current names (directories)
        self.synced_entries: dict[str, Node] = {}    # durable names (directories)


def _load(path: Path) -> Node:
    """The backing directory as a tree whose current and durable states are equal."""
    st = path.stat()
    if path.is_dir():
        node = Node(True, stat.S_IMODE(st.st_mode))
        for child in sorted(path.iterdir()):
            if child.is_dir() or child.is_file():
                node.entries[child.name] = _load(child)
        node.synced_entries = dict(node.entries)
        return node
    return Node(False, stat.S_IMODE(st.st_mode), path.read_bytes())


def _dump(node: Node, path: Path) -> None:
    """Write the durable state of *node* at *path*."""
    if node.is_dir:
        path.mkdir(mode=0o755, exist_ok=True)
        for name, child in node.synced_entries.items():
            _dump(child, path / name)
        os.chmod(path, node.mode)
    else:
        path.write_bytes(node.synced)
        os.chmod(path, node.mode)


def _op(method):
    """Run one file system operation under the lock; ``EIO`` once the power is cut."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self, *args, **kw):
        with self._mutex:
            if self._trace:
                what = f" {args[2]} {len(args[1])}" if name == "write" and len(args) > 2 else ""
                self._trace.write(f"{time.monotonic():.6f} {name} {args[0] if args else ''}{what}"
                                  f"{' EIO' if self.dead else ''}\n")
            if self.dead:
                raise fuse.FuseOSError(errno.EIO)
            self.counters["ops"] += 1
            return method(self, *args, **kw)

    return wrapper


class PowerFS(fuse.Operations):
    use_ns = True

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self.root = _load(backing)
        self._mutex = threading.Lock()
        self.dead = False
        self.handles: dict[int, tuple[Node, bool]] = {}     # fh -> (node, writes are synchronous)
        self.next_fh = 1
        self.counters = {"ops": 0, "fsync": 0, "fsyncdir": 0, "writes": 0, "bytes_written": 0}
        trace = os.environ.get("POWERFS_TRACE")
        self._trace = open(trace, "a", buffering=1) if trace else None     # line-buffered

    # -- helpers -----------------------------------------------------------------------------------
    def _lookup(self, path: str) -> Node:
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not node.is_dir or part not in node.entries:
                raise fuse.FuseOSError(errno.ENOENT if node.is_dir else errno.ENOTDIR)
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> Node:
        if fh is not None and fh in self.handles:
            return self.handles[fh][0]
        if path is None:
            raise fuse.FuseOSError(errno.EBADF)
        return self._lookup(path)

    def _handle(self, node: Node, flags: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = (node, bool(flags & (os.O_SYNC | os.O_DSYNC)))
        return fh

    def stats(self) -> dict:
        unsynced = 0
        seen: set[int] = set()
        stack = [self.root]
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.is_dir:
                stack.extend(n.entries.values())
            elif bytes(n.data) != n.synced:
                unsynced += 1
        return {**self.counters, "unsynced_files": unsynced}

    def cut(self) -> dict:
        """The power cut: stop, and make the backing directory hold the durable state only."""
        with self._mutex:
            self.dead = True
            if self._trace:
                self._trace.write(f"{time.monotonic():.6f} CUT\n")
            out = self.stats()
            for child in self.backing.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
            for name, child in self.root.synced_entries.items():
                _dump(child, self.backing / name)
            return out

    # -- attributes ----------------------------------------------------------------------------------
    @_op
    def getattr(self, path, fh=None):
        n = self._node(path, fh)
        size = 0 if n.is_dir else len(n.data)
        return {"st_mode": (stat.S_IFDIR if n.is_dir else stat.S_IFREG) | n.mode,
                "st_nlink": 2 if n.is_dir else 1, "st_size": size, "st_blocks": (size + 511) // 512,
                "st_uid": os.getuid(), "st_gid": os.getgid(),
                "st_mtime": n.mtime_ns, "st_atime": n.mtime_ns, "st_ctime": n.mtime_ns}

    @_op
    def access(self, path, amode):
        self._lookup(path)
        return 0

    @_op
    def chmod(self, path, mode):
        self._lookup(path).mode = stat.S_IMODE(mode)
        return 0

    @_op
    def chown(self, path, uid, gid):
        self._lookup(path)
        return 0

    @_op
    def utimens(self, path, times=None):
        self._lookup(path).mtime_ns = times[1] if times else time.time_ns()
        return 0

    @_op
    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19,
                "f_bavail": 1 << 19, "f_files": 1 << 16, "f_ffree": 1 << 15, "f_favail": 1 << 15,
                "f_namemax": 255}

    # -- directories -----------------------------------------------------------------------------------
    @_op
    def mkdir(self, path, mode):
        parent, name = self._parent(path)
        if name in parent.entries:
            raise fuse.FuseOSError(errno.EEXIST)
        parent.entries[name] = Node(True, stat.S_IMODE(mode))
        return 0

    @_op
    def rmdir(self, path):
        parent, name = self._parent(path)
        n = parent.entries.get(name)
        if n is None:
            raise fuse.FuseOSError(errno.ENOENT)
        if not n.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        if n.entries:
            raise fuse.FuseOSError(errno.ENOTEMPTY)
        del parent.entries[name]
        return 0

    @_op
    def opendir(self, path):
        n = self._lookup(path)
        if not n.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return self._handle(n, 0)

    @_op
    def readdir(self, path, fh):
        return [".", "..", *self._node(path, fh).entries]

    @_op
    def releasedir(self, path, fh):
        self.handles.pop(fh, None)
        return 0

    @_op
    def fsyncdir(self, path, datasync, fh):
        n = self._node(path, fh)
        n.synced_entries = dict(n.entries)
        self.counters["fsyncdir"] += 1
        return 0

    @_op
    def unlink(self, path):
        parent, name = self._parent(path)
        n = parent.entries.get(name)
        if n is None:
            raise fuse.FuseOSError(errno.ENOENT)
        if n.is_dir:
            raise fuse.FuseOSError(errno.EISDIR)
        del parent.entries[name]
        return 0

    @_op
    def rename(self, old, new):
        src_parent, src_name = self._parent(old)
        dst_parent, dst_name = self._parent(new)
        n = src_parent.entries.get(src_name)
        if n is None:
            raise fuse.FuseOSError(errno.ENOENT)
        target = dst_parent.entries.get(dst_name)
        if target is not None and target is not n:
            if target.is_dir and (not n.is_dir or target.entries):
                raise fuse.FuseOSError(errno.ENOTEMPTY if n.is_dir else errno.EISDIR)
            if n.is_dir and not target.is_dir:
                raise fuse.FuseOSError(errno.ENOTDIR)
        del src_parent.entries[src_name]
        dst_parent.entries[dst_name] = n
        return 0

    # -- files -----------------------------------------------------------------------------------------
    @_op
    def create(self, path, mode, flags=0):
        parent, name = self._parent(path)
        n = parent.entries.get(name)
        if n is None:
            n = parent.entries[name] = Node(False, stat.S_IMODE(mode))
        elif flags & os.O_EXCL:
            raise fuse.FuseOSError(errno.EEXIST)
        return self._handle(n, flags)

    @_op
    def open(self, path, flags):
        n = self._lookup(path)
        if n.is_dir:
            raise fuse.FuseOSError(errno.EISDIR)
        if flags & os.O_TRUNC:
            del n.data[:]
        return self._handle(n, flags)

    @_op
    def read(self, path, size, offset, fh):
        return bytes(self._node(path, fh).data[offset:offset + size])

    @_op
    def write(self, path, data, offset, fh):
        n = self._node(path, fh)
        if offset > len(n.data):
            n.data.extend(bytes(offset - len(n.data)))
        n.data[offset:offset + len(data)] = data
        n.mtime_ns = time.time_ns()
        self.counters["writes"] += 1
        self.counters["bytes_written"] += len(data)
        if self.handles.get(fh, (None, False))[1]:
            n.synced = bytes(n.data)
        return len(data)

    @_op
    def truncate(self, path, length, fh=None):
        n = self._node(path, fh)
        if length < len(n.data):
            del n.data[length:]
        else:
            n.data.extend(bytes(length - len(n.data)))
        return 0

    @_op
    def fsync(self, path, datasync, fh):
        n = self._node(path, fh)
        n.synced = bytes(n.data)
        self.counters["fsync"] += 1
        return 0

    @_op
    def flush(self, path, fh):
        return 0      # close() is not a sync

    @_op
    def release(self, path, fh):
        self.handles.pop(fh, None)
        return 0

    def init(self, path):
        print("ready", flush=True)


def _control(fs: PowerFS) -> None:
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "cut":
            print("cut " + json.dumps(fs.cut()), flush=True)
        elif cmd == "stats":
            with fs._mutex:
                print("stats " + json.dumps(fs.stats()), flush=True)
        elif cmd:
            print(f"error unknown command {cmd!r}", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[-2], file=sys.stderr)
        return 2
    backing, mountpoint = Path(argv[0]).resolve(), argv[1]
    fs = PowerFS(backing)
    threading.Thread(target=_control, args=(fs,), daemon=True, name="powerfs-control").start()
    fuse.FUSE(fs, mountpoint, foreground=True, nothreads=True, fsname="powerfs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
