"""Pictures of datasets: examples of each class, and scenes at several resolutions (notebook 02)."""

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from .data import class_names
from .scaling import check_int
from .synthetic import TEXTURES, SyntheticObjects, texture_visibility


def _labels_of(dataset: Dataset) -> torch.Tensor:
    """Every label of a dataset from `get_dataset`, without loading its images where possible."""
    if isinstance(dataset, Subset):
        return _labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    # SyntheticObjects has `labels`, CIFAR-10 and ImageFolder `targets`, Imagenette `_samples`
    labels = getattr(dataset, "labels", getattr(dataset, "targets", None))
    if labels is None and hasattr(dataset, "_samples"):
        labels = [label for _, label in dataset._samples]
    if labels is None:  # any other dataset: load every item
        labels = [dataset[i][1] for i in range(len(dataset))]
    return torch.as_tensor(labels, dtype=torch.long)


def _strip(images: list[torch.Tensor], fill: float = 1.0, gap: int = 2):
    """n (C, H, W) images side by side, `gap` columns of `fill` apart: (H, n (W + gap) - gap, C)"""
    spacer = torch.full((*images[0].shape[:2], gap), fill)
    strip = torch.cat([piece for image in images for piece in (image, spacer)][:-1], dim=2)
    return strip.permute(1, 2, 0).numpy()


def _finish(figure, title: str, path: str | Path | None):
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    return figure


def plot_class_grid(dataset, per_class=4, path=None, show_masks=True, columns=4, title=None):
    """A panel per class of a `get_dataset` dataset: its first `per_class` examples, a white outline
    on the target of `SyntheticObjects` (`show_masks`), whose rows (`columns=4`) hold the textures
    of one arrangement and colour. Returns the figure; saves it to `path` (str or Path) if given."""
    import matplotlib.pyplot as plt

    per_class, columns = check_int(per_class, "per_class", 1), check_int(columns, "columns", 1)
    names, labels = class_names(dataset), _labels_of(dataset)
    rows = (len(names) + columns - 1) // columns
    size = (columns * per_class * 0.95 + 0.4, rows * 1.2 + 0.8)
    figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for label, (axis, name) in enumerate(zip(axes.flat, names, strict=False)):
        items = [dataset[i] for i in (labels == label).nonzero()[:per_class, 0].tolist()]
        axis.set_title(name, fontsize=8, pad=2)
        if not items:
            axis.text(0.5, 0.5, "no example", ha="center", va="center", fontsize=7)
            continue
        axis.imshow(_strip([item[0].clamp(0, 1) for item in items]), interpolation="nearest")
        if show_masks and len(items[0]) > 2:  # (image, label, mask) items
            masks = _strip([item[2].float() for item in items], fill=0.0)[..., 0]  # (H, W')
            axis.contour(masks, levels=[0.5], colors="white", linewidths=0.6)
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


def plot_resolution_grid(resolutions=(24, 48, 96), split="val", seed=0, path=None):
    """The same four scenes (one per texture) at each resolution, whole and close up: the picture
    behind "resolution scaling" (at 24 px the textures are partly gone, at 48 px there)."""
    import matplotlib.pyplot as plt

    datasets = [SyntheticObjects(split, 240, r, seed) for r in resolutions]  # 10 of each class
    labels, n = datasets[0].labels, len(datasets)
    rows = [int((labels % len(TEXTURES) == t).nonzero()[0]) for t in range(len(TEXTURES))]
    size = (2 * n * 1.6, len(rows) * 1.7)
    figure, axes = plt.subplots(len(rows), 2 * n, figsize=size)
    for row, index in enumerate(rows):
        for column, dataset in enumerate(datasets):
            image = dataset.images[index].permute(1, 2, 0).numpy()  # (R, R, 3)
            half, width = dataset.resolution / 8, dataset.resolution // 4  # close-up: 1/4 wide
            left, top = (dataset.centres[index, 0] - half).round().int().clamp(min=0).tolist()
            pictures = {"whole": image, "close-up": image[top : top + width, left : left + width]}
            for axis, (kind, picture) in zip(axes[row, column::n], pictures.items(), strict=True):
                axis.imshow(picture, interpolation="nearest")
                axis.set(xticks=[], yticks=[])
                if row == 0:
                    axis.set_title(f"{dataset.resolution} px, {kind}", fontsize=9)
        axes[row, 0].set_ylabel(datasets[0].classes[int(labels[index])], fontsize=8)
    states = ", ".join(f"{texture_visibility(r)} at {r} px" for r in resolutions)
    return _finish(figure, f"The same scenes at each resolution: the textures are {states}", path)
