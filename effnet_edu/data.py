"""`get_dataset`: the course's datasets (synthetic, CIFAR-10, Imagenette, folders) in one call."""

import os
from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from . import synthetic  # the synthetic data and its renderer (pictures: `plots`)
from .scaling import check_int
from .synthetic import MIN_SYNTHETIC_RESOLUTION, SyntheticObjects, check_split

DATASET_NAMES = ("synthetic", "cifar10", "imagenette", "folder:PATH")
_DOWNLOADS = {  # the archives torchvision fetches
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "163 MB"),
    "imagenette": ("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz", "94 MB"),
}


def load_image(path: str):
    """Open an image file as RGB (PIL), or raise an error that names the file (PIL's may not)."""
    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:  # UnidentifiedImageError is an OSError
        problem = f"cannot read {path!r} ({type(error).__name__}: {error}): not an image"
        raise RuntimeError(f"{problem}; replace or delete it") from error


def _real_dataset(name: str, split: str, root: str, download: bool, transform) -> Dataset:
    """CIFAR-10, Imagenette or an image folder through torchvision, errors that say what to do."""
    if name.startswith("folder:"):
        path, extensions = name.removeprefix("folder:"), ", ".join(datasets.folder.IMG_EXTENSIONS)
        layout = f"expected one subfolder per class of images ({extensions}), e.g. {path}/cat/1.png"
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{name}: no directory {os.path.abspath(path)}; {layout}")
        try:
            return datasets.ImageFolder(path, transform=transform, loader=load_image)
        except FileNotFoundError as error:  # no class subfolders, or no images in them
            raise FileNotFoundError(f"{name} has no usable images ({error}); {layout}") from error
    (url, size), where = _DOWNLOADS[name], os.path.abspath(root)
    try:
        if name == "cifar10":  # CIFAR-10 has no validation set: "val" and "test" are its test set
            return datasets.CIFAR10(root, split == "train", download=download, transform=transform)
        split = "train" if split == "train" else "val"
        return datasets.Imagenette(root, split, "160px", download=download, transform=transform)
    except (OSError, RuntimeError) as error:  # not there, or the download failed (URLError)
        what = f"downloading {name} into {where}" if download else f"reading {name} from {where}"
        fix = "download it elsewhere" if download else "pass download=True, or download it"
        raise RuntimeError(
            f"{what} failed ({type(error).__name__}: {error}); {fix} from {url} ({size}) and "
            f"extract it into root={root!r}. get_dataset('synthetic', ...) works offline."
        ) from error


def real_transforms(resolution: int, augment: bool, cifar: bool = False):
    """The image steps before `ToTensor`. Training (`augment`): a random crop of 8-100 % of the
    area resized to `resolution` and a horizontal flip (the Inception-style preprocessing of the
    official code), then AutoAugment, with which the paper trains (Section 5.2: its ImageNet
    policy; for CIFAR-10 its CIFAR-10 policy). Evaluation: the shorter side resized to
    resolution + 32 and the centre square kept, as the official code evaluates (224 of 256 px for
    B0). Resizing is bicubic. torchvision's pretrained weights bring their own evaluation steps
    (`weights.transforms()`), which can differ (B1's are bilinear, 255 -> 240 px)."""
    bicubic = transforms.InterpolationMode.BICUBIC
    if not augment:
        return [transforms.Resize(resolution + 32, bicubic), transforms.CenterCrop(resolution)]
    policy = (
        transforms.AutoAugmentPolicy.CIFAR10 if cifar else transforms.AutoAugmentPolicy.IMAGENET
    )
    return [
        transforms.RandomResizedCrop(resolution, interpolation=bicubic),
        transforms.RandomHorizontalFlip(),
        transforms.AutoAugment(policy),
    ]


def get_dataset(
    name: str,
    split: str = "train",
    resolution: int = 64,
    root: str = "data",
    download: bool = False,
    transform: Callable | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    augment: bool | None = None,
) -> Dataset:
    """One call for every dataset of the course; images come out as (3, R, R) floats in [0, 1].
    "synthetic": `SyntheticObjects`, items (image, label, mask). "cifar10" (its test set for "val"
    and "test"), "imagenette" (160 px) and "folder:PATH" (an ImageFolder): items (image, label);
    `num_samples` keeps a random subset (`seed`). Real images are augmented for training
    (`augment`, default: on for "train"; `real_transforms`) and resized and centre-cropped for
    evaluation."""
    if not isinstance(name, str) or not (name in DATASET_NAMES[:3] or name.startswith("folder:")):
        raise ValueError(f"unknown dataset name {name!r}; valid: {', '.join(DATASET_NAMES)}")
    if name == "synthetic":
        return SyntheticObjects(split, num_samples, resolution, seed, transform)
    split, seed = check_split(split), check_int(seed, "seed", 0)
    r = check_int(resolution, "resolution", MIN_SYNTHETIC_RESOLUTION, " pixels")
    num_samples = None if num_samples is None else check_int(num_samples, "num_samples", 1)
    augment = split == "train" if augment is None else augment
    if not isinstance(augment, bool):
        raise ValueError(f"augment must be True, False or None (on for 'train'), got {augment!r}")
    steps = [*real_transforms(r, augment, cifar=name == "cifar10"), transforms.ToTensor()]
    steps += [] if transform is None else [transform]
    dataset = _real_dataset(name, split, root, download, transforms.Compose(steps))
    if num_samples is None:
        return dataset
    if num_samples > len(dataset):
        raise ValueError(f"num_samples={num_samples}, but {name} has {len(dataset)} {split} images")
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, keep[:num_samples].sort().values.tolist())


def class_names(dataset: Dataset) -> list[str]:
    """The class names of any dataset `get_dataset` returns (Subsets included), in label order."""
    if isinstance(dataset, Subset):
        return class_names(dataset.dataset)
    if getattr(dataset, "classes", None) is None:
        raise ValueError(f"{type(dataset).__name__} has no `classes`; use get_dataset(...)")
    # Imagenette gives tuples of synonyms, e.g. ("tench", "Tinca tinca"): keep the first
    return [c[0] if isinstance(c, tuple) else str(c) for c in dataset.classes]


def __getattr__(name: str):  # the synthetic data's names, from when it lived here
    return getattr(synthetic, name)
