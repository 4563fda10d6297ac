"""Settings validation, weights resolution and the classifier itself (no Ray)."""

from __future__ import annotations

import shutil

import pytest
from pydantic import ValidationError

from serve_app import weights
from serve_app.settings import AppSettings, ModelTuning


def test_invalid_settings_name_the_field():
    with pytest.raises(ValidationError, match="num_threads"):
        AppSettings(num_threads=0)
    with pytest.raises(ValidationError, match="device"):
        AppSettings(device="tpu")
    with pytest.raises(ValidationError, match="limits.max_images_per_request"):
        AppSettings(limits={"max_images_per_request": 0})
    with pytest.raises(ValidationError, match="colour"):
        AppSettings(colour="red")
    with pytest.raises(ValidationError, match="weights_sha256 is required"):
        AppSettings(weights="https://example.invalid/w.pth")
    with pytest.raises(ValidationError, match="onnxruntime runs on the CPU only"):
        AppSettings(optimize="onnxruntime", device="cuda")
    with pytest.raises(ValidationError, match="max_image_pixels"):  # above PIL's own guard (89478485)
        AppSettings(limits={"max_image_pixels": 100_000_000})
    with pytest.raises(ValidationError, match="max_batch_size"):
        ModelTuning(max_batch_size=0)


def test_environment_overrides_defaults_but_not_explicit_args(monkeypatch):
    monkeypatch.setenv("CLASSIFIER_NUM_THREADS", "3")
    monkeypatch.setenv("CLASSIFIER_LIMITS__MAX_IMAGE_PIXELS", "1000")
    assert AppSettings().num_threads == 3
    assert AppSettings().limits.max_image_pixels == 1000
    assert AppSettings(num_threads=2).num_threads == 2


def test_unknown_model_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="resnet50"):
        weights.describe("not_a_model", "DEFAULT")


def test_unknown_weights_name_lists_the_choices():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        weights.describe("mobilenet_v2", "IMAGENET9K")


def test_describe_reads_labels_and_recipe_from_torchvision():
    info = weights.describe("mobilenet_v2", "IMAGENET1K_V1")
    assert info.version == "IMAGENET1K_V1"
    assert len(info.categories) == 1000 and info.categories[281] == "tabby"
    assert (info.preprocessing.resize_size, info.preprocessing.crop_size) == (256, 224)


def test_import_file_checks_the_hash_in_the_name(tmp_path):
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="does not match the expected b0353104"):
        weights.import_file(bogus, "mobilenet_v2", "IMAGENET1K_V1")


def test_cached_checkpoint_is_the_real_one():
    path = weights.checkpoint_dir() / "mobilenet_v2-b0353104.pth"
    assert weights._file_sha256(path).startswith("b0353104")


def test_local_file_weights_with_sha(tmp_path):
    src = weights.checkpoint_dir() / "mobilenet_v2-b0353104.pth"
    local = tmp_path / "model.pth"
    shutil.copyfile(src, local)
    info = weights.describe("mobilenet_v2", str(local))
    assert info.version.startswith("sha256-b0353104")
    with pytest.raises(ValueError, match="does not match"):
        weights.load_state_dict("mobilenet_v2", str(local), "deadbeef")
    assert len(weights.load_state_dict("mobilenet_v2", str(local), "b0353104")) == 314


def test_prefetch_cli_works_offline_from_the_cache(capsys):
    assert weights.main(["prefetch", "--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1"]) == 0
    assert "IMAGENET1K_V1" in capsys.readouterr().out
