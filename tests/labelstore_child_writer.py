"""A writer process for the crash tests: writes a store unit by unit, reporting progress.

argv: path, spec JSON, plan ("all" or "rank:R/W"), die_array ("" or an array name: SIGKILL
itself right after writing that array's shard object during the first flush).
"""

import json
import os
import signal
import sys
import time

from ddpipe.labelstore import StoreSpec, create_store
from labelstore_units import make_unit


def main() -> None:
    path, spec_json, which, die_array = sys.argv[1:5]
    spec = StoreSpec.from_dict(json.loads(spec_json))
    w = create_store(path, spec, resume=True)
    if die_array:
        real = w._arrays[die_array]

        class DieAfterWrite:
            def __setitem__(self, key, value):
                real[key] = value
                os.kill(os.getpid(), signal.SIGKILL)

        w._arrays[die_array] = DieAfterWrite()
    rank, world = (0, 1) if which == "all" else map(int, which.split(":")[1].split("/"))
    for n, (e, b) in enumerate(w.pending_units(rank, world), 1):
        w.write(make_unit(spec, int(e), int(b)))
        print(n, flush=True)
        if which == "all":
            time.sleep(0.02)  # gives the parent a window to kill us between units
    w.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
