"""Checkpoints: metadata, save/load round trip, every load error, PNG loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mammoxai.errors import MammoxaiError
from mammoxai.models import (
    Classifier, ModelLoadError, ModelMetadata, demo_checkpoint, load_classifier, save_checkpoint,
)
from mammoxai.models.classifier import create_module, file_sha256, resolve_checkpoint, sidecar_path
from mammoxai.models.phantoms import generate_phantom
from mammoxai.models.png import ImageLoadError, load_png


def _meta(**kw) -> ModelMetadata:
    base = dict(architecture="resnet10t", input_size=(64, 48), model_kwargs={"channels": [8, 16, 32, 64],
                                                                             "stem_width": 8})
    base.update(kw)
    return ModelMetadata(**base)


def test_metadata_json_round_trip_and_validation():
    meta = _meta(version="1.2.3", training={"seed": 3, "val_auc": 0.9})
    again = ModelMetadata.from_json(meta.to_json())
    assert again == meta and again.positive_index == 1 and again.num_classes == 2
    assert json.loads(meta.to_json())["input_size"] == [64, 48]
    with pytest.raises(ValueError, match="unknown key"):
        ModelMetadata.from_dict({**meta.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="missing key"):
        ModelMetadata.from_dict({"architecture": "resnet10t"})
    with pytest.raises(ValueError, match="positive_class"):
        _meta(positive_class="cancer")
    with pytest.raises(ValueError, match="std"):
        _meta(std=(0.0,))
    with pytest.raises(ValueError, match="in_chans"):
        _meta(in_chans=2)
    with pytest.raises(ValueError, match="JSON"):
        ModelMetadata.from_json("{not json")


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    meta = _meta(description="round trip")
    module = create_module(meta).eval()
    x = torch.randn(2, 1, 64, 48)
    with torch.no_grad():
        expected = torch.softmax(module(x), -1)
    path = save_checkpoint(module, meta, tmp_path / "m.pt")
    assert path == tmp_path / "m.pt" and sidecar_path(path).is_file()
    clf = load_classifier(path, device="cpu", architecture="resnet10t")
    assert isinstance(clf, Classifier) and not clf.module.training
    assert clf.device == torch.device("cpu") and clf.checkpoint_path == path
    assert clf.checkpoint_sha256 == file_sha256(path) and len(clf.checkpoint_sha256) == 64
    probs = clf.predict_proba(x)
    assert torch.allclose(probs, expected, atol=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(2))

    half = save_checkpoint(module, meta, tmp_path / "h.pt", half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    clf16 = load_classifier(half, device="cpu")
    assert clf16.metadata.weights_dtype == "float16"
    assert next(clf16.module.parameters()).dtype == torch.float32
    assert torch.allclose(clf16.predict_proba(x), expected, atol=2e-2)


def test_classifier_preprocess_predict_and_algorithm_info(tiny_checkpoint):
    clf = load_classifier(tiny_checkpoint, device="cpu")
    p = generate_phantom(1, shape=(256, 208))
    x, geometry = clf.preprocess(p.image, p.laterality)
    assert x.shape == (1, 1, 64, 48) and geometry.original_shape == (256, 208)
    probs = clf.predict_proba(x)
    assert probs.shape == (1, 2) and 0.0 <= float(probs[0, 1]) <= 1.0
    assert clf.predict_image(p.image, p.laterality) == pytest.approx(float(probs[0, clf.positive_index]))
    with pytest.raises(ValueError, match="predict_proba"):
        clf.predict_proba(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="predict_proba"):
        clf.predict_proba(torch.zeros(1, 64, 48))
    info = clf.algorithm_info()
    assert info.architecture == "resnet10t" and info.checkpoint_sha256 == clf.checkpoint_sha256
    assert info.intended_use == "demo - synthetic data - not for clinical use"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="nothing.pt: checkpoint file not found"):
        load_classifier(tmp_path / "nothing.pt")


def test_missing_and_invalid_sidecar(tmp_path, tiny_checkpoint):
    pt = tmp_path / "copy.pt"
    shutil.copy(tiny_checkpoint, pt)
    with pytest.raises(ModelLoadError, match="copy.json: metadata sidecar not found"):
        load_classifier(pt)
    (tmp_path / "copy.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="copy.json: invalid model metadata: not valid JSON"):
        load_classifier(pt)
    (tmp_path / "copy.json").write_text(json.dumps({"architecture": "resnet10t"}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="missing key"):
        load_classifier(pt)
    meta = json.loads(sidecar_path(tiny_checkpoint).read_text())
    (tmp_path / "copy.json").write_text(json.dumps({**meta, "architecture": "no_such_net"}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="unknown timm architecture 'no_such_net'"):
        load_classifier(pt)


def test_architecture_setting_mismatch(tiny_checkpoint):
    with pytest.raises(ModelLoadError, match="architecture 'resnet18' was asked for, but the checkpoint is 'resnet10t'"):
        load_classifier(tiny_checkpoint, architecture="resnet18")


def test_weights_that_do_not_fit_the_architecture(tmp_path, tiny_checkpoint):
    pt = tmp_path / "wrong.pt"
    shutil.copy(tiny_checkpoint, pt)
    meta = json.loads(sidecar_path(tiny_checkpoint).read_text())
    meta["model_kwargs"] = {}                         # full-width resnet10t: every conv shape differs
    (tmp_path / "wrong.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"does not match architecture resnet10t: .*shape mismatches"):
        load_classifier(pt)
    meta["architecture"] = "resnet18"
    (tmp_path / "wrong.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"does not match architecture resnet18: \d+ missing keys, e\.g\. "):
        load_classifier(pt)


def test_not_a_torch_file_and_bad_kwargs(tmp_path, tiny_checkpoint):
    pt = tmp_path / "junk.pt"
    pt.write_bytes(b"this is not a checkpoint")
    shutil.copy(sidecar_path(tiny_checkpoint), tmp_path / "junk.json")
    with pytest.raises(ModelLoadError, match="junk.pt: not a readable torch state_dict"):
        load_classifier(pt)
    torch.save([1, 2, 3], pt)
    with pytest.raises(ModelLoadError, match="does not hold a state_dict"):
        load_classifier(pt)
    meta = json.loads(sidecar_path(tiny_checkpoint).read_text())
    meta["model_kwargs"] = {"no_such_option": 1}
    shutil.copy(tiny_checkpoint, pt)
    (tmp_path / "junk.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="cannot build resnet10t"):
        load_classifier(pt)


def test_load_errors_are_mammoxai_errors_and_device_errors(tiny_checkpoint):
    assert issubclass(ModelLoadError, MammoxaiError)
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            load_classifier(tiny_checkpoint, device="cuda")


def test_demo_checkpoint_paths():
    assert demo_checkpoint() == demo_checkpoint("cnn")
    assert demo_checkpoint("cnn").name == "demo_cnn.pt" and demo_checkpoint("vit").name == "demo_vit.pt"
    assert resolve_checkpoint(None) == demo_checkpoint("cnn")
    assert resolve_checkpoint("demo-vit") == demo_checkpoint("vit")
    assert resolve_checkpoint("x/y.pt") == Path("x/y.pt")
    with pytest.raises(ValueError, match="demo model kind"):
        demo_checkpoint("gan")


def test_save_checkpoint_needs_pt_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"must end with \.pt"):
        save_checkpoint(torch.nn.Linear(2, 2), _meta(), tmp_path / "model.pth")


# --- PNG loading ---------------------------------------------------------------------------------------------

def test_load_png_8_and_16_bit(tmp_path):
    from PIL import Image

    img8 = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(64, 48)
    Image.fromarray(img8, mode="L").save(tmp_path / "a.png")
    got8 = load_png(tmp_path / "a.png")
    assert got8.dtype == np.uint8 and np.array_equal(got8, img8)
    img16 = (np.arange(64 * 48) * 17 % 65536).astype(np.uint16).reshape(64, 48)
    Image.fromarray(img16).save(tmp_path / "b.png")
    got16 = load_png(tmp_path / "b.png")
    assert got16.dtype == np.uint16 and np.array_equal(got16, img16)


def test_load_png_rejects_colour_low_bit_depth_and_non_png(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8), mode="RGB").save(tmp_path / "rgb.png")
    with pytest.raises(ImageLoadError, match="rgb.png: RGB PNG"):
        load_png(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((8, 8), dtype=bool)).convert("1").save(tmp_path / "bits.png")
    with pytest.raises(ImageLoadError, match="bits.png: 1-bit grayscale PNG"):
        load_png(tmp_path / "bits.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "j.jpg")
    with pytest.raises(ImageLoadError, match="not a PNG"):
        load_png(tmp_path / "j.jpg")
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(ImageLoadError, match="t.png"):
        load_png(tmp_path / "t.png")
    with pytest.raises(ImageLoadError, match="file not found"):
        load_png(tmp_path / "missing.png")
