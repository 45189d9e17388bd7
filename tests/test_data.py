"""Tests for effnet_edu.data (the real-dataset front door) and effnet_edu.plots (its pictures)."""

import urllib.error
import urllib.request

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from effnet_edu import synthetic
from effnet_edu.data import DATASET_NAMES, SyntheticObjects, class_names, get_dataset
from effnet_edu.plots import plot_class_grid, plot_resolution_grid

matplotlib.use("Agg")


def _write_image_folder(root, sizes=((20, 30), (40, 24), (32, 32))):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i, (width, height) in enumerate(sizes):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_get_dataset_synthetic():
    dataset = get_dataset("synthetic", split="val", resolution=32, num_samples=8, seed=3)
    assert isinstance(dataset, SyntheticObjects) and len(dataset) == 8
    assert dataset[0][0].shape == (3, 32, 32) and len(dataset[0]) == 3
    assert class_names(dataset) == dataset.classes
    assert torch.equal(dataset.images, SyntheticObjects("val", 8, 32, 3).images)


def test_names_from_before_the_split_keep_working():
    from effnet_edu.data import (
        ARRANGEMENTS,
        COLOURS,
        TEXTURE_PERIOD_PIXELS_AT_64,
        TEXTURES,
        synthetic_class_groups,
        texture_visibility,
    )

    assert ARRANGEMENTS is synthetic.ARRANGEMENTS and COLOURS is synthetic.COLOURS
    assert TEXTURES is synthetic.TEXTURES and texture_visibility is synthetic.texture_visibility
    assert synthetic_class_groups is synthetic.synthetic_class_groups
    assert TEXTURE_PERIOD_PIXELS_AT_64 == synthetic.TEXTURE_PERIOD_PIXELS_AT_64


def test_get_dataset_image_folder(tmp_path):
    root = _write_image_folder(tmp_path / "photos")
    dataset = get_dataset(f"folder:{root}", resolution=16)
    assert len(dataset) == 6 and class_names(dataset) == ["cat", "dog"]
    image, label = dataset[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
    assert 0.0 <= image.min() and image.max() <= 1.0
    subset = get_dataset(f"folder:{root}", resolution=16, num_samples=4, seed=0)
    assert len(subset) == 4 and class_names(subset) == ["cat", "dog"]
    with pytest.raises(ValueError, match="num_samples=7.* has 6 "):
        get_dataset(f"folder:{root}", resolution=16, num_samples=7)


@pytest.mark.parametrize(
    "parameter, value",
    [("name", "mnist"), ("split", "training"), ("resolution", 8), ("num_samples", 0), ("seed", -1)],
)
def test_bad_arguments_name_the_parameter_and_the_value(tmp_path, parameter, value):
    root = _write_image_folder(tmp_path / "photos")
    with pytest.raises(ValueError) as error:
        get_dataset(**{"name": f"folder:{root}", parameter: value})
    assert repr(value) in str(error.value)
    assert parameter in str(error.value)
    if parameter == "name":  # and what is valid
        assert all(valid in str(error.value) for valid in DATASET_NAMES)


def test_unreadable_image_names_the_file(tmp_path):
    root = _write_image_folder(tmp_path / "photos")
    broken = root / "dog" / "broken.png"
    broken.write_bytes(b"this is not a PNG file")
    dataset = get_dataset(f"folder:{root}", resolution=16)
    index = [path for path, _ in dataset.samples].index(str(broken))
    with pytest.raises(RuntimeError) as error:
        dataset[index]
    assert str(broken) in str(error.value) and "not an image" in str(error.value)


def test_missing_or_empty_folder_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        get_dataset(f"folder:{tmp_path / 'nowhere'}")
    assert "nowhere" in str(error.value) and "subfolder per class" in str(error.value)
    with pytest.raises(FileNotFoundError, match="subfolder per class"):
        get_dataset(f"folder:{tmp_path}")  # exists, but no class folders
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no usable images"):
        get_dataset(f"folder:{tmp_path}")


@pytest.mark.parametrize("name", ["cifar10", "imagenette"])
def test_missing_real_dataset_explains_how_to_get_it(tmp_path, name):
    with pytest.raises(RuntimeError) as error:
        get_dataset(name, root=str(tmp_path), download=False)
    message = str(error.value)
    assert str(tmp_path) in message and "download=True" in message and "https://" in message
    assert "'synthetic'" in message


@pytest.mark.parametrize("name", ["cifar10", "imagenette"])
@pytest.mark.parametrize(
    "failure", [urllib.error.URLError("no route to host"), OSError("Network is unreachable")]
)
def test_failed_download_explains_what_to_do(tmp_path, monkeypatch, name, failure):
    def offline(*args, **kwargs):  # torchvision's real download code ends up here
        raise failure

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError) as error:
        get_dataset(name, split="val", root=str(tmp_path), download=True)
    message = str(error.value)
    assert "downloading" in message and "https://" in message and str(tmp_path) in message
    assert "'synthetic'" in message and str(failure) in message


def test_plot_class_grid_labels_every_class(tmp_path):
    data = SyntheticObjects("val", num_samples=240, resolution=32)
    path = tmp_path / "grid.png"
    figure = plot_class_grid(data, per_class=2, path=path)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[: len(data.classes)] == data.classes
    assert "24 classes" in figure._suptitle.get_text() and path.stat().st_size > 10_000
    matplotlib.pyplot.close(figure)


def test_plot_class_grid_on_an_image_folder(tmp_path):
    root = _write_image_folder(tmp_path / "photos")
    figure = plot_class_grid(get_dataset(f"folder:{root}", resolution=16), per_class=3)
    assert [axis.get_title() for axis in figure.axes[:2]] == ["cat", "dog"]
    assert "2 classes" in figure._suptitle.get_text()
    matplotlib.pyplot.close(figure)


def test_plot_resolution_grid_shows_the_same_scenes(tmp_path):
    figure = plot_resolution_grid((24, 64), path=tmp_path / "resolutions.png")
    assert "partly gone at 24 px, visible at 64 px" in figure._suptitle.get_text()
    assert len(figure.axes) == len(synthetic.TEXTURES) * 4
    assert (tmp_path / "resolutions.png").exists()
    matplotlib.pyplot.close(figure)


def test_real_images_are_augmented_for_training_only(tmp_path):
    from torchvision import transforms

    root = _write_image_folder(tmp_path / "photos")
    train = get_dataset(f"folder:{root}", "train", resolution=16)
    val = get_dataset(f"folder:{root}", "val", resolution=16)
    kinds = {
        name: [type(t) for t in d.transform.transforms]
        for name, d in (("train", train), ("val", val))
    }
    assert kinds["train"][:3] == [
        transforms.RandomResizedCrop,
        transforms.RandomHorizontalFlip,
        transforms.AutoAugment,
    ]
    assert kinds["val"][:2] == [transforms.Resize, transforms.CenterCrop]
    assert val.transform.transforms[0].size == 16 + 32  # the official code's crop padding
    resizes = (val.transform.transforms[0], train.transform.transforms[0])
    assert all(t.interpolation == transforms.InterpolationMode.BICUBIC for t in resizes)
    torch.manual_seed(0)
    assert not torch.equal(train[0][0], train[0][0])  # a new random view at every read
    assert torch.equal(val[0][0], val[0][0]) and val[0][0].shape == (3, 16, 16)
    plain = get_dataset(f"folder:{root}", "train", resolution=16, augment=False)
    assert torch.equal(plain[0][0], val[0][0])
    with pytest.raises(ValueError, match="augment must be"):
        get_dataset(f"folder:{root}", augment="yes")
