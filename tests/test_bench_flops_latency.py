"""The counting half of benchmarks/bench_flops_latency.py, against torchvision's weights metadata
and hand counts. Only what is exact is tested: no measured time or speed is ever asserted on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torchvision
from torch import nn

import effnet_edu as ee

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "bench_flops_latency", ROOT / "benchmarks" / "bench_flops_latency.py"
)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclasses look their module up while being built
_spec.loader.exec_module(bench)


def metadata(name: str) -> dict:
    return torchvision.models.get_model_weights(name).DEFAULT.meta


@pytest.fixture(scope="module")
def resnet50():
    return bench.build_model("resnet50")


def test_crop_sizes_come_from_the_weights_metadata():
    crops = {name: bench.crop_size(name) for name in bench.MODELS}
    assert crops == {
        "efficientnet_b0": 224,
        "efficientnet_b1": 240,
        "efficientnet_b3": 300,
        "resnet18": 224,
        "resnet50": 224,
        "mobilenet_v2": 224,
        "mobilenet_v3_large": 224,
    }


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_parameters_equal_torchvision_metadata(name, resnet50):
    model = resnet50 if name == "resnet50" else bench.build_model(name)
    assert ee.count_params(model) == metadata(name)["num_params"]  # what count_costs reports


def test_our_b0_has_torchvision_b0_parameter_count():
    ours = bench.build_model("efficientnet_b0")
    assert isinstance(ours, ee.EfficientNet)  # the script uses ours for EfficientNet
    theirs = torchvision.models.efficientnet_b0()
    assert ee.count_params(ours) == ee.count_params(theirs) == 5_288_548
    assert ee.count_params(ours) == metadata("efficientnet_b0")["num_params"]


def test_torchvision_gflops_metadata_are_multiply_adds(resnet50):
    """ResNet-50's "GFLOPS" (4.089) are GMACs: FlopCounterMode's FLOPs are twice as many."""
    macs = ee.count_macs(resnet50, (3, 224, 224))  # what count_costs reports
    assert macs / 1e9 == pytest.approx(metadata("resnet50")["_ops"], abs=0.0005)  # 4.089
    assert bench.count_flop_counter_flops(resnet50, 224) == 2 * macs


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_b0"])
def test_macs_within_2_percent_of_the_metadata(name):
    model = bench.build_model(name)
    macs = ee.count_macs(model, (3, bench.crop_size(name), bench.crop_size(name)))
    assert macs / 1e9 == pytest.approx(metadata(name)["_ops"], rel=0.02)


def test_activations_against_a_hand_count():
    """conv 3 -> 8 channels, stride 2 on 16 x 16: 8 x 8 x 8 = 512 outputs; BatchNorm and ReLU
    keep the shape (512 each); a 2 x 2 max-pool gives 8 x 4 x 4 = 128; the *same* ReLU module
    called again on it adds 128 more (hooks count calls, as ResNet's reused ReLU needs)."""
    relu = nn.ReLU()
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), relu, nn.MaxPool2d(2), relu
    )
    model.train()
    counts = bench.count_activations(model, 16)
    assert counts == {
        "conv": 512,
        "linear": 0,
        "pool": 128,
        "norm": 512,
        "activation": 512 + 128,
        "dollar": 512 + 128,  # Dollár et al.: conv, linear and pooling outputs
        "total": 512 + 128 + 512 + 640,
    }
    assert model.training  # the mode is put back


def test_saved_bytes_against_a_hand_count():
    """Training forward of conv -> BatchNorm -> ReLU on 2 images of 3 x 16 x 16, fp32. Autograd
    keeps the conv's input (3 x 16 x 16) for the weight gradient, BatchNorm's input (the conv
    output, 8 x 8 x 8) and its batch mean and inverse std (8 + 8, for the whole batch), and ReLU's
    output (8 x 8 x 8); weights and running statistics are not counted."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    per_batch = 4 * (2 * 3 * 16 * 16 + 2 * 512 + (8 + 8) + 2 * 512)
    assert bench.count_saved_bytes(model, 16, batch_size=2) == per_batch // 2


def test_model_names_and_aliases():
    assert bench.canonical_name("b0") == "efficientnet_b0"
    assert bench.canonical_name("ResNet50") == "resnet50"
    with pytest.raises(ValueError, match="choose from"):
        bench.canonical_name("vgg16")


def test_rank_correlation():
    assert bench.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3) against (1.5, 1.5, 3): a tie shares its mean rank
    assert bench.rank_correlation([1, 2, 3], [5, 5, 9]) == pytest.approx(0.8660254)


def test_orderings_sort_cheapest_and_fastest_first():
    """Made-up numbers (not measurements): MACs ascend; latency ascends; throughput descends."""

    def result(name, macs, latency_ms, images_per_s):
        costs = bench.Costs(1, macs, 2 * macs, {"dollar": macs}, 0)
        timing = bench.Timings("cpu", "wall", 16, "fp32", 1, [latency_ms], [images_per_s])
        return bench.Result(name, name, "test", 224, costs, {"cpu": timing})

    results = [result("a", 3, 1.0, 50.0), result("b", 1, 3.0, 10.0), result("c", 2, 2.0, 90.0)]
    orders = bench.orderings(results)
    assert orders["MACs"] == ["b", "c", "a"]
    assert orders["cpu latency"] == ["a", "c", "b"]
    assert orders["cpu training throughput"] == ["c", "a", "b"]


def test_a_saved_run_is_drawn_again(tmp_path):
    """--json writes what --replot draws; a missing --plot is refused with a clear message."""
    saved, picture = tmp_path / "run.json", tmp_path / "run.png"
    args = ["--quick", "--threads", "1", "--models", "b0", "mobilenet_v3_large", "--repeats", "1"]
    bench.main([*args, "--json", str(saved)])
    assert bench.main(["--replot", str(saved), "--plot", str(picture)]) == []
    assert picture.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):
        bench.parse_args(["--replot", str(saved)])
