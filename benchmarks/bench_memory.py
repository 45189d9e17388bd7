"""Peak training memory of EfficientNet-B0: torchvision against effnet_edu's memory option.

Three configurations, the same batch of the same size for each:

- torchvision `efficientnet_b0()`;
- effnet_edu `efficientnet("b0")` (its default);
- effnet_edu with ``gradient_checkpointing=True`` (per-stage activation checkpointing: keeps only
  each stage's input, recomputes the rest in backward).

What is measured: the memory a training step adds on top of what the model, the optimizer and the
input batch already hold (activations saved for backward, gradients, optimizer state, temporary
buffers), at its peak.

- CPU: each configuration runs in a *fresh* Python process, so that no allocator cache or
  high-water mark of an earlier configuration leaks into the next. After building the model, the
  optimizer and the batch, the process reads its current resident set size (RSS, from
  /proc/self/statm); then it trains for `--steps` steps and reads its peak RSS
  (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the kernel's high-water mark). Peak minus
  baseline is the training memory. (The setup's own transient peak is far below a training
  step's, so the high-water mark is the training step's.)
- CUDA: ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` after the
  same setup (the caching allocator's counts of live tensors; the same child processes).

    python benchmarks/bench_memory.py                  # B0, 224 px, batch 32
    python benchmarks/bench_memory.py --quick          # smoke run at 96 px, batch 8
    python benchmarks/bench_memory.py --out benchmarks/results_memory.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a source checkout

from bench_throughput import machine_description, write_report  # noqa: E402  (this folder is on sys.path)

import effnet_edu as ee  # noqa: E402
from effnet_edu.training import (  # noqa: E402
    TrainConfig,
    autocast_dtype,
    build_optimizer,
    depthwise_in_fp32,
    select_device,
)

# name -> keyword arguments of `effnet_edu.efficientnet("b0", ...)`; None means torchvision's.
CONFIGURATIONS: dict[str, dict | None] = {
    "torchvision efficientnet_b0": None,
    "effnet_edu default": {},
    "effnet_edu gradient_checkpointing=True": {"gradient_checkpointing": True},
}
BASELINE = "torchvision efficientnet_b0"
TARGET_REDUCTION = 30.0  # percent, the project's target for its memory-saving option
MIB = 2**20


# ----------------------------------------------------------------------------- one configuration


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc; elsewhere falls back to the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's high-water RSS (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def build(name: str) -> nn.Module:
    kwargs = CONFIGURATIONS[name]
    torch.manual_seed(0)
    if kwargs is None:
        return torchvision.models.efficientnet_b0()
    return ee.efficientnet("b0", **kwargs)


def measure_one(
    name: str,
    device: torch.device,
    resolution: int,
    batch_size: int,
    steps: int,
    channels_last: bool,
    amp: str,
) -> dict:
    """Train `name` for `steps` steps in this process; its peak memory above the setup's."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build(name).to(device, memory_format=memory_format).train()
    config = TrainConfig()
    optimizer = build_optimizer(model, config)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    dtype = autocast_dtype(device, amp)
    images = torch.randn(batch_size, 3, resolution, resolution, device=device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, 1000, (batch_size,), device=device)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = current_rss_bytes()
    seconds = []
    with depthwise_in_fp32(model, device, dtype):  # what `fit` applies (acts on CPU bf16 only)
        for _ in range(steps):
            start = time.process_time()  # CPU time: robust to other programs on a shared machine
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = criterion(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.process_time() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    return {
        "name": name,
        "baseline_mib": baseline / MIB,
        "peak_mib": peak / MIB,
        "training_mib": (peak - baseline) / MIB,
        "last_step_cpu_s": seconds[-1],
    }


# ----------------------------------------------------------------------------- all of them


def run_in_child(name: str, args: argparse.Namespace) -> dict:
    """Measure one configuration in a fresh interpreter; returns its JSON result."""
    command = (
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            name,
            "--device",
            str(args.device),
            "--resolution",
            str(args.resolution),
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--amp",
            args.amp,
        ]
        + (["--channels-last"] if args.channels_last else [])
        + (["--threads", str(args.threads)] if args.threads else [])
    )
    # glibc's malloc serves big blocks with their own mmap and returns them on free, but it
    # raises that threshold as a program runs, after which freed blocks may stay cached in the
    # heap. Fixing it at 64 KiB makes RSS follow the live tensors, not the allocator's history.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(
            f"measuring {name!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict], args: argparse.Namespace, minutes: float) -> str:
    base = next(r for r in results if r["name"] == BASELINE)["training_mib"]
    device = args.device
    method = (
        "torch.cuda.max_memory_allocated - memory_allocated after setup"
        if device.type == "cuda"
        else "peak RSS (ru_maxrss) - RSS after model/optimizer/batch creation, one fresh "
        "process per configuration, glibc MALLOC_MMAP_THRESHOLD_=65536"
    )
    dtype = autocast_dtype(device, args.amp)
    recipe = (
        f"{'channels_last' if args.channels_last else 'NCHW'}, "
        f"{str(dtype).removeprefix('torch.') + ' autocast' if dtype else 'fp32'}"
    )
    command = "python " + " ".join(
        shlex.quote(a) for a in ["benchmarks/bench_memory.py", *sys.argv[1:]]
    )
    lines = [
        f"## Peak training memory: EfficientNet-B0, {args.resolution} px, batch "
        f"{args.batch_size}, {recipe}, {device.type.upper()}",
        "",
        f"- Machine: {machine_description(device)}",
        f"- Method: {method}; {args.steps} training steps (SGD, as `fit`); took {minutes:.1f} min",
        f"- Command: `{command}`",
        "",
        "| configuration | training memory (MiB) | vs torchvision | CPU-s per step "
        f"| target: ≥ {TARGET_REDUCTION:g} % less |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        change = round(100.0 * (r["training_mib"] / base - 1.0), 1) + 0.0  # + 0.0: no "-0.0"
        saving_option = bool(CONFIGURATIONS[r["name"]])  # the target is for memory options
        target = ("met" if -change >= TARGET_REDUCTION else "NOT met") if saving_option else ""
        change = "—" if r["name"] == BASELINE else f"{change:+.1f} %"
        lines.append(
            f"| {r['name']} | {r['training_mib']:,.0f} | {change} "
            f"| {r['last_step_cpu_s']:.1f} | {target} |"
        )
    return "\n".join(lines) + "\n"


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
        "--batch-size", type=int, default=None, help="training batch (default 32; 8 with --quick)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=2,
        help="training steps per configuration (default 2: the first allocates "
        "gradients and momentum, the second runs in steady state)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels_last layout for all configurations (default NCHW)",
    )
    parser.add_argument(
        "--amp",
        default="off",
        choices=["off", "auto", "bf16", "fp16"],
        help="autocast for all configurations, as in `fit` (default off: fp32)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in each child (default: torch's choice)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 96 px, batch 8")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (.md)")
    parser.add_argument(
        "--child", default=None, choices=list(CONFIGURATIONS), help=argparse.SUPPRESS
    )  # internal: measure one configuration
    args = parser.parse_args(argv)
    args.device = select_device(args.device)
    if args.resolution is None:
        args.resolution = 96 if args.quick else 224
    if args.batch_size is None:
        args.batch_size = 8 if args.quick else 32
    ee.model.check_resolution(args.resolution)
    if args.batch_size < 1 or args.steps < 1:
        parser.error("--batch-size and --steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> str | None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        result = measure_one(
            args.child,
            args.device,
            args.resolution,
            args.batch_size,
            args.steps,
            args.channels_last,
            args.amp,
        )
        print(json.dumps(result))
        return None
    started = time.perf_counter()
    results = []
    for name in CONFIGURATIONS:
        result = run_in_child(name, args)
        print(
            f"{name:60s} {result['training_mib']:9,.0f} MiB  (baseline "
            f"{result['baseline_mib']:,.0f} MiB, {result['last_step_cpu_s']:.2f} CPU-s/step)",
            flush=True,
        )
        results.append(result)
    return write_report(report(results, args, (time.perf_counter() - started) / 60), args.out)


if __name__ == "__main__":
    main()
