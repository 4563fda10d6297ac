"""The torchvision classifier itself, independent of Ray: load, optimise, warm up, predict.

Input is a batch of uint8 HWC images (what the ingress sends); normalisation is done here once for the
whole batch, written straight in the memory layout the forward wants (channels_last for torch, NCHW for
ONNX Runtime), so no per-image float tensor ever crosses a process boundary and none is copied again.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import torch
import torchvision

from serve_app.settings import AppSettings
from serve_app.weights import WeightsInfo, describe, load_state_dict

log = logging.getLogger(__name__)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was configured but no CUDA device is available")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


class OnnxRuntimeForward:
    """The model exported to ONNX in memory at start-up and run by ONNX Runtime on the CPU.

    Called like the torch module it replaces: a float32 NCHW tensor in, logits out. The batch axis is
    dynamic, so one session serves every batch size the batcher forms.
    """

    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, ...], threads: int):
        import io

        import onnxruntime

        exported = io.BytesIO()
        model = model.to(memory_format=torch.contiguous_format)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter: deprecated, needs no onnxscript
            torch.onnx.export(
                model,
                (torch.zeros((1, *input_shape)),),
                exported,
                input_names=["images"],
                output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(
            exported.getvalue(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # TorchModel hands it NCHW-contiguous input (``memory_format``), so this is no copy.
        (logits,) = self.session.run(None, {"images": x.contiguous().numpy()})
        return torch.from_numpy(logits)


class TorchModel:
    """A loaded, optimised and warmed-up model that maps image batches to class probabilities."""

    def __init__(self, settings: AppSettings, warmup_batch_sizes: tuple[int, ...] | None = None):
        started = time.perf_counter()
        torch.set_num_threads(settings.num_threads)
        self.device = resolve_device(settings.device)
        self.weights: WeightsInfo = describe(settings.model_name, settings.weights, settings.weights_sha256)
        model = torchvision.models.get_model(
            settings.model_name, weights=None, num_classes=len(self.weights.categories)
        )
        model.load_state_dict(load_state_dict(settings.model_name, settings.weights, settings.weights_sha256))
        model.eval().to(self.device, memory_format=torch.channels_last)
        crop = self.weights.preprocessing.crop_size
        self.input_shape = (3, crop, crop)
        if settings.optimize == "torchscript":
            example = torch.zeros((1, *self.input_shape), device=self.device)
            example = example.contiguous(memory_format=torch.channels_last)
            # torch.jit is deprecated in favour of torch.compile, but frozen TorchScript is still the
            # fastest CPU forward measured here (bench/forward.py) and starts in seconds.
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(model, example, check_trace=False)
                model = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        elif settings.optimize == "onnxruntime":
            model = OnnxRuntimeForward(model, self.input_shape, settings.num_threads)
        self.model = model
        # The layout the forward's input is written in: ONNX Runtime takes NCHW, torch runs channels_last.
        self._memory_format = (
            torch.contiguous_format if isinstance(model, OnnxRuntimeForward) else torch.channels_last
        )
        std = torch.tensor(self.weights.std, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(self.weights.mean, device=self.device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std  ==  x * scale + shift
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std
        self._warm: set[int] = set()
        if warmup_batch_sizes is None:
            # TorchScript specialises per shape, so every size a live reconfigure may ask for (1..16) is
            # warmed now; ONNX Runtime does not, and its memory arena keeps the largest batch's
            # activations, so it warms one size here and the sizes in use when the tuning arrives.
            warmup_batch_sizes = (1,) if settings.optimize == "onnxruntime" else tuple(range(1, 17))
        self.warm_up(warmup_batch_sizes)
        self.load_seconds = time.perf_counter() - started
        log.info(
            "loaded %s %s on %s in %.2fs",
            settings.model_name,
            self.weights.version,
            self.device,
            self.load_seconds,
        )

    def warm_up(self, batch_sizes) -> None:
        """Run each not-yet-seen batch size twice.

        TorchScript's profiling executor specialises per input shape; a size first seen in the middle
        of traffic costs slow profiling runs, so every size the batcher can form is run up front.
        """
        crop = self.input_shape[1]
        for size in sorted(set(batch_sizes) - self._warm):
            for _ in range(2):
                self.forward_uint8(np.zeros((size, crop, crop, 3), np.uint8))
            self._warm.add(size)

    @property
    def num_classes(self) -> int:
        return len(self.weights.categories)

    def normalize(self, batch_nhwc: np.ndarray) -> torch.Tensor:
        """uint8 NHWC -> normalised float32 NCHW, written straight in the layout the forward wants.

        ``addcmul`` promotes the uint8 pixels to float and writes the multiply-add into ``out``, laid out
        for the forward: no layout copy after it (for ONNX Runtime half the CPU of the float copy,
        multiply-add in channels_last and NCHW copy it replaced; docs/PERFORMANCE.md).
        """
        x = torch.from_numpy(batch_nhwc).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        out = torch.empty(x.shape, dtype=torch.float32, device=self.device, memory_format=self._memory_format)
        return torch.addcmul(self._shift, x, self._scale, out=out)

    @torch.inference_mode()
    def forward_uint8(self, batch_nhwc: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, num_classes)`` float32 for uint8 images ``(N, H, W, 3)``."""
        return self._forward(self.normalize(batch_nhwc))

    @torch.inference_mode()
    def forward_normalized(self, batch_nchw: np.ndarray) -> np.ndarray:
        """Class probabilities for already-normalised float32 input ``(N, 3, H, W)``."""
        x = torch.from_numpy(batch_nchw).to(self.device).contiguous(memory_format=self._memory_format)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        logits = self.model(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()
