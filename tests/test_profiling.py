"""FLOPs (multiply-adds) against FlopCounterMode and the paper; the 2^phi growth law."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import effnet_edu as ee


def flop_counter_macs(model, resolution):
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return counter.get_total_flops() / 2  # FlopCounterMode counts 2 FLOPs per multiply-add


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"])
def test_count_flops_is_half_of_flop_counter_mode(variant):
    model = ee.efficientnet(variant)
    resolution = model.config.resolution
    assert ee.count_flops(model) == flop_counter_macs(model, resolution)


def test_count_flops_matches_the_paper():
    assert ee.count_flops(ee.efficientnet("b0")) / 1e9 == pytest.approx(0.386, rel=0.01)
    assert ee.count_flops(ee.efficientnet("b7")) / 1e9 == pytest.approx(37.7, rel=0.02)
    # resolution override, and the same count in train mode (mode restored afterwards)
    b2 = ee.efficientnet("b2").train()
    assert ee.count_flops(b2, resolution=288) / 1e9 == pytest.approx(1.088, rel=0.001)
    assert b2.training


def test_flops_grow_as_about_2_to_the_phi():
    """d * w^2 * r^2 predicts the growth; rounding makes real networks a bit more expensive.

    Repeats are rounded *up* (ceil): at phi = 1 depth 1.2 turns B0's 16 blocks into 23 (x1.44,
    the single-block first and last stages double), and channels round to multiples of 8. So the
    measured ratio is never below the prediction and exceeds it by at most 35 %; the excess
    shrinks as phi grows, because rounding matters less for larger multipliers.
    """
    base = ee.count_flops(ee.efficientnet("b0"))
    excess = []
    for phi in (1, 2, 3):
        model = ee.efficientnet(phi=phi)
        c = model.config
        predicted = ee.flops_multiplier(c.depth, c.width, c.resolution / 224)
        measured = ee.count_flops(model) / base
        assert predicted == pytest.approx(1.92027**phi, rel=0.01)  # alpha beta^2 gamma^2 = 1.92
        assert predicted <= measured <= 1.35 * predicted, (phi, measured, predicted)
        assert measured == pytest.approx(2**phi, rel=0.30)
        excess.append(measured / predicted)
    assert excess == sorted(excess, reverse=True)


def test_single_dimension_growth_is_nearly_exact():
    base = ee.count_flops(ee.efficientnet("b0"))
    # resolution x2: every conv output has 4x the pixels; only the classifier does not grow
    assert ee.count_flops(ee.efficientnet(resolution=448)) / base == pytest.approx(4, rel=0.01)
    # width x2: a 1x1 conv's MACs grow 4x (in and out channels double), but a depthwise conv's
    # only 2x (one filter per channel), as do the stem (3 inputs) and the classifier (1000
    # outputs). The 1x1 convs dominate, so the total lands between 3.5x and 4x.
    ratio = ee.count_flops(ee.efficientnet(width=2.0)) / base
    assert 3.5 < ratio < 4.0


def test_profile_table_sums_to_totals():
    model = ee.efficientnet("b0")
    rows = ee.profile(model)
    assert [r.name for r in rows][:3] == ["stem", "stage 1", "stage 2"]
    assert rows.total_params == ee.count_params(model) == 5_288_548
    assert rows.total_macs == ee.count_flops(model)
    assert rows[0].output_shape == (32, 112, 112) and rows[-1].output_shape == (1000,)
    per_block = ee.profile(model, per_block=True)
    assert len([r for r in per_block if r.name.startswith("stage")]) == 16
    assert per_block.total_macs == rows.total_macs
    assert "| stage 6 | 4 x MBConv | 192x7x7 | 2,026,348 |" in rows.to_markdown()


def test_latency_leaves_the_model_as_it_was():
    model = ee.efficientnet("b0", num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ee.measure_latency(model, resolution=64, warmup=0, repeats=1, channels_last=True)
    assert model.training and model.stem.conv.weight.is_contiguous()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="batch_size >= 1.*got 0"):
        ee.measure_latency(model, batch_size=0)


def test_config_flops_equals_counted_flops():
    """The on-paper formula and the hook-based count agree for every kind of network."""
    models = [ee.efficientnet(v) for v in ("b0", "b3")] + [
        ee.efficientnet(phi=1.7),
        ee.efficientnet(depth=0.5, width=0.3, resolution=45),
        ee.efficientnet_lite(2),
        ee.efficientnet(width=1.3, resolution=97, num_classes=7),
    ]
    for model in models:
        assert ee.config_flops(model.config) == ee.count_flops(model), model.config.name
        assert ee.config_params(model.config) == ee.count_params(model), model.config.name
    b0 = ee.efficientnet("b0")
    assert ee.config_flops(b0.config, resolution=300) == ee.count_flops(b0, resolution=300)


def test_count_macs_of_a_single_block_matches_flop_counter():
    block = ee.MBConv(40, 80, expand_ratio=6, kernel_size=3, stride=2)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block.eval()(torch.zeros(1, 40, 28, 28))
    assert ee.count_macs(block, (40, 28, 28)) == counter.get_total_flops() / 2
    # by hand: expand 28*28*240*40 + depthwise 14*14*240*9 + SE 2*240*10 + project 14*14*80*240
    assert ee.count_macs(block, (40, 28, 28)) == (
        28 * 28 * 240 * 40 + 14 * 14 * 240 * 9 + 2 * 240 * 10 + 14 * 14 * 80 * 240
    )


def test_latency_keeps_a_channels_last_model_channels_last():
    model = ee.efficientnet("b0", num_classes=10).to(memory_format=torch.channels_last)
    ee.measure_latency(model, resolution=64, warmup=0, repeats=1)
    assert model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
