"""A continued zoo run records, per earlier run, only the stages that run trained."""

from __future__ import annotations

import json

from trdq.tools.zoo_train import load_checkpoint


def test_history_entry_keeps_only_the_stages_the_earlier_run_trained(tmp_path):
    previous = {
        "command": "trdq zoo train --stages t2v",
        "stages": ["t2v"],
        "t2v": {"steps": 5},
        "t2i": {"steps": 9},  # carried on from an older run, not trained by this one
        "history": [{"command": "trdq zoo train", "stages": ["t2i"], "t2i": {"steps": 9}}],
        "total_seconds": 1.0,
    }
    (tmp_path / "meta.json").write_text(json.dumps(previous))
    meta = {"command": "trdq zoo train --stages decoder"}
    assert load_checkpoint({}, tmp_path, meta) == []
    assert meta["history"] == [
        previous["history"][0],
        {"command": previous["command"], "stages": ["t2v"], "t2v": {"steps": 5},
         "total_seconds": 1.0},
    ]
    assert meta["t2i"] == {"steps": 9}  # the newest record of each stage stays in meta
