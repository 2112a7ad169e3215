"""The benchmark's measuring tools and one small end-to-end run (tiny model, one cheap method)."""

from __future__ import annotations

import importlib.util
import json
import mmap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mammoxai import cli

from .conftest import InputGradient

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_explainers", ROOT / "benchmarks" / "bench_explainers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pass_counter_counts_images_through_forward_and_backward(bench, timm_model, images):
    counter = bench.PassCounter(timm_model)
    try:
        with torch.no_grad():
            timm_model(images)                                     # 3 forward, no backward
        InputGradient().explain(timm_model, images[:2], 1)         # 2 forward + 2 backward
    finally:
        counter.close()
    assert (counter.forward_images, counter.backward_images) == (5, 2)
    with torch.no_grad():
        timm_model(images)
    assert counter.forward_images == 5                             # the hook is gone


def test_peak_memory_sees_a_large_allocation(bench):
    assert bench._reset_hwm()                                      # the kernel peak is what CI measures
    with bench.PeakMemory(torch.device("cpu")) as mem:
        # 64 MiB of fresh pages, touched, freed before exit. An anonymous mapping, not the heap: after earlier
        # tests in the same process the allocator may serve a tensor from memory that is already resident.
        block = mmap.mmap(-1, 64 * 2**20)
        pages = np.frombuffer(block, dtype=np.uint8)
        pages[:] = 1
        del pages
        block.close()
    assert 48 < mem.peak_mb < 200
    assert bench._hwm_bytes() >= bench._rss_bytes()


def test_peak_memory_sampler_fallback_sees_a_live_allocation(bench, monkeypatch):
    monkeypatch.setattr(bench, "_reset_hwm", lambda: False)
    with bench.PeakMemory(torch.device("cpu"), interval_s=0.001) as mem:
        block = mmap.mmap(-1, 64 * 2**20)                          # fresh pages (see the test above)
        pages = np.frombuffer(block, dtype=np.uint8)
        pages[:] = 1
        deadline = time.monotonic() + 30
        while mem._peak - mem._start < 48 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.001)                                      # until the sampler has seen the block
        del pages
        block.close()
    assert mem._thread is not None and not mem._thread.is_alive()
    assert mem.peak_mb > 48


def test_model_costs_and_timed(bench, timm_model, images):
    costs = bench.model_costs(timm_model, images[:1], torch.device("cpu"), "off", [1, 2])
    assert set(costs["forward"]) == {1, 2} and costs["t_fwd"] > 0 and costs["t_bwd"] >= 0
    calls = []
    seconds, result = bench.timed(lambda: calls.append(1) or 7, torch.device("cpu"), repeats=1, short_s=10.0,
                                  short_repeats=3)
    assert result == 7 and len(calls) == 3 == bench.timed.calls and seconds >= 0


def test_end_to_end_small_run_writes_json_and_markdown(bench, tmp_path):
    out = tmp_path / "run"
    code = bench.main(["--device", "cpu", "--checkpoint", "", "--input-size", "32", "32", "--methods",
                       "saliency", "--no-memory", "--cost-batch-sizes", "1", "2", "--out", str(out)])
    assert code == 0
    result = json.loads(Path(f"{out}.json").read_text())
    record = result["methods"][0]
    assert record["method"] == "saliency" and record["forward_images"] == 1 and record["backward_images"] == 1
    assert record["limit_ratio"] > 0
    assert record["references"][0]["library"] == "captum" and record["references"][0]["ratio"] > 0
    text = Path(f"{out}.md").read_text()
    assert "| saliency |" in text and "captum" in text and "time / limit" in text
    assert bench.main(["--device", "cpu", "--checkpoint", "", "--methods", "no_such", "--out", str(out)]) == 2


def test_cli_bench_runs_the_script(capsys):
    assert cli.main(["bench", "explainers", "--help"]) == 0


def test_lrp_cache_benchmark_runs_and_reports_both_paths():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_lrp_cache.py"), "--repeats", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["cached_ms"] > 0 and report["canonised_each_call_ms"] > 0 and report["device"] == "cpu"


def test_end_to_end_report_counts_the_methods_the_node_ran():
    spec = importlib.util.spec_from_file_location("bench_end_to_end", ROOT / "benchmarks" / "bench_end_to_end.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    result = {"methods": ["saliency", "guided_backprop", "gradcam"],
              "images": [{"stages_s": {"read": 0.1, "explain.gradcam": 0.2, "explain.saliency": 0.1}},
                         {"stages_s": None}]}
    assert e2e.ran_methods(result) == ["saliency", "gradcam"]       # guided_backprop: left out by the node
