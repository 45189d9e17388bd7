"""FLOPs are not latency: what EfficientNet, ResNet and MobileNet cost, counted and measured.

One run, seven networks, each at its own ImageNet evaluation crop (read from torchvision's
weights metadata, ``weights.transforms().crop_size``: B0 224, B1 240, B3 300, the others 224):
EfficientNet-B0, B1 and B3 (effnet_edu's, ``effnet_edu.efficientnet("b0")``: the architecture and
parameter count of torchvision's ``efficientnet_b0``) against torchvision's ResNet-18, ResNet-50,
MobileNetV2 and MobileNetV3-Large, all with random weights (``weights=None``; weights do not
change the cost). Per image, counted (exact, the same on every machine):

- params: every parameter (weights, biases, BatchNorm's scale and shift);
- MACs: multiply-adds of the Conv2d and Linear layers, by `effnet_edu.profiling.count_macs`
  (forward hooks). torchvision's metadata calls the same number "GFLOPS" (ResNet-50: 4.09).
  `torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-add; the script checks
  that it reports exactly 2 x MACs for every model;
- activations: elements of the output tensors of every convolution and linear layer and of every
  fixed-window pooling layer (ResNet's max-pool), the definition of Dollár et al. 2021, "Fast and
  Accurate Model Scaling" (their code, pycls, counts exactly these), who show that activations
  predict GPU runtime better than FLOPs;
- layer outputs: the same plus the outputs of every normalisation and activation module (forward
  hooks on those leaf modules, counted once per call: ResNet calls its one ReLU module several
  times). Elementwise work done by functions rather than modules is not counted: residual
  additions, the SE multiply, and the SE gate's sigmoid in effnet_edu's blocks (torchvision's is
  an `nn.Sigmoid` module: a few thousand 1 x 1 elements, under 0.1 % of the total);
- saved for backward: bytes of the tensors autograd keeps for the backward pass of one training
  forward (fp32, NCHW), per image: summed by `torch.autograd.graph.saved_tensors_hooks`, each
  storage counted once, the model's parameters and buffers excluded.

Measured (medians over interleaved repeats: every repeat visits every model once, alternating
the order, so a burst of machine noise does not hit one model only):

- latency: one forward pass of one image, eval mode, ``no_grad``, channels_last, fp32, in ms;
- training: forward + backward + SGD step (momentum 0.9), training mode, channels_last, batch 16
  on the CPU (fp32) or 128 on CUDA (bf16 autocast where the GPU computes bf16 natively, else fp16
  autocast with a GradScaler),
  in images/s. On CUDA also the peak memory one training step adds.

The CPU is always measured; CUDA too when the device is a GPU (timed regions are synchronised).

    python benchmarks/bench_flops_latency.py --quick                  # smoke run, 96 px, < 1 min
    python benchmarks/bench_flops_latency.py --threads 1 --clock cpu  # on a busy, shared machine
    python benchmarks/bench_flops_latency.py --out flops.md --json flops.json
    python benchmarks/bench_flops_latency.py --device cuda --models b0 resnet50
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # a source checkout, and bench_throughput beside us

from bench_throughput import (  # noqa: E402
    CLOCKS,
    add_thread_and_clock_arguments,
    load_average,
    machine_description,
    write_report,
)

import effnet_edu as ee  # noqa: E402
from effnet_edu.profiling import count_macs  # noqa: E402
from effnet_edu.training import autocast_dtype, select_device  # noqa: E402

# --models key (torchvision's model name) -> the label in the tables. EfficientNets are ours.
MODELS = {
    "efficientnet_b0": "EfficientNet-B0",
    "efficientnet_b1": "EfficientNet-B1",
    "efficientnet_b3": "EfficientNet-B3",
    "resnet18": "ResNet-18",
    "resnet50": "ResNet-50",
    "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3_large": "MobileNetV3-Large",
}
OURS = ("efficientnet_b0", "efficientnet_b1", "efficientnet_b3")
TRAIN_BATCH = {"cpu": 16, "cuda": 64}  # B3 at 300 px and batch 64 needs ~10 GiB in 16 bits
WARMUP = {"cpu": 2, "cuda": 10}  # untimed calls per model: allocator, oneDNN/cuDNN kernel choice
REPEATS = {"cpu": 10, "cuda": 30}
QUICK = {"resolution": 96, "repeats": 2, "warmup": 1, "batch_size": 8}  # a smoke run, < 1 min
MIB = 2**20

# The leaf modules whose outputs are counted, by kind. Dollár et al.'s "activations" are the
# first three; "layer outputs" are all five. Global pooling (nn.AdaptiveAvgPool2d) is left out,
# as in pycls: its output is one value per channel.
LAYER_KINDS: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
    "pool": (nn.MaxPool2d, nn.AvgPool2d),
    "norm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm),
    "activation": (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.GELU),
}
DOLLAR_KINDS = ("conv", "linear", "pool")


# ----------------------------------------------------------------------------- the models


def canonical_name(name: str) -> str:
    """ "b0" and "efficientnet_b0" are the same model; anything else must be a key of MODELS."""
    key = name.lower().replace("-", "_")
    key = f"efficientnet_{key}" if key in ("b0", "b1", "b3") else key
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)} (or b0, b1, b3)")
    return key


def build_model(name: str) -> nn.Module:
    """Ours for EfficientNet (the same network as torchvision's), torchvision's for the others;
    seeded random weights."""
    torch.manual_seed(0)
    if name in OURS:
        return ee.efficientnet(name.removeprefix("efficientnet_"))
    return torchvision.models.get_model(name, weights=None)


def crop_size(name: str) -> int:
    """The ImageNet evaluation crop of torchvision's default weights for this model (offline)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return int(weights.transforms().crop_size[0])


# ----------------------------------------------------------------------------- counting


def count_flop_counter_flops(model: nn.Module, resolution: int) -> int:
    """FLOPs of one image by PyTorch's FlopCounterMode: 2 per multiply-add of conv and matmul."""
    was_training = model.training
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    model.train(was_training)
    return counter.get_total_flops()


def count_activations(model: nn.Module, resolution: int) -> dict[str, int]:
    """Output elements of one image, per kind of layer (LAYER_KINDS), and their total.

    Forward hooks on every module of those kinds, one eval-mode pass of one image; a module
    called twice is counted twice. "dollar" is Dollár et al.'s activations (conv, linear, pool).
    """
    counts = dict.fromkeys(LAYER_KINDS, 0)

    def hook_for(kind: str):
        def hook(module, inputs, output):
            counts[kind] += output.numel()  # batch 1: elements per image

        return hook

    handles = [
        module.register_forward_hook(hook_for(kind))
        for module in model.modules()
        for kind, types in LAYER_KINDS.items()
        if isinstance(module, types)
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    counts["dollar"] = sum(counts[kind] for kind in DOLLAR_KINDS)
    counts["total"] = sum(counts[kind] for kind in LAYER_KINDS)
    return counts


def count_saved_bytes(model: nn.Module, resolution: int, batch_size: int = 2) -> int:
    """Bytes autograd saves for backward in one fp32 training forward, per image.

    Every tensor autograd packs goes through the hook; tensors sharing a storage (an in-place
    ReLU saves the BatchNorm output it overwrote) count once, with the storage's full size, and
    parameters and buffers, which exist anyway, not at all. Runs on a copy, so the model's
    BatchNorm statistics are untouched. Batch 2: BatchNorm refuses to train on a single value
    per channel (one image on a 1 x 1 map).
    """
    model = copy.deepcopy(model).train()
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}  # storage address -> bytes

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor  # keep it: the storages must stay alive (and distinct) until we sum

    images = torch.randn(batch_size, 3, resolution, resolution)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(images)  # noqa: F841  (holds the graph, and so the saved tensors)
    return sum(saved.values()) // batch_size


@dataclass
class Costs:
    """What one image costs, counted (see the module docstring for each field)."""

    params: int
    macs: int
    flop_counter_flops: int
    activations: dict[str, int]
    saved_bytes_per_image: int


def count_costs(model: nn.Module, resolution: int) -> Costs:
    return Costs(
        params=ee.count_params(model),
        macs=count_macs(model, (3, resolution, resolution)),
        flop_counter_flops=count_flop_counter_flops(model, resolution),
        activations=count_activations(model, resolution),
        saved_bytes_per_image=count_saved_bytes(model, resolution),
    )


# ----------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_dtype(device: torch.device) -> torch.dtype | None:
    """On CUDA, effnet_edu's rule: bf16 autocast on GPUs that compute bf16 natively (compute
    capability >= 8.0), else fp16 with a gradient scaler; elsewhere fp32 (None), as the CPU
    rows are."""
    return autocast_dtype(device, "auto") if device.type == "cuda" else None


class Workload:
    """One model on one device, channels_last, with its inputs and its SGD optimizer."""

    def __init__(self, name: str, device: torch.device, resolution: int, batch_size: int):
        self.device, self.amp, cl = device, training_dtype(device), torch.channels_last
        self.model = build_model(name).to(device, memory_format=cl)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        # fp16 needs a gradient scaler in real training, so its cost is part of the step.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        generator = torch.Generator().manual_seed(1)
        image = torch.randn(1, 3, resolution, resolution, generator=generator)
        images = torch.randn(batch_size, 3, resolution, resolution, generator=generator)
        self.image = image.to(device).contiguous(memory_format=cl)  # (1, 3, H, W)
        self.images = images.to(device).contiguous(memory_format=cl)  # (B, 3, H, W)
        self.labels = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)

    def infer(self) -> None:
        """Latency: one image, eval mode (set by the caller), no autograd, fp32."""
        with torch.no_grad():
            self.model(self.image)

    def train_step(self) -> None:
        """Throughput: forward + backward + SGD step on the batch, training mode."""
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = F.cross_entropy(self.model(self.images).float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def peak_step_bytes(self) -> int:
        """CUDA: peak memory one training step adds to what is allocated before it."""
        synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.train_step()
        synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - before


def time_interleaved(
    steps: dict[str, Callable[[], None]],
    device: torch.device,
    repeats: int,
    warmup: int,
    clock: Callable[[], float],
    log: Callable[[str], None],
) -> dict[str, list[float]]:
    """Seconds per call of every step, once per repeat; even repeats go forwards, odd backwards."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            synchronize(device)
            start = clock()
            steps[name]()
            synchronize(device)
            samples[name].append(clock() - start)
        log(f"    repeat {r + 1}/{repeats}")
    return samples


@dataclass
class Timings:
    """Measurements on one device: samples and their medians."""

    device: str
    clock: str
    train_batch: int
    train_precision: str
    warmup: int
    latency_ms: list[float]
    train_images_per_s: list[float]
    peak_train_step_mib: float | None = None

    @property
    def unit(self) -> str:
        """Milliseconds of elapsed time, or of this process's CPU time (--clock cpu)."""
        return "ms" if self.clock == "wall" else "CPU-ms"

    @property
    def rate(self) -> str:
        return "images/s" if self.clock == "wall" else "images per CPU-s"

    @property
    def latency(self) -> float:
        return statistics.median(self.latency_ms)

    @property
    def throughput(self) -> float:
        return statistics.median(self.train_images_per_s)


def measure_device(
    names: list[str],
    resolutions: dict[str, int],
    device: torch.device,
    repeats: int,
    warmup: int,
    clock_name: str,
    batch_size: int,
    log: Callable[[str], None],
) -> dict[str, Timings]:
    """Latency and training throughput of every model on `device`."""
    clock_name = clock_name if device.type == "cpu" else "wall"  # GPU time is elapsed time
    clock = CLOCKS[clock_name]
    workloads = {n: Workload(n, device, resolutions[n], batch_size) for n in names}
    log(f"  latency (batch 1), {len(names)} models x {repeats} repeats after {warmup} warm-up")
    for w in workloads.values():
        w.model.eval()
    latency = time_interleaved(
        {n: w.infer for n, w in workloads.items()}, device, repeats, warmup, clock, log
    )
    log(f"  training (batch {batch_size}), {len(names)} models x {repeats} repeats")
    for w in workloads.values():
        w.model.train()
    training = time_interleaved(
        {n: w.train_step for n, w in workloads.items()}, device, repeats, warmup, clock, log
    )
    results = {}
    for n, w in workloads.items():
        results[n] = Timings(
            device=str(device),
            clock=clock_name,
            train_batch=batch_size,
            train_precision={
                torch.bfloat16: "bf16 autocast",
                torch.float16: "fp16 autocast + GradScaler",
            }.get(w.amp, "fp32"),
            warmup=warmup,
            latency_ms=[s * 1e3 for s in latency[n]],
            train_images_per_s=[batch_size / s for s in training[n]],
            peak_train_step_mib=w.peak_step_bytes() / MIB if device.type == "cuda" else None,
        )
    del workloads
    return results


# ----------------------------------------------------------------------------- the report


@dataclass
class Result:
    name: str
    label: str
    source: str
    resolution: int
    costs: Costs
    timings: dict[str, Timings] = field(default_factory=dict)  # device -> measurements


def rank_correlation(xs: list[float], ys: list[float]) -> float:
    """Spearman's rho: the correlation of the ranks (tied values share their mean rank)."""

    def ranks(values: list[float]) -> list[float]:
        ordered = sorted(values)
        return [ordered.index(v) + (ordered.count(v) - 1) / 2 for v in values]

    return statistics.correlation(ranks(xs), ranks(ys))


def span(values: list[float], digits: int) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}–{max(values):.{digits}f})"
    )


def costs_table(results: list[Result]) -> str:
    lines = [
        "| model | crop (px) | params (M) | GMACs | activations (M) | layer outputs (M) "
        "| saved for backward (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r.costs
        lines.append(
            f"| {r.label} | {r.resolution} | {c.params / 1e6:.2f} | {c.macs / 1e9:.3f} "
            f"| {c.activations['dollar'] / 1e6:.2f} | {c.activations['total'] / 1e6:.2f} "
            f"| {c.saved_bytes_per_image / MIB:.1f} |"
        )
    return "\n".join(lines)


def timings_table(results: list[Result], device: str) -> str:
    first = results[0].timings[device]
    speed = "GMAC/s" if first.clock == "wall" else "GMAC per CPU-s"
    memory = first.peak_train_step_mib is not None
    head = (
        f"| model | latency, batch 1 ({first.unit}) | training, batch {first.train_batch} "
        f"({first.rate}) "
        f"| MACs / latency ({speed}) |" + (" peak step memory (MiB) |" if memory else "")
    )
    lines = [head, "|---|---|---|---|" + ("---|" if memory else "")]
    for r in results:
        t = r.timings[device]
        row = (
            f"| {r.label} | {span(t.latency_ms, 1)} | {span(t.train_images_per_s, 1)} "
            f"| {r.costs.macs / 1e6 / t.latency:.1f} |"
        )
        lines.append(row + (f" {t.peak_train_step_mib:,.0f} |" if memory else ""))
    return "\n".join(lines)


def ordering_keys(devices: list[str]) -> dict[str, tuple[Callable, Callable]]:
    """Each ordering: its title -> (sort key, cheapest or fastest first; how to show the value)."""
    keys = {
        "MACs": (lambda r: r.costs.macs, lambda r: f"{r.costs.macs / 1e9:.2f} G"),
        "activations": (
            lambda r: r.costs.activations["dollar"],
            lambda r: f"{r.costs.activations['dollar'] / 1e6:.1f} M",
        ),
    }
    for d in devices:  # d=d: each lambda keeps its own device
        keys[f"{d} latency"] = (
            lambda r, d=d: r.timings[d].latency,
            lambda r, d=d: f"{r.timings[d].latency:.1f} {r.timings[d].unit}",
        )
        keys[f"{d} training throughput"] = (
            lambda r, d=d: -r.timings[d].throughput,
            lambda r, d=d: f"{r.timings[d].throughput:.1f} {r.timings[d].rate}",
        )
    return keys


def orderings(results: list[Result]) -> dict[str, list[str]]:
    """Model names sorted by each cost and each measurement, cheapest or fastest first."""
    keys = ordering_keys(list(results[0].timings))
    return {title: [r.name for r in sorted(results, key=key)] for title, (key, _) in keys.items()}


def comparisons(results: list[Result], device: str) -> list[str]:
    """How well MACs and activations predict the measured order; B0 against the ResNets."""
    lines, named = [], {r.name: r for r in results}
    if len(results) > 2:
        macs = [r.costs.macs for r in results]
        activations = [r.costs.activations["dollar"] for r in results]
        latency = [r.timings[device].latency for r in results]
        per_image = [1 / r.timings[device].throughput for r in results]  # training s per image

        def rho(xs, ys):
            return f"{rank_correlation(xs, ys):+.2f}"

        lines.append(
            f"- rank correlation (Spearman) on {device}: latency with MACs {rho(macs, latency)}, "
            f"with activations {rho(activations, latency)}; training time per image with MACs "
            f"{rho(macs, per_image)}, with activations {rho(activations, per_image)}"
        )
    b0 = named.get("efficientnet_b0")
    for reference in ("resnet18", "resnet50"):
        if b0 is None or reference not in named:
            continue
        other, ours, theirs = named[reference], b0.timings[device], named[reference].timings[device]
        lines.append(
            f"- EfficientNet-B0 / {MODELS[reference]} on {device}: "
            f"MACs {b0.costs.macs / other.costs.macs:.2f}x, activations "
            f"{b0.costs.activations['dollar'] / other.costs.activations['dollar']:.2f}x, latency "
            f"{ours.latency / theirs.latency:.2f}x, training throughput "
            f"{ours.throughput / theirs.throughput:.2f}x"
        )
    return lines


def orderings_text(results: list[Result]) -> str:
    devices = list(results[0].timings)
    lines = ["Orderings (cheapest or fastest first):", ""]
    for title, (key, show) in ordering_keys(devices).items():
        ordered = sorted(results, key=key)
        lines.append(f"- by {title}: " + ", ".join(f"{r.label} {show(r)}" for r in ordered))
    for device in devices:
        lines += comparisons(results, device)
    return "\n".join(lines)


def flop_counter_note(results: list[Result]) -> str:
    odd = [r.label for r in results if r.costs.flop_counter_flops != 2 * r.costs.macs]
    if not odd:
        return "FlopCounterMode's FLOPs are exactly 2 x MACs for every model"
    return f"FlopCounterMode's FLOPs differ from 2 x MACs for {', '.join(odd)} (see the JSON)"


def report(results: list[Result], args, command: str, minutes: float, load: str) -> str:
    devices = list(results[0].timings)
    resolution = (
        f"{args.resolution} px for every model" if args.resolution else "each model's ImageNet crop"
    )
    first = [results[0].timings[device] for device in devices]
    calls = ", ".join(
        f"{len(t.latency_ms)} interleaved repeats after {t.warmup} warm-up call(s) per model on "
        f"{t.device}"
        for t in first
    )
    clocks = f"{args.clock} clock" + (" on the CPU, wall clock on CUDA" if len(devices) > 1 else "")
    header = [
        f"## FLOPs are not latency: EfficientNet, ResNet and MobileNet ({', '.join(devices)})",
        "",
        f"- Machine: {machine_description(args.device)}",
        f"- Run: {resolution}; {calls}; {clocks}; "
        f"took {minutes:.1f} min; load average (1/5/15 min) {load}",
        f"- Command: `{command}`",
        '- Models: EfficientNet-B0/B1/B3 are effnet_edu\'s (`effnet_edu.efficientnet("b0")`, the '
        "same network as torchvision's `efficientnet_b0`); the others torchvision's; random "
        "weights.",
        "- Counted per image: params; GMACs = 10^9 multiply-adds of conv and linear layers "
        f'(torchvision\'s "GFLOPS"; {flop_counter_note(results)}); activations = output '
        "elements of conv, linear and pooling layers (Dollár et al. 2021); layer outputs = those "
        "plus normalisation and activation modules; saved for backward = bytes autograd keeps "
        "for backward, fp32 (each storage once, parameters excluded).",
        "- Measured: latency = one image, eval, no_grad, channels_last fp32; training = "
        "forward + backward + SGD step, channels_last; median (min–max) over the repeats.",
    ]
    if args.quick:
        header.append("- **Quick smoke run**: small images, few repeats; not the results.")
    sections = ["### Counted, per image", "", costs_table(results)]
    for device in devices:
        t = results[0].timings[device]
        sections += [
            "",
            f"### Measured on {device} (training: {t.train_precision})",
            "",
            timings_table(results, device),
        ]
    return "\n".join(header + [""] + sections + ["", orderings_text(results)]) + "\n"


def to_json(results: list[Result], args, command: str, minutes: float) -> dict:
    return {
        "command": command,
        "machine": machine_description(args.device),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "quick": args.quick,
        "repeats": args.repeats,
        "minutes": minutes,
        "models": [
            {
                **{k: v for k, v in asdict(r).items() if k != "timings"},
                "timings": {
                    device: {
                        **asdict(t),
                        "latency_ms_median": t.latency,
                        "train_images_per_s_median": t.throughput,
                    }
                    for device, t in r.timings.items()
                },
            }
            for r in results
        ],
        "orderings": orderings(results),
    }


# ----------------------------------------------------------------------------- command line


FAMILY_COLORS = {"EfficientNet": "tab:green", "ResNet": "tab:blue", "MobileNet": "tab:orange"}


def plot(data: dict, path: Path) -> None:
    """Latency against MACs, one panel per device measured, with lines of equal GMAC/s. `data`
    is what --json writes, so a saved run can be drawn again (--replot)."""
    import matplotlib

    matplotlib.use("Agg")  # a file, no window
    import matplotlib.pyplot as plt

    models = data["models"]
    devices = list(models[0]["timings"])
    fig, axes = plt.subplots(1, len(devices), figsize=(8 * len(devices), 5.2), squeeze=False)
    for ax, device in zip(axes[0], devices, strict=True):
        wall = models[0]["timings"][device]["clock"] == "wall"
        gmacs = {m["label"]: m["costs"]["macs"] / 1e9 for m in models}
        ms = {m["label"]: statistics.median(m["timings"][device]["latency_ms"]) for m in models}
        for label in gmacs:
            family = next(f for f in FAMILY_COLORS if label.startswith(f))
            ax.scatter(gmacs[label], ms[label], s=60, color=FAMILY_COLORS[family], zorder=3)
            ax.annotate(
                label,
                (gmacs[label], ms[label]),
                fontsize=9,
                textcoords="offset points",
                xytext=(7, -4),
            )
        low, high = min(gmacs.values()) / 1.5, max(gmacs.values()) * 1.5
        for rate in (5, 10, 20, 40) if device == "cpu" else (100, 300, 1000, 3000):
            ax.plot([low, high], [low / rate * 1e3, high / rate * 1e3], color="0.8", lw=1)
            ax.annotate(
                f"{rate} GMAC/{'s' if wall else 'CPU-s'}",
                (low, low / rate * 1e3),
                fontsize=8,
                color="0.45",
                textcoords="offset points",
                xytext=(2, 3),
            )
        for family, color in FAMILY_COLORS.items():
            ax.scatter([], [], color=color, s=60, label=family)
        ax.legend(loc="lower right")
        unit = "ms" if wall else "CPU-ms"
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="multiply-adds per image (GMACs, log scale)",
            ylabel=f"latency, batch 1, {device} ({unit}, log scale)",
        )
        ticks = [t for t in (0.2, 0.5, 1, 2, 4, 10) if low <= t <= high]
        ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        rate = {label: gmacs[label] / ms[label] for label in gmacs}
        fastest, slowest = max(rate, key=rate.get), min(rate, key=rate.get)
        ax.set_title(
            f"{device}: {fastest} does {rate[fastest] / rate[slowest]:.1f}x the "
            f"multiply-adds per {unit} of {slowest}",
            fontsize=10,
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda, cuda:N (default auto). The CPU is always measured; a GPU as well",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODELS),
        help=f"a subset of {', '.join(MODELS)} (b0, b1, b3 also work; default: all)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="one input size for every model (default: each model's crop; 96 with --quick)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per model and measurement (default 10 on the CPU, 30 on CUDA; 2 with "
        "--quick)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed calls per model before the repeats (default 2 on CPU, 10 on GPU)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="training batch (default 16 on the CPU, 128 on CUDA)",
    )
    add_thread_and_clock_arguments(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 96 px, 2 repeats after 1 warm-up, training batch 8 (not the results)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (.md)")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    parser.add_argument(
        "--plot", type=Path, default=None, help="draw latency against MACs here (.png)"
    )
    parser.add_argument(
        "--replot", type=Path, default=None, help="draw a saved run (its --json) with --plot"
    )
    args = parser.parse_args(argv)
    if args.replot is not None and args.plot is None:
        parser.error("--replot needs --plot, the picture to write")
    try:
        device = select_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if device.type not in ("cpu", "cuda"):  # e.g. Apple's MPS, which "auto" may pick
        if args.device != "auto":
            parser.error(f"this benchmark times the CPU and CUDA GPUs, not {device.type!r}")
        device = torch.device("cpu")
    args.device = device
    try:
        args.models = list(dict.fromkeys(canonical_name(m) for m in args.models))
    except ValueError as error:
        parser.error(str(error))
    if args.quick:  # what is not given explicitly
        for name, value in QUICK.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if args.resolution is not None:
        ee.model.check_resolution(args.resolution)
    for name, least in {"repeats": 1, "warmup": 0, "batch_size": 1, "threads": 1}.items():
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.replot is not None:  # no measuring: draw a saved run
        plot(json.loads(args.replot.read_text()), args.plot)
        print(f"wrote {args.plot}")
        return []
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    argv = sys.argv[1:] if argv is None else argv
    command = "python " + shlex.join(["benchmarks/bench_flops_latency.py", *argv])
    started, load_before = time.perf_counter(), load_average()

    def log(message: str) -> None:
        print(message, flush=True)

    results = []
    for name in args.models:
        resolution = args.resolution or crop_size(name)
        costs = count_costs(build_model(name), resolution)
        source = "effnet_edu" if name in OURS else "torchvision"
        results.append(Result(name, MODELS[name], source, resolution, costs))
        log(
            f"counted {MODELS[name]:18s} {resolution} px: {costs.params / 1e6:6.2f} M params, "
            f"{costs.macs / 1e9:.3f} GMACs, {costs.activations['dollar'] / 1e6:6.2f} M activations"
        )
    resolutions = {r.name: r.resolution for r in results}
    devices = [torch.device("cpu")] + ([args.device] if args.device.type == "cuda" else [])
    for device in devices:
        batch_size = args.batch_size or TRAIN_BATCH[device.type]
        repeats = args.repeats or REPEATS[device.type]
        warmup = WARMUP[device.type] if args.warmup is None else args.warmup
        log(f"timing on {device}:")
        while True:  # a GPU too small for the batch: every model again at half of it
            try:
                timings = measure_device(
                    args.models, resolutions, device, repeats, warmup, args.clock, batch_size, log
                )
                break
            except torch.cuda.OutOfMemoryError:
                if batch_size <= 8:
                    raise
                torch.cuda.empty_cache()
                batch_size //= 2
                log(f"  out of GPU memory: every model again, training at batch {batch_size}")
        for r in results:
            r.timings[str(device)] = timings[r.name]
    minutes = (time.perf_counter() - started) / 60
    load = f"{load_before} before, {load_average()} after"
    write_report(report(results, args, command, minutes, load), args.out)
    data = to_json(results, args, command, minutes)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        plot(data, args.plot)
        print(f"wrote {args.plot}")
    return results


if __name__ == "__main__":
    main()
