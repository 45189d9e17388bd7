"""Throughput of effnet_edu's EfficientNet-B0 against torchvision's, carrying the same weights.

Training (forward + backward + SGD step) and inference images per second, for several memory
layouts and precisions, with the ratio ours / torchvision. Both models run in the same process
and are *interleaved*: every repeat times each configuration once, in alternating order, so that
a burst of machine noise hits both models of a pair. The ratio is computed per repeat (paired)
and summarised by its median and its range over the repeats.

    python benchmarks/bench_throughput.py                  # full run
    python benchmarks/bench_throughput.py --quick          # smoke run at 96 px
    python benchmarks/bench_throughput.py --threads 1 --clock cpu   # on a busy, shared machine
    python benchmarks/bench_throughput.py --out results.md          # also write the tables

Configurations (each for both models, unless stated):
- NCHW, fp32: torchvision's out-of-the-box setting;
- channels_last, fp32;
- channels_last + autocast: the dtype `autocast_dtype(device, "auto")` picks (bf16 or fp16 on
  GPUs, bf16 on a CPU with bf16 kernels); skipped where there is none;
- CPU training under bf16 only: the same with `depthwise_in_fp32`, the CPU bf16 policy of `fit`
  (generic hooks, applied to both models);
- CUDA only: channels_last + autocast + `torch.compile`;
- and the "out-of-the-box defaults" pair: effnet_edu as `effnet_edu.training.fit` trains by
  default (read from `TrainConfig()`: its channels_last, amp and compile settings, and the CPU
  bf16 policy where it acts) against torchvision's `efficientnet_b0()` as it comes (NCHW, fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

import effnet_edu as ee  # noqa: E402
from effnet_edu.training import (  # noqa: E402
    TrainConfig,
    autocast_dtype,
    build_optimizer,
    cpu_supports_bf16,
    depthwise_in_fp32,
    select_device,
)

OURS, THEIRS = "effnet_edu", "torchvision"
# Wall-clock time is what a user waits for. Process CPU time (with --threads 1) is nearly immune
# to other programs on a shared machine: time spent descheduled is not counted.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
PARITY_TOLERANCE = 1e-4  # max |logit difference| in eval mode, as in tests/test_model.py


# ----------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Setting:
    """How a model is run: memory layout, autocast dtype (None: fp32), torch.compile or not, and
    whether `depthwise_in_fp32` (fit's CPU bf16 policy) is applied; it acts only on a CPU under
    bf16 autocast, while training."""

    channels_last: bool
    amp: torch.dtype | None
    compile: bool = False
    depthwise_fp32: bool = False

    @property
    def label(self) -> str:
        parts = ["channels_last" if self.channels_last else "NCHW"]
        parts.append(f"{str(self.amp).removeprefix('torch.')} autocast" if self.amp else "fp32")
        if self.depthwise_fp32 and self.amp == torch.bfloat16:
            parts.append("depthwise fp32")
        if self.compile:
            parts.append("torch.compile")
        return ", ".join(parts)


@dataclass(frozen=True)
class Cell:
    """One thing we time: a model under a setting."""

    model: str  # OURS or THEIRS
    setting: Setting


@dataclass(frozen=True)
class Comparison:
    """One row of the results table: ours under one setting against theirs under another."""

    label: str
    ours: Cell
    theirs: Cell
    target: float | None = None  # the project's target for the ratio, if it has one


def default_setting(device: torch.device, training: bool = True) -> Setting:
    """What `effnet_edu.training.fit` does when given no options (read from `TrainConfig`); fit
    always applies `depthwise_in_fp32`, which acts only on a CPU under bf16."""
    config = TrainConfig()
    amp = autocast_dtype(device, config.amp)
    policy = training and device.type == "cpu" and amp == torch.bfloat16
    return Setting(config.channels_last, amp, config.compile, depthwise_fp32=policy)


def plan(device: torch.device, training: bool) -> list[Comparison]:
    """The comparisons for this device; training rows carry the project's targets."""
    fp32_nchw = Setting(channels_last=False, amp=None)
    fp32_cl = Setting(channels_last=True, amp=None)
    same_layout_target = 1.0 if training else None
    rows = [
        Comparison(
            "NCHW, fp32 (both)", Cell(OURS, fp32_nchw), Cell(THEIRS, fp32_nchw), same_layout_target
        ),
        Comparison(
            "channels_last, fp32 (both)",
            Cell(OURS, fp32_cl),
            Cell(THEIRS, fp32_cl),
            same_layout_target,
        ),
    ]
    amp = autocast_dtype(device, "auto")
    mixed = Setting(channels_last=True, amp=amp)
    if amp is not None:
        rows.append(
            Comparison(
                f"{mixed.label} (both)", Cell(OURS, mixed), Cell(THEIRS, mixed), same_layout_target
            )
        )
        if training and device.type == "cpu" and amp == torch.bfloat16:
            policy = Setting(channels_last=True, amp=amp, depthwise_fp32=True)
            rows.append(
                Comparison(
                    f"{policy.label} (both)",
                    Cell(OURS, policy),
                    Cell(THEIRS, policy),
                    same_layout_target,
                )
            )
        if device.type == "cuda":
            compiled = Setting(channels_last=True, amp=amp, compile=True)
            rows.append(
                Comparison(f"{compiled.label} (both)", Cell(OURS, compiled), Cell(THEIRS, compiled))
            )
    ours_default = default_setting(device, training)
    rows.append(
        Comparison(
            f"out-of-the-box defaults: effnet_edu `fit` ({ours_default.label}) vs torchvision "
            f"({fp32_nchw.label})",
            Cell(OURS, ours_default),
            Cell(THEIRS, fp32_nchw),
            1.5 if training else None,
        )
    )
    return rows


# ----------------------------------------------------------------------------- models


def build_models(device: torch.device) -> dict[str, nn.Module]:
    """torchvision's B0 (seeded random init) and ours carrying exactly its weights."""
    torch.manual_seed(0)
    theirs = torchvision.models.efficientnet_b0()
    ours = ee.load_torchvision_state_dict(ee.efficientnet("b0"), theirs.state_dict())
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        difference = (ours(x) - theirs(x)).abs().max().item()
    if difference > PARITY_TOLERANCE:
        raise AssertionError(
            f"the two models disagree by {difference:.2e} (> "
            f"{PARITY_TOLERANCE:g}) with the same weights: the benchmark would "
            f"compare different networks; run tests/test_model.py"
        )
    return {OURS: ours.to(device), THEIRS: theirs.to(device)}


class Runner:
    """A private copy of a model (layout, compile, optimizer) that runs one step on demand."""

    def __init__(
        self,
        base: nn.Module,
        setting: Setting,
        device: torch.device,
        batch_size: int,
        resolution: int,
        training: bool,
    ):
        config = TrainConfig()
        self.model = copy.deepcopy(base).train(training)
        memory_format = torch.channels_last if setting.channels_last else torch.contiguous_format
        self.model = self.model.to(device, memory_format=memory_format)
        self.optimizer = build_optimizer(self.model, config) if training else None
        # fp16 (CUDA GPUs without native bf16) trains with a gradient scaler, as `fit` does.
        fp16 = training and setting.amp == torch.float16
        self.scaler = torch.amp.GradScaler(device.type) if fp16 else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.call = torch.compile(self.model) if setting.compile else self.model
        self.hooks = contextlib.ExitStack()  # the CPU bf16 policy, for this runner's lifetime
        if setting.depthwise_fp32:
            self.hooks.enter_context(depthwise_in_fp32(self.model, device, setting.amp))
        generator = torch.Generator().manual_seed(1)
        images = torch.randn(batch_size, 3, resolution, resolution, generator=generator)
        self.images = images.to(device).contiguous(memory_format=memory_format)
        self.labels = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)
        self.setting, self.device, self.training = setting, device, training

    def autocast(self):
        amp = self.setting.amp
        return torch.autocast(self.device.type, dtype=amp, enabled=amp is not None)

    def step(self) -> None:
        if not self.training:
            with torch.no_grad(), self.autocast():
                self.call(self.images)
            return
        with self.autocast():  # exactly what `fit` does for one batch
            logits = self.call(self.images)
            loss = self.criterion(logits.float(), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def seconds_per_step(self, steps: int, clock=time.perf_counter) -> float:
        synchronize(self.device)
        start = clock()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return (clock() - start) / steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- measuring


def measure(
    comparisons: list[Comparison],
    models: dict[str, nn.Module],
    device: torch.device,
    batch_size: int,
    resolution: int,
    training: bool,
    repeats: int,
    warmup: int,
    min_seconds: float,
    clock,
    log,
) -> dict[Cell, list[float]]:
    """Images/s of every cell, once per repeat, cells interleaved; returns cell -> samples.

    Each measurement runs enough steps to last `min_seconds` (one step of B0 training on a CPU
    already does). Even repeats visit the cells in order, odd repeats in reverse order, so a slow
    drift of the machine does not favour the model that happens to run first.
    """
    cells = list(dict.fromkeys(cell for c in comparisons for cell in (c.ours, c.theirs)))
    runners, steps = {}, {}
    for cell in cells:
        runner = Runner(models[cell.model], cell.setting, device, batch_size, resolution, training)
        start = time.perf_counter()
        for _ in range(warmup):  # allocator, oneDNN/cuDNN kernel choice, torch.compile
            runner.step()
        one = runner.seconds_per_step(1, clock)
        steps[cell] = max(1, math.ceil(min_seconds / one))
        runners[cell] = runner
        log(
            f"  warm-up {cell.model:11s} {cell.setting.label:40s} {batch_size / one:8.1f} img/s "
            f"({time.perf_counter() - start:.1f} s; {steps[cell]} step(s) per measurement)"
        )
    samples: dict[Cell, list[float]] = {cell: [] for cell in cells}
    for r in range(repeats):
        order = cells if r % 2 == 0 else cells[::-1]
        for cell in order:
            samples[cell].append(batch_size / runners[cell].seconds_per_step(steps[cell], clock))
        log(
            f"  repeat {r + 1}/{repeats}: "
            + ", ".join(f"{c.model[:2]}/{c.setting.label} {samples[c][-1]:.1f}" for c in cells)
        )
    return samples


def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def verdict(ratios: list[float], target: float | None) -> str:
    """Met / not met on the median; "within noise" when the repeats straddle the target."""
    if target is None:
        return ""
    median, low, high = median_range(ratios)
    result = "met" if median >= target else "NOT met"
    if low < target <= high:
        result += " (within noise)"
    return f"≥ {target:.1f}×: {result}"


def table(comparisons: list[Comparison], samples: dict[Cell, list[float]], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| configuration | effnet_edu | torchvision | ratio ours/torchvision | target |",
        "|---|---|---|---|---|",
    ]
    for c in comparisons:
        ratios = [a / b for a, b in zip(samples[c.ours], samples[c.theirs], strict=True)]
        cells = [
            median_range(samples[c.ours]),
            median_range(samples[c.theirs]),
            median_range(ratios),
        ]
        shown = [f"{m:.1f} ({lo:.1f}–{hi:.1f})" for m, lo, hi in cells[:2]]
        m, lo, hi = cells[2]
        shown.append(f"**{m:.2f}×** ({lo:.2f}–{hi:.2f})")
        lines.append(f"| {c.label} | {' | '.join(shown)} | {verdict(ratios, c.target)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name, from lscpu (Linux) or the platform module."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lines.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def cpu_has(feature: str) -> bool:
    """Whether torch sees the CPU feature (e.g. "avx512_bf16", "amx_tile")."""
    check = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(check and check())


def machine_description(device: torch.device) -> str:
    native = [n for n, f in (("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_tile")) if cpu_has(f)]
    kernels = "oneDNN bf16 kernels" if cpu_supports_bf16() else "no oneDNN bf16 kernels"
    bf16 = f"{kernels}; bf16 instructions: {', '.join(native) or 'none'}"
    parts = [
        f"CPU {cpu_model()}, {os.cpu_count()} cores ({bf16}; torch threads: "
        f"{torch.get_num_threads()})"
    ]
    if device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    parts.append(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}"
    )
    return "; ".join(parts)


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- command line


def add_thread_and_clock_arguments(parser: argparse.ArgumentParser) -> None:
    """--threads and --clock, which every timing benchmark here takes, with the same meaning."""
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    parser.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall = elapsed time (default); cpu = this process's CPU time, robust on a busy "
        "shared machine (use with --threads 1). GPU timings use the wall clock",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="input size in pixels (default 224; 96 with --quick)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="training batch (default 32 on CPU, 128 on GPU; 8 with --quick)",
    )
    parser.add_argument(
        "--inference-batch-size",
        type=int,
        default=None,
        help="inference batch (default: the training batch size)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed measurements per configuration (default 7 on CPU, 10 on GPU; 3 with --quick)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps per configuration before the one that sets "
        "the measurement length (default 1 on CPU, 5 on GPU)",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=None,
        help="each measurement lasts at least this long (default 1.0; 0.3 with --quick)",
    )
    add_thread_and_clock_arguments(parser)
    parser.add_argument("--skip-inference", action="store_true", help="time training only")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 96 px, batch 8, 3 repeats (numbers are not the results)",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here (.md)")
    args = parser.parse_args(argv)
    args.device = select_device(args.device)
    gpu = args.device.type == "cuda"
    defaults = {
        "resolution": 96 if args.quick else 224,
        "batch_size": 8 if args.quick else (128 if gpu else 32),
        "repeats": 3 if args.quick else (10 if gpu else 7),
        "warmup": 5 if gpu else 1,
        "min_seconds": 0.3 if args.quick else 1.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.clock == "cpu" and args.device.type != "cpu":
        parser.error("--clock cpu measures CPU work; on a GPU use the default --clock wall")
    if args.inference_batch_size is None:
        args.inference_batch_size = args.batch_size
    ee.model.check_resolution(args.resolution)
    for name in ("batch_size", "inference_batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    command = "python " + " ".join(
        shlex.quote(a) for a in ["benchmarks/bench_throughput.py", *sys.argv[1:]]
    )
    started, load_before = time.perf_counter(), load_average()
    models = build_models(device)

    def log(message: str) -> None:
        print(message, flush=True)

    unit = "images/s" if args.clock == "wall" else "images per CPU-second"
    sections = []
    phases = [("Training (forward + backward + SGD step)", True, args.batch_size)]
    if not args.skip_inference:
        phases.append(("Inference (forward, no_grad, eval mode)", False, args.inference_batch_size))
    for title, training, batch_size in phases:
        log(f"{title}: batch {batch_size}, {args.resolution} px")
        comparisons = plan(device, training)
        samples = measure(
            comparisons,
            models,
            device,
            batch_size,
            args.resolution,
            training,
            args.repeats,
            args.warmup,
            args.min_seconds,
            CLOCKS[args.clock],
            log,
        )
        sections.append(table(comparisons, samples, f"{title}, batch {batch_size}, {unit}"))
    minutes = (time.perf_counter() - started) / 60
    header = [
        f"## Throughput: effnet_edu B0 vs torchvision efficientnet_b0 (same weights), "
        f"{device.type.upper()}",
        "",
        f"- Machine: {machine_description(device)}",
        f"- Run: {args.resolution} px, {args.repeats} interleaved repeats after {args.warmup} "
        f"warm-up step(s), each measurement ≥ {args.min_seconds:g} s ({args.clock} clock); took "
        f"{minutes:.1f} min; "
        f"load average (1/5/15 min) {load_before} before, {load_average()} after",
        f"- Command: `{command}`",
        f"- Cells: median {unit} over the repeats (min–max). Ratio: per-repeat ours/torchvision "
        "of the two runs timed back to back, median (min–max).",
    ]
    if args.quick:
        header.append("- **Quick smoke run**: small images and batches; not the results.")
    report = "\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n"
    return write_report(report, args.out)


def write_report(text: str, out: Path | None) -> str:
    """Print a markdown report and, with --out, write it there too."""
    print("\n" + text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return text


if __name__ == "__main__":
    main()
