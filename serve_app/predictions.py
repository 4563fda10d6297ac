"""The ``/predict`` response: top-k selection and the documented response schema."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

# The largest top_k any route accepts (the model has 1000 classes; a request for more gets at most all).
MAX_TOP_K = 1000


class Prediction(BaseModel):
    label: str
    class_id: int = Field(ge=0)
    score: float = Field(ge=0.0, le=1.0)


class ImageResult(BaseModel):
    model: str
    model_version: str
    predictions: list[Prediction] = Field(description="Sorted by descending score.")


class ServiceInfo(BaseModel):
    service: str
    version: str
    model: str
    model_version: str
    num_classes: int
    input_size: list[int] = Field(description="Model input [channels, height, width].")
    resize_size: int
    default_top_k: int
    max_top_k: int
    max_body_bytes: int
    max_images_per_request: int
    max_image_pixels: int
    image_formats: list[str]


def top_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """The class ids of the ``k`` most probable classes of one image, highest first (ties: lower id
    first); the one top-k of the REST and the OIP classification outputs."""
    k = min(k, probabilities.shape[0])
    candidates = np.argpartition(-probabilities, k - 1)[:k]
    return candidates[np.lexsort((candidates, -probabilities[candidates]))]


def top_k(probabilities: np.ndarray, k: int, labels: tuple[str, ...]) -> list[dict]:
    """The ``k`` most probable classes, highest first."""
    return [
        {"label": labels[i], "class_id": int(i), "score": float(probabilities[i])}
        for i in top_indices(probabilities, k)
    ]
