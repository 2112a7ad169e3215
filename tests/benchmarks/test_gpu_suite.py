"""``benchmarks/gpu_suite.sh`` on a CPU: every step runs and leaves plausible results in one folder.

The suite is meant for a CUDA machine; ``--device cpu --quick`` runs the same steps (explainer tables on the
demo CNN and a timm model, the pipeline per model with both profiles, the end-to-end table through the
real node and a real Orthanc) with reduced counts and small inputs. This checks the plumbing, not speed:
no figure is compared with a threshold other than "positive".
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"
#: --quick's explainer list: one method per family and per reference library (the GPU run has 14)
METHODS = ["saliency", "integrated_gradients", "gradcam", "lrp", "occlusion", "lime", "kernel_shap"]
#: the reference libraries each method is compared with (bench_explainers' table)
REFERENCES = {"saliency": {"captum"}, "gradcam": {"pytorch-grad-cam"}, "lrp": {"zennit"},
              "lime": {"captum", "lime"}, "kernel_shap": {"captum", "shap"}}


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory) -> Path:
    if not Path("/usr/sbin/Orthanc").exists():
        pytest.fail("Orthanc is not installed (make system-deps installs Debian's orthanc)")
    out = tmp_path_factory.mktemp("gpu_suite")
    # --budget: a guard against a hang, not a speed check (2 shared, loaded cores took several minutes)
    done = subprocess.run(["bash", str(SUITE), "--device", "cpu", "--quick", "--budget", "840", "--out", str(out)],
                          capture_output=True, text=True, timeout=960, cwd=REPO)
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(runs) == 1 and runs[0].name.endswith("-cpu-quick"), runs
    assert done.stdout.strip().splitlines()[-1] == str(runs[0])
    return runs[0]


def test_every_step_ran_and_only_cpu_autocast(suite_run: Path) -> None:
    rows = [line.split("\t") for line in (suite_run / "steps.tsv").read_text().splitlines()[1:]]
    status = {r[0]: r[1] for r in rows}
    assert status == {"machine": "ok", "explainers_demo_off": "ok", "models": "ok", "explainers_timm_off": "ok",
                      "end_to_end_off": "ok"}, rows          # no bf16 step: autocast is CUDA only
    machine = json.loads((suite_run / "machine.json").read_text())
    assert machine["device"] == "cpu" and machine["torch"]
    assert not (suite_run / ".work").exists()       # checkpoints and phantoms are not left behind


@pytest.mark.parametrize("table", ["explainers_demo_off", "explainers_timm_off"])
def test_explainer_tables_hold_every_method_and_its_references(suite_run: Path, table: str) -> None:
    result = json.loads((suite_run / f"{table}.json").read_text())
    assert result["quick"] is True and result["autocast"] == "off"
    if table.startswith("explainers_timm"):
        assert "resnet18" in result["model"]          # --quick: a small timm model (efficientnet_b0 on a GPU)
    records = {r["method"]: r for r in result["methods"]}
    assert list(records) == METHODS
    for method, r in records.items():
        assert "error" not in r, (method, r.get("error"))
        assert r["seconds"] > 0 and r["limit_seconds"] > 0 and r["forward_images"] >= 1, method
        libraries = {ref["library"] for ref in r["references"] if ref.get("seconds", 0) > 0}
        assert REFERENCES.get(method, set()) <= libraries, (method, r["references"])
    text = (suite_run / f"{table}.md").read_text()
    assert all(f"| {m} |" in text for m in METHODS)


def test_models_table_has_both_models_and_profiles(suite_run: Path) -> None:
    payload = json.loads((suite_run / "models_cpu.json").read_text())
    got = {(r["model"], r["profile"], r["autocast"]): r for r in payload["results"]}
    assert set(got) == {(m, p, "off") for m in ("demo-cnn", "efficientnet_b2") for p in ("fast", "full")}
    b2 = got[("efficientnet_b2", "full", "off")]
    assert b2["architecture"] == "efficientnet_b2" and b2["in_chans"] == 3 and b2["parameters_m"] > 7
    assert b2["sanity_excluded"] == []          # a random checkpoint has no sanity record: every method runs
    for key, r in got.items():
        s = r["summary"]
        assert s["n"] == 1 and s["s_per_image"] > 0 and s["images_per_hour"] > 0, key
        maps = r["images"][-1]["maps"]
        assert set(maps) == set(r["methods"]) - set(r["sanity_excluded"]), key
        stages = s["stages_median_s"]
        for stage in ("read", "predict", "quality", "write", *(f"explain.{m}" for m in maps)):
            assert stages[stage] > 0, (key, stage)
        assert r["images"][-1]["failures"] == {}, key
    assert "| demo-cnn (resnet10t) |" in (suite_run / "models_cpu.md").read_text()


def test_end_to_end_table_has_both_profiles(suite_run: Path) -> None:
    for profile in ("fast", "full"):
        result = json.loads((suite_run / f"end_to_end_cpu_autocast_off_{profile}.json").read_text())
        summary = result["summary"]
        assert summary["n"] == 1 and summary["median_s"] > 0 and summary["median_node_total_s"] > 0, profile
        assert summary["stages_median_s"]["predict"] > 0
    assert "| fast |" in (suite_run / "end_to_end_cpu_autocast_off.md").read_text()


def test_summary_gathers_every_table(suite_run: Path) -> None:
    text = (suite_run / "SUMMARY.md").read_text()
    for name in ("explainers_demo_off.md", "explainers_timm_off.md", "models_cpu.md", "end_to_end_cpu_autocast_off.md"):
        assert f"<!-- {name} -->" in text
    assert "plumbing check, not a measurement" in text


def test_refuses_without_out_and_with_an_unknown_device(tmp_path: Path) -> None:
    no_out = subprocess.run(["bash", str(SUITE), "--device", "cpu"], capture_output=True, text=True, timeout=60)
    assert no_out.returncode == 2 and "--out DIR is required" in no_out.stderr
    bad = subprocess.run(["bash", str(SUITE), "--device", "tpu", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--device must be" in bad.stderr
    assert not any(tmp_path.iterdir())


def test_names_what_a_bare_interpreter_lacks(tmp_path: Path) -> None:
    """A Python without the packages (as on a bare GPU machine without the carried wheels) gets one clear
    line naming them and how to bring them, and exit status 2."""
    venv.create(tmp_path / "bare", with_pip=False)
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    done = subprocess.run(["bash", str(SUITE), "--device", "cpu", "--out", str(tmp_path / "out"), "--python",
                           str(tmp_path / "bare" / "bin" / "python"), "--wheels", str(empty)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "lacks: torch timm" in done.stderr and "pydicom" in done.stderr and "--fetch-wheels" in done.stderr


def test_refuses_cuda_without_a_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")   # CI has none: the refusal is what runs there
    done = subprocess.run(["bash", str(SUITE), "--device", "cuda", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and "sees no CUDA device" in done.stderr
