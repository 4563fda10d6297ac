"""Image classification served by Ray Serve: ingress/preprocessing -> batched torchvision model."""

__version__ = "0.1.0"
