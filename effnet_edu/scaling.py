"""Compound scaling: the arithmetic of EfficientNet, as small pure functions.

The paper (Tan & Le, 2019, Section 3.3, Equation 3) scales a baseline network by one
compound coefficient phi:

    depth      d = alpha ** phi
    width      w = beta  ** phi
    resolution r = gamma ** phi     with  alpha * beta**2 * gamma**2 ~= 2,  alpha, beta, gamma >= 1

so that the FLOPs, which grow as d * w**2 * r**2, grow by about 2 ** phi.

Real networks need whole channels and whole layers, so the multipliers are rounded
(`round_filters`, `round_repeats`) exactly as the official TensorFlow implementation does.
The released B0-B7 do not sit exactly on the alpha**phi, beta**phi, gamma**phi curve:
`explain_official_variants` measures by how much.

Used by: notebooks 01 (scaling dimensions) and 03 (compound scaling), assignment A1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The paper's grid search at phi = 1 (Section 3.3, step 1).
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
BASE_RESOLUTION = 224


@dataclass(frozen=True)
class Variant:
    """One released EfficientNet: the multipliers as published (not alpha**phi ...)."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float


# The official table (tensorflow/tpu efficientnet_builder.py; torchvision uses the same numbers).
OFFICIAL_VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("b0", 1.0, 1.0, 224, 0.2),
        Variant("b1", 1.0, 1.1, 240, 0.2),
        Variant("b2", 1.1, 1.2, 260, 0.3),
        Variant("b3", 1.2, 1.4, 300, 0.3),
        Variant("b4", 1.4, 1.8, 380, 0.4),
        Variant("b5", 1.6, 2.2, 456, 0.4),
        Variant("b6", 1.8, 2.6, 528, 0.5),
        Variant("b7", 2.0, 3.1, 600, 0.5),
    )
}


def check_phi(phi: float, name: str = "phi") -> float:
    """Return phi as a float, or raise if it is not a finite number >= 0."""
    if isinstance(phi, bool) or not isinstance(phi, (int, float)):
        raise TypeError(f"{name} must be a real number >= 0, got {phi!r} ({type(phi).__name__})")
    if not math.isfinite(phi) or phi < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 is the B0 baseline), got {phi!r}")
    return float(phi)


def _check_base(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number >= 1, got {value!r}")
    if not math.isfinite(value) or value < 1:
        raise ValueError(
            f"{name} must be a finite number >= 1 (the paper requires alpha, beta, gamma >= 1), "
            f"got {value!r}"
        )
    return float(value)


def compound_coefficients(
    phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA
) -> tuple[float, float, float]:
    """Depth, width and resolution multipliers for compound coefficient phi (Equation 3).

    >>> compound_coefficients(1.0)
    (1.2, 1.1, 1.15)
    """
    phi = check_phi(phi)
    alpha, beta, gamma = (
        _check_base(v, n) for v, n in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma"))
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
    if width <= 0 or not math.isfinite(width):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    if divisor < 1:
        raise ValueError(f"divisor must be a positive integer, got {divisor!r}")
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
    if depth <= 0 or not math.isfinite(depth):
        raise ValueError(f"depth must be a finite number > 0, got {depth!r}")
    return int(math.ceil(depth * repeats))


@dataclass(frozen=True)
class VariantFit:
    """How well pure compound scaling explains one released variant.

    `phi` is the least-squares fit in log space; the `*_ratio` fields are the released
    multiplier divided by the pure one (1.0 means the release follows alpha**phi exactly).
    """

    name: str
    phi: float
    depth: float
    width: float
    resolution: int
    pure_depth: float
    pure_width: float
    pure_resolution: float
    depth_ratio: float
    width_ratio: float
    resolution_ratio: float


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
        pure_resolution = BASE_RESOLUTION * r
        fits.append(
            VariantFit(
                name=v.name,
                phi=phi,
                depth=v.depth,
                width=v.width,
                resolution=v.resolution,
                pure_depth=d,
                pure_width=w,
                pure_resolution=pure_resolution,
                depth_ratio=v.depth / d,
                width_ratio=v.width / w,
                resolution_ratio=v.resolution / pure_resolution,
            )
        )
    return fits
