"""The benchmark's measuring tools and one small end-to-end run (tiny model, one cheap method)."""

from __future__ import annotations

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
def bench(load_benchmark):
    return load_benchmark("bench_explainers")


def test_pass_counter_counts_images_through_forward_and_backward(bench, timm_model, images):
    counter = bench.PassCounter(timm_model)
    try:
        with torch.no_grad():
            timm_model(images)                                     # 3 forward, no backward
        InputGradient().explain(timm_model, images[:2], 1)         # 2 forward + 2 backward
    finally:
        counter.close()
    assert (counter.forward_images, counter.backward_images) == (5, 2)
    assert counter.calls == [[3, 0], [2, 2]]                       # per call: batch, images backpropagated
    with torch.no_grad():
        timm_model(images)
    assert counter.forward_images == 5                             # the hook is gone


def test_replay_repeats_the_recorded_model_work_and_timed_rounds_times_each(bench, timm_model, images):
    work = bench.replay(timm_model, images[:1], [[2, 0], [1, 1]], torch.device("cpu"), "off")
    counter = bench.PassCounter(timm_model)
    try:
        work()
    finally:
        counter.close()
    assert (counter.forward_images, counter.backward_images) == (3, 1)
    times = bench.timed_rounds({"a": work, "b": lambda: timm_model(images[:1])}, torch.device("cpu"), 2, clock="cpu")
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())


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


def test_end_to_end_report_counts_the_methods_the_node_ran(load_benchmark):
    e2e = load_benchmark("bench_end_to_end")
    result = {"methods": ["saliency", "guided_backprop", "gradcam"],
              "images": [{"stages_s": {"read": 0.1, "explain.gradcam": 0.2, "explain.saliency": 0.1}},
                         {"stages_s": None}]}
    assert e2e.ran_methods(result) == ["saliency", "gradcam"]       # guided_backprop: left out by the node


def test_before_after_table_through_the_node_puts_old_and_new_side_by_side(load_benchmark):
    e2e = load_benchmark("bench_end_to_end")

    def result(tree, quality, write):
        stages = {"read": 0.01, "predict": 0.1, "explain.gradcam": 0.2, "quality": quality, "write": write,
                  "send": 0.5}
        stages["total"] = sum(stages.values()) + 0.1
        images = [{"kind": "phantom", "end_to_end_s": stages["total"] + 0.05, "node_total_s": stages["total"],
                   "reception_date_consistent": True, "stages_s": stages}]
        r = {"profile": "fast", "code_tree": tree, "commit": "abc1234", "images": images}
        r["summary"] = e2e.summarise(r)
        return r

    text = e2e.comparison_markdown([(result("/old", 2.0, 1.0), result("/new", 0.5, 0.5))])
    assert "| quality | 2.000 | 0.500 | 0.25 |" in text
    assert "| write | 1.000 | 0.500 | 0.50 |" in text
    assert "| other | 0.100 | 0.100 | 1.00 |" in text
    # old: 3.91 s total of which 0.3 predict + explain -> 92 %; new: 1.91 s -> 84 %
    assert "share outside predict + explain, old | 92 %" in text
    assert "share outside predict + explain, new | 84 %" in text


def test_stage_table_of_mammoxai_explain_splits_model_work_from_the_rest(load_benchmark):
    stages = load_benchmark("bench_stages")
    one = stages.split({"read": 0.02, "predict": 0.1, "explain.gradcam": 0.05, "explain.lrp": 0.15,
                        "quality": 0.3, "write": 0.4})
    assert one["explain"] == pytest.approx(0.2) and one["total"] == pytest.approx(1.02)
    assert one["around"] == pytest.approx(0.72)                        # read + quality + write
    result = {"profile": "fast", "images": 3, "rounds": 1, "shape": [64, 48], "load_start": [0.1], "load_end": [0.2],
              "date_utc": "2026-12-04 13:00", "command": "python benchmarks/bench_stages.py --old X"}
    for tag, scale in (("old", 2.0), ("new", 1.0)):
        record = stages.split({"read": 0.02, "predict": 0.1, "explain.gradcam": 0.2, "quality": 0.3 * scale,
                               "write": 0.4 * scale})
        result[tag] = {"tree": f"/{tag}", "commit": "abc", "records": [record], "median": stages.median_table([record]),
                       "command_wall": 10.0 * scale}
    text = stages.markdown(result)
    assert "| quality | 0.600 | 0.300 | 0.50 |" in text and "| explain.gradcam | 0.200 | 0.200 | 1.00 |" in text
    assert "| share around the model, old | 83 % |" in text and "| share around the model, new | 71 % |" in text


def test_model_pass_counter_sees_the_shared_quality_passes(tmp_path, monkeypatch, load_benchmark):
    """count_model_passes on the default pipeline: one predict pass; quality = 2 + M·2·(steps − 1) forward passes."""
    from mammoxai.config import PROFILE_METHODS, Settings
    from mammoxai.dicom_io import write_phantom_dicom
    from mammoxai.models.phantoms import generate_phantom

    for key in [k for k in __import__("os").environ if k.startswith("MAMMOXAI_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MAMMOXAI_EXPLAINERS__SENSITIVITY_SAMPLES", "0")
    monkeypatch.setenv("MAMMOXAI_MODEL__DEVICE", "cpu")
    ph = generate_phantom(3, shape=(256, 208))
    path = tmp_path / "p.dcm"
    write_phantom_dicom(ph.image, laterality=ph.laterality, view=ph.view, bits_stored=ph.bits_stored, path=path)
    counts = load_benchmark("count_model_passes").count(path)
    settings = Settings()
    maps = len(PROFILE_METHODS[settings.explainers.profile])
    assert counts["predict/fwd"] == 1
    assert counts["explain/fwd"] > 0 and counts["explain/fwd+bwd"] > 0
    assert counts["quality/fwd"] == 2 + maps * 2 * (settings.explainers.curve_steps() - 1)
    assert "quality/fwd+bwd" not in counts                              # no max-sensitivity re-runs
