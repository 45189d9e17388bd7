"""The model against torchvision's, and the builder's three ways in (and its errors)."""

import math

import pytest
import torch
from torchvision.models import get_model

import effnet_edu as ee

VARIANTS = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"]
TORCHVISION_PARAMS = {
    "b0": 5_288_548,
    "b1": 7_794_184,
    "b2": 9_109_994,
    "b3": 12_233_232,
    "b4": 19_341_616,
    "b5": 30_389_784,
    "b6": 43_040_704,
    "b7": 66_347_960,
}
TORCHVISION_V2_PARAMS = {"s": 21_458_488, "m": 54_139_356, "l": 118_515_272}


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_and_logits_equal_torchvision(variant):
    theirs = get_model(f"efficientnet_{variant}").eval()
    ours = ee.efficientnet(variant)
    assert ee.count_params(ours) == ee.count_params(theirs) == TORCHVISION_PARAMS[variant]
    # Same BatchNorm settings as torchvision (they matter for eval-mode parity).
    bn_ours = ours.stem.bn
    bn_theirs = theirs.features[0][1]
    assert (bn_ours.eps, bn_ours.momentum) == (bn_theirs.eps, bn_theirs.momentum)

    ee.load_torchvision_state_dict(ours, theirs.state_dict())
    ours.eval()
    # Random BN statistics so that the check is not dominated by the identity-initialised BNs.
    with torch.no_grad():
        for m_ours, m_theirs in zip(
            [m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)],
            [m for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)],
            strict=True,
        ):
            mean, var = (
                torch.randn_like(m_theirs.running_mean) * 0.1,
                torch.rand_like(m_theirs.running_var) + 0.5,
            )
            for m in (m_ours, m_theirs):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 1e-3, "logits too small for the comparison to mean anything"
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_v2_params_and_logits_equal_torchvision(size):
    torch.manual_seed(0)
    theirs = get_model(f"efficientnet_v2_{size}").eval()
    ours = ee.efficientnet_v2(size).eval()
    assert ee.count_params(ours) == ee.count_params(theirs) == TORCHVISION_V2_PARAMS[size]
    assert ours.stem.bn.eps == theirs.features[0][1].eps == 1e-3
    assert ours.dropout.p == theirs.classifier[0].p
    with torch.no_grad():  # random statistics, so that BatchNorm is not the identity
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ee.load_torchvision_state_dict(ours, theirs.state_dict())  # key by key, strictly
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert expected.abs().max() > 1e-3, "logits too small for the comparison to mean anything"
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("size", ["xl", "S", 1])
def test_bad_v2_size(size):
    with pytest.raises(ValueError, match=rf"size must be one of 's', 'm', 'l', got {size!r}"):
        ee.efficientnet_v2(size)


def test_config_travels_with_the_model():
    model = ee.efficientnet("b3")
    c = model.config
    assert (c.name, c.width, c.depth, c.resolution, c.dropout) == ("b3", 1.2, 1.4, 300, 0.3)
    assert c.stem_channels == 40 and c.head_channels == 1536
    assert [s.out_channels for s in c.stages] == [24, 32, 48, 96, 136, 232, 384]
    assert [s.repeats for s in c.stages] == [2, 3, 3, 5, 5, 6, 2]
    assert "| 6 | MBConv6, k5x5, SE | 19x19 | 232 | 6 |" in c.stage_table()
    b7 = ee.efficientnet("b7").config
    assert (b7.stem_channels, b7.head_channels) == (64, 2560)


def test_b0_stage_table_is_the_paper_table_1():
    c = ee.efficientnet("b0").config
    rows = [
        (s.expand_ratio, s.kernel_size, s.stride, s.in_channels, s.out_channels, s.repeats)
        for s in c.stages
    ]
    assert rows == [
        (1, 3, 1, 32, 16, 1),
        (6, 3, 2, 16, 24, 2),
        (6, 5, 2, 24, 40, 2),
        (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3),
        (6, 5, 2, 112, 192, 4),
        (6, 3, 1, 192, 320, 1),
    ]
    assert c.num_blocks == 16


def test_phi_builder_and_single_dimension_builders():
    m = ee.efficientnet(phi=1.5)
    d, w, r = ee.compound_coefficients(1.5)
    assert (m.config.depth, m.config.width) == (d, w)
    assert m.config.resolution == round(224 * r) and m.config.phi == 1.5
    assert ee.efficientnet(phi=0).config.stages == ee.efficientnet("b0").config.stages

    deep = ee.efficientnet(depth=2.0).config
    assert (deep.width, deep.resolution) == (1.0, 224)
    assert [s.repeats for s in deep.stages] == [2, 4, 4, 6, 6, 8, 2]
    wide = ee.efficientnet(width=2.0).config
    assert [s.out_channels for s in wide.stages] == [32, 48, 80, 160, 224, 384, 640]
    assert ee.efficientnet(resolution=320).config.resolution == 320

    small = ee.efficientnet("b0", num_classes=10, dropout=0.0, stochastic_depth=0.0)
    assert small.classifier.out_features == 10 and small.dropout.p == 0.0
    assert small(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_stochastic_depth_rises_linearly_over_blocks():
    model = ee.efficientnet("b0", stochastic_depth=0.2)
    rates = [block.stochastic_depth for stage in model.stages for block in stage]
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])


def test_lite_architecture():
    expected = {0: 4_652_008, 1: 5_416_680, 2: 6_092_072}
    for k, params in expected.items():
        model = ee.efficientnet_lite(k)
        assert ee.count_params(model) == params
        assert model.config.stem_channels == 32 and model.config.head_channels == 1280
        assert all(b.se is None for stage in model.stages for b in stage)
        assert isinstance(model.stem.act, torch.nn.ReLU6)
    lite4 = ee.efficientnet_lite(4).config
    assert lite4.stages[0].repeats == 1 and lite4.stages[-1].repeats == 1  # not depth-scaled
    assert lite4.resolution == 300


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, name, value",
    [
        ({"phi": -1}, ValueError, "phi", "-1"),
        ({"phi": math.nan}, ValueError, "phi", "nan"),
        ({"variant": "b8"}, ValueError, "variant", "'b8'"),
        ({"variant": 3}, ValueError, "variant", "3"),
        ({"depth": 0}, ValueError, "depth", "0"),
        ({"width": -1.0}, ValueError, "width", "-1.0"),
        ({"resolution": 16}, ValueError, "resolution", "16"),
        ({"resolution": 224.5}, TypeError, "resolution", "224.5"),
        ({"num_classes": 0}, ValueError, "num_classes", "0"),
        ({"dropout": 1.5}, ValueError, "dropout", "1.5"),
        ({"stochastic_depth": -0.1}, ValueError, "stochastic_depth", "-0.1"),
        ({"activation": "gelu"}, ValueError, "activation", "'gelu'"),
        ({"activation": "memory_efficient_silu"}, ValueError, "activation", "'memory_eff"),
        ({"variant": "b0", "phi": 1}, ValueError, "variant", "'b0'"),
        ({"phi": 1, "depth": 2}, ValueError, "phi", "1"),
        ({"phi": 1, "pretrained": True}, ValueError, "pretrained", "phi"),
    ],
)
def test_bad_arguments_name_the_parameter_and_value(kwargs, error, name, value):
    with pytest.raises(error) as info:
        ee.efficientnet(**kwargs)
    assert name in str(info.value) and value in str(info.value)


def test_zero_is_a_value_not_a_default():
    model = ee.efficientnet("b0", dropout=0.0, stochastic_depth=0.0)
    assert model.config.dropout == 0.0 and model.config.stochastic_depth == 0.0
    assert ee.efficientnet(phi=0).config.phi == 0.0


@pytest.mark.parametrize("k", [-1, 5, 1.0, "0", True])
def test_bad_lite_k(k):
    with pytest.raises(ValueError, match=rf"Lite k must be an integer 0-4, got {k!r}"):
        ee.efficientnet_lite(k)


@pytest.mark.parametrize("k", [3, 4])
def test_pretrained_lite_only_for_0_1_2(k):
    with pytest.raises(ValueError, match=rf"exist for k = 0, 1, 2; got {k}"):
        ee.efficientnet_lite(k, pretrained=True)


def test_removed_memory_efficient_swish_says_why():
    with pytest.raises(AttributeError, match="nn.SiLU already keeps only its input"):
        ee.MemoryEfficientSiLU  # noqa: B018


def test_interfaces_kept_from_before_the_redesign():
    from effnet_edu import model

    assert ee.LITE_VARIANTS[2] == (1.1, 1.2, 260, 0.3)  # (width, depth, resolution, dropout)
    with pytest.raises(ValueError, match="effnet_edu.efficientnet\\(..., pretrained=True\\)"):
        model.efficientnet("b0", pretrained=True)  # weights live in effnet_edu.pretrained
    with pytest.raises(ValueError, match="alpha, beta, gamma only apply with phi"):
        ee.efficientnet(depth=2.0, alpha=1.3)


@pytest.mark.parametrize("variant", ["b0", "v2"])
def test_zero_init_residual_starts_every_residual_block_as_the_identity(variant):
    def build(zero):
        torch.manual_seed(0)
        if variant == "b0":
            return ee.efficientnet("b0", zero_init_residual=zero).eval()
        model = ee.efficientnet_v2("s")  # Fused-MBConv too, with and without a projection
        if zero:
            model.zero_init_residual_()
        return model.eval()

    plain, zeroed = build(False), build(True)
    blocks = [b for b in zeroed.stages.modules() if isinstance(b, ee.MBConv | ee.FusedMBConv)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = zeroed.stem(x)
        for block in blocks:  # block by block: a residual block passes its input through
            y = block(x)
            assert torch.equal(y, x) == block.use_residual
            x = y
    residual = sum(b.use_residual for b in blocks)
    assert residual > 0 and residual < len(blocks)
    # Only those scales differ from the default initialisation, and the same seed draws the rest.
    differ = [
        k for k, v in plain.state_dict().items() if not torch.equal(v, zeroed.state_dict()[k])
    ]
    assert len(differ) == residual and all(k.endswith(".bn.weight") for k in differ)
    with pytest.raises(ValueError, match="zero_init_residual"):
        ee.efficientnet("b0", zero_init_residual="yes")


def test_reset_parameters_keeps_the_zero_init_the_model_was_built_with():
    model = ee.efficientnet("b0", zero_init_residual=True)
    residual = [b for b in model.stages.modules() if isinstance(b, ee.MBConv) and b.use_residual]
    model.reset_parameters()
    assert all(torch.all(b.project.bn.weight == 0) for b in residual)
    model.reset_parameters(zero_init_residual=False)
    assert all(torch.all(b.project.bn.weight == 1) for b in residual)
