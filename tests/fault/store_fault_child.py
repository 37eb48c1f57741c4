"""A label-store writer process for the fault tests: creates (or resumes) a store and writes it.

argv: path, spec JSON, per-unit delay in seconds. Prints ``ready`` once imported, ``created`` once
the store exists, ``unit E B`` after each unit it wrote, ``shard S`` for each shard it committed,
``done`` at the end. Asks ``StoreWriter.claim`` before computing each unit, as a relabel run does,
so two of these on one store split the shards.

Fault injector (real files, no mock of ddpipe): with ``DDPIPE_FAULT_ENOSPC_AFTER=N`` in the
environment, every file opened for writing below the store's folder (the store and its hidden
creation folder) counts the bytes written, and a write that would pass ``N`` bytes in total raises
``OSError(ENOSPC)``, as a full disk does. It wraps ``io.open`` (which zarr's LocalStore and ddpipe
both reach) and nothing else. The process prints the error's class and message and exits 2.
"""

import builtins
import errno
import io
import json
import os
import sys
import time


def install_enospc(limit: int, under: str) -> None:
    real_open = io.open
    written = [0]
    parent = os.path.dirname(os.path.abspath(under))

    def fault_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if not any(c in mode for c in "wax+") or not os.path.abspath(os.fspath(file)).startswith(parent):
            return f
        real_write = f.write

        def write(data):
            n = len(memoryview(data).cast("B"))
            if written[0] + n > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))
            written[0] += n
            return real_write(data)

        f.write = write
        return f

    io.open = fault_open
    builtins.open = fault_open


def run_writer(path: str, spec_dict: dict, delay: float, emit) -> int:
    """Create or resume the store at ``path`` and write every unit this writer can claim, calling
    ``emit(word, *args)`` at each step. Returns the exit status (0, or 2 after a StoreError)."""
    from ddpipe.labelstore import StoreError, StoreSpec, create_store
    from labelstore_units import make_unit

    spec = StoreSpec.from_dict(spec_dict)
    emit("ready")
    try:
        w = create_store(path, spec, resume=True)
        emit("created")
        for e, b in w.pending_units():
            e, b = int(e), int(b)
            if not w.claim(e, b):
                continue
            unit = make_unit(spec, e, b)
            if delay:
                time.sleep(delay)
            if w.write(unit):
                emit("shard", w.shard_of(w.unit_index(e, b)))
            emit("unit", e, b)
        w.close()
    except StoreError as e:
        emit("error", type(e).__name__, str(e))
        return 2
    emit("done")
    return 0


def main() -> None:
    path, spec_json, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    limit = os.environ.get("DDPIPE_FAULT_ENOSPC_AFTER")
    if limit:
        install_enospc(int(limit), path)
    status = run_writer(path, json.loads(spec_json), delay, lambda *a: print(*a, flush=True))
    sys.exit(status)


if __name__ == "__main__":
    main()
