"""The Serve application builder: ``serve_app.app:build_app`` (the Serve config's ``import_path``).

Builder arguments are validated by ``AppSettings``; an invalid field fails the deploy with a message
naming it. The returned graph is ImageIngress -> (DeploymentHandle) -> ImageClassifier.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.ingress import ImageIngress
from serve_app.model_deployment import ImageClassifier
from serve_app.settings import AppSettings


def build_app(args: dict[str, Any]) -> Application:
    settings = AppSettings(**(args or {}))
    return ImageIngress.bind(ImageClassifier.bind(settings), settings)
