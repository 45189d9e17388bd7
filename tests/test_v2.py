"""EfficientNetV2 against torchvision: Fused-MBConv's residual and expansion rules, stochastic
depth in training, and the on-paper counts (`config_params`, `config_flops`) of V2's tables.

(Parameter counts and eval-mode logits of V2-S/M/L are in test_model.py; Fused-MBConv's outputs
for a few shapes in test_blocks.py.)"""

import functools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import get_model, get_model_weights
from torchvision.models.efficientnet import FusedMBConv, FusedMBConvConfig

import effnet_edu as ee

# (in, out, expand_ratio, stride): the residual rule's four cases, with and without expansion
SHAPES = [
    (24, 24, 1, 1),  # V2-S stage 1: single 3x3 conv, skip connection
    (16, 24, 1, 1),  # single conv, channels change: no skip
    (48, 48, 4, 1),  # stage 2, repeated block: skip
    (24, 48, 4, 2),  # stage 2, first block: stride 2 and new channels
    (32, 32, 4, 2),  # stride 2 alone removes the skip
]


def torchvision_fused(in_channels, out_channels, expand_ratio, stride, stochastic_depth=0.0):
    config = FusedMBConvConfig(expand_ratio, 3, stride, in_channels, out_channels, 1)
    norm = functools.partial(nn.BatchNorm2d, eps=1e-3)  # V2's BatchNorm
    block = FusedMBConv(config, stochastic_depth, norm)
    with torch.no_grad():  # random statistics, so that eval-mode BatchNorm is not the identity
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return block


def ours_from(theirs, in_channels, out_channels, expand_ratio, stride, stochastic_depth=0.0):
    """Our block with torchvision's weights, name by name: block.{0,1}.{0,1} <-> {fused,
    project}.{conv,bn}. Every tensor is used exactly once."""
    ours = ee.FusedMBConv(
        in_channels, out_channels, expand_ratio, 3, stride, stochastic_depth=stochastic_depth,
        bn_eps=1e-3,
    )  # fmt: skip
    theirs_state = theirs.state_dict()
    rename = {}
    for key in ours.state_dict():
        part, layer, tensor = key.split(".")
        index = ("fused", "project").index(part), ("conv", "bn").index(layer)
        rename[key] = f"block.{index[0]}.{index[1]}.{tensor}"
    assert sorted(rename.values()) == sorted(theirs_state)
    ours.load_state_dict({k: theirs_state[t] for k, t in rename.items()})
    return ours


def structure(block):
    """Every layer in order, with what defines it (not its weights)."""
    rows = []
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            rows.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.stride,
                         m.padding, m.groups, m.bias is None))  # fmt: skip
        elif isinstance(m, nn.BatchNorm2d):
            rows.append(("bn", m.num_features, m.eps, m.momentum))
        elif isinstance(m, (nn.SiLU, nn.ReLU, nn.ReLU6, nn.Sigmoid)):
            rows.append((type(m).__name__,))
    return rows


@pytest.mark.parametrize("in_channels, out_channels, expand_ratio, stride", SHAPES)
def test_fused_mbconv_expansion_rule_is_torchvision_s(
    in_channels, out_channels, expand_ratio, stride
):
    theirs = torchvision_fused(in_channels, out_channels, expand_ratio, stride).eval()
    ours = ours_from(theirs, in_channels, out_channels, expand_ratio, stride).eval()
    assert structure(ours) == structure(theirs)
    if expand_ratio == 1:  # a single k x k conv C_in -> C_out, with its activation
        assert ours.project is None
        assert structure(ours) == [
            ("conv", in_channels, out_channels, (3, 3), (stride, stride), (1, 1), 1, True),
            ("bn", out_channels, 1e-3, 0.1),
            ("SiLU",),
        ]
    else:  # k x k conv to C_in * e with activation, then a linear 1x1 projection
        wide = in_channels * expand_ratio
        assert [row[:3] for row in structure(ours) if row[0] == "conv"] == [
            ("conv", in_channels, wide), ("conv", wide, out_channels)
        ]  # fmt: skip
        assert [row for row in structure(ours) if row[0] == "SiLU"] == [("SiLU",)]
    assert ee.count_params(ours) == ee.count_params(theirs)
    shape = (in_channels, 20, 20)
    assert ee.count_macs(ours, shape) == ee.count_macs(theirs, shape)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == (2, out_channels, 20 // stride, 20 // stride)
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("in_channels, out_channels, expand_ratio, stride", SHAPES)
def test_fused_mbconv_residual_rule_is_torchvision_s(
    in_channels, out_channels, expand_ratio, stride
):
    theirs = torchvision_fused(in_channels, out_channels, expand_ratio, stride).eval()
    ours = ours_from(theirs, in_channels, out_channels, expand_ratio, stride).eval()
    assert (
        ours.use_residual == theirs.use_res_connect == (stride == 1 and in_channels == out_channels)
    )
    x = torch.randn(2, in_channels, 16, 16)
    with torch.no_grad():
        branch = ours.fused(x) if ours.project is None else ours.project(ours.fused(x))
        expected = branch + x if ours.use_residual else branch
        assert (ours(x) - expected).abs().max().item() <= 1e-6
        assert (ours(x) - theirs(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("in_channels, out_channels, expand_ratio, stride", SHAPES[:3])
def test_stochastic_depth_in_training_is_torchvision_s(
    in_channels, out_channels, expand_ratio, stride
):
    """Training mode, drop probability 0.5: per sample, the branch is dropped (out == x) or kept
    and scaled by 1 / 0.5; from the same seed, ours drops the same samples as torchvision's."""
    theirs = torchvision_fused(in_channels, out_channels, expand_ratio, stride, 0.5).train()
    ours = ours_from(theirs, in_channels, out_channels, expand_ratio, stride, 0.5).train()
    x = torch.randn(64, in_channels, 8, 8)
    torch.manual_seed(1)
    expected = theirs(x)
    torch.manual_seed(1)
    got = ours(x)
    assert (got - expected).abs().max().item() <= 1e-5
    if ours.use_residual:
        with torch.no_grad():
            branch = ours.fused(x) if ours.project is None else ours.project(ours.fused(x))
        dropped = (got - x).flatten(1).abs().amax(dim=1) == 0  # (B,)
        assert 10 < dropped.sum() < 54  # about half of 64
        kept = ~dropped
        assert torch.allclose(got[kept], x[kept] + branch[kept] / 0.5, atol=1e-5)


def test_v2_training_forward_equals_torchvision():
    """Stochastic depth (rising to 0.2 over the 40 blocks) and dropout in training mode, through
    both block types of V2-S: from the same seed, the same logits and gradients."""
    theirs = get_model("efficientnet_v2_s", num_classes=10).train()
    ours = ee.efficientnet_v2("s", num_classes=10).train()
    ee.load_torchvision_state_dict(ours, theirs.state_dict())
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(3)
    expected = theirs(x)
    torch.manual_seed(3)
    got = ours(x)
    assert (got - expected).abs().max().item() <= 1e-4
    expected.square().sum().backward()
    got.square().sum().backward()
    assert torch.allclose(ours.stem.conv.weight.grad, theirs.features[0][0].weight.grad, atol=1e-4)


def test_v2_tables_chain_their_channels():
    for size, stages in ee.V2_STAGES.items():
        for before, stage in zip(stages[:-1], stages[1:], strict=True):
            assert stage.in_channels == before.out_channels, (size, stage)
        assert [s.fused for s in stages[:3]] == [True] * 3 and not any(s.fused for s in stages[3:])
        assert all(s.se_ratio == (0.0 if s.fused else 0.25) for s in stages)
    assert (
        "| 2 | FusedMBConv4, k3x3 | 192x192 | 48 | 4 |"
        in ee.efficientnet_v2("s").config.stage_table()
    )


@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_config_counts_equal_built_v2_models(size):
    """The on-paper counts equal the built model's (hooks), and torchvision's published ones."""
    model = ee.efficientnet_v2(size)
    meta = get_model_weights(f"efficientnet_v2_{size}").DEFAULT.meta
    assert ee.config_params(model.config) == ee.count_params(model) == meta["num_params"]
    for resolution in (64, 97):
        assert ee.config_flops(model.config, resolution) == ee.count_flops(model, resolution)
    # torchvision's "GFLOPS" are multiply-adds at the weights' crop (384 for S, 480 for M and L)
    assert round(ee.config_flops(model.config) / 1e9, 3) == meta["_ops"]


def test_config_counts_of_scaled_and_unusual_v2_configs():
    """A scaled-down V2-S (the V2 notebook's training model), and a fused e = 1 stage that
    changes the channel count (a single k x k conv, C_in != C_out)."""
    from dataclasses import replace

    base = ee.efficientnet_v2("s", num_classes=24).config
    small = replace(
        base, depth=0.25, width=0.5, resolution=56, stages=ee.scale_stages(base.stages, 0.25, 0.5),
        stem_channels=ee.round_filters(24, 0.5), head_channels=ee.round_filters(1280, 0.5),
    )  # fmt: skip
    odd = replace(base, stem_channels=16, resolution=75)
    odd = replace(odd, stages=(replace(odd.stages[0], in_channels=16),) + odd.stages[1:])
    for config in (small, odd):
        model = ee.EfficientNet(config)
        assert ee.config_params(config) == ee.count_params(model), config
        assert ee.config_flops(config) == ee.count_flops(model), config
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.zeros(1, 3, config.resolution, config.resolution))
        assert ee.count_flops(model) == counter.get_total_flops() / 2  # 2 FLOPs per multiply-add


def test_count_flops_of_v2_s_at_its_crop():
    model = ee.efficientnet_v2("s")
    assert ee.count_flops(model) == ee.config_flops(model.config) == 8_365_617_152  # at 384 px


def test_fused_block_macs_by_hand():
    # V2-S stage 2's repeated block at 384 px: 48 -> 192 (3x3 dense) -> 48 (1x1) on 96 x 96
    fused = ee.FusedMBConv(48, 48, expand_ratio=4, kernel_size=3, stride=1)
    mbconv = ee.MBConv(48, 48, expand_ratio=4, kernel_size=3, stride=1, se_ratio=0.0)
    pixels = 96 * 96
    assert ee.count_macs(fused, (48, 96, 96)) == pixels * (48 * 192 * 9 + 192 * 48)
    assert ee.count_macs(mbconv, (48, 96, 96)) == pixels * (48 * 192 + 192 * 9 + 192 * 48)
