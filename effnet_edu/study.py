"""The scaling study in miniature: depth vs width vs resolution vs compound, at matched FLOPs.

The paper's Figure 3 scales B0 along one dimension at a time; its Table 7 and Figure 8 compare
single-dimension scaling with compound scaling at the *same* FLOPs. Here a small baseline is
scaled to a few FLOP budgets in each of the four ways, every model is trained with the same
recipe on the synthetic data, and accuracy is plotted against FLOPs.

Used by: `effnet-edu scale-study`, notebooks 01 and 03, assignment A3.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .model import efficientnet, efficientnet_config
from .profiling import config_flops, count_flops, count_params
from .scaling import ALPHA, BETA, GAMMA

FAMILIES = ("baseline", "depth", "width", "resolution", "compound")
# One colour per scaling method, shared by every figure of the project.
FAMILY_COLORS = {"baseline": "#555555", "depth": "#1f77b4", "width": "#ff7f0e",
                 "resolution": "#2ca02c", "compound": "#d62728"}


@dataclass(frozen=True)
class Baseline:
    """The network every family starts from (multipliers relative to B0, pixels)."""

    depth: float = 0.5
    width: float = 0.5
    resolution: int = 48


@dataclass
class StudyPoint:
    family: str
    target: float  # requested FLOPs ratio to the baseline
    depth: float
    width: float
    resolution: int
    flops: int = 0
    params: int = 0
    flops_ratio: float = 1.0
    accuracy: float | None = None
    train_accuracy: float | None = None
    seconds: float | None = None


def _build(depth: float, width: float, resolution: int, num_classes: int, **kwargs):
    # Short runs: light dropout, no stochastic depth (it slows early learning down).
    kwargs = {"dropout": 0.1, "stochastic_depth": 0.0, **kwargs}
    return efficientnet(depth=depth, width=width, resolution=resolution,
                        num_classes=num_classes, **kwargs)


def _flops(depth: float, width: float, resolution: int) -> int:
    return config_flops(efficientnet_config(depth=depth, width=width, resolution=resolution,
                                            num_classes=10))


def matched_point(base: Baseline, family: str, target: float, alpha: float = ALPHA,
                  beta: float = BETA, gamma: float = GAMMA) -> StudyPoint:
    """Scale `base` along `family` until its FLOPs are as close as possible to target x base.

    Rounding (whole blocks, channels in multiples of 8, whole pixels) makes FLOPs a step
    function of the multiplier, so we scan a fine grid and keep the closest in log-ratio.
    """
    if family not in FAMILIES[1:]:
        raise ValueError(f"family must be one of {FAMILIES[1:]}, got {family!r}")
    if not target >= 1:
        raise ValueError(f"target FLOPs ratio must be >= 1, got {target!r}")
    base_flops = _flops(base.depth, base.width, base.resolution)
    # Under d * w^2 * r^2, the multiplier that alone gives `target` is target, sqrt(target),
    # sqrt(target) or phi = log(target) / log(alpha beta^2 gamma^2); search around that guess.
    guess = {"depth": target, "width": math.sqrt(target), "resolution": math.sqrt(target),
             "compound": math.log(target) / math.log(alpha * beta**2 * gamma**2)}[family]
    best = None
    for i in range(401):
        m = guess * (0.5 + 1.0 * i / 400)
        if family == "compound":
            d, w, r = base.depth * alpha**m, base.width * beta**m, gamma**m
        else:
            d = base.depth * (m if family == "depth" else 1.0)
            w = base.width * (m if family == "width" else 1.0)
            r = m if family == "resolution" else 1.0
        resolution = max(32, round(base.resolution * r))
        error = abs(math.log(_flops(d, w, resolution) / base_flops / target))
        if best is None or error < best[0]:
            best = (error, d, w, resolution)
    _, d, w, resolution = best
    return StudyPoint(family, target, d, w, resolution)


def plan(base: Baseline, targets: tuple[float, ...]) -> list[StudyPoint]:
    """The baseline plus, for each FLOPs target, one model per scaling family."""
    points = [StudyPoint("baseline", 1.0, base.depth, base.width, base.resolution)]
    for target in targets:
        points += [matched_point(base, family, target) for family in FAMILIES[1:]]
    base_flops = _flops(base.depth, base.width, base.resolution)
    for p in points:
        model = _build(p.depth, p.width, p.resolution, 10)
        p.flops, p.params = count_flops(model), count_params(model)
        p.flops_ratio = p.flops / base_flops
    return points


def run_study(points: list[StudyPoint], dataset_factory, train_config, out_dir: str | Path,
              seeds: tuple[int, ...] = (0,), log=print) -> list[dict]:
    """Train every planned model (per seed) and write results.json, results.csv, plot.png.

    `dataset_factory(split, resolution)` returns a dataset; each model gets data rendered at
    its own resolution. Returns one row per (point, seed).
    """
    from .training import TrainConfig, fit

    out_dir = Path(out_dir)
    results_path = out_dir / "results.json"
    if results_path.exists() and not getattr(train_config, "overwrite", False):
        raise FileExistsError(f"{results_path} already exists; choose another output folder "
                              f"or pass overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for point in points:
        train = dataset_factory("train", point.resolution)
        val = dataset_factory("val", point.resolution)
        for seed in seeds:
            torch.manual_seed(seed)
            model = _build(point.depth, point.width, point.resolution, len(train.classes))
            config = TrainConfig(**{**asdict(train_config), "seed": seed, "out_dir": None,
                                    "resume": False})
            start = time.perf_counter()
            history = fit(model, train, val, config)
            row = {**asdict(point), "seed": seed, "accuracy": history.last["val_accuracy"],
                   "train_accuracy": history.last["accuracy"],
                   "seconds": time.perf_counter() - start}
            rows.append(row)
            log(f"{point.family:>10} x{point.flops_ratio:4.2f} FLOPs (d={point.depth:.2f}, "
                f"w={point.width:.2f}, r={point.resolution}): val accuracy "
                f"{row['accuracy']:.3f} [{row['seconds']:.0f} s]")
    results_path.write_text(json.dumps(rows, indent=2))
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_study(rows, out_dir / "plot.png")
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread of accuracy per (family, target) over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["family"], r["target"]), []).append(r)
    summary = []
    for (family, target), group in groups.items():
        accuracies = torch.tensor([g["accuracy"] for g in group], dtype=torch.float64)
        summary.append({"family": family, "target": target, "flops": group[0]["flops"],
                        "flops_ratio": group[0]["flops_ratio"], "depth": group[0]["depth"],
                        "width": group[0]["width"], "resolution": group[0]["resolution"],
                        "accuracy": accuracies.mean().item(),
                        "spread": accuracies.std().item() if len(group) > 1 else 0.0,
                        "seeds": len(group)})
    return summary


def plot_study(rows: list[dict], path: str | Path | None = None):
    """Accuracy against FLOPs, one line per scaling family (the paper's Figure 8 layout)."""
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    baseline = [s for s in summary if s["family"] == "baseline"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for family in FAMILIES[1:]:
        points = sorted(baseline + [s for s in summary if s["family"] == family],
                        key=lambda s: s["flops"])
        if len(points) <= len(baseline):
            continue
        ax.errorbar([p["flops"] / 1e6 for p in points], [100 * p["accuracy"] for p in points],
                    yerr=[100 * p["spread"] for p in points], marker="o", capsize=3,
                    color=FAMILY_COLORS[family], label=f"{family} scaling")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs (millions of multiply-adds per image)")
    ax.set_ylabel("validation accuracy (%)")
    best = max((s for s in summary if s["family"] != "baseline"), key=lambda s: s["accuracy"],
               default=None)
    title = "Scaling a small EfficientNet on synthetic objects"
    if best is not None:
        title += f"\nbest: {best['family']} scaling ({100 * best['accuracy']:.1f} %)"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
