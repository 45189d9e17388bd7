"""EfficientNet built from a stage table: B0-B7, Lite0-4, any phi, single-dimension scaling, V2.

The architecture is data. `BASELINE_STAGES` is the paper's Table 1 (EfficientNet-B0);
`scale_stages` turns it into the table of a scaled model with `round_filters` and
`round_repeats`; `EfficientNetConfig.blocks()` walks that table block by block (the first block
of a stage takes the stride), and `EfficientNet` builds stem -> MBConv blocks -> head from it.
`efficientnet(...)` is the front door: arguments -> `efficientnet_config` -> module.
EfficientNetV2 is the same builder on other tables (`V2_TABLES`, read into `V2_STAGES`):
`efficientnet_v2("s")`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ACTIVATIONS, PADDINGS, ConvBNActivation, FusedMBConv, MBConv
from .scaling import (
    ALPHA,
    BASE_RESOLUTION,
    BETA,
    GAMMA,
    VARIANTS,
    check_int,
    check_number,
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
    fused: bool = False  # EfficientNetV2's Fused-MBConv instead of MBConv


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
# EfficientNetV2 (Tan & Le, 2021): S is the paper's Table 4; M and L are the official
# effnetv2_configs.py's, as torchvision's. One row per stage, as there:
#   (block, expand_ratio, kernel_size, stride, in_channels, out_channels, repeats)
# Every Fused-MBConv stage is without SE, every MBConv stage has SE 0.25 (`V2_SE_RATIO`).
V2_TABLES: dict[str, tuple[tuple, ...]] = {
    "s": (
        ("FusedMBConv", 1, 3, 1, 24, 24, 2),
        ("FusedMBConv", 4, 3, 2, 24, 48, 4),
        ("FusedMBConv", 4, 3, 2, 48, 64, 4),
        ("MBConv", 4, 3, 2, 64, 128, 6),
        ("MBConv", 6, 3, 1, 128, 160, 9),
        ("MBConv", 6, 3, 2, 160, 256, 15),
    ),
    "m": (
        ("FusedMBConv", 1, 3, 1, 24, 24, 3),
        ("FusedMBConv", 4, 3, 2, 24, 48, 5),
        ("FusedMBConv", 4, 3, 2, 48, 80, 5),
        ("MBConv", 4, 3, 2, 80, 160, 7),
        ("MBConv", 6, 3, 1, 160, 176, 14),
        ("MBConv", 6, 3, 2, 176, 304, 18),
        ("MBConv", 6, 3, 1, 304, 512, 5),
    ),
    "l": (
        ("FusedMBConv", 1, 3, 1, 32, 32, 4),
        ("FusedMBConv", 4, 3, 2, 32, 64, 7),
        ("FusedMBConv", 4, 3, 2, 64, 96, 7),
        ("MBConv", 4, 3, 2, 96, 192, 10),
        ("MBConv", 6, 3, 1, 192, 224, 19),
        ("MBConv", 6, 3, 2, 224, 384, 25),
        ("MBConv", 6, 3, 1, 384, 640, 7),
    ),
}
V2_SE_RATIO = {"FusedMBConv": 0.0, "MBConv": 0.25}


def _v2_stage(block: str, *row: int) -> StageConfig:
    """A `StageConfig` from one row of `V2_TABLES`: the block name sets `fused` and the SE ratio."""
    return StageConfig(*row, se_ratio=V2_SE_RATIO[block], fused=block == "FusedMBConv")


V2_STAGES: dict[str, tuple[StageConfig, ...]] = {
    size: tuple(_v2_stage(*row) for row in rows) for size, rows in V2_TABLES.items()
}
# V2 size -> (evaluation resolution, dropout), as torchvision's weights.
V2_VARIANTS = {"s": (384, 0.2), "m": (480, 0.3), "l": (480, 0.4)}
# EfficientNet-Lite k -> (width, depth, resolution, dropout), from the variant table.
_LITE_FIELDS = ("width", "depth", "resolution", "dropout")
LITE_VARIANTS = {k: tuple(getattr(VARIANTS[f"lite{k}"], f) for f in _LITE_FIELDS) for k in range(5)}


def scale_stages(
    stages: tuple[StageConfig, ...], depth: float, width: float, fixed_ends: bool = False
) -> tuple[StageConfig, ...]:
    """Apply depth and width multipliers to a stage table (channels and repeats, rounded).

    With `fixed_ends` (EfficientNet-Lite) the first and last stages keep their repeats.
    """
    last = len(stages) - 1
    return tuple(
        replace(
            s,
            in_channels=round_filters(s.in_channels, width),
            out_channels=round_filters(s.out_channels, width),
            repeats=s.repeats if fixed_ends and i in (0, last) else round_repeats(s.repeats, depth),
        )
        for i, s in enumerate(stages)
    )


def check_resolution(value, name: str = "resolution") -> int:
    """An input resolution: an integer >= 32 (five stride-2 stages divide it by 32)."""
    return check_int(value, name, MIN_RESOLUTION, " px (the network halves it 5 times)")


@dataclass(frozen=True)
class EfficientNetConfig:
    """Everything needed to build (and display) one EfficientNet, resolved and validated."""

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

    def __post_init__(self):  # every builder argument is checked here, once
        check_number(self.depth, "depth", 0, strict=True)
        check_number(self.width, "width", 0, strict=True)
        check_resolution(self.resolution)
        check_int(self.num_classes, "num_classes", 1)
        check_number(self.dropout, "dropout", 0, below=1)
        check_number(self.stochastic_depth, "stochastic_depth", 0, below=1)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")

    @classmethod
    def from_dict(cls, values: dict) -> EfficientNetConfig:
        """Rebuild a config from `dataclasses.asdict(config)` (as stored in checkpoints)."""
        values = dict(values)
        values["stages"] = tuple(StageConfig(**s) for s in values["stages"])
        if values.get("padding") == "same":  # checkpoints written before the rename
            values["padding"] = "tf_same"
        return cls(**values)

    @property
    def num_blocks(self) -> int:
        return sum(s.repeats for s in self.stages)

    def blocks(self) -> list[tuple[int, int, StageConfig, float]]:
        """Every MBConv block in order: (stage index, index in the stage, row, drop probability).

        A block's row is its stage's with ``repeats=1``: the first block of a stage reads the
        stage's input channels and takes its stride, the others map out -> out at stride 1.
        Stochastic depth grows linearly: block i of N drops with p * i / N (0 for the first).
        """
        walk, in_channels = [], self.stem_channels
        for s, stage in enumerate(self.stages):
            for j in range(stage.repeats):
                first = j == 0
                row = replace(
                    stage,
                    in_channels=in_channels if first else stage.out_channels,
                    stride=stage.stride if first else 1,
                    repeats=1,
                )
                walk.append((s, j, row, self.stochastic_depth * len(walk) / self.num_blocks))
            in_channels = stage.out_channels
        return walk

    def stage_table(self) -> str:
        """The resolved stage table as Markdown (paper Table 1 layout, plus stem and head)."""
        r, size = self.resolution, math.ceil(self.resolution / 2)
        lines = [
            f"{self.name}: depth x{self.depth:.3f}, width x{self.width:.3f}, resolution {r}",
            "",
            "| stage | operator | resolution | channels | layers |",
            "|---|---|---|---|---|",
            f"| stem | Conv3x3, stride 2 | {r}x{r} | {self.stem_channels} | 1 |",
        ]
        for i, s in enumerate(self.stages, start=1):
            block = "FusedMBConv" if s.fused else "MBConv"
            op = f"{block}{s.expand_ratio}, k{s.kernel_size}x{s.kernel_size}" + (
                ", SE" if s.se_ratio else ""
            )
            lines.append(f"| {i} | {op} | {size}x{size} | {s.out_channels} | {s.repeats} |")
            size = math.ceil(size / s.stride)
        lines.append(
            f"| head | Conv1x1 & Pooling & FC | {size}x{size} | {self.head_channels} | 1 |"
        )
        return "\n".join(lines)


@contextlib.contextmanager
def _keep_batchnorm_statistics(module: nn.Module):
    """Restore BatchNorm's running statistics after the block (the recompute of checkpointing)."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    buffers = [b for m in bns for b in (m.running_mean, m.running_var, m.num_batches_tracked)]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def _checkpoint_contexts(stage: nn.Module):
    """`checkpoint`'s (forward, recompute) contexts: the recompute restores BatchNorm's buffers."""
    return contextlib.nullcontext(), _keep_batchnorm_statistics(stage)


class EfficientNet(nn.Module):
    """stem (3x3 conv, stride 2) -> stages of MBConv -> head (1x1 conv) -> pool -> dropout -> FC."""

    def __init__(self, config: EfficientNetConfig):
        super().__init__()
        self.config = config
        act = config.activation
        norm = {
            "bn_eps": config.bn_eps,
            "bn_momentum": config.bn_momentum,
            "padding": config.padding,
        }
        self.stem = ConvBNActivation(3, config.stem_channels, 3, stride=2, activation=act, **norm)
        stages = [nn.Sequential() for _ in config.stages]
        for s, _, b, p in config.blocks():
            block = (FusedMBConv if b.fused else MBConv)(
                b.in_channels, b.out_channels, b.expand_ratio, b.kernel_size, b.stride,
                se_ratio=b.se_ratio, stochastic_depth=p, activation=act, **norm,
            )  # fmt: skip
            stages[s].append(block)
        self.stages = nn.Sequential(*stages)
        last = config.stages[-1].out_channels
        self.head = ConvBNActivation(last, config.head_channels, 1, activation=act, **norm)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.head_channels, config.num_classes)
        # Activation checkpointing per stage: trades recomputation for training memory.
        self.gradient_checkpointing = False
        self.zero_init_residual = False  # set by zero_init_residual_(); reset_parameters keeps it
        self.reset_parameters()

    def reset_parameters(self, zero_init_residual: bool | None = None) -> None:
        """torchvision's initialisation: He (fan-out) for convs, U(+-1/sqrt(out)) for the FC.

        ``zero_init_residual=True`` (default: as the model was built) also sets to zero the
        scale (gamma) of the last BatchNorm in every block that has a residual connection, so
        that each such block starts as the identity and the network starts as shallow as its
        non-residual blocks (Goyal et al., 2017, and torchvision's ResNet zero this scale;
        SkipInit, De & Smith 2020, and Fixup, Zhang et al. 2019, analyse why it lets deep
        residual networks train). Not in the official EfficientNet code or torchvision's
        EfficientNet; the scale study uses it (docs/scale_study.md)."""
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
        if self.zero_init_residual if zero_init_residual is None else zero_init_residual:
            self.zero_init_residual_()

    @torch.no_grad()
    def zero_init_residual_(self) -> None:
        """Set to zero the last BatchNorm scale of every residual block's branch (in place): the
        block then computes x + 0 = x until training moves that scale."""
        self.zero_init_residual = True
        for block in self.stages.modules():
            if isinstance(block, (MBConv, FusedMBConv)) and block.use_residual:
                last = block.project if block.project is not None else block.fused
                nn.init.zeros_(last.bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, stem, H/2, W/2)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Keep only each stage's input; recompute its inside during backward. The recompute
            # runs BatchNorm in training mode again: restore its running statistics after it,
            # so one step updates them once, exactly as without checkpointing.
            for stage in self.stages:
                contexts = functools.partial(_checkpoint_contexts, stage)
                x = checkpoint(stage, x, use_reentrant=False, context_fn=contexts)
        else:
            x = self.stages(x)  # (B, C_last, H/32, W/32)
        return self.head(x)  # (B, head, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)  # (B, head)
        return self.classifier(self.dropout(x))  # (B, num_classes)


def _variant(name) -> str:
    key = str(name).lower().removeprefix("efficientnet_").removeprefix("efficientnet-")
    if not isinstance(name, str) or key not in VARIANTS:
        raise ValueError(
            f"unknown EfficientNet variant {name!r}; valid: {', '.join(VARIANTS)} "
            "(or use phi=..., or depth/width/resolution=...)"
        )
    return key


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
    activation: str | None = None,
) -> EfficientNetConfig:
    """Resolve the arguments of `efficientnet` into a validated `EfficientNetConfig`."""
    if phi is None and (alpha, beta, gamma) != (ALPHA, BETA, GAMMA):
        raise ValueError(
            "alpha, beta, gamma only apply with phi=...; got phi=None and "
            f"(alpha, beta, gamma) = {(alpha, beta, gamma)}"
        )
    explicit = {
        k: v
        for k, v in (("depth", depth), ("width", width), ("resolution", resolution))
        if v is not None
    }
    if variant is not None and (phi is not None or explicit):
        raise ValueError(
            "give either an official variant name, or phi=..., or explicit depth/width/resolution, "
            f"not several (got variant={variant!r}, phi={phi!r}, {explicit})"
        )
    if phi is not None and explicit:
        raise ValueError(
            "phi sets depth, width and resolution together; do not also pass "
            f"{', '.join(explicit)} (got phi={phi!r}, {explicit})"
        )
    v = VARIANTS[_variant(variant) if variant is not None else "b0"]
    name = v.name
    if phi is not None:
        depth, width, r = compound_coefficients(phi, alpha, beta, gamma)
        phi, resolution, name = float(phi), round(BASE_RESOLUTION * r), f"phi={phi:g}"
    depth = v.depth if depth is None else check_number(depth, "depth", 0, strict=True)
    width = v.width if width is None else check_number(width, "width", 0, strict=True)
    resolution = v.resolution if resolution is None else check_resolution(resolution)
    if explicit:
        name = f"depth={depth:g}, width={width:g}, resolution={resolution}"
    stages = BASELINE_STAGES if v.se else tuple(replace(s, se_ratio=0.0) for s in BASELINE_STAGES)
    stages = scale_stages(stages, depth, width, fixed_ends=v.fixed_ends)
    stem, head = (
        round_filters(c, 1.0 if v.fixed_ends else width)
        for c in (BASELINE_STEM_CHANNELS, BASELINE_HEAD_CHANNELS)
    )
    # The first stage reads the stem, whatever the width (Lite keeps the stem at 32 channels).
    stages = (replace(stages[0], in_channels=stem),) + stages[1:]
    return EfficientNetConfig(
        name=name,
        depth=depth,
        width=width,
        resolution=resolution,
        stages=stages,
        stem_channels=stem,
        head_channels=head,
        num_classes=num_classes,
        dropout=v.dropout if dropout is None else dropout,
        stochastic_depth=stochastic_depth,
        phi=phi,
        activation=v.activation if activation is None else activation,
        bn_eps=v.bn_eps,
        bn_momentum=v.bn_momentum,
        padding=v.padding,
    )


def efficientnet(
    variant: str | None = None,
    *,
    gradient_checkpointing: bool = False,
    zero_init_residual: bool = False,
    pretrained=False,
    **options,
) -> EfficientNet:
    """Build an untrained EfficientNet in one of three ways.

    - a released variant: ``efficientnet("b3")`` (B0-B7 exact to torchvision; "lite0"-"lite4");
    - a compound coefficient: ``efficientnet(phi=1.5)`` (depth alpha**phi, width beta**phi,
      resolution 224 * gamma**phi rounded to a whole pixel; any real phi >= 0; Equation 3);
    - explicit multipliers for single-dimension scaling: ``efficientnet(depth=2.0)``,
      ``efficientnet(width=1.5)``, ``efficientnet(resolution=320)`` (the others stay at B0's).

    `options` are those of `efficientnet_config`: `num_classes`, `dropout` (default: the
    variant's), `stochastic_depth` (the last block's drop probability, paper default 0.2),
    `activation`, and `alpha`, `beta`, `gamma` for phi. ``gradient_checkpointing=True``
    recomputes each stage in backward instead of storing its activations (less memory, more
    compute). ``zero_init_residual=True`` starts every residual block as the identity (see
    `EfficientNet.reset_parameters`). ImageNet weights: `effnet_edu.efficientnet(...,
    pretrained=True)` (`pretrained.py`).
    """
    _untrained_only(pretrained)
    if not isinstance(zero_init_residual, bool):
        raise ValueError(f"zero_init_residual must be True or False, got {zero_init_residual!r}")
    model = EfficientNet(efficientnet_config(variant, **options))
    if zero_init_residual:
        model.zero_init_residual_()
    model.gradient_checkpointing = bool(gradient_checkpointing)
    return model


def _untrained_only(pretrained) -> None:
    if pretrained:  # the weights live in pretrained.py, which imports this module
        raise ValueError(
            "effnet_edu.model builds untrained models; for ImageNet weights call "
            "effnet_edu.efficientnet(..., pretrained=True) or effnet_edu.efficientnet_lite(k, "
            "pretrained=True) (effnet_edu.pretrained)"
        )


def efficientnet_lite_config(k: int, **options) -> EfficientNetConfig:
    """The config of EfficientNet-Lite k (k = 0 ... 4): no SE, ReLU6, stem and head not scaled."""
    if isinstance(k, bool) or not isinstance(k, int) or k not in LITE_VARIANTS:
        raise ValueError(f"EfficientNet-Lite k must be an integer 0-4, got {k!r}")
    return efficientnet_config(f"lite{k}", **options)


def efficientnet_lite(k: int, *, pretrained=False, **options) -> EfficientNet:
    """EfficientNet-Lite k, untrained (ImageNet weights: `effnet_edu.efficientnet_lite`)."""
    _untrained_only(pretrained)
    return EfficientNet(efficientnet_lite_config(k, **options))


def efficientnet_v2(
    size: str,
    *,
    num_classes: int = 1000,
    dropout: float | None = None,
    stochastic_depth: float = 0.2,
) -> EfficientNet:
    """EfficientNetV2-S, -M or -L (Tan & Le, 2021), untrained: `V2_STAGES[size]` built as-is.

    Exact to torchvision's ``efficientnet_v2_{size}`` (same parameters, same outputs from the same
    weights): stem 3x3 stride 2 to the first stage's width, head 1x1 to 1280, BatchNorm eps 1e-3.
    """
    if not isinstance(size, str) or size not in V2_STAGES:
        raise ValueError(
            f"EfficientNetV2 size must be one of {', '.join(map(repr, V2_STAGES))}, got {size!r}"
        )
    stages, (resolution, default_dropout) = V2_STAGES[size], V2_VARIANTS[size]
    config = EfficientNetConfig(
        name=f"v2_{size}",
        depth=1.0,
        width=1.0,
        resolution=resolution,
        stages=stages,
        stem_channels=stages[0].in_channels,
        head_channels=1280,  # every size
        num_classes=num_classes,
        dropout=default_dropout if dropout is None else dropout,
        stochastic_depth=stochastic_depth,
        bn_eps=1e-3,
    )
    return EfficientNet(config)
