"""``benchmarks/bench_send.py``: the four Nagle set-ups each deliver every result object to a real Orthanc
(a non-success status ends the run), and the table has one row per set-up."""

from __future__ import annotations


def test_bench_send_measures_four_setups(tmp_path, monkeypatch, load_benchmark):
    for key in [k for k in __import__("os").environ if k.startswith("MAMMOXAI_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MAMMOXAI_MODEL__DEVICE", "cpu")
    bench = load_benchmark("bench_send")
    import mammoxai.node.scu as scu

    shipped = scu.REQUESTOR_HANDLERS
    out = tmp_path / "send.md"
    assert bench.main(["--rounds", "1", "--out", str(out)]) == 0
    assert scu.REQUESTOR_HANDLERS is shipped                      # the shipped handlers are put back
    rows = [line for line in out.read_text().splitlines() if line.startswith("| Nagle") or line.startswith("| TCP")]
    assert len(rows) == 4
