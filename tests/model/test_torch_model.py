"""The torchvision classifier on its own (no Ray): real pretrained weights, eager, TorchScript and ONNX Runtime agree,
uint8 and normalised inputs agree, batches equal single rows, and a missing GPU fails clearly."""

from __future__ import annotations

import numpy as np
import pytest

from harness.images import CAT_LABELS
from serve_app.imaging import decode_image
from serve_app.settings import AppSettings
from serve_app.torch_model import TorchModel


@pytest.fixture(scope="module")
def classifiers():
    return {mode: TorchModel(AppSettings(optimize=mode)) for mode in ("eager", "torchscript", "onnxruntime")}


def test_classifier_recognises_the_cat_in_every_mode(classifiers, cat_png):
    info = classifiers["eager"].weights
    image = decode_image(cat_png, info.preprocessing, 40_000_000)[None]
    eager = classifiers["eager"].forward_uint8(image)
    assert info.categories[int(eager.argmax())] in CAT_LABELS
    assert abs(float(eager.sum()) - 1.0) < 1e-4
    for mode in ("torchscript", "onnxruntime"):
        np.testing.assert_allclose(classifiers[mode].forward_uint8(image), eager, atol=1e-4, err_msg=mode)


@pytest.mark.parametrize("mode", ["torchscript", "onnxruntime"])
def test_uint8_and_normalised_inputs_agree(classifiers, coffee_png, mode):
    clf = classifiers[mode]
    image = decode_image(coffee_png, clf.weights.preprocessing, 40_000_000)[None]
    mean = np.array(clf.weights.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(clf.weights.std, np.float32).reshape(1, 3, 1, 1)
    normalised = ((image.transpose(0, 3, 1, 2) / 255.0 - mean) / std).astype(np.float32)
    np.testing.assert_allclose(clf.forward_normalized(normalised), clf.forward_uint8(image), atol=1e-4)
    assert clf.weights.categories[int(clf.forward_uint8(image).argmax())] == "espresso"


@pytest.mark.parametrize("mode", ["torchscript", "onnxruntime"])
def test_batched_rows_equal_single_rows(classifiers, cat_png, coffee_png, hopper_jpg, mode):
    clf = classifiers[mode]
    images = np.stack(
        [decode_image(d, clf.weights.preprocessing, 40_000_000) for d in (cat_png, coffee_png, hopper_jpg)]
    )
    batched = clf.forward_uint8(images)
    for i in range(3):
        np.testing.assert_allclose(batched[i], clf.forward_uint8(images[i : i + 1])[0], atol=1e-4)


def test_cuda_requested_without_a_gpu_fails_clearly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        TorchModel(AppSettings(device="cuda"))


def test_onnxruntime_warms_only_the_batch_sizes_in_use(classifiers):
    # Its memory arena keeps the largest batch's activations: warming sizes the batcher never forms
    # cost ~200 MiB per replica (docs/ARCHITECTURE.md, Sizing). TorchScript warms 1..16 (per-shape).
    assert classifiers["torchscript"]._warm == set(range(1, 17))
    clf = classifiers["onnxruntime"]
    assert clf._warm == {1}
    clf.warm_up(range(1, 5))  # what the deployment's reconfigure does for max_batch_size 4
    assert clf._warm == {1, 2, 3, 4}
