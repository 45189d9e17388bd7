"""Tests for effnet_edu.synthetic: the dataset the scale study trains on, and its renderer."""

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from effnet_edu.synthetic import (
    PIXEL_BLUR_SIGMA,
    TEXTURES,
    SyntheticObjects,
    grating_contrast,
    texture_visibility,
)

NUM_CLASSES = 3 * 2 * 4  # arrangements x colours x textures


@pytest.fixture(scope="module")
def val64():
    return SyntheticObjects("val", num_samples=240, resolution=64, seed=0)


# The renderer as it was when the first scale study's models were trained (before it moved out of
# data.py): a refactor must keep its output. Labels, masks, centres and radii are checked bit for
# bit (SHA-256, first 16 hex digits). Images are not: the last bit of the float maths differs
# between CPUs (MKL's and PyTorch's AVX2, AVX-512 and scalar kernels), and rounding to uint8 then
# moves 0-3 pixels of millions by one grey level (measured on a Sapphire Rapids Xeon with the
# kernels forced each way). The images are pinned instead by four weighted sums of their grey
# levels (over pixels, and weighted by sample, row and column index, so that a reordering, flip
# or transpose shows), with room for MAX_FLIPS pixels off by one level. Any real change to the
# renderer moves thousands of pixels. The sums were computed on that Xeon with MKL_CBWR=AVX2 and
# ATEN_CPU_CAPABILITY=avx2, which reproduce the original hashes of the first three cases exactly;
# the fourth differs from its original by at most a pixel or two.
# (split, n, resolution, seed, distractors) -> hashes of (labels, masks, centres, radii)
REFERENCE = {
    ("val", 240, 64, 0, True): (
        "6d9fc56abdc3863b d670ec7c66da6584 578a92f92eda9a99 6b9338f2a4627672"
    ),
    ("train", 300, 32, 1, True): (
        "f8bcb09764e83f77 6db393dfbe62b538 4312129c67299004 8b1f0ec3d97bc69d"
    ),
    ("test", 50, 128, 7, True): (
        "54c1e88c42188b7d ce9ed9508a55ebae 0e09c1e9579e8fa1 5f2a14e17a8f3fa4"
    ),
    ("val", 240, 48, 0, False): (
        "6d9fc56abdc3863b 3dc8f94ee7811b62 e82436ae5f5e06d0 6f3e4099226ad390"
    ),
}
IMAGE_SUMS = {  # sum of grey levels; weighted by sample index, by row index, by column index
    ("val", 240, 64, 0, True): (364910290, 43934543797, 11848962937, 11839158447),
    ("train", 300, 32, 1, True): (107559027, 16291439487, 1776195821, 1776707189),
    ("test", 50, 128, 7, True): (285602302, 7124712602, 18406576652, 18377624475),
    ("val", 240, 48, 0, False): (205747521, 24771596144, 5033785989, 5032275759),
}
MAX_FLIPS = 16


def image_sums(images):
    x = images.long()
    n, _, h, w = x.shape
    return (
        x.sum().item(),
        (x.sum((1, 2, 3)) * torch.arange(1, n + 1)).sum().item(),
        (x.sum((0, 1, 3)) * torch.arange(1, h + 1)).sum().item(),
        (x.sum((0, 1, 2)) * torch.arange(1, w + 1)).sum().item(),
    )


@pytest.mark.parametrize("case", REFERENCE)
def test_same_data_the_first_study_saw(case):
    split, num_samples, resolution, seed, distractors = case
    data = SyntheticObjects(split, num_samples, resolution, seed, distractors=distractors)
    names = ("labels", "masks", "centres", "radii")
    for name, expected in zip(names, REFERENCE[case].split(), strict=True):
        tensor = getattr(data, name).contiguous().numpy()
        assert hashlib.sha256(tensor.tobytes()).hexdigest()[:16] == expected, name
    # each flipped pixel moves a sum by at most (its largest weight) x 1 level
    largest_weight = (1, num_samples, resolution, resolution)
    measured = image_sums(data.images)
    for got, want, weight in zip(measured, IMAGE_SUMS[case], largest_weight, strict=True):
        assert abs(got - want) <= MAX_FLIPS * weight, (measured, IMAGE_SUMS[case])


def test_image_sums_see_small_real_changes(val64):
    # the tolerance above is far below what a real change does: brighten one image's texture a bit
    images = val64.images.clone()
    images[0] = (images[0].float() * 1.01).clamp(0, 255).to(torch.uint8)
    base, changed = image_sums(val64.images), image_sums(images)
    assert abs(changed[0] - base[0]) > 100 * MAX_FLIPS
    # a transposed image keeps the total and the per-sample sums but not the row/column sums
    images = val64.images.clone()
    images[3] = images[3].transpose(1, 2).clone()
    transposed = image_sums(images)
    assert transposed[:2] == base[:2] and transposed[2:] != base[2:]
    assert abs(transposed[2] - base[2]) > MAX_FLIPS * 64


def test_shapes_dtypes_and_items(val64):
    n, r = 240, 64
    assert len(val64) == n and len(val64.classes) == NUM_CLASSES
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
    # 24 classes in sets of 4 textures, 3 arrangements, 2 colours
    assert [len(groups[k]) for k in ("texture", "arrangement", "colour")] == [6, 8, 12]
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


def test_rendering_leaves_the_thread_setting_as_it_was():
    threads = torch.get_num_threads()
    SyntheticObjects("test", num_samples=4, resolution=16)
    assert torch.get_num_threads() == threads


def test_transform_is_applied_to_the_image_only():
    dataset = SyntheticObjects("test", num_samples=4, resolution=16, transform=lambda x: x * 2 + 1)
    image, _, mask = dataset[0]
    assert image.min() >= 1.0 and image.max() > 2.0 and mask.max() == 1.0


@pytest.mark.parametrize(
    "parameter, value",
    [
        ("split", "training"),
        ("num_samples", 0),
        ("num_samples", 2.5),
        ("resolution", 8),
        ("resolution", 64.0),
        ("resolution", True),
        ("seed", -1),
        ("transform", "flip"),
    ],
)
def test_bad_arguments_name_the_parameter_and_the_value(parameter, value):
    with pytest.raises((ValueError, TypeError)) as error:  # TypeError for a wrong type
        SyntheticObjects(**{"num_samples": 4, "resolution": 16, parameter: value})
    assert parameter in str(error.value) and repr(value) in str(error.value)


def test_grating_contrast_drops_what_pixels_cannot_hold():
    contrast = grating_contrast(torch.tensor([1.5, 1.99, 2.01, 4.0, 8.0]))
    assert contrast[0] == 0 and contrast[1] == 0  # finer than 2 pixels: gone, not aliased
    # the rest: the frequency response of a Gaussian blur, exp(-2 pi^2 sigma^2 / period^2)
    expected = [math.exp(-2 * math.pi**2 * PIXEL_BLUR_SIGMA**2 / p**2) for p in (2.01, 4.0, 8.0)]
    assert torch.allclose(contrast[2:], torch.tensor(expected))
    assert math.isclose(expected[1], math.exp(-(math.pi**2) / 32))  # sigma = 0.5, period 4 px


def test_texture_visibility_follows_nyquist():
    # Periods of 4.8-6 px at 64 px: 2 px per period is reached at 26.7 px (shortest) and 21.3 px.
    expected = ["gone", "partly gone"] + ["visible"] * 3
    assert [texture_visibility(r) for r in (21, 24, 27, 32, 64)] == expected


def _texture_features(dataset):
    """Rotation-invariant descriptor of the target's fine detail, from its power spectrum.

    Energy above 8 cycles per image (finer than the discs' outline), and how much of it has
    2-, 4- and 6-fold symmetry (stripes have all three, the grid 4, the hex pattern 6).
    """
    grey = dataset.images.float().mean(dim=1) / 255  # (N, R, R)
    inner = -F.max_pool2d(-dataset.masks.float(), 3, stride=1, padding=1)[:, 0]  # off the edges
    mean = (grey * inner).sum(dim=(1, 2)) / inner.sum(dim=(1, 2))
    power = torch.fft.fft2((grey - mean[:, None, None]) * inner).abs() ** 2  # (N, R, R)
    frequency = torch.fft.fftfreq(dataset.resolution) * dataset.resolution  # cycles per image
    fy, fx = frequency[:, None], frequency[None, :]
    power = power * ((fx**2 + fy**2).sqrt() > 8)
    total = power.sum(dim=(1, 2))
    angle = torch.atan2(fy, fx)
    features = [torch.log(total / inner.sum(dim=(1, 2)) + 1e-9)]
    for fold in (2, 4, 6):
        symmetric = torch.complex(power * torch.cos(fold * angle), power * torch.sin(fold * angle))
        features.append(symmetric.sum(dim=(1, 2)).abs() / (total + 1e-12))
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
