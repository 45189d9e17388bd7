"""Grad-CAM attention maps for EfficientNet, and scores that measure them against object masks.

The paper's Figure 7 (Section 6) shows class activation maps of models scaled from B0 to about
1.8 B FLOPs (Table 7): compound scaling "tends to focus on more relevant regions with more object
details". Here that picture becomes numbers averaged over a held-out set: `gradcam` (Selvaraju
et al., 2017, via pytorch-grad-cam), scores against boolean masks (`energy_share`,
`pointing_game`, `cam_iou`) and the library's perturbation metrics (`faithfulness`).

The library's traps are guarded: it calls `model.eval()`, `model.zero_grad()` and backward (every
module's mode and every `.grad` are restored); its context manager swallows IndexError, so a class
the head lacks would fail silently (we raise first); it needs gradients (enabled locally under
`torch.no_grad()`, refused under `torch.inference_mode()`).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import EfficientNet

# pytorch-grad-cam is imported where it is used: it loads scikit-learn and OpenCV, slowly.


def layer_names(model: EfficientNet) -> list[str]:
    """Layers a CAM can hook: "stem", "stage1" ... "stageN" (Table 1's stages 2-8), "head".

    Only whole stages: inside one, MBConv adds its residual in place, which would corrupt a hook."""
    return ["stem"] + [f"stage{i}" for i in range(1, len(model.stages) + 1)] + ["head"]


def resolve_layer(model: EfficientNet, layer: str | int | nn.Module = "head") -> nn.Module:
    """The module for a layer name from `layer_names`, or a stage number (1 = "stage1")."""
    if isinstance(layer, nn.Module):
        return layer
    name = f"stage{layer}" if isinstance(layer, int) and not isinstance(layer, bool) else layer
    names = layer_names(model)
    if name not in names:
        n = len(model.stages)
        raise ValueError(f"unknown layer {layer!r}; valid: {', '.join(names)}, or a stage 1-{n}")
    if name in ("stem", "head"):
        return getattr(model, name)
    return model.stages[int(name.removeprefix("stage")) - 1]


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """`model.eval()` inside; afterwards every module's mode and every `.grad` as they were."""
    modes = {module: module.training for module in model.modules()}
    grads = {p: p.grad for p in model.parameters()}
    try:
        yield model.eval()
    finally:
        for module, training in modes.items():
            module.training = training
        for p, g in grads.items():
            p.grad = g


def _inputs(model: EfficientNet, images: torch.Tensor, targets) -> tuple[torch.Tensor, list[int]]:
    """Images on the model's device; one class per image (None: top-1), checked against the head."""
    images = images.detach().to(next(model.parameters()).device)
    if targets is None:
        with torch.no_grad():
            return images, model(images).argmax(dim=1).tolist()
    targets = torch.as_tensor(targets).reshape(-1).tolist()
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets: give one per image")
    n = model.classifier.out_features
    for t in targets:
        if not (isinstance(t, int) and 0 <= t < n):
            raise ValueError(f"target class {t!r} is not in the head: valid classes are 0-{n - 1}")
    return images, targets


def gradcam(
    model: EfficientNet, images: torch.Tensor, targets=None, layer: str | int | nn.Module = "head"
) -> np.ndarray:
    """Grad-CAM of a batch, one target class per image: float32 (B, H, W) in [0, 1].

    images: (B, 3, H, W), preprocessed for the model; targets: one class per image, None = each
    image's top-1; layer: see `layer_names`. Each map is upsampled and min-max scaled, so a constant
    one (the head's 1x1 map of a 32 px image) is all zero. The input requires grad, so a frozen
    model still sends gradients to the layer."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Grad-CAM needs gradients: call gradcam outside torch.inference_mode()")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target_layer = resolve_layer(model, layer)
    with _evaluating(model):
        images, classes = _inputs(model, images, targets)  # before the library can swallow errors
        cam = GradCAM(model=model, target_layers=[target_layer])
        try:
            with torch.enable_grad():
                targets = [ClassifierOutputTarget(c) for c in classes]
                return cam(input_tensor=images.clone().requires_grad_(True), targets=targets)
        finally:
            cam.activations_and_grads.release()  # remove the hooks from the model


def resize_cams(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (B, H, W) maps to `size`, to compare models of different resolutions: float CAMs
    bilinearly (antialiased), clipped to [0, 1]; boolean masks by nearest neighbour (stay bool)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.as_tensor(np.asarray(maps))[:, None]  # (B, 1, H, W)
    if x.dtype == torch.bool:
        return F.interpolate(x.float(), size=size, mode="nearest-exact")[:, 0].bool().numpy()
    x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[:, 0].clamp(0, 1).numpy()


def overlay(image, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The CAM (resized if needed) as a jet heat map over the image: uint8 (H, W, 3).

    image: float in [0, 1] (undo any normalisation first), (H, W, 3) array or (3, H, W) tensor."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) or a (3, H, W) tensor, got {image.shape}")
    if image.min() < 0 or image.max() > 1:
        raise ValueError(
            f"image values must be in [0, 1], got [{image.min():.2f}, {image.max():.2f}]: "
            "undo the model's normalisation first"
        )
    if cam.shape != image.shape[:2]:
        cam = resize_cams(cam[None], image.shape[:2])[0]
    return show_cam_on_image(image, cam, use_rgb=True, image_weight=image_weight)


def _check(cams, masks) -> tuple[np.ndarray, np.ndarray]:
    """CAMs as float64 and masks as bool, both (B, H, W); every mask has an object pixel."""
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # (B, 1, H, W) as SyntheticObjects stores them -> (B, H, W)
    masks = masks > 0.5 if masks.dtype != bool else masks
    if cams.ndim != 3 or cams.shape != masks.shape:
        shapes = f"CAMs {cams.shape} and masks {masks.shape}"
        raise ValueError(f"{shapes} must be (B, H, W) of one size: resize them with resize_cams")
    if empty := np.flatnonzero(~masks.any(axis=(1, 2))).tolist():
        raise ValueError(f"masks {empty} are empty: every image needs at least one object pixel")
    return cams, masks


def energy_share(cams, masks) -> np.ndarray:
    """Share of each CAM's total mass inside its mask, (B,) in [0, 1]; 0 for an all-zero CAM."""
    cams, masks = _check(cams, masks)
    total = cams.sum(axis=(1, 2))
    inside = (cams * masks).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)


def pointing_game(cams, masks) -> np.ndarray:
    """1.0 where the CAM's peak (first argmax) is inside the mask, else 0.0, (B,); an all-zero
    CAM has no peak and scores 0 (Zhang et al., 2016, "Top-down neural attention")."""
    cams, masks = _check(cams, masks)
    flat = cams.reshape(len(cams), -1)
    peak = flat.argmax(axis=1)
    hit = masks.reshape(len(masks), -1)[np.arange(len(cams)), peak]
    return (hit & (flat.max(axis=1) > 0)).astype(np.float64)


def cam_iou(cams, masks, threshold: float = 0.5) -> np.ndarray:
    """IoU of {CAM >= threshold * its max} with the mask, (B,); 0 for an all-zero CAM.

    A fraction of the peak (whatever the CAM's scale), not the top-k % pixels with k matched to
    the mask's area: the region comes from the CAM alone, a diffuse CAM is penalised for spreading
    (what Figure 7 is about), and it is what `overlay` shows (the warm half of the colours).
    """
    cams, masks = _check(cams, masks)
    peak = cams.max(axis=(1, 2), keepdims=True)
    region = (cams >= threshold * peak) & (peak > 0)
    intersection = (region & masks).sum(axis=(1, 2))
    return intersection / (region | masks).sum(axis=(1, 2))  # union >= mask area > 0


def attention_scores(cams, masks, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """All three scores per image: {"energy_share", "pointing_game", "iou"} -> (B,) arrays."""
    return {
        "energy_share": energy_share(cams, masks),
        "pointing_game": pointing_game(cams, masks),
        "iou": cam_iou(cams, masks, threshold),
    }


@dataclass(frozen=True)
class ScoreSummary:
    """Mean ± standard deviation of one score over n images (sample std, ddof=1; 0 if n == 1)."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}"


def summarize_scores(scores: dict[str, np.ndarray]) -> dict[str, ScoreSummary]:
    """{score name: ScoreSummary} for a table row, e.g. of `attention_scores(...)`."""

    def summary(v: np.ndarray) -> ScoreSummary:
        v = np.asarray(v, dtype=np.float64)
        return ScoreSummary(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v))

    return {name: summary(values) for name, values in scores.items()}


def faithfulness(
    model: EfficientNet,
    images: torch.Tensor,
    cams: np.ndarray,
    targets=None,
    metric: str = "confidence_change",
    seed: int = 0,
) -> np.ndarray:
    """pytorch-grad-cam's perturbation metrics on the target's softmax probability, (B,).

    "confidence_change": p(image * CAM) - p(image); near 0 or above, the CAM kept what the model
    needs. "road": ROADCombined (Rong et al., 2022), (drop with the most relevant pixels removed -
    drop with the least relevant removed) / 2 over 10-90 % removed; higher is better; noisy, so
    seeded with `seed`. CAMs at the images' own size; modes and RNG state are restored."""
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    metrics = {"confidence_change": CamMultImageConfidenceChange, "road": ROADCombined}
    if metric not in metrics:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(metrics)}")
    if tuple(np.shape(cams)) != (len(images), *images.shape[2:]):
        shapes = f"CAMs {np.shape(cams)}, images {tuple(images.shape)}"
        raise ValueError(f"{shapes}: the CAMs must match the images, one (H, W) map per image")
    with _evaluating(model):
        images, classes = _inputs(model, images, targets)
        targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            torch.manual_seed(seed)  # ROAD's imputer adds torch.randn noise
            # ROAD hands torch tensors to NumPy functions, which NumPy 2 flags as deprecated.
            warnings.filterwarnings("ignore", "__array_wrap__", DeprecationWarning)
            scores = metrics[metric]()(images, np.asarray(cams, dtype=np.float32), targets, model)
    return np.asarray(scores, dtype=np.float64).reshape(len(images))
