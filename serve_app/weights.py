"""Model weights: describe, resolve (offline first), prefetch into the cache, import a file.

A weights spec is a torchvision enum name (``IMAGENET1K_V1``, ``DEFAULT``), a local ``.pth`` path, or
an http(s) URL with a sha256. Enum and URL weights live in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``); a file already there is used without touching the network.

CLI (``python -m serve_app.weights``)::

    prefetch     [--model NAME] [--weights SPEC] [--sha256 HEX]   fill the cache (for image builds)
    import-file  PATH [--model NAME] [--weights ENUM]            seed the cache from a file obtained
                                                                  out of band, checking its sha256
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from serve_app.imaging import Preprocessing

# torch.hub names checkpoint files "<name>-<first 8+ hex of sha256>.<ext>".
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.")


@dataclass(frozen=True)
class WeightsInfo:
    """Everything about a model's weights that the ingress needs, known without loading the model."""

    model_name: str
    version: str
    categories: tuple[str, ...]
    preprocessing: Preprocessing
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _weights_enum(model_name: str):
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if model_name not in names:
        raise ValueError(
            f"model_name {model_name!r} is not a torchvision classification model; "
            f"choose one of: {', '.join(names)}"
        )
    return tvm.get_model_weights(model_name)


def _is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _is_path(spec: str) -> bool:
    return spec.endswith((".pth", ".pt")) or "/" in spec or os.path.exists(spec)


def _enum_member(model_name: str, spec: str):
    enum = _weights_enum(model_name)
    try:
        return enum[spec]
    except KeyError:
        raise ValueError(
            f"weights {spec!r} is not a weights name of {model_name} "
            f"({', '.join(enum.__members__)}), an existing file, or an http(s) URL"
        ) from None


def describe(model_name: str, spec: str, sha256: str | None = None) -> WeightsInfo:
    """Describe weights cheaply: labels and preprocessing come from torchvision's metadata."""
    enum = _weights_enum(model_name)
    if _is_url(spec) or _is_path(spec):
        # A custom checkpoint of a torchvision architecture: ImageNet labels, the default recipe,
        # and the file's content hash as its version.
        member = enum.DEFAULT
        digest = sha256 if (sha256 or _is_url(spec)) else _file_sha256(Path(spec))
        version = f"sha256-{(digest or 'unknown')[:12]}"
    else:
        member = _enum_member(model_name, spec)
        version = member.name
    transform = member.transforms()
    return WeightsInfo(
        model_name=model_name,
        version=version,
        categories=tuple(member.meta["categories"]),
        preprocessing=Preprocessing(
            resize_size=int(transform.resize_size[0]), crop_size=int(transform.crop_size[0])
        ),
        mean=tuple(transform.mean),
        std=tuple(transform.std),
    )


def checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def load_state_dict(model_name: str, spec: str, sha256: str | None = None) -> dict:
    """Return the state dict for ``spec``, from the local cache when present, else downloaded."""
    import torch

    if _is_url(spec):
        path = _cached_download(spec, sha256)
    elif _is_path(spec):
        path = Path(spec)
        if sha256:
            _verify_sha256(path, sha256)
    else:
        member = _enum_member(model_name, spec)
        path = _cached_download(member.url, _hash_from_name(member.url))
    return torch.load(path, map_location="cpu", weights_only=True)


def _cached_download(url: str, sha256: str | None) -> Path:
    import torch.hub

    target = checkpoint_dir() / os.path.basename(urlparse(url).path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"downloading {url} -> {target}", file=sys.stderr)
        torch.hub.download_url_to_file(url, str(target), hash_prefix=sha256, progress=False)
    elif sha256:
        _verify_sha256(target, sha256)
    return target


def _hash_from_name(url_or_name: str) -> str | None:
    match = _HASH_IN_NAME.search(os.path.basename(url_or_name))
    return match.group(1) if match else None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_sha256(path: Path, expected: str) -> None:
    actual = _file_sha256(path)
    if not actual.startswith(expected.lower()):
        raise ValueError(f"{path}: sha256 {actual} does not match the expected {expected}")


def import_file(path: Path, model_name: str, weights: str) -> Path:
    """Copy a checkpoint obtained out of band into the cache under the name torchvision expects,
    after checking it against the sha256 prefix in that name."""
    member = _enum_member(model_name, weights)
    expected = _hash_from_name(member.url)
    if expected is None:
        raise ValueError(f"{member.url} carries no hash to check the file against")
    _verify_sha256(path, expected)
    target = checkpoint_dir() / os.path.basename(urlparse(member.url).path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and _file_sha256(target) == _file_sha256(path)):
        shutil.copyfile(path, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prefetch", help="resolve the weights into the local cache")
    pre.add_argument("--model", default="mobilenet_v2")
    pre.add_argument("--weights", default="IMAGENET1K_V1")
    pre.add_argument("--sha256")
    imp = sub.add_parser("import-file", help="seed the cache from a local checkpoint file")
    imp.add_argument("path", type=Path)
    imp.add_argument("--model", default="mobilenet_v2")
    imp.add_argument("--weights", default="IMAGENET1K_V1")
    args = parser.parse_args(argv)
    try:
        if args.command == "prefetch":
            state = load_state_dict(args.model, args.weights, args.sha256)
            info = describe(args.model, args.weights, args.sha256)
            print(f"{args.model} {info.version}: {len(state)} tensors ready in {checkpoint_dir()}")
        else:
            print(import_file(args.path, args.model, args.weights))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
