"""``benchmarks/bench_model_share.py``: every model call of a stage is recorded and replayed, so the table's
"model work" is the stage's own passes (quality's curves included), and the shares add up."""

from __future__ import annotations

import json


def test_model_share_records_and_replays_each_stages_calls(tmp_path, monkeypatch, load_benchmark):
    for key in [k for k in __import__("os").environ if k.startswith("MAMMOXAI_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MAMMOXAI_MODEL__DEVICE", "cpu")
    bench = load_benchmark("bench_model_share")
    out = tmp_path / "share"
    assert bench.main(["--rounds", "1", "--shape", "512", "416", "--out", str(out)]) == 0
    (round_,) = json.loads(out.with_suffix(".json").read_text())
    from mammoxai.config import Settings

    steps = Settings().explainers.curve_steps()
    maps = len(Settings().explainers.methods())
    # the curves' forwards are all there (max-sensitivity re-runs add the one-pass maps' own calls)
    assert round_["calls"]["quality"] >= 2 + maps * 2 * (steps - 1)
    assert round_["calls"]["predict"] == 1 and round_["calls"]["explain"] > 0
    assert all(round_["model"][s] > 0 for s in ("predict", "explain", "quality"))
    text = out.with_suffix(".md").read_text()
    assert "| quality |" in text and "outside the model's work" in text
