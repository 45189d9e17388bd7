"""GradCAM attention maps for EfficientNet, and scores that measure them against ground truth.

The paper's Figure 7 (Section 6, Discussion) shows class activation maps of the Table 7 models,
all scaled from B0 to about 1.8 B FLOPs, and says compound scaling "tends to focus on more
relevant regions with more object details". Figure 7 is a handful of pictures; this module turns
attention into numbers that can be averaged over a held-out set:

- `gradcam`: one CAM per image (Grad-CAM, Selvaraju et al., 2017, computed by the pytorch-grad-cam
  library) for one target class per image, at a layer chosen by name (`layer_names`);
- `resize_cams` brings CAMs of models at different resolutions to one size; `overlay` draws one;
- `energy_share`, `pointing_game` and `cam_iou` compare CAMs with boolean object masks,
  `attention_scores` computes all three and `summarize_scores` gives mean ± std for a table;
- `faithfulness` wraps the library's perturbation metrics: does the CAM's region matter to the
  model?

The library has traps, guarded here: building a CAM object calls `model.eval()` (every module's
mode is restored afterwards); its context manager swallows IndexError, so a class the head does
not have would fail silently (we raise first); it calls `model.zero_grad()` and backpropagates
(every parameter's `.grad` is restored); and it needs gradients, so it must not run under
`torch.no_grad()` (we enable them locally).
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

# pytorch-grad-cam (`pip install grad-cam`) is imported inside the functions that use it: it loads
# scikit-learn and OpenCV, seconds that `import effnet_edu` should not pay for every notebook.

# ----------------------------------------------------------------------------- layers and targets


def layer_names(model: EfficientNet) -> list[str]:
    """Layers a CAM can hook: "stem", "stage1" ... "stageN" (the MBConv stages), "head".

    Stages are numbered from 1 as in `EfficientNetConfig.stage_table` (the paper's Table 1 calls
    them stages 2-8, its stage 1 being the stem). Only whole stages and conv blocks are offered:
    inside a stage, MBConv adds its residual in place (`out += x`), which would corrupt a hook.
    """
    return ["stem"] + [f"stage{i}" for i in range(1, len(model.stages) + 1)] + ["head"]


def resolve_layer(model: EfficientNet, layer: str | int | nn.Module = "head") -> nn.Module:
    """The module for a layer name from `layer_names`, or a stage number (1 = "stage1")."""
    if isinstance(layer, nn.Module):
        return layer
    name = f"stage{layer}" if isinstance(layer, int) and not isinstance(layer, bool) else layer
    names = layer_names(model)
    if name not in names:
        raise ValueError(
            f"unknown layer {layer!r} for this {len(model.stages)}-stage model; "
            f"valid: {', '.join(names)} (or a stage number 1-{len(model.stages)})"
        )
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


def _targets(model: EfficientNet, images: torch.Tensor, targets) -> list[int]:
    """One class per image, checked against the head; None -> the model's own top-1 prediction."""
    num_classes = model.classifier.out_features
    if targets is None:
        with torch.no_grad():
            return model(images).argmax(dim=1).tolist()
    targets = torch.as_tensor(targets).reshape(-1).tolist()
    if len(targets) != len(images):
        raise ValueError(
            f"give one target class per image: {len(images)} images but {len(targets)} targets"
        )
    for t in targets:
        if not (isinstance(t, int) and 0 <= t < num_classes):
            raise ValueError(
                f"target class {t!r} is not in this model's head: valid classes are "
                f"0-{num_classes - 1} (num_classes={num_classes})"
            )
    return targets


# ----------------------------------------------------------------------------- CAMs


def gradcam(
    model: EfficientNet, images: torch.Tensor, targets=None, layer: str | int | nn.Module = "head"
) -> np.ndarray:
    """Grad-CAM of a batch, one target class per image: float32 (B, H, W) in [0, 1].

    images: (B, 3, H, W), preprocessed as the model expects; moved to the model's device.
    targets: one class per image (list, array or tensor); None = each image's top-1 prediction.
    layer: see `layer_names`. The head's map is H/32 x W/32, upsampled by the library; each CAM is
    min-max scaled, so a constant map (e.g. the head's 1x1 map of a 32 px image) becomes all zero.

    Runs with gradients enabled even if the caller disabled them (`torch.no_grad`), and marks the
    input as requiring grad so a frozen model still sends gradients to the layer. The modes
    (train/eval) of all modules and all parameters' `.grad` are left as they were.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Grad-CAM needs gradients: call gradcam outside torch.inference_mode()")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    target_layer = resolve_layer(model, layer)
    with _evaluating(model):
        images = images.detach().to(next(model.parameters()).device)
        classes = _targets(model, images, targets)  # checked BEFORE the library sees them
        cam = GradCAM(model=model, target_layers=[target_layer])
        try:
            with torch.enable_grad():
                return cam(
                    input_tensor=images.clone().requires_grad_(True),
                    targets=[ClassifierOutputTarget(c) for c in classes],
                )
        finally:
            cam.activations_and_grads.release()  # remove the hooks from the model


def resize_cams(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (B, H, W) maps to `size` so models of different resolutions can be compared.

    Float CAMs: bilinear (antialiased when shrinking), clipped to [0, 1]. Boolean masks: nearest
    neighbour, so they stay boolean.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.as_tensor(np.asarray(maps))[:, None]  # (B, 1, H, W)
    if x.dtype == torch.bool:
        return F.interpolate(x.float(), size=size, mode="nearest-exact")[:, 0].bool().numpy()
    x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[:, 0].clamp(0, 1).numpy()


def overlay(image, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The CAM as a jet heat map over the image: uint8 (H, W, 3), via `show_cam_on_image`.

    image: float in [0, 1], (H, W, 3) array or (3, H, W) tensor (undo any normalisation first).
    The CAM is resized to the image if their sizes differ.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3) or a (3, H, W) tensor, got {image.shape}")
    if image.min() < 0 or image.max() > 1:
        raise ValueError(
            f"image values must be in [0, 1], got [{image.min():.2f}, "
            f"{image.max():.2f}]: undo the model's normalisation first"
        )
    if cam.shape != image.shape[:2]:
        cam = resize_cams(cam[None], image.shape[:2])[0]
    return show_cam_on_image(image, cam, use_rgb=True, image_weight=image_weight)


# ----------------------------------------------------------------------------- scores vs. a mask


def _check(cams, masks) -> tuple[np.ndarray, np.ndarray]:
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # (B, 1, H, W) as SyntheticObjects stores them -> (B, H, W)
    masks = masks > 0.5 if masks.dtype != bool else masks
    if cams.ndim != 3 or cams.shape != masks.shape:
        raise ValueError(
            f"CAMs {cams.shape} and masks {masks.shape} must both be (B, H, W) of "
            f"the same size: resize both with resize_cams(..., size) first"
        )
    if not masks.any(axis=(1, 2)).all():
        raise ValueError(
            f"masks {np.flatnonzero(~masks.any(axis=(1, 2))).tolist()} are empty: "
            f"every image needs at least one object pixel"
        )
    return cams, masks


def energy_share(cams, masks) -> np.ndarray:
    """Share of each CAM's total mass inside its mask, (B,) in [0, 1]; 0 for an all-zero CAM."""
    cams, masks = _check(cams, masks)
    total = cams.sum(axis=(1, 2))
    inside = (cams * masks).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)


def pointing_game(cams, masks) -> np.ndarray:
    """1.0 where the CAM's peak (first argmax, row-major) is inside the mask, else 0.0, (B,).

    An all-zero CAM has no peak and scores 0 (Zhang et al., 2016, "Top-down neural attention").
    """
    cams, masks = _check(cams, masks)
    flat = cams.reshape(len(cams), -1)
    peak = flat.argmax(axis=1)
    hit = masks.reshape(len(masks), -1)[np.arange(len(cams)), peak]
    return (hit & (flat.max(axis=1) > 0)).astype(np.float64)


def cam_iou(cams, masks, threshold: float = 0.5) -> np.ndarray:
    """IoU of {CAM >= threshold * its max} with the mask, (B,); 0 for an all-zero CAM.

    Why a fixed fraction of the peak rather than keeping the top-k% pixels with k matched to the
    mask's area: the region then comes from the CAM alone (matching the area would tell every
    model how big the object is), a diffuse CAM is penalised for spreading (what Figure 7 is
    about), and it is what a student sees in `overlay` (the warm half of the colour map).
    Relative to the max, it does not depend on the CAM's scale.
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


# ----------------------------------------------------------------------------- faithfulness


def faithfulness(
    model: EfficientNet,
    images: torch.Tensor,
    cams: np.ndarray,
    targets=None,
    metric: str = "confidence_change",
    seed: int = 0,
) -> np.ndarray:
    """pytorch-grad-cam's perturbation metrics on the target's softmax probability, (B,).

    "confidence_change": p(image * CAM) - p(image); near 0 or above means the CAM kept what the
    model needs. "road": ROADCombined (Rong et al., 2022): (drop when the most relevant pixels are
    removed - drop when the least relevant are removed) / 2, over 10-90 % removed; higher is better;
    slow (a sparse solve per image and percentile) and noisy, so seeded with `seed`.
    The CAMs must be at the images' size (not resized); modes and RNG state are restored.
    """
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    metrics = {"confidence_change": CamMultImageConfidenceChange, "road": ROADCombined}
    if metric not in metrics:
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(metrics)}")
    if tuple(np.shape(cams)) != (len(images), *images.shape[2:]):
        raise ValueError(
            f"CAMs {np.shape(cams)} must match the images {tuple(images.shape)}: "
            f"one (H, W) map per image, at the images' own size"
        )
    with _evaluating(model):
        images = images.detach().to(next(model.parameters()).device)
        classes = _targets(model, images, targets)
        with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
            torch.manual_seed(seed)  # ROAD's imputer adds torch.randn noise
            # ROAD hands torch tensors to NumPy functions, which NumPy 2 flags as deprecated.
            warnings.filterwarnings("ignore", "__array_wrap__", DeprecationWarning)
            scores = metrics[metric]()(
                images,
                np.asarray(cams, dtype=np.float32),
                [ClassifierOutputSoftmaxTarget(c) for c in classes],
                model,
            )
    return np.asarray(scores, dtype=np.float64).reshape(len(images))
