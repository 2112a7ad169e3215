"""Settings: TOML + MAMMOXAI_* environment variables, errors that name the key."""

from pathlib import Path

import pytest

from mammoxai.config import PROFILE_METHODS, SettingsError, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mammoxai.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("MAMMOXAI_"):
            monkeypatch.delenv(key)


def test_defaults_run_out_of_the_box():
    settings = load_settings()
    assert settings.node.ae_title == "MAMMOXAI"
    assert settings.node.port == 11112
    assert settings.model.checkpoint is None  # the bundled demo model
    assert settings.explainers.methods() == PROFILE_METHODS["fast"]
    assert settings.output.sc_max_size == 2048


def test_example_file_loads():
    settings = load_settings(EXAMPLE)
    assert settings.node.allowed_calling_aes == ["ORTHANC"]
    assert settings.destination.kind == "dicom"
    assert settings.explainers.parameters_for("integrated_gradients") == {"steps": 32}


def test_environment_overrides_file(tmp_path, monkeypatch):
    path = tmp_path / "s.toml"
    path.write_text('[node]\nport = 2000\n[explainers]\nenabled = ["gradcam"]\n')
    monkeypatch.setenv("MAMMOXAI_NODE__PORT", "3000")
    monkeypatch.setenv("MAMMOXAI_EXPLAINERS__ENABLED", '["lrp", "lime"]')
    settings = load_settings(path)
    assert settings.node.port == 3000
    assert settings.explainers.methods() == ["lrp", "lime"]


def test_profile_parameters_merge_with_explicit_ones(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[explainers]\nprofile = "full"\n[explainers.params.lime]\nkernel_width = 0.5\n')
    settings = load_settings(path)
    assert settings.explainers.parameters_for("lime") == {"samples": 1000, "kernel_width": 0.5}
    assert "kernel_shap" in settings.explainers.methods()


def test_curve_steps_follow_the_profile_unless_set(tmp_path):
    path = tmp_path / "s.toml"
    assert load_settings().explainers.curve_steps() == 10                     # fast
    path.write_text('[explainers]\nprofile = "full"\n')
    assert load_settings(path).explainers.curve_steps() == 20
    path.write_text('[explainers]\nquality_steps = 7\n')
    assert load_settings(path).explainers.curve_steps() == 7


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[node]\nport = 70000\n', "node.port: Input should be less than or equal to 65535"),
        ('[node]\nbogus = 1\n', "node.bogus: unknown key (allowed: "),
        ('[destination]\nkind = "ftp"\n', "destination.kind: Input should be 'dicom', 'dicomweb' or 'folder'"),
        ('[model]\ndevice = "gpu"\n', "model.device: Value error, allowed values: 'auto', 'cpu'"),
        ('[node]\nae_title = "A\\\\B"\n', "node.ae_title: Value error,"),
        ('[output]\nsc_compression = "jpeg2000"\n', "output.sc_compression: Input should be 'none' or 'jpeg_baseline'"),
        ('[explainers]\nprofile = "custom"\n', "explainers.profile = 'custom' needs explainers.enabled"),
        ('[destination]\nkind = "dicomweb"\n', "destination.url is required"),
        ('[node.tls]\nenabled = true\n', "tls.enabled needs cert_file and key_file"),
        ('[section_that_does_not_exist]\nx = 1\n', "section_that_does_not_exist: unknown key (allowed: destination"),
    ],
)
def test_invalid_settings_name_the_key_and_allowed_values(tmp_path, toml, expected):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_invalid_environment_variable_is_reported(monkeypatch):
    monkeypatch.setenv("MAMMOXAI_NODE__MAX_ASSOCIATIONS", "0")
    with pytest.raises(SettingsError, match="node.max_associations"):
        load_settings()


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(bad)
