"""Shared helpers of the label-store fault tests: the spec, the writer child, the reference store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from ddpipe.labelstore import StoreSpec, create_store, verify_store
from labelstore_units import all_units, make_unit

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "store_fault_child.py")

# 24 units in 8 shards of 3: small enough for dozens of runs, big enough for kills between shards
SPEC = StoreSpec(num_samples=45, num_classes=12, epochs=4, batch_size=8, k=5, value_codec="uint8", units_per_shard=3)


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS, HERE, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def start_writer(path: str, delay: float = 0.0, spec: StoreSpec = SPEC, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, CHILD, path, json.dumps(spec.to_dict()), str(delay)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(**env), stdin=subprocess.DEVNULL,
    )


_CTX = None


def _context():
    """A forkserver that has imported numpy, zarr and ddpipe.labelstore once: its children are
    real processes (killable, with their own files and leases) that start in milliseconds."""
    global _CTX
    if _CTX is None:
        import multiprocessing

        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["numpy", "zarr", "ddpipe.labelstore", "labelstore_units", "store_fault_child"])
    return _CTX


def _writer_main(path, spec_dict, delay, conn, enospc_after, linger):
    import time

    import store_fault_child

    if enospc_after is not None:
        store_fault_child.install_enospc(enospc_after, path)
    status = store_fault_child.run_writer(path, spec_dict, delay, lambda *a: conn.send(a))
    if linger:  # stay alive to be killed: a kill that comes late still kills a process
        conn.send(("lingering",))
        time.sleep(120)
    conn.close()
    os._exit(status)


class Writer:
    """A writer child process (forkserver); ``events`` are the tuples it reported."""

    def __init__(self, path: str, delay: float = 0.0, spec: StoreSpec = SPEC, enospc_after: int | None = None,
                 linger: bool = False):
        ctx = _context()
        self._conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_writer_main, args=(path, spec.to_dict(), delay, child, enospc_after, linger))
        self.proc.start()
        child.close()
        self.events: list[tuple] = []

    def wait_for(self, word: str, timeout: float = 60) -> bool:
        """Read events until ``word`` (True) or the end of the child (False)."""
        while self._conn.poll(timeout):
            try:
                ev = self._conn.recv()
            except EOFError:
                return False
            self.events.append(ev)
            if ev[0] == word:
                return True
        return False

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.join()

    def finish(self, timeout: float = 120) -> int:
        self.wait_for("\0", timeout)
        self.proc.join(timeout)
        return self.proc.exitcode

    def words(self, word: str) -> list[tuple]:
        return [ev[1:] for ev in self.events if ev[0] == word]


def wait_for(proc: subprocess.Popen, word: str) -> None:
    for line in proc.stdout:
        if line.split()[:1] == [word]:
            return
    raise AssertionError(f"child ended before printing {word!r}: {proc.stderr.read()[-2000:]}")


def build(path: str, spec: StoreSpec = SPEC, seed: int = 0) -> str:
    create_store(path, spec).write_many(all_units(spec, seed=seed))
    return path


def resume_in_process(path: str, spec: StoreSpec = SPEC) -> None:
    """What ``--resume`` does: create with resume=True, write every pending unit."""
    w = create_store(path, spec, resume=True)
    for e, b in w.pending_units():
        w.write(make_unit(spec, int(e), int(b)))
    assert w.close() == 0 and w.complete


def fingerprint(path: str) -> dict[str, bytes]:
    """SHA-256 of every object of a local store, keyed by its key, with what is unique to one
    store left out: the group's ``zarr.json`` (its store id, creation time and checksum) and the
    store id inside each commit record (bytes 8-23, and the record object's trailing CRC32C over
    it). Equal fingerprints = byte-identical stores."""
    out = {}
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "lease"]
        for f in files:
            full = os.path.join(root, f)
            key = os.path.relpath(full, path).replace(os.sep, "/")
            if key == "zarr.json":
                continue
            with open(full, "rb") as fh:
                data = fh.read()
            if key.startswith("commit_shard/c/"):  # the record, less its store id and the CRC32C over it
                data = data[:8] + bytes(16) + data[24:-4]
            out[key] = hashlib.sha256(data).digest()
    return out


def assert_identical(path: str, reference: dict, verify: bool = False) -> None:
    """Every object of the store at ``path`` is byte-identical to the reference's (its fingerprint;
    equal commit records mean the reader's hash check passes too)."""
    got = fingerprint(path)
    missing, extra = sorted(reference.keys() - got.keys()), sorted(got.keys() - reference.keys())
    assert not missing and not extra, (missing[:5], extra[:5])
    differ = sorted(k for k in reference if got[k] != reference[k])
    assert not differ, differ[:5]
    if verify:
        report = verify_store(path)
        assert report["ok"], report["problems"][:3]
