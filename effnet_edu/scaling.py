"""Compound scaling: the arithmetic of EfficientNet, as small pure functions.

The paper (Tan & Le, 2019, Section 3.3, Equation 3) scales a baseline network by one
compound coefficient phi:

    depth      d = alpha ** phi
    width      w = beta  ** phi
    resolution r = gamma ** phi     with  alpha * beta**2 * gamma**2 ~= 2,  alpha, beta, gamma >= 1

so that the FLOPs, which grow as d * w**2 * r**2, grow by about 2 ** phi.

Real networks need whole channels and whole layers, so the multipliers are rounded
(`round_filters`, `round_repeats`) exactly as the official TensorFlow implementation does.
`VARIANTS` is the table of released models; B0-B7 do not sit exactly on the alpha**phi,
beta**phi, gamma**phi curve, and `explain_official_variants` measures by how much.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

# The paper's grid search at phi = 1 (Section 3.3, step 1).
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
BASE_RESOLUTION = 224


@dataclass(frozen=True)
class Variant:
    """One released model with every setting it was released with (not alpha**phi ...).

    B0-B7 from the official `efficientnet_builder.py`, Lite0-4 from `efficientnet_lite_builder.py`
    (torchvision and the Lite reference use the same numbers). BatchNorm and padding follow the
    weights we load: B0-B4's were trained in PyTorch (eps 1e-5, momentum 0.1), B5-B7's ported
    from TensorFlow (eps 1e-3, momentum 0.01 = TF's decay 0.99), as Lite's weights, which
    also need TF "same" padding ("tf_same").
    """

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    padding: str = "symmetric"
    activation: str = "silu"
    se: bool = True  # squeeze-and-excitation in every block
    # Lite: stem and head keep B0's widths, first and last stages B0's repeats.
    fixed_ends: bool = False


_TF_BN = {"bn_eps": 1e-3, "bn_momentum": 0.01}
_LITE = {**_TF_BN, "padding": "tf_same", "activation": "relu6", "se": False, "fixed_ends": True}
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("b0", 1.0, 1.0, 224, 0.2),
        Variant("b1", 1.0, 1.1, 240, 0.2),
        Variant("b2", 1.1, 1.2, 260, 0.3),
        Variant("b3", 1.2, 1.4, 300, 0.3),
        Variant("b4", 1.4, 1.8, 380, 0.4),
        Variant("b5", 1.6, 2.2, 456, 0.4, **_TF_BN),
        Variant("b6", 1.8, 2.6, 528, 0.5, **_TF_BN),
        Variant("b7", 2.0, 3.1, 600, 0.5, **_TF_BN),
        Variant("lite0", 1.0, 1.0, 224, 0.2, **_LITE),
        Variant("lite1", 1.0, 1.1, 240, 0.2, **_LITE),
        Variant("lite2", 1.1, 1.2, 260, 0.3, **_LITE),
        Variant("lite3", 1.2, 1.4, 280, 0.3, **_LITE),
        Variant("lite4", 1.4, 1.8, 300, 0.3, **_LITE),
    )
}
# The compound-scaled family of the paper (Table 2): what `fit_phi` and the explorers look at.
OFFICIAL_VARIANTS = {k: v for k, v in VARIANTS.items() if k.startswith("b")}


def check_number(value, name: str, minimum: float, *, strict=False, below=None, hint="") -> float:
    """`value` as a float if it is a finite real number >= `minimum` (> with `strict`) and, if
    given, < `below`; else an error that names the parameter, the value and what is valid."""
    valid = f"a finite number {'>' if strict else '>='} {minimum:g}"
    valid += (f" and < {below:g}" if below is not None else "") + hint
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {valid}, got {value!r} ({type(value).__name__})")
    too_high = below is not None and value >= below
    if not math.isfinite(value) or value < minimum or (strict and value == minimum) or too_high:
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return float(value)


def check_int(value, name: str, minimum: int, hint: str = "") -> int:
    """`value` as an int if it is an integer >= `minimum` (NumPy integers too), else an error that
    names the parameter and the value: TypeError for another type, ValueError below `minimum`."""
    valid = f"{name} must be an integer >= {minimum}{hint}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{valid} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(valid)
    return int(value)


def check_phi(phi: float) -> float:
    """phi as a float, or raise if it is not a finite number >= 0."""
    return check_number(phi, "phi", 0, hint=" (0 is the baseline)")


def compound_coefficients(
    phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA
) -> tuple[float, float, float]:
    """Depth, width and resolution multipliers for compound coefficient phi (Equation 3).

    >>> compound_coefficients(1.0)
    (1.2, 1.1, 1.15)
    """
    phi = check_phi(phi)
    hint = " (the paper requires alpha, beta, gamma >= 1)"
    alpha, beta, gamma = (
        check_number(v, n, 1, hint=hint)
        for v, n in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma"))
    )
    return alpha**phi, beta**phi, gamma**phi


def flops_multiplier(depth: float, width: float, resolution_multiplier: float) -> float:
    """How much FLOPs grow under scaling: d * w**2 * r**2 (Section 3.3).

    Depth adds layers (linear), width multiplies both input and output channels of every
    convolution (square), resolution multiplies both spatial sides (square).
    """
    return depth * width**2 * resolution_multiplier**2


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width` and round it as the official implementation does.

    Round to the nearest multiple of `divisor` (at least `divisor`); if that rounded down by
    more than 10 %, go one multiple up. Hardware likes multiples of 8.

    >>> round_filters(32, 1.1), round_filters(40, 1.1), round_filters(320, 2.0)
    (32, 48, 640)
    """
    width = check_number(width, "width", 0, strict=True)
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # the "10 % rule": never lose more than a tenth of the channels
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale the number of blocks in a stage by `depth`, rounding up (official rule).

    >>> round_repeats(3, 1.1), round_repeats(4, 3.1)
    (4, 13)
    """
    depth = check_number(depth, "depth", 0, strict=True)
    return int(math.ceil(depth * repeats))


@dataclass(frozen=True)
class VariantFit:
    """How well pure compound scaling explains one released variant.

    `phi` is the least-squares fit in log space; `pure_*` are alpha**phi, beta**phi and
    224 * gamma**phi, and a `*_ratio` is the released multiplier over the pure one (1.0: exact).
    """

    name: str
    phi: float
    depth: float
    width: float
    resolution: int
    pure_depth: float
    pure_width: float
    pure_resolution: float

    @property
    def depth_ratio(self) -> float:
        return self.depth / self.pure_depth

    @property
    def width_ratio(self) -> float:
        return self.width / self.pure_width

    @property
    def resolution_ratio(self) -> float:
        return self.resolution / self.pure_resolution


def fit_phi(
    depth: float,
    width: float,
    resolution: float,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    base_resolution: int = BASE_RESOLUTION,
) -> float:
    """The phi that best explains (depth, width, resolution), in the least-squares sense.

    Taking logs turns Equation 3 into three lines through the origin,
    log d = phi log alpha, log w = phi log beta, log(r / r0) = phi log gamma,
    and the best common slope is  phi = sum(log m_i * log b_i) / sum(log b_i ** 2).
    """
    hint = " (a multiplier; 1 is the baseline)"
    depth, width = (
        check_number(m, n, 0, strict=True, hint=hint)
        for m, n in ((depth, "depth"), (width, "width"))
    )
    resolution = check_number(resolution, "resolution", 0, strict=True)
    pairs = [
        (math.log(depth), math.log(alpha)),
        (math.log(width), math.log(beta)),
        (math.log(resolution / base_resolution), math.log(gamma)),
    ]
    denominator = sum(b * b for _, b in pairs)
    if denominator == 0:
        raise ValueError("alpha, beta and gamma cannot all be 1: phi would be undefined")
    return sum(m * b for m, b in pairs) / denominator


def explain_official_variants(
    alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA
) -> list[VariantFit]:
    """For each of B0-B7: the phi that best explains it and how far it departs from pure scaling."""
    fits = []
    for v in OFFICIAL_VARIANTS.values():
        phi = fit_phi(v.depth, v.width, v.resolution, alpha, beta, gamma)
        d, w, r = compound_coefficients(phi, alpha, beta, gamma)
        fits.append(
            VariantFit(v.name, phi, v.depth, v.width, v.resolution, d, w, BASE_RESOLUTION * r)
        )
    return fits
