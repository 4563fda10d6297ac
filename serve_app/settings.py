"""Typed configuration: builder arguments (need a restart) and live ``user_config`` tunables.

Builder arguments come from the Serve config file's ``args`` and may be overridden per field by
``CLASSIFIER_*`` environment variables; the file wins over the environment, both win over defaults.
Invalid values fail at deploy time with pydantic's message naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve_app.imaging import PIL_MAX_IMAGE_PIXELS
from serve_app.predictions import MAX_TOP_K

MiB = 1024 * 1024


class Limits(BaseModel):
    """Request limits enforced by the ingress before any model work is done."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(10 * MiB, ge=1024, description="Largest accepted request body.")
    max_images_per_request: int = Field(64, ge=1, le=1024)
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        le=PIL_MAX_IMAGE_PIXELS,
        description="Decompression-bomb guard, checked from the header; at most PIL's own guard.",
    )


class AppSettings(BaseSettings):
    """Arguments of ``serve_app.app:build_app``; changing one redeploys the replicas."""

    model_config = SettingsConfigDict(
        env_prefix="CLASSIFIER_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    model_name: str = Field("mobilenet_v2", description="A torchvision classification model.")
    weights: str = Field(
        "IMAGENET1K_V1",
        description="torchvision weights enum name (or DEFAULT), a local .pth path, or an http(s) URL.",
    )
    weights_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{8,64}$", description="Expected sha256 (or prefix) of the file."
    )
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    num_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads per replica.")
    optimize: Literal["torchscript", "eager", "onnxruntime"] = Field(
        "torchscript",
        description="Frozen TorchScript + channels_last, plain eager mode, or the model exported to ONNX "
        "at start-up and run by ONNX Runtime (CPU only).",
    )
    limits: Limits = Limits()

    @model_validator(mode="after")
    def _consistent(self) -> AppSettings:
        """Settings that are valid alone but not together."""
        if self.weights.startswith(("http://", "https://")) and not self.weights_sha256:
            raise ValueError("weights_sha256 is required when weights is a URL")
        if self.optimize == "onnxruntime" and self.device != "cpu":
            raise ValueError("optimize: onnxruntime runs on the CPU only; set device: cpu")
        return self


class ModelTuning(BaseModel):
    """``user_config`` of the model deployment; applied live by ``reconfigure``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(8, ge=1, le=512)
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=5.0)
    max_concurrent_batches: int = Field(
        1,
        ge=1,
        le=64,
        description="Batches run at once in one replica, each forward in its own thread; beside a "
        "running batch only a full one starts.",
    )


class IngressTuning(BaseModel):
    """``user_config`` of the ingress deployment; applied live by ``reconfigure``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    max_images_per_model_call: int = Field(
        8,
        ge=1,
        le=512,
        description="Decoded images sent to the model in one call; a call larger than the model's "
        "max_batch_size runs in consecutive batches (fewer, fuller calls cost less per image).",
    )
    model_call_wait_s: float = Field(
        0.002,
        ge=0.0,
        le=1.0,
        description="How long an image may wait for others to share its model call, while calls of "
        "this ingress replica are out at the model (with none out, a call leaves at once).",
    )
    max_expected_wait_s: float = Field(
        0.35,
        ge=0.0,
        le=60.0,
        description="Admission: a request whose images would wait longer than this behind those in "
        "flight (at the rate this replica completes images) gets an immediate 503 with Retry-After; "
        "0 admits everything.",
    )
    latency_objective_s: float = Field(
        0.4,
        ge=0.0,
        le=60.0,
        description="Admission under overload: while a crowd of refused clients waits (16 or more) "
        "and the p99 of the admitted requests (admission to answer, last 3 s) is past this, the "
        "expected wait admitted is lowered 10 % a window (never below a line that keeps the "
        "batches full), and given back when not; 0 turns it off. The body's upload and parsing "
        "before admission and the answer after it come on top: with 0.4 the clients saw an "
        "admitted p99 of 420 ms at 256 clients on a 2-core node, with 0.45 509 ms "
        "(docs/PERFORMANCE.md).",
    )
    max_retry_after_s: int = Field(
        10,
        ge=1,
        le=300,
        description="Admission: the longest Retry-After. A refused client is told when its turn "
        "would come: (refused clients not yet due + 1) / requests admitted per second, rounded up, "
        "at least 1 s; 1 here always answers 1 s (or the time the line in flight takes to drain).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
