"""GradCAM helpers: scores on constructed CAMs and masks, CAMs against a hand-computed Grad-CAM,
one target per image, the library's traps (mode, bad class, no_grad, .grad), and a real photo."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

import effnet_edu as ee
from effnet_edu import attention as at

CATS = {"Egyptian cat", "tiger cat", "tabby"}


@pytest.fixture(scope="module")
def tiny():
    """A small B0-shaped model whose BatchNorm statistics are measured on random images.

    Untrained, in eval mode, BN's running variance of 1 shrinks the signal to ~1e-11 through the
    stages, and every layer is then almost linear; one calibration pass makes it a fair stand-in.
    """
    torch.manual_seed(0)
    model = ee.efficientnet(depth=0.25, width=0.25, num_classes=5, dropout=0.0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the batch statistics
    with torch.no_grad():
        model.train()(torch.rand(16, 3, 96, 96))
    return model.eval()


@pytest.fixture(scope="module")
def lite0_cat():
    model = ee.efficientnet_lite(0, pretrained=True)
    photo = data.chelsea()  # (300, 451, 3) uint8
    from PIL import Image

    x = model.pretrained.preprocess(Image.fromarray(photo))[None]  # (1, 3, 224, 224)
    return model, x


def image_pair(size=96):
    torch.manual_seed(1)
    return torch.rand(1, 3, size, size).repeat(2, 1, 1, 1)  # two copies of one image


def hand_gradcam(model, x, classes):
    """Grad-CAM at the head from its definition: ReLU(sum_k mean_ij(dy_c/dA_kij) A_k), min-max
    scaled, bilinearly upsampled to the input, min-max scaled again (as the library does)."""
    with torch.enable_grad():
        features = model.forward_features(x)  # (B, K, h, w)
        features.retain_grad()
        logits = model.classifier(model.pool(features).flatten(1))
        logits[torch.arange(len(x)), torch.as_tensor(classes)].sum().backward()
    weights = features.grad.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
    cam = (weights * features).sum(dim=1, keepdim=True).relu().detach()  # (B, 1, h, w)

    def minmax(c):
        c = c - c.amin(dim=(2, 3), keepdim=True)
        return c / (1e-7 + c.amax(dim=(2, 3), keepdim=True))

    cam = F.interpolate(minmax(cam), size=x.shape[2:], mode="bilinear", align_corners=False)
    return minmax(cam)[:, 0].numpy()


def disc_masks():
    yy, xx = np.mgrid[:32, :32]
    return np.stack(
        [
            (yy - 10) ** 2 + (xx - 12) ** 2 < 36,  # a disc
            (yy > 20) & (xx > 3) & (xx < 30),  # a bar
            (yy == 0) & (xx == 0),
        ]
    )  # one pixel, where an all-zero CAM's argmax is


# ----------------------------------------------------------------------------- scores


def test_cam_equal_to_mask_scores_one_and_outside_scores_zero():
    masks = disc_masks()
    peaked = masks * np.random.default_rng(0).uniform(0.5, 1, (3, 32, 32))  # uneven inside
    for cams in (masks.astype(float), peaked):
        scores = at.attention_scores(cams, masks)
        for name, values in scores.items():
            np.testing.assert_allclose(values, 1.0, err_msg=name)
    outside = (~masks) * np.random.default_rng(1).uniform(0.1, 1, (3, 32, 32))
    for values in at.attention_scores(outside, masks).values():
        np.testing.assert_array_equal(values, 0.0)
    for values in at.attention_scores(np.zeros((3, 32, 32)), masks).values():  # defined as 0
        np.testing.assert_array_equal(values, 0.0)


def test_scores_by_hand_and_the_iou_threshold():
    mask = np.zeros((1, 4, 4), bool)
    mask[0, :2, :2] = True  # 4 object pixels of 16
    cam = np.where(mask, 0.6, 0.2)  # more attention on the object, but spread everywhere
    np.testing.assert_allclose(at.energy_share(cam, mask), 4 * 0.6 / (4 * 0.6 + 12 * 0.2))
    np.testing.assert_allclose(at.cam_iou(cam, mask), 1.0)  # 0.2 < 0.5 * 0.6: only the object
    np.testing.assert_allclose(at.cam_iou(cam, mask, threshold=0.3), 4 / 16)  # 0.2 >= 0.18: all
    cam[0, 3, 3] = 0.7  # the peak moves outside: pointing misses, one more pixel >= 0.35
    np.testing.assert_array_equal(at.pointing_game(cam, mask), 0.0)
    np.testing.assert_allclose(at.cam_iou(cam, mask), 4 / 5)


def test_scores_are_per_image_and_accept_dataset_masks():
    rng = np.random.default_rng(2)
    masks, cams = disc_masks(), rng.uniform(0, 1, (3, 32, 32))
    batch = at.attention_scores(cams, torch.as_tensor(masks)[:, None].float())  # (B, 1, H, W)
    for i in range(3):
        single = at.attention_scores(cams[i : i + 1], masks[i : i + 1])
        for name in batch:
            np.testing.assert_allclose(batch[name][i], single[name][0])


def test_mask_errors_say_what_to_do():
    masks = disc_masks()
    with pytest.raises(ValueError, match=r"\(3, 16, 16\).*\(3, 32, 32\).*resize_cams"):
        at.energy_share(np.zeros((3, 16, 16)), masks)
    masks[1] = False
    with pytest.raises(ValueError, match=r"masks \[1\] are empty"):
        at.cam_iou(np.ones((3, 32, 32)), masks)


def test_summary_is_mean_and_sample_std():
    summary = at.summarize_scores({"pointing_game": np.array([0.0, 1.0, 1.0, 0.0])})
    s = summary["pointing_game"]
    assert (s.mean, s.n) == (0.5, 4)
    assert s.std == pytest.approx(np.sqrt(1 / 3))
    assert str(s) == "0.500 ± 0.577"
    assert at.summarize_scores({"iou": np.array([0.25])})["iou"].std == 0.0


# ----------------------------------------------------------------------------- CAMs


def test_one_target_per_image_matches_hand_computed_gradcam(tiny):
    x = image_pair()
    cams = at.gradcam(tiny, x, targets=[1, 3])
    assert cams.shape == (2, 96, 96) and cams.dtype == np.float32
    np.testing.assert_allclose(cams, hand_gradcam(tiny, x, [1, 3]), atol=1e-4)
    assert np.abs(cams[0] - cams[1]).max() > 0.1  # same image, different classes
    for i, c in enumerate([1, 3]):
        np.testing.assert_allclose(cams[i], at.gradcam(tiny, x[:1], [c])[0], atol=1e-5)
    with torch.no_grad():
        top1 = tiny(x).argmax(dim=1)
    np.testing.assert_array_equal(at.gradcam(tiny, x), at.gradcam(tiny, x, top1))


def test_layers_by_name_and_bad_layer_lists_valid_names(tiny):
    assert at.layer_names(tiny) == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head"]
    assert at.resolve_layer(tiny, "stage3") is at.resolve_layer(tiny, 3) is tiny.stages[2]
    assert at.resolve_layer(tiny, "head") is tiny.head
    with pytest.raises(ValueError, match=r"'stage9'.*valid: stem, stage1, .*stage7, head"):
        at.gradcam(tiny, image_pair(), layer="stage9")
    with pytest.raises(ValueError, match="valid: stem"):
        at.resolve_layer(tiny, 0)
    cams = at.gradcam(tiny, image_pair(), [0, 0], layer="stage4")  # 6x6 map, upsampled
    assert cams.shape == (2, 96, 96) and cams.max() > 0.5


def test_bad_class_raises_before_the_library_swallows_it(tiny, capsys):
    for bad in (5, -1):
        with pytest.raises(ValueError, match=rf"class {bad} .*valid classes are 0-4"):
            at.gradcam(tiny, image_pair(), targets=[0, bad])
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        at.gradcam(tiny, image_pair(), targets=[0])
    assert capsys.readouterr().out == ""  # nothing was printed and swallowed


def test_modes_grads_and_no_grad_are_handled(tiny):
    x = image_pair()
    expected = at.gradcam(tiny, x, [1, 2])
    tiny.train()
    tiny.stages[0].eval()  # a mixed state must come back as it was
    before = {name: m.training for name, m in tiny.named_modules()}
    saved = {p: torch.full_like(p, 7.0) for p in tiny.parameters()}
    for p, g in saved.items():
        p.grad = g
    try:
        with torch.no_grad():  # grad is enabled locally
            np.testing.assert_allclose(at.gradcam(tiny, x, [1, 2]), expected, atol=1e-6)
        assert {name: m.training for name, m in tiny.named_modules()} == before
        assert all(p.grad is g for p, g in saved.items())
    finally:
        tiny.eval()
        for p in tiny.parameters():
            p.grad = None
    at.gradcam(tiny, x, [1, 2])
    assert not any(m.training for m in tiny.modules())  # eval stays eval


def test_resize_to_a_common_size_across_resolutions(tiny):
    small = at.gradcam(tiny, image_pair(64), [0, 1])  # (2, 64, 64)
    large = at.gradcam(tiny, image_pair(128), [0, 1])  # (2, 128, 128)
    a, b = at.resize_cams(small, 96), at.resize_cams(large, (96, 96))
    assert a.shape == b.shape == (2, 96, 96) and 0 <= min(a.min(), b.min())
    assert max(a.max(), b.max()) <= 1
    np.testing.assert_allclose(at.resize_cams(np.full((1, 3, 3), 0.25), 7), 0.25, atol=1e-6)
    masks = at.resize_cams(disc_masks(), 64)  # nearest: a mask stays a mask
    assert masks.dtype == bool and masks.shape == (3, 64, 64)
    assert masks.sum() == 4 * disc_masks().sum()  # exact 2x upsampling
    np.testing.assert_allclose(
        at.cam_iou(at.resize_cams(disc_masks().astype(float), 64), masks), 1.0
    )


def test_real_photo_cam_is_not_zero_and_survives_a_frozen_model(lite0_cat):
    model, x = lite0_cat
    with torch.no_grad():
        top1 = model(x).argmax().item()
    assert model.pretrained.categories[top1] in CATS
    cam = at.gradcam(model, x)  # default target: the top-1 cat class
    assert cam.shape == (1, 224, 224) and cam.max() > 0.9 and cam.mean() > 0.05
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        np.testing.assert_allclose(at.gradcam(model, x, [top1]), cam, atol=1e-5)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_overlay_from_array_or_tensor():
    image = torch.rand(3, 32, 32)
    cam = disc_masks()[0].astype(np.float32)
    picture = at.overlay(image, cam)
    assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture, at.overlay(image.permute(1, 2, 0).numpy(), cam))
    assert at.overlay(image, cam[::2, ::2]).shape == (32, 32, 3)  # the CAM is resized
    with pytest.raises(ValueError, match=r"\[0, 1\].*normalisation"):
        at.overlay(image * 2 - 1, cam)


# ----------------------------------------------------------------------------- faithfulness


def test_confidence_change_against_exact_cases(lite0_cat):
    model, x = lite0_cat
    cam = at.gradcam(model, x)
    change = at.faithfulness(model, x, cam)
    assert change.shape == (1,) and np.isfinite(change).all() and -1 <= change[0] <= 1
    # image * 1 is the image: no change at all
    np.testing.assert_allclose(at.faithfulness(model, x, np.ones((1, 224, 224))), 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="must match the images"):
        at.faithfulness(model, x, at.resize_cams(cam, 112))


def test_road_is_seeded_and_finite(tiny):
    x = torch.rand(2, 3, 48, 48)
    cams = at.gradcam(tiny, x, [0, 4])
    state = torch.get_rng_state()
    road = at.faithfulness(tiny, x, cams, [0, 4], metric="road", seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert road.shape == (2,) and np.isfinite(road).all()
    np.testing.assert_array_equal(road, at.faithfulness(tiny, x, cams, [0, 4], "road", seed=3))
    with pytest.raises(ValueError, match="valid: confidence_change, road"):
        at.faithfulness(tiny, x, cams, metric="roar")
