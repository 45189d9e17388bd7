"""Scaling math against the official implementation's rules and the paper's numbers."""

import math

import pytest

import effnet_edu as ee
from effnet_edu.scaling import OFFICIAL_VARIANTS, VARIANTS


def test_compound_coefficients_match_equation_3():
    assert ee.compound_coefficients(0) == (1.0, 1.0, 1.0)
    d, w, r = ee.compound_coefficients(1)
    assert (d, w, r) == pytest.approx((1.2, 1.1, 1.15))
    # the paper's constraint alpha * beta^2 * gamma^2 ~= 2 (1.92 for the published values)
    assert d * w**2 * r**2 == pytest.approx(1.92027, abs=1e-5)
    d, w, r = ee.compound_coefficients(2.5, alpha=1.3, beta=1.05, gamma=1.2)
    assert (d, w, r) == pytest.approx((1.3**2.5, 1.05**2.5, 1.2**2.5))


@pytest.mark.parametrize(
    "channels, width, expected",
    [
        (32, 1.0, 32),
        (32, 1.1, 32),
        (40, 1.1, 48),
        (16, 1.1, 16),
        (24, 1.2, 32),
        (320, 2.0, 640),
        (1280, 1.1, 1408),
        (1280, 2.0, 2560),
        (112, 1.4, 160),
        (3, 1.0, 8),  # the minimum is one divisor
        (44, 1.0, 48),  # 44 + 4 = 48 -> 48 (round half up)
        (36, 1.0, 40),  # 36 + 4 = 40 -> 40
        (20, 1.0, 24),  # int(20 + 4) // 8 * 8 = 24
        (12, 1.0, 16),  # rounds to 16 (nearest, ties up)
        (10, 1.0, 16),  # rounds to 8, which loses 20 % > 10 %: add 8 -> 16
    ],
)
def test_round_filters_official_rule(channels, width, expected):
    assert ee.round_filters(channels, width) == expected


def test_round_filters_agrees_with_torchvision():
    from torchvision.models._utils import _make_divisible

    for channels in range(1, 400, 3):
        for width in (0.5, 0.75, 1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0, 2.3, 3.7):
            assert ee.round_filters(channels, width) == _make_divisible(channels * width, 8), (
                channels,
                width,
            )


def test_round_repeats_is_ceil():
    assert ee.round_repeats(1, 1.0) == 1
    assert ee.round_repeats(3, 1.1) == 4  # 3.3 -> 4
    assert ee.round_repeats(4, 3.1) == 13  # 12.4 -> 13
    assert ee.round_repeats(2, 1.2) == 3  # 2.4 -> 3


def test_variant_table_matches_the_references():
    """Multipliers and dropout against the Lite reference implementation's table (which copies
    TensorFlow's builders); BatchNorm settings and dropout against torchvision's B0-B7."""
    from efficientnet_lite_pytorch.utils import efficientnet_params
    from torchvision.models import get_model

    for name, v in VARIANTS.items():
        assert (v.width, v.depth, v.resolution, v.dropout) == efficientnet_params(
            f"efficientnet-{name}"
        ), name
        if name in OFFICIAL_VARIANTS:
            theirs = get_model(f"efficientnet_{name}")
            bn = theirs.features[0][1]
            assert (v.bn_eps, v.bn_momentum) == (bn.eps, bn.momentum), name
            assert v.dropout == theirs.classifier[0].p, name
    assert list(OFFICIAL_VARIANTS) == [f"b{i}" for i in range(8)]


def test_fit_phi_recovers_pure_compound_scaling():
    for phi in (0.0, 0.5, 1.0, 3.7):
        d, w, r = ee.compound_coefficients(phi)
        assert ee.fit_phi(d, w, 224 * r) == pytest.approx(phi, abs=1e-12)


def test_explain_official_variants():
    fits = {f.name: f for f in ee.explain_official_variants()}
    assert list(fits) == list(OFFICIAL_VARIANTS)
    assert fits["b0"].phi == 0.0 and fits["b0"].depth_ratio == 1.0
    phis = [f.phi for f in fits.values()]
    assert phis == sorted(phis), "phi must grow from B0 to B7"
    assert fits["b2"].phi == pytest.approx(1.0, abs=0.05)  # B2 is close to phi = 1
    # The releases depart from pure scaling: B7 is ~7 % shallower and ~6 % wider than pure.
    b7 = fits["b7"]
    assert b7.pure_depth == pytest.approx(1.2**b7.phi)
    assert b7.depth_ratio == pytest.approx(3.1 / 1.2**b7.phi)
    assert 0.9 < b7.depth_ratio < 0.95 and 1.05 < b7.width_ratio < 1.08


@pytest.mark.parametrize(
    "call, name, value, error",
    [
        (lambda: ee.compound_coefficients(-0.5), "phi", "-0.5", ValueError),
        (lambda: ee.compound_coefficients(math.nan), "phi", "nan", ValueError),
        (lambda: ee.compound_coefficients(math.inf), "phi", "inf", ValueError),
        (lambda: ee.compound_coefficients("1"), "phi", "'1'", TypeError),
        (lambda: ee.compound_coefficients(1, alpha=0.9), "alpha", "0.9", ValueError),
        (lambda: ee.round_filters(32, 0), "width", "0", ValueError),
        (lambda: ee.round_repeats(3, -1), "depth", "-1", ValueError),
    ],
)
def test_bad_input_names_the_parameter_and_value(call, name, value, error):
    with pytest.raises(error) as info:
        call()
    assert str(info.value).startswith(f"{name} must be") and f"got {value}" in str(info.value)
