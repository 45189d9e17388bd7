"""The counts behind the big-picture notebook's Figure 1, against torchvision's weights metadata.

Every network of the figure, with every set of ImageNet weights torchvision publishes for it:
our parameter count equals the metadata's `num_params` exactly, and our multiply-add count at
that weight's own evaluation crop is within 2 % of its `_ops` ("GFLOPS", which are multiply-adds).
EfficientNet-B0-B7 are ours (`effnet_edu.efficientnet`), the rest torchvision's, built without
weights. Models are built on the meta device (shapes only): the last test checks that this gives
the same counts as real CPU tensors.
"""

import functools

import pytest
import torch
import torchvision

import effnet_edu as ee

OTHERS = (
    "resnet50",
    "resnet101",
    "resnet152",
    "densenet201",
    "inception_v3",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mnasnet1_0",
    "regnet_y_400mf",
    "regnet_y_1_6gf",
    "regnet_y_8gf",
)
EFFICIENTNETS = tuple(f"efficientnet_b{k}" for k in range(8))
WEIGHTS = [
    (name, weights.name)
    for name in OTHERS + EFFICIENTNETS
    for weights in torchvision.models.get_model_weights(name)
]


def build(name: str, device: str = "meta") -> torch.nn.Module:
    """A network without weights; RegNet's builder reads tensor values: built on the CPU."""
    here = "cpu" if name.startswith("regnet") else device
    with torch.device(here):
        if name in EFFICIENTNETS:
            return ee.efficientnet(name.removeprefix("efficientnet_"))
        options = {"init_weights": False} if name == "inception_v3" else {}
        model = torchvision.models.get_model(name, weights=None, **options)
    return model.to(device)


@functools.cache
def counts(name: str, crop: int) -> tuple[int, int]:
    model = build(name)
    return ee.count_params(model), ee.count_macs(model, (3, crop, crop))


@pytest.mark.parametrize(("name", "weights_name"), WEIGHTS)
def test_counts_match_torchvision_metadata(name, weights_name):
    weights = torchvision.models.get_model_weights(name)[weights_name]
    crop = weights.transforms().crop_size[0]
    params, macs = counts(name, crop)
    assert params == weights.meta["num_params"]
    gmacs = weights.meta["_ops"]
    assert abs(macs / 1e9 / gmacs - 1) < 0.02, f"{name} at {crop} px: {macs / 1e9:.4f} G vs {gmacs}"


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large"])
def test_meta_device_counts_equal_cpu_counts(name):
    on_cpu, on_meta = build(name, "cpu"), build(name)
    assert next(on_meta.parameters()).device.type == "meta"
    cpu_counts, meta_counts = (
        (ee.count_params(m), ee.count_macs(m, (3, 240, 240))) for m in (on_cpu, on_meta)
    )
    assert cpu_counts == meta_counts
