"""ddpipe.labelstore never imports torch (docs/architecture.md): a full write/read/verify/prune in a fresh
interpreter leaves torch out of sys.modules."""

import subprocess

CODE = r"""
import sys, tempfile
from ddpipe.labelstore import StoreSpec, create_store, open_store, verify_store, prune_store, store_info
from labelstore_units import all_units
spec = StoreSpec(num_samples=20, num_classes=7, epochs=2, batch_size=8, k=3)
d = tempfile.mkdtemp()
create_store(d + "/s", spec).write_many(all_units(spec))
assert sum(u.count for u in open_store(d + "/s").iter_units()) == 40
assert verify_store(d + "/s")["ok"]
prune_store(d + "/s", d + "/p", 0.5)
store_info(d + "/p")
import ddpipe.cli
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or m.startswith("torchvision"))
print("TORCH_MODULES", bad)
assert not bad, bad
"""


def test_labelstore_does_not_import_torch(python, subprocess_env):
    out = subprocess.run([python, "-c", CODE], capture_output=True, text=True, env=subprocess_env)
    assert out.returncode == 0, out.stderr
    assert "TORCH_MODULES []" in out.stdout
