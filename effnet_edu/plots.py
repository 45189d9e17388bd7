"""Pictures of datasets: a panel of examples per class, and the same scenes at several resolutions
(notebook 01; `docs/images/synthetic_classes.png` and `synthetic_resolution.png`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from .data import class_names
from .synthetic import TEXTURES, SyntheticObjects, check_int, texture_visibility


def _labels_of(dataset: Dataset) -> list[int]:
    """Every label of a dataset from `get_dataset`, without loading its images where possible."""
    if isinstance(dataset, Subset):
        labels = _labels_of(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    # SyntheticObjects has `labels`, CIFAR-10 and ImageFolder `targets`
    labels = getattr(dataset, "labels", getattr(dataset, "targets", None))
    if labels is not None:
        return [int(label) for label in labels]
    if hasattr(dataset, "_samples"):  # Imagenette
        return [label for _, label in dataset._samples]
    return [dataset[i][1] for i in range(len(dataset))]


def _strip(images: list[torch.Tensor], fill: float = 1.0, gap: int = 2) -> torch.Tensor:
    """n (C, H, W) images side by side, `gap` columns of `fill` apart: (C, H, n*(W+gap) - gap)."""
    spacer = torch.full((*images[0].shape[:2], gap), fill)
    return torch.cat([piece for image in images for piece in (image, spacer)][:-1], dim=2)


def _finish(figure, title: str, path: str | Path | None):
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    return figure


def plot_class_grid(
    dataset: Dataset,
    per_class: int = 4,
    path: str | Path | None = None,
    show_masks: bool = True,
    columns: int = 4,
    title: str | None = None,
):
    """A panel per class with its first `per_class` examples, labelled with the class name.

    For `SyntheticObjects` a white outline marks the target mask (`show_masks`); its classes are
    in label order, so with `columns=4` each row holds the four textures of one arrangement and
    colour. Returns the matplotlib figure; saves it to `path` if given.
    """
    import matplotlib.pyplot as plt

    per_class, columns = check_int(per_class, "per_class", 1), check_int(columns, "columns", 1)
    names, chosen = class_names(dataset), {}
    for index, label in enumerate(_labels_of(dataset)):
        chosen.setdefault(label, [])
        if len(chosen[label]) < per_class:
            chosen[label].append(index)
    rows = math.ceil(len(names) / columns)
    size = (columns * per_class * 0.95 + 0.4, rows * 1.2 + 0.8)
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for label, name in enumerate(names):
        axis, items = axes.flat[label], [dataset[i] for i in chosen.get(label, [])]
        axis.set_title(name, fontsize=8, pad=2)
        if not items:
            axis.text(0.5, 0.5, "no example", ha="center", va="center", fontsize=7)
            continue
        strip = _strip([item[0].clamp(0, 1) for item in items])  # (3, H, n * (W + 2) - 2)
        axis.imshow(strip.permute(1, 2, 0).numpy(), interpolation="nearest")
        if show_masks and len(items[0]) > 2:  # (image, label, mask) items
            masks = _strip([item[2].float() for item in items], fill=0.0)  # (1, H, ...)
            axis.contour(masks[0].numpy(), levels=[0.5], colors="white", linewidths=0.6)
    if title is None and isinstance(dataset, SyntheticObjects):
        title = (
            f"SyntheticObjects at {dataset.resolution} px: 24 classes = 3 arrangements of the three"
            " largest discs x 2 colours x 4 textures;\nthe four panels of a row differ only in "
            "texture" + (" (white outline: the target mask)" if show_masks else "")
        )
    elif title is None:
        height, width = dataset[0][0].shape[-2:]
        title = f"{type(dataset).__name__}: {per_class} examples of each of {len(names)} classes"
        title += f" ({height}x{width} px)"
    return _finish(figure, title, path)


def plot_resolution_grid(
    resolutions: tuple[int, ...] = (24, 48, 96),
    split: str = "val",
    seed: int = 0,
    path: str | Path | None = None,
):
    """The same four scenes (one per texture) rendered at each resolution, with a close-up: the
    picture behind "resolution scaling" (at 24 px the textures are partly gone, at 48 px there)."""
    import matplotlib.pyplot as plt

    datasets = [SyntheticObjects(split, 240, r, seed) for r in resolutions]  # 10 of each class
    labels = datasets[0].labels
    rows = [int((labels % len(TEXTURES) == t).nonzero()[0]) for t in range(len(TEXTURES))]
    size = (2 * len(resolutions) * 1.6, len(rows) * 1.7)
    figure, axes = plt.subplots(len(rows), 2 * len(resolutions), squeeze=False, figsize=size)
    for row, index in enumerate(rows):
        for column, dataset in enumerate(datasets):
            image = dataset.images[index].permute(1, 2, 0).numpy()  # (R, R, 3)
            # close-up: a window 16 px wide at 64 px (so 8 at 32, 32 at 128) on the first disc
            half = dataset.resolution / 8
            left, top = (dataset.centres[index, 0] - half).round().int().clamp(min=0).tolist()
            close_up = image[top : top + int(2 * half), left : left + int(2 * half)]
            for axis, picture, kind in (
                (axes[row, column], image, "whole"),
                (axes[row, len(datasets) + column], close_up, "close-up"),
            ):
                axis.imshow(picture, interpolation="nearest")
                axis.set_xticks([]), axis.set_yticks([])
                if row == 0:
                    axis.set_title(f"{dataset.resolution} px, {kind}", fontsize=9)
        axes[row, 0].set_ylabel(datasets[0].classes[int(labels[index])], fontsize=8)
    states = ", ".join(f"{texture_visibility(r)} at {r} px" for r in resolutions)
    return _finish(figure, f"The same scenes at each resolution: the textures are {states}", path)
