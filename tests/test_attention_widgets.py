"""GradCAM explorers work headless: setting a control runs the callback and updates `.result`."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torchvision import transforms

import effnet_edu as ee
from effnet_edu import attention_widgets as aw

CATS = {"Egyptian cat", "tiger cat", "tabby"}


@pytest.fixture(scope="module")
def explorer():
    return aw.AttentionExplorer(photos={"chelsea": data.chelsea(), "coffee": data.coffee()})


# ----------------------------------------------------------------------------- real photos


def test_photo_gallery_has_the_offline_photos():
    photos = aw.photo_gallery()
    assert {"chelsea", "coffee", "astronaut", "rocket"} <= set(photos)
    assert photos["chelsea"].shape == (300, 451, 3) and photos["chelsea"].dtype == np.uint8
    for image in photos.values():
        assert image.ndim == 3 and image.shape[-1] == 3


def test_explorer_starts_on_lite0_and_finds_the_cat(explorer):
    r = explorer.result
    assert (r["model"], r["resolution"], r["layer"]) == ("Lite0", 224, "head")
    assert r["top5"][0][0] in CATS and len(r["top5"]) == 5
    lite0 = aw.load_pretrained("lite0")
    assert r["top5"] == ee.predict(lite0, data.chelsea())  # the same numbers as `predict`
    x = lite0.pretrained.preprocess(Image.fromarray(data.chelsea()))[None]
    top1 = ee.IMAGENET_CATEGORIES.index(r["top5"][0][0])
    np.testing.assert_allclose(r["cam"], ee.gradcam(lite0, x, [top1], "head")[0], atol=1e-6)
    assert r["cam"].shape == (224, 224) and r["cam"].min() == 0 and r["cam"].max() > 0.999
    assert r["feature_size"] == (7, 7)  # the head: 224 / 32
    assert r["image"].shape == (224, 224, 3) and 0 <= r["image"].min() <= r["image"].max() <= 1
    assert explorer.summary().startswith("Lite0 · φ ≈ 0.00 (scaled as B0), 224 px, chelsea")
    # the Output widget holds the summary line and the figure as a PNG, written directly
    stream, picture = explorer.output.outputs
    assert stream["text"] == explorer.summary() + "\n"
    assert picture["data"]["image/png"][:4] == "iVBO"  # base64 of the PNG signature


def test_controls_update_the_result(explorer):
    cam0 = explorer.result["cam"]
    explorer.model.value = "lite1"  # what a student's drag does
    r = explorer.result
    assert (r["model"], r["resolution"], r["feature_size"]) == ("Lite1", 240, (8, 8))
    assert r["label"] == "Lite1 · φ ≈ 0.44" and explorer.model.label == r["label"]
    assert r["cam"].shape == (240, 240) and r["top5"][0][0] in CATS
    assert not np.allclose(aw.resize_cams(r["cam"][None], 224)[0], cam0, atol=0.05)
    explorer.layer.value = "stage3"  # stride 8: a 30 x 30 map
    assert explorer.result["feature_size"] == (30, 30)
    explorer.photo.value = "coffee"
    assert explorer.result["top5"][0][0] == "espresso"
    explorer.layer.value, explorer.photo.value, explorer.model.value = "head", "chelsea", "lite0"
    assert explorer.result["cam"] is cam0  # cached: moving back costs nothing


@pytest.mark.parametrize("k", [0, 1, 2])
def test_lite_k_is_scaled_as_b_k_and_shares_its_fitted_phi(k):
    lite, b = ee.efficientnet_lite_config(k), ee.efficientnet_config(f"b{k}")
    assert (lite.depth, lite.width, lite.resolution) == (b.depth, b.width, b.resolution)
    # least squares in log space by hand: phi = sum(log m * log base) / sum(log base ** 2)
    logs = [(np.log(b.depth), np.log(1.2)), (np.log(b.width), np.log(1.1))]
    logs.append((np.log(b.resolution / 224), np.log(1.15)))
    phi = sum(m * g for m, g in logs) / sum(g * g for _, g in logs)
    assert phi == pytest.approx([0.0, 0.437, 1.021][k], abs=1e-3)  # B1 ≈ 0.44, B2 ≈ 1.02
    assert aw.model_label(f"lite{k}") == f"Lite{k} · φ ≈ {phi:.2f}"
    assert aw.model_label(f"b{k}") == f"B{k} · φ ≈ {phi:.2f}"


def test_display_image_is_the_crop_without_normalisation(explorer):
    r = explorer.result
    crop = transforms.Compose(
        [
            transforms.Resize(224 + 32, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
        ]
    )(Image.fromarray(data.chelsea()))
    np.testing.assert_allclose(r["image"], crop.permute(1, 2, 0).numpy(), atol=1e-5)
    # torchvision's preset keeps mean and std as attributes, not as a Normalize step
    from torchvision.transforms._presets import ImageClassification

    mean, std = aw._normalization(ImageClassification(crop_size=224))
    assert torch.allclose(mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(std.flatten(), torch.tensor([0.229, 0.224, 0.225]))


@pytest.mark.parametrize(
    "parameter, value, build",
    [
        ("name", "lite3", lambda photos: aw.load_pretrained("lite3")),
        ("model", "b0", lambda photos: aw.AttentionExplorer(photos, model="b0")),
        ("models", "resnet", lambda photos: aw.AttentionExplorer(photos, models=("resnet",))),
        ("photo", "dog", lambda photos: aw.AttentionExplorer(photos, photo="dog")),
        ("layer", "neck", lambda photos: aw.AttentionExplorer(photos, layer="neck")),
    ],
)
def test_bad_settings_name_the_parameter_and_the_value(parameter, value, build):
    with pytest.raises(ValueError, match=parameter) as error:
        build({"chelsea": data.chelsea()})
    assert repr(value) in str(error.value)


def test_torchvision_status_reports_one_line_and_stays_quiet(monkeypatch, capsys):
    def offline(*args, **kwargs):
        print('Downloading: "https://download.pytorch.org/..."')  # as torch.hub does
        import sys

        sys.stderr.write("a warning\n")
        raise RuntimeError(
            "Could not get torchvision's ImageNet weights for efficientnet_b0 "
            "(URLError: no network). They are downloaded from ... on first use."
        )

    monkeypatch.setattr(aw, "efficientnet", offline)
    ok, reason = aw.torchvision_weights_status()
    assert not ok and reason == (
        "Could not get torchvision's ImageNet weights for efficientnet_b0 (URLError: no network)."
    )
    captured = capsys.readouterr()
    assert "\n" not in reason and captured.out == "" and captured.err == ""
    monkeypatch.setattr(aw, "efficientnet", lambda *args, **kwargs: None)
    assert aw.torchvision_weights_status() == (True, "")


def test_feature_size_follows_the_strides():
    model = ee.efficientnet(depth=0.25, width=0.25, num_classes=3)
    assert aw.feature_size(model, "stem", 64) == (32, 32)
    assert aw.feature_size(model, "stage3", 64) == (8, 8)
    assert aw.feature_size(model, "stage5", 64) == (4, 4)
    assert aw.feature_size(model, "head", 48) == (2, 2)  # 48 / 32 = 1.5, rounded up
    assert model.training  # mode restored


# ----------------------------------------------------------------------------- synthetic scenes


@pytest.fixture(scope="module")
def study_models():
    def build(depth, width, resolution, seed):
        torch.manual_seed(seed)
        return ee.efficientnet(
            depth=depth, width=width, resolution=resolution, num_classes=24, dropout=0.0
        ).eval()

    return {
        ("baseline", 1.0): build(0.25, 0.25, 32, 0),
        ("depth", 2.0): build(0.5, 0.25, 32, 1),
        ("resolution", 2.0): build(0.25, 0.25, 40, 2),
        ("width", 4.0): build(0.25, 0.5, 32, 3),
    }


@pytest.fixture(scope="module")
def scenes():
    return {r: ee.SyntheticObjects("test", 5, r) for r in (32, 40, 64)}


def test_synthetic_cams_batches_like_one_call(study_models, scenes):
    model = study_models[("baseline", 1.0)]
    images, labels = scenes[32].images, scenes[32].labels
    batched = aw.synthetic_cams(model, images, labels, "stage3", batch_size=2)
    whole = ee.gradcam(model, images.float() / 255, labels.tolist(), "stage3")
    assert batched.shape == (5, 32, 32)
    np.testing.assert_allclose(batched, whole, atol=1e-6)


def test_scale_explorer_slider_switches_targets(study_models, scenes):
    explorer = aw.ScaleAttentionExplorer(
        study_models, scenes, layer="stage3", indices=(0, 1, 2), classes="true"
    )
    assert explorer.targets == [2.0, 4.0] and not explorer.target.disabled
    assert explorer.target.description == "FLOPs" and explorer.target.label == "×2"
    r = explorer.result
    assert r["target"] == 2.0
    assert r["columns"] == [("baseline", 1.0), ("depth", 2.0), ("resolution", 2.0)]
    assert r["labels"] == scenes[64].labels[:3].tolist()
    for key in r["columns"]:
        assert r["cams"][key].shape == (3, 64, 64) and r["images"][key].shape == (3, 64, 64, 3)
        assert 0 <= r["cams"][key].min() and r["cams"][key].max() <= 1
    model, pixels = study_models["resolution", 2.0], scenes[40].images[:3].float() / 255
    reference = ee.resize_cams(ee.gradcam(model, pixels, r["labels"], "stage3"), 64)
    np.testing.assert_allclose(r["cams"]["resolution", 2.0], reference, atol=1e-6)
    # By default each model's CAM is for its own prediction, the class its answer came from.
    own = aw.ScaleAttentionExplorer(study_models, scenes, layer="stage3", indices=(0, 1, 2))
    with torch.no_grad():
        predicted = model.eval()(pixels).argmax(1).tolist()
    assert own.result["predicted"]["resolution", 2.0] == predicted
    reference = ee.resize_cams(ee.gradcam(model, pixels, predicted, "stage3"), 64)
    np.testing.assert_allclose(own.result["cams"]["resolution", 2.0], reference, atol=1e-6)
    with pytest.raises(ValueError, match="classes"):
        aw.ScaleAttentionExplorer(study_models, scenes, classes="best")
    assert r["masks"].shape == (3, 64, 64) and r["masks"].dtype == bool
    assert "resolution (d=0.25, w=0.25, r=40)" in explorer.summary()
    explorer.target.value = 4.0
    assert explorer.result["columns"] == [("baseline", 1.0), ("width", 4.0)]
    assert explorer.summary().startswith("×4 FLOPs")


def test_scale_explorer_checks_its_inputs(study_models, scenes):
    one = {k: v for k, v in study_models.items() if k[1] <= 2 and k[0] != "resolution"}
    assert aw.ScaleAttentionExplorer(one, scenes, layer="stage3", indices=(0,)).target.disabled
    with pytest.raises(ValueError, match=r"datasets.*resolutions \[40\]"):
        aw.ScaleAttentionExplorer(study_models, {32: scenes[32], 64: scenes[64]})
    with pytest.raises(ValueError, match="family.*'height'"):
        aw.ScaleAttentionExplorer({("height", 2.0): study_models[("depth", 2.0)]}, scenes)
    with pytest.raises(ValueError, match="layer 'neck'"):
        aw.ScaleAttentionExplorer(study_models, scenes, layer="neck")
    with pytest.raises(ValueError, match="only a baseline"):
        aw.ScaleAttentionExplorer({("baseline", 1.0): study_models[("baseline", 1.0)]}, scenes)
