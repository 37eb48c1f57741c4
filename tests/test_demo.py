"""``ddpipe demo`` writes, prunes, damages a copy and catches the damage."""

import json

from ddpipe.cli import main


def test_demo_catches_corruption(tmp_path, capsys):
    assert main(["demo", "store", "--out", str(tmp_path / "demo"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    c = r["corruption"]
    assert c["caught"] is True and c["verify_ok"] is False
    assert c["named"]["array"] == "label_value"
    assert {"unit", "epoch", "batch"} <= set(c["named"])
    assert c["read_error"].startswith("ChunkCorruptError")
    assert r["pruned"]["units"] < r["store"]["units"]
    assert r["store"]["bytes_on_disk"] < r["store"]["sre2l_equivalent_bytes"]
