"""One writer per shard: leases that work on local disks and on object stores (no rename needed).

A writer takes shard ``s`` by creating the object ``commit_shard/lease/<s>/<g>`` for the next
generation ``g`` (one more than the highest present) with a create-only write: on a local disk a
hard link of a complete temporary file, which fails when the name exists, so exactly one of two
racing writers gets generation ``g``; on object stores zarr's ``set_if_not_exists`` (conditional
writes where the store has them), read back and compared. After writing, the writer lists the
generations again: only the holder of the highest one owns the shard.

A lease holds its owner (a random token per writer), host, process id and process start time, and
an expiry (``ttl`` seconds, renewed as units arrive). It is stale, and may be taken over with the
next generation, once it has expired, or at once when its process is gone (same host: the pid no
longer runs, or runs a different process), or when it belongs to a writer of this very process
that was dropped. A writer checks that it still holds the lease right before it commits; one that
lost it (presumed dead and taken over) drops the shard, which its new owner writes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import weakref

from .layout import LEASE_PREFIX
from .objects import Objects

DEFAULT_LEASE_TTL = 300.0
"""Seconds a lease lives without renewal: the longest a killed writer on another host blocks its
shards. Writers renew on every unit once half of it has passed."""

_LIVE_OWNERS: "weakref.WeakValueDictionary[str, object]" = weakref.WeakValueDictionary()
_LIVE_LOCK = threading.Lock()
_HOST = socket.gethostname()


def _proc_start(pid: int) -> str:
    """Start time of a process (Linux ``/proc/<pid>/stat`` field 22), "" where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


_MY_START: dict[int, str] = {}


def _my_start() -> str:
    """This process's start time (looked up per pid: a forked child is another process)."""
    pid = os.getpid()
    if pid not in _MY_START:
        _MY_START[pid] = _proc_start(pid)
    return _MY_START[pid]


def pid_alive(pid: int, start: str) -> bool:
    """Whether process ``pid`` of this host still runs (and, given its ``start`` time, is the same
    process, not a reuse of the pid). Also used by the writer to sweep stale creation folders."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    if start:
        now = _proc_start(pid)
        if now and now != start:
            return False  # the pid was reused by another process
    return True


class ShardLeases:
    """The leases one writer holds on the shards of one store."""

    def __init__(self, objects: Objects, owner_ref: object, ttl: float = DEFAULT_LEASE_TTL):
        self.objects = objects
        self.ttl = float(ttl)
        self.owner = uuid.uuid4().hex
        self.held: dict[int, tuple[int, float]] = {}  # shard -> (generation, expiry)
        with _LIVE_LOCK:
            _LIVE_OWNERS[self.owner] = owner_ref

    # --- records -------------------------------------------------------------------------------
    def _prefix(self, shard: int) -> str:
        return f"{LEASE_PREFIX}/{shard}"

    def _key(self, shard: int, gen: int) -> str:
        return f"{LEASE_PREFIX}/{shard}/{gen}"

    def _record(self, shard: int, gen: int) -> bytes:
        now = time.time()
        return json.dumps({
            "owner": self.owner, "host": _HOST, "pid": os.getpid(), "start": _my_start(),
            "shard": shard, "generation": gen, "acquired": now, "expires": now + self.ttl,
        }, sort_keys=True).encode()

    def _generations(self, shard: int) -> list[int]:
        gens = []
        for name in self.objects.list(self._prefix(shard)):
            if name.isdigit():
                gens.append(int(name))
        return sorted(gens)

    def _read(self, shard: int, gen: int) -> dict | None:
        raw = self.objects.get(self._key(shard, gen))
        if raw is None:
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            return {}  # a torn or damaged lease: treated as stale
        return rec if isinstance(rec, dict) else {}

    def holder(self, shard: int) -> dict | None:
        """The live lease on ``shard`` held by another writer, or None (free, stale or ours)."""
        gens = self._generations(shard)
        if not gens:
            return None
        rec = self._read(shard, gens[-1])
        if rec is None or rec.get("owner") == self.owner or is_stale(rec):
            return None
        return rec

    # --- taking, keeping, giving back ------------------------------------------------------------
    def acquire(self, shard: int) -> bool:
        """Take ``shard`` (True), or find it held by a live writer (False)."""
        if shard in self.held:
            return self.renew(shard)
        for _ in range(8):  # a few rounds when racing writers keep taking generations
            gens = self._generations(shard)
            top = gens[-1] if gens else 0
            if gens:
                rec = self._read(shard, top)
                if rec is not None and rec.get("owner") != self.owner and not is_stale(rec):
                    return False
            gen = top + 1
            if not self.objects.put_new(self._key(shard, gen), self._record(shard, gen)):
                continue  # another writer took this generation first: look again
            if self._still_mine(shard, gen):
                self.held[shard] = (gen, time.time() + self.ttl)
                for old in gens:  # earlier generations are history now
                    self.objects.delete(self._key(shard, old))
                return True
            return False
        return False

    def _still_mine(self, shard: int, gen: int) -> bool:
        gens = self._generations(shard)
        if not gens or gens[-1] != gen:
            return False
        rec = self._read(shard, gen)
        return rec is not None and rec.get("owner") == self.owner

    def renew(self, shard: int, force: bool = False) -> bool:
        """Extend our lease when half its time has passed. False when it was taken over."""
        gen, expiry = self.held[shard]
        if not force and expiry - time.time() > self.ttl / 2:
            return True
        if not self._still_mine(shard, gen):
            self.held.pop(shard, None)
            return False
        self.objects.put(self._key(shard, gen), self._record(shard, gen))
        self.held[shard] = (gen, time.time() + self.ttl)
        return True

    def check(self, shard: int) -> bool:
        """Whether we still hold ``shard`` (right before committing it)."""
        if shard not in self.held:
            return False
        return self._still_mine(shard, self.held[shard][0])

    def release(self, shard: int) -> None:
        held = self.held.pop(shard, None)
        if held is None:
            return
        try:
            if self._still_mine(shard, held[0]):
                self.objects.delete(self._key(shard, held[0]))
                self.objects.remove_empty(self._prefix(shard))
        except OSError:
            pass  # a lease left behind expires; nothing depends on its removal

    def release_all(self) -> None:
        for shard in list(self.held):
            self.release(shard)


def is_stale(rec: dict) -> bool:
    """Whether a lease record no longer protects its shard."""
    try:
        expires = float(rec["expires"])
        host, pid, owner = rec["host"], int(rec["pid"]), rec["owner"]
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: nobody can be relying on it
    if time.time() > expires:
        return True
    if host == _HOST:
        if pid == os.getpid():
            with _LIVE_LOCK:
                return owner not in _LIVE_OWNERS  # a writer of ours that was dropped
        return not pid_alive(pid, str(rec.get("start", "")))
    return False
