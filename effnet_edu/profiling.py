"""Counting what a network costs: parameters, multiply-adds (the paper's "FLOPs"), latency.

The paper reports FLOPs as multiply-adds (B0: 0.39 B). We count them from first principles with
forward hooks, per image:

    Conv2d:  MACs = H_out * W_out * C_out * (C_in / groups) * k_h * k_w
    Linear:  MACs = in_features * out_features

(`torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-add; the tests check we
agree with it exactly.) BatchNorm, activations, pooling and the SE multiply are elementwise and
left out, as in the paper.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def conv2d_macs(conv: nn.Conv2d, output_shape: torch.Size) -> int:
    """Multiply-adds of one Conv2d call for one image, given its output shape (B, C, H, W)."""
    height, width = output_shape[-2:]
    k_h, k_w = conv.kernel_size
    return height * width * conv.out_channels * (conv.in_channels // conv.groups) * k_h * k_w


def _resolution_of(model: nn.Module, resolution: int | None) -> int:
    if resolution is None:
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError("pass resolution=...: the model carries no config to read it from")
        resolution = config.resolution
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    return resolution


@dataclass
class LayerCost:
    """One row of a profile: a module, its output shape for one image, its params and MACs."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


class Profile(list):
    """A list of `LayerCost` rows that also renders as a Markdown table in notebooks."""

    @property
    def total_macs(self) -> int:
        return sum(row.macs for row in self)

    @property
    def total_params(self) -> int:
        return sum(row.params for row in self)

    def to_markdown(self) -> str:
        lines = ["| layer | type | output shape | params | MACs (M) |", "|---|---|---|---|---|"]
        for r in self:
            shape = "x".join(str(s) for s in r.output_shape)
            lines.append(f"| {r.name} | {r.kind} | {shape} | {r.params:,} | {r.macs / 1e6:,.2f} |")
        lines.append(f"| **total** | | | {self.total_params:,} | {self.total_macs / 1e6:,.2f} |")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def __str__(self) -> str:
        return self.to_markdown()


def _leaf_macs(module: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, int]:
    """Run `module` once on zeros of `input_shape` (no batch) in eval mode, and record the MACs of
    every Conv2d and Linear call. The module's mode is restored afterwards."""
    macs: dict[nn.Module, int] = {}

    def hook(m, inputs, output):
        cost = (
            conv2d_macs(m, output.shape)
            if isinstance(m, nn.Conv2d)
            else m.in_features * m.out_features
        )
        macs[m] = macs.get(m, 0) + cost

    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = module.training
    parameter = next(module.parameters(), None)
    x = torch.zeros(1, *input_shape, device=parameter.device if parameter is not None else "cpu")
    try:
        with torch.no_grad():
            module.eval()(x)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return macs


def profile(model: nn.Module, resolution: int | None = None, per_block: bool = False) -> Profile:
    """Output shape, parameters and multiply-adds per part (stem, each stage, head, classifier).

    With ``per_block=True`` every MBConv block is its own row. Counts are for one image.
    """
    resolution = _resolution_of(model, resolution)
    parts = list(model.named_children())
    if hasattr(model, "stages"):  # our EfficientNet: a row per stage (or per block)
        parts = [("stem", model.stem)]
        for s, stage in enumerate(model.stages, start=1):
            blocks = [(f"stage {s}.{j}", block) for j, block in enumerate(stage)]
            parts += blocks if per_block else [(f"stage {s}", stage)]
        parts += [("head", model.head), ("pool", model.pool), ("classifier", model.classifier)]
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    handles = [
        m.register_forward_hook(lambda mod, i, o: shapes.__setitem__(mod, tuple(o.shape[1:])))
        for _, m in parts
    ]
    try:
        leaf = _leaf_macs(model, (3, resolution, resolution))
    finally:
        for h in handles:
            h.remove()
    rows = Profile()
    for name, m in parts:
        kind = (
            f"{len(m)} x {type(m[0]).__name__}"
            if isinstance(m, nn.Sequential)
            else type(m).__name__
        )
        macs = sum(leaf.get(layer, 0) for layer in m.modules())
        rows.append(LayerCost(name, kind, shapes.get(m, ()), count_params(m), macs))
    return rows


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of any module (a block, a layer) for one input of `input_shape`.

    `input_shape` excludes the batch: (C, H, W) for a conv block. Counts Conv2d and Linear.
    """
    return sum(_leaf_macs(module, tuple(input_shape)).values())


def count_flops(model: nn.Module, resolution: int | None = None) -> int:
    """Multiply-adds of one forward pass of one image (the paper's "FLOPs").

    `resolution` defaults to the model's own input resolution (``model.config.resolution``).
    """
    resolution = _resolution_of(model, resolution)
    return count_macs(model, (3, resolution, resolution))


def block_convs(block) -> list[tuple[int, int, int, int, int]]:
    """The convolutions of one block (a `StageConfig` row with repeats 1), in order, as
    (C_in, C_out, kernel, groups, stride); squeeze-and-excitation is counted apart.

    MBConv: 1x1 expansion (only if e != 1), k x k depthwise with the stride, 1x1 projection.
    Fused-MBConv (V2): one dense k x k conv with the stride to C_in * e, then the 1x1
    projection; with e == 1 the k x k conv maps C_in -> C_out itself and there is no projection.
    """
    c_in, c_out, e = block.in_channels, block.out_channels, block.expand_ratio
    k, s, expanded = block.kernel_size, block.stride, c_in * e
    if block.fused:
        if e == 1:
            return [(c_in, c_out, k, 1, s)]
        return [(c_in, expanded, k, 1, s), (expanded, c_out, 1, 1, 1)]
    expand = [(c_in, expanded, 1, 1, 1)] if e != 1 else []
    return expand + [(expanded, expanded, k, expanded, s), (expanded, c_out, 1, 1, 1)]


def _squeeze_channels(block) -> int:
    """SE's squeeze width (0: no SE): from the block's input channels, not the expanded ones."""
    return max(1, int(block.in_channels * block.se_ratio)) if block.se_ratio else 0


def config_flops(config, resolution: int | None = None) -> int:
    """Multiply-adds of one image, computed from the stage table alone (no model is built).

    The same formula as `count_flops`, applied layer by layer on paper: instant, so sliders and
    searches over thousands of configurations can use it. Both paddings give "same"-sized
    outputs, ceil(size / stride).
    """
    size = math.ceil((config.resolution if resolution is None else resolution) / 2)
    total = size * size * config.stem_channels * 3 * 3 * 3  # the stem, stride 2
    for _, _, b, _ in config.blocks():
        for c_in, c_out, kernel, groups, stride in block_convs(b):
            size = math.ceil(size / stride)
            total += size * size * c_out * (c_in // groups) * kernel * kernel
        # SE: two 1x1 convs on the pooled (1 x 1) map of C_in * e channels
        total += 2 * b.in_channels * b.expand_ratio * _squeeze_channels(b)
    total += size * size * config.stages[-1].out_channels * config.head_channels
    return total + config.head_channels * config.num_classes


def config_params(config) -> int:
    """Number of parameters, computed from the stage table alone (no model is built).

    Each conv has C_in / groups * k * k * C_out weights and its BatchNorm 2 * C_out (scale and
    shift); SE's two 1x1 convs carry biases; the classifier has a bias.
    """

    def conv_bn(c_in, c_out, kernel=1, groups=1):
        return c_in // groups * kernel * kernel * c_out + 2 * c_out

    total = conv_bn(3, config.stem_channels, 3)
    for _, _, b, _ in config.blocks():
        for c_in, c_out, kernel, groups, _ in block_convs(b):
            total += conv_bn(c_in, c_out, kernel, groups)
        if squeeze := _squeeze_channels(b):
            expanded = b.in_channels * b.expand_ratio
            total += 2 * expanded * squeeze + squeeze + expanded  # weights and biases
    total += conv_bn(config.stages[-1].out_channels, config.head_channels)
    return total + config.head_channels * config.num_classes + config.num_classes


def measure_latency(
    model: nn.Module,
    resolution: int | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    channels_last: bool = False,
) -> dict[str, float]:
    """Median wall-clock time of an inference forward pass, in milliseconds, and images/s.

    The model is measured on `device` and put back where and as it was (device, layout, mode).
    Timings vary from run to run and machine to machine: report them with the machine.
    """
    resolution = _resolution_of(model, resolution)
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"need batch_size >= 1, repeats >= 1, warmup >= 0; got {batch_size}, "
            f"{repeats}, {warmup}"
        )
    device = torch.device(device)
    was_training, home = model.training, next(model.parameters()).device
    was_channels_last = all(  # the layout to put back: channels_last if every 4-d weight has it
        p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
        if p.dim() == 4
    )
    model.eval().to(device)
    x = torch.randn(batch_size, 3, resolution, resolution, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    layout = torch.channels_last if was_channels_last else torch.contiguous_format
    model.train(was_training).to(home, memory_format=layout)
    median = statistics.median(times)
    return {"ms": median * 1e3, "images_per_s": batch_size / median, "batch_size": batch_size}
