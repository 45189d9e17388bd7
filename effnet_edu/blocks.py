"""The layers EfficientNet is made of: conv-BN-activation, squeeze-and-excitation, MBConv, and
EfficientNetV2's Fused-MBConv.

MBConv is MobileNetV2's inverted residual bottleneck (Sandler et al., 2018) with
squeeze-and-excitation (Hu et al., 2018) and stochastic depth (Huang et al., 2016), as used by
EfficientNet (Tan & Le, 2019, Section 4 and Table 1):

    x (C_in) -> 1x1 expand (C_in * e) -> k x k depthwise, stride s -> SE -> 1x1 project (C_out)
      \\_________________________ + (only if s == 1 and C_in == C_out) _________________________/

Fused-MBConv (EfficientNetV2, Tan & Le, 2021, Section 3.2 and Figure 2) fuses the first two:

    x (C_in) -> k x k conv, stride s (C_in * e) -> 1x1 project (C_out)      (+ x, same rule)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("silu", "relu6")
PADDINGS = ("symmetric", "tf_same")


def make_activation(name: str) -> nn.Module:
    """The activation module for a config name: "silu" (swish) or "relu6" (Lite)."""
    if name == "silu":
        return nn.SiLU(inplace=True)  # swish: x * sigmoid(x)
    if name == "relu6":
        return nn.ReLU6(inplace=True)  # EfficientNet-Lite: quantisation friendly
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class TFSamePadConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, computed from each input's size.

    Not PyTorch's ``padding="same"``, which is only allowed at stride 1. TensorFlow pads so
    that out = ceil(in / stride), the odd extra pixel on the right/bottom; PyTorch's symmetric
    (k - 1) // 2 differs at stride 2, and weights trained in TensorFlow (EfficientNet-Lite) only
    reproduce their outputs with this.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # F.pad wants (left, right, top, bottom): width first
        for size, k, s in zip(
            x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)  # EfficientNet: no dilation
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class ConvBNActivation(nn.Module):
    """Convolution -> BatchNorm -> activation (or none: the linear bottleneck)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = "silu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        conv, pad = (
            (TFSamePadConv2d, 0) if padding == "tf_same" else (nn.Conv2d, (kernel_size - 1) // 2)
        )
        self.conv = conv(
            in_channels, out_channels, kernel_size, stride, pad, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = make_activation(activation) if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcitation(nn.Module):
    """Channel attention: pool to one value per channel, squeeze, excite, rescale.

    The squeeze width comes from the block's *input* channels (C_in * se_ratio), not the expanded
    width it operates on: for B0's stage 2, 96 expanded channels squeeze to 16 * 0.25 = 4.
    """

    def __init__(self, channels: int, squeeze_channels: int, activation: str = "silu"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)  # a 1x1 conv is a per-pixel FC
        self.act = make_activation(activation)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        scale = self.expand(self.act(self.reduce(scale)))  # (B, C, 1, 1)
        return x * torch.sigmoid(scale)


def stochastic_depth(x: torch.Tensor, drop_probability: float, training: bool) -> torch.Tensor:
    """Drop the whole residual branch for a random subset of samples (Huang et al., 2016).

    Survivors are scaled by 1 / survival so the expected value is unchanged; at evaluation the
    branch is always kept. (The official code calls this "drop connect".)
    """
    if not training or drop_probability == 0.0:
        return x
    survival = 1.0 - drop_probability
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
    keep.bernoulli_(survival)  # (B, 1, 1, 1): one coin per sample
    # Scale the tiny mask, not the activation: one full-size pass instead of two (faster,
    # and bit-identical to torchvision's stochastic_depth).
    keep.div_(survival)  # 0 or 1 / survival
    return x * keep


class ResidualBlock(nn.Module):
    """What MBConv and FusedMBConv share: the residual rule and stochastic depth.

    Each block computes its branch in `forward` and ends with ``self.add_residual(out, x)``.
    Stochastic depth drops the branch, never the skip, so a block without a skip connection
    has nothing to drop (its `stochastic_depth` is then unused).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, stochastic_depth: float):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if not 0.0 <= stochastic_depth < 1.0:
            raise ValueError(f"stochastic_depth must be in [0, 1), got {stochastic_depth!r}")
        # The residual rule: a skip connection only where the branch keeps x's shape.
        self.use_residual = stride == 1 and in_channels == out_channels
        self.stochastic_depth = stochastic_depth

    def add_residual(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """out + x (the branch randomly dropped per sample in training) when the shapes allow."""
        if not self.use_residual:  # stride 2 or new channels: out and x differ in shape
            return out
        out = stochastic_depth(out, self.stochastic_depth, self.training)  # (B, C, H, W)
        out += x  # in place: BatchNorm's backward needs its input, not this output
        return out

    def extra_repr(self) -> str:
        if not self.use_residual:  # no skip connection, so nothing to drop
            return "use_residual=False"
        return f"use_residual=True, stochastic_depth={self.stochastic_depth:.4f}"


class MBConv(ResidualBlock):
    """Mobile inverted bottleneck with optional squeeze-and-excitation and stochastic depth.

    The residual is added in place into the projection's output (as torchvision does, to save
    memory): a forward hook on `.project` must clone its output to see the branch alone.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel_size: int,
        stride: int,
        se_ratio: float = 0.25,
        stochastic_depth: float = 0.0,
        activation: str = "silu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ):
        super().__init__(in_channels, out_channels, stride, stochastic_depth)
        norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum, "padding": padding}
        expanded = in_channels * expand_ratio
        # No expansion when the ratio is 1 (stage 1), as in the official code: the block is then a
        # depthwise separable convolution, whose 1x1 projection already mixes the channels.
        self.expand = (
            ConvBNActivation(in_channels, expanded, 1, activation=activation, **norm)
            if expand_ratio != 1
            else None
        )
        self.depthwise = ConvBNActivation(
            expanded, expanded, kernel_size, stride, groups=expanded, activation=activation, **norm
        )
        self.se = (
            SqueezeExcitation(expanded, max(1, int(in_channels * se_ratio)), activation)
            if se_ratio
            else None
        )
        # Linear bottleneck: no activation after the projection, since ReLU-like functions on a
        # narrow (low-dimensional) representation destroy information (MobileNetV2, Section 3.2).
        self.project = ConvBNActivation(expanded, out_channels, 1, activation=None, **norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)  # (B, C_in * e, H, W)
        out = self.depthwise(out)  # (B, C_in * e, H / s, W / s)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)  # (B, C_out, H / s, W / s)
        return self.add_residual(out, x)  # + x only if s == 1 and C_in == C_out


class FusedMBConv(ResidualBlock):
    """EfficientNetV2's Fused-MBConv: one regular k x k conv instead of 1x1 expand + depthwise.

    A dense convolution costs more FLOPs than the pair it replaces but runs far better on
    accelerators, so V2 uses it only in its early, narrow stages (Tan & Le, 2021, Section 3.2,
    Table 3), and there without squeeze-and-excitation (Table 4). With expand_ratio 1 the k x k
    conv maps C_in -> C_out directly, keeping its activation; there is no projection. The
    residual rule and stochastic depth are MBConv's (`ResidualBlock`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel_size: int,
        stride: int,
        se_ratio: float = 0.0,
        stochastic_depth: float = 0.0,
        activation: str = "silu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ):
        super().__init__(in_channels, out_channels, stride, stochastic_depth)
        if se_ratio:
            raise ValueError(
                f"FusedMBConv has no squeeze-and-excitation (EfficientNetV2's fused stages have "
                f"none), got se_ratio={se_ratio!r}; pass 0.0, or use MBConv for SE"
            )
        norm = {"bn_eps": bn_eps, "bn_momentum": bn_momentum, "padding": padding}
        expanded = in_channels * expand_ratio if expand_ratio != 1 else out_channels
        self.fused = ConvBNActivation(
            in_channels, expanded, kernel_size, stride, activation=activation, **norm
        )
        # Linear bottleneck, as in MBConv: no activation after the projection.
        self.project = (
            ConvBNActivation(expanded, out_channels, 1, activation=None, **norm)
            if expand_ratio != 1
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fused(x)  # (B, C_in * e, H / s, W / s); (B, C_out, H / s, W / s) if e == 1
        if self.project is not None:
            out = self.project(out)  # (B, C_out, H / s, W / s)
        return self.add_residual(out, x)  # + x only if s == 1 and C_in == C_out
