"""Tests for effnet_edu.data: the synthetic dataset, the real-dataset front door, the pictures."""

import math
import urllib.error
import urllib.request

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from effnet_edu.data import (
    ARRANGEMENTS,
    COLOURS,
    DATASET_NAMES,
    TEXTURES,
    SyntheticObjects,
    class_names,
    get_dataset,
    grating_contrast,
    plot_class_grid,
    plot_resolution_grid,
    texture_visibility,
)

matplotlib.use("Agg")

NUM_CLASSES = len(ARRANGEMENTS) * len(COLOURS) * len(TEXTURES)


@pytest.fixture(scope="module")
def val64():
    return SyntheticObjects("val", num_samples=240, resolution=64, seed=0)


# ----------------------------------------------------------------------------- SyntheticObjects


def test_shapes_dtypes_and_items(val64):
    n, r = 240, 64
    assert len(val64) == n and len(val64.classes) == NUM_CLASSES == 24
    assert val64.images.shape == (n, 3, r, r) and val64.images.dtype == torch.uint8
    assert val64.labels.shape == (n,) and val64.labels.dtype == torch.int64
    assert val64.masks.shape == (n, 1, r, r) and val64.masks.dtype == torch.bool
    assert val64.boxes.shape == (n, 4) and val64.centres.shape == (n, 3, 2)
    image, label, mask = val64[5]
    assert image.shape == (3, r, r) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    assert isinstance(label, int) and 0 <= label < NUM_CLASSES
    assert mask.shape == (1, r, r) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(image, val64.images[5].float() / 255)


def test_same_seed_same_bits_other_seed_other_data(val64):
    again = SyntheticObjects("val", num_samples=240, resolution=64, seed=0)
    for name in ("images", "labels", "masks", "boxes"):
        assert torch.equal(getattr(again, name), getattr(val64, name)), name
    other = SyntheticObjects("val", num_samples=240, resolution=64, seed=1)
    assert not torch.equal(other.labels, val64.labels)
    assert (other.images.float() - val64.images.float()).abs().mean() > 20  # not a small nudge


def test_scenes_do_not_depend_on_size_or_resolution(val64):
    small = SyntheticObjects("val", num_samples=100, resolution=32, seed=0)
    assert torch.equal(small.labels, val64.labels[:100])
    # the same discs, measured in pixels of a twice smaller image
    assert torch.allclose(small.centres * 2, val64.centres[:100], atol=1e-4)
    prefix = SyntheticObjects("val", num_samples=100, resolution=64, seed=0)
    assert torch.equal(prefix.images, val64.images[:100])


def test_splits_are_different_streams(val64):
    train = SyntheticObjects("train", num_samples=240, resolution=64)
    test = SyntheticObjects("test", num_samples=240, resolution=64)
    for a, b in ((train, val64), (train, test), (val64, test)):
        assert not torch.equal(a.labels, b.labels)
        flat_a, flat_b = a.images.flatten(1).float(), b.images.flatten(1).float()
        closest = torch.cdist(flat_a[:60], flat_b).min(dim=1).values  # no image shared
        assert closest.min() > 100


def test_every_class_present_and_balanced(val64):
    assert val64.labels.bincount(minlength=NUM_CLASSES).tolist() == [10] * NUM_CLASSES
    bigger = SyntheticObjects("train", num_samples=1000, resolution=16)
    counts = bigger.labels.bincount(minlength=NUM_CLASSES)
    assert counts.sum() == 1000 and counts.min() >= 40  # 4 balanced chunks of 240, then 40


def test_class_names_and_groups(val64):
    assert val64.classes[0] == "line-warm-plain" and val64.classes[-1] == "triangle-cool-hex"
    assert len(set(val64.classes)) == NUM_CLASSES
    groups = val64.class_groups
    assert groups["texture"][0] == [0, 1, 2, 3]
    assert len(groups["texture"]) == 6 and len(groups["arrangement"]) == 8
    assert len(groups["colour"]) == 12
    for factor, position in (("arrangement", 0), ("colour", 1), ("texture", 2)):
        for siblings in groups[factor]:  # differ in this factor, agree in the other two
            factors = [val64.class_factors[i] for i in siblings]
            assert len({f[position] for f in factors}) == len(siblings)
            assert len({f[:position] + f[position + 1 :] for f in factors}) == 1


def test_masks_cover_the_three_discs(val64):
    masks = val64.masks[:, 0].float()  # (N, R, R)
    area = masks.sum(dim=(1, 2))
    expected = 3 * math.pi * val64.radii**2
    assert ((area - expected).abs() / expected).max() < 0.1
    rows, cols = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    for i in range(len(val64)):
        x0, y0, x1, y1 = val64.boxes[i].tolist()
        inside = masks[i].bool()
        assert x0 - 0.5 <= cols[inside].min() and cols[inside].max() <= x1 + 0.5
        assert y0 - 0.5 <= rows[inside].min() and rows[inside].max() <= y1 + 0.5
        for x, y in val64.centres[i].tolist():  # each disc's centre pixel is in the mask
            assert inside[int(y), int(x)]


def test_mask_marks_the_target_colour(val64):
    # The discs are warm (red-orange) or cool (blue); distractors and background have any hue.
    # So inside the mask red must beat blue exactly for the warm classes.
    masks = val64.masks.float()
    mean = (val64.images.float() * masks).sum(dim=(2, 3)) / masks.sum(dim=(2, 3))  # (N, 3)
    warm = torch.tensor([val64.class_factors[label][1] == "warm" for label in val64.labels])
    assert torch.equal(mean[:, 0] > mean[:, 2], warm)


def test_target_is_drawn_on_top_of_the_clutter(val64):
    clean = SyntheticObjects("val", num_samples=240, resolution=64, distractors=False)
    assert torch.equal(clean.masks, val64.masks) and torch.equal(clean.labels, val64.labels)
    inner = -F.max_pool2d(-val64.masks.float(), 3, stride=1, padding=1)  # eroded: full coverage
    inner = inner.bool().expand_as(val64.images)
    assert torch.equal(clean.images[inner], val64.images[inner])
    outside = ~val64.masks.expand_as(val64.images)
    assert not torch.equal(clean.images[outside], val64.images[outside])


def test_transform_is_applied_to_the_image_only():
    dataset = SyntheticObjects("test", num_samples=4, resolution=16, transform=lambda x: x * 2 + 1)
    image, _, mask = dataset[0]
    assert image.min() >= 1.0 and image.max() > 2.0 and mask.max() == 1.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"split": "training"}, ["split", "'training'", "'train'", "'val'", "'test'"]),
        ({"num_samples": 0}, ["num_samples", ">= 1", "0"]),
        ({"num_samples": 2.5}, ["num_samples", "integer", "2.5"]),
        ({"resolution": 8}, ["resolution", ">= 16", "8"]),
        ({"resolution": 64.0}, ["resolution", "integer", "64.0"]),
        ({"resolution": True}, ["resolution", "integer", "True"]),
        ({"seed": -1}, ["seed", ">= 0", "-1"]),
        ({"transform": "flip"}, ["transform", "callable", "'flip'"]),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, words):
    with pytest.raises(ValueError) as error:
        SyntheticObjects(**{"num_samples": 4, "resolution": 16, **kwargs})
    for word in words:
        assert word in str(error.value), (word, str(error.value))


def test_grating_contrast_drops_what_pixels_cannot_hold():
    contrast = grating_contrast(torch.tensor([1.5, 1.99, 2.01, 3.4, 8.0]))
    assert contrast[0] == 0 and contrast[1] == 0  # finer than 2 pixels: gone, not aliased
    assert 0 < contrast[2] < contrast[3] < contrast[4] < 1


def _texture_features(dataset):
    """Rotation-invariant descriptor of the target's fine detail, from its power spectrum.

    Energy above 8 cycles per image (finer than the discs' outline), and how much of it has
    2-, 4- and 6-fold symmetry (stripes have all three, the grid 4, the hex pattern 6).
    """
    gray = dataset.images.float().mean(dim=1) / 255  # (N, R, R)
    inner = -F.max_pool2d(-dataset.masks.float(), 3, stride=1, padding=1)[:, 0]  # off the edges
    mean = (gray * inner).sum(dim=(1, 2)) / inner.sum(dim=(1, 2))
    power = torch.fft.fft2((gray - mean[:, None, None]) * inner).abs() ** 2  # (N, R, R)
    frequency = torch.fft.fftfreq(dataset.resolution) * dataset.resolution  # cycles per image
    fy, fx = frequency[:, None], frequency[None, :]
    power = power * ((fx**2 + fy**2).sqrt() > 8)
    total = power.sum(dim=(1, 2))
    angle = torch.atan2(fy, fx)
    features = [torch.log(total / inner.sum(dim=(1, 2)) + 1e-9)]
    for fold in (2, 4, 6):
        features.append(
            torch.complex(power * torch.cos(fold * angle), power * torch.sin(fold * angle))
            .sum(dim=(1, 2))
            .abs()
            / (total + 1e-12)
        )
    return torch.stack(features, dim=1)  # (N, 4)


def _nearest_centroid_texture_accuracy(resolution):
    train = SyntheticObjects("train", num_samples=240, resolution=resolution)
    val = SyntheticObjects("val", num_samples=240, resolution=resolution)
    x_train, x_val = _texture_features(train), _texture_features(val)
    y_train, y_val = train.labels % len(TEXTURES), val.labels % len(TEXTURES)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    centroids = torch.stack([x_train[y_train == t].mean(dim=0) for t in range(len(TEXTURES))])
    predicted = torch.cdist(x_val, centroids).argmin(dim=1)
    return (predicted == y_val).float().mean().item()


def test_texture_classes_need_resolution():
    # A hand-made texture descriptor on the target's pixels: near perfect at 64 px, chance (1/4)
    # at 20 px, where the textures are finer than two pixels and the renderer removes them.
    assert _nearest_centroid_texture_accuracy(64) > 0.95
    assert _nearest_centroid_texture_accuracy(20) < 0.35


# ----------------------------------------------------------------------------- get_dataset


def test_get_dataset_synthetic():
    dataset = get_dataset("synthetic", split="val", resolution=32, num_samples=8, seed=3)
    assert isinstance(dataset, SyntheticObjects) and len(dataset) == 8
    assert dataset[0][0].shape == (3, 32, 32) and len(dataset[0]) == 3
    assert class_names(dataset) == dataset.classes


def test_get_dataset_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        get_dataset("mnist")
    for name in DATASET_NAMES:
        assert name in str(error.value)
    assert "'mnist'" in str(error.value)


def _write_image_folder(root, sizes=((20, 30), (40, 24), (32, 32))):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i, (width, height) in enumerate(sizes):
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_get_dataset_image_folder(tmp_path):
    root = _write_image_folder(tmp_path / "photos")
    dataset = get_dataset(f"folder:{root}", resolution=16)
    assert len(dataset) == 6 and class_names(dataset) == ["cat", "dog"]
    image, label = dataset[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
    assert 0.0 <= image.min() and image.max() <= 1.0
    subset = get_dataset(f"folder:{root}", resolution=16, num_samples=4, seed=0)
    assert len(subset) == 4 and class_names(subset) == ["cat", "dog"]
    with pytest.raises(ValueError, match="num_samples=7 but .* has only 6 images"):
        get_dataset(f"folder:{root}", resolution=16, num_samples=7)


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
    assert str(tmp_path) in message and "download=True" in message and "'synthetic'" in message


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


# ----------------------------------------------------------------------------- pictures


def test_plot_class_grid_labels_every_class(val64, tmp_path):
    path = tmp_path / "grid.png"
    figure = plot_class_grid(val64, per_class=2, path=path)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:NUM_CLASSES] == val64.classes
    assert "24 classes" in figure._suptitle.get_text()
    assert path.stat().st_size > 10_000
    matplotlib.pyplot.close(figure)


def test_plot_class_grid_on_an_image_folder(tmp_path):
    root = _write_image_folder(tmp_path / "photos")
    figure = plot_class_grid(get_dataset(f"folder:{root}", resolution=16), per_class=3)
    assert [axis.get_title() for axis in figure.axes[:2]] == ["cat", "dog"]
    assert "2 classes" in figure._suptitle.get_text()
    matplotlib.pyplot.close(figure)


def test_texture_visibility_follows_nyquist():
    # Periods of 4.8-6 px at 64 px: 2 px per period is reached at 26.7 px (shortest) and 21.3 px.
    assert [texture_visibility(r) for r in (21, 24, 27, 32, 64)] == [
        "gone",
        "partly gone",
        "visible",
        "visible",
        "visible",
    ]


def test_plot_resolution_grid_shows_the_same_scenes(tmp_path):
    figure = plot_resolution_grid((24, 64), path=tmp_path / "resolutions.png")
    assert "partly gone at 24 px, visible at 64 px" in figure._suptitle.get_text()
    assert len(figure.axes) == len(TEXTURES) * 4 and (tmp_path / "resolutions.png").exists()
    matplotlib.pyplot.close(figure)
