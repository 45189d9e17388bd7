"""The scaling study in miniature: depth vs width vs resolution vs compound, at matched FLOPs.

The paper's Figure 3 scales B0 along one dimension at a time; its Table 7 and Figure 8 compare
single-dimension scaling with compound scaling at the *same* FLOPs. Here a small baseline is
scaled to a few FLOP budgets in each of the four ways, every model is trained with the same
recipe on the synthetic data, and accuracy is plotted against FLOPs.
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
# Per-factor accuracy that `factor_accuracy` adds to a row (synthetic data).
FACTOR_KEYS = ("arrangement_accuracy", "colour_accuracy", "texture_accuracy")
# One colour per scaling method, shared by every figure of the project.
FAMILY_COLORS = {
    "baseline": "#555555",
    "depth": "#1f77b4",
    "width": "#ff7f0e",
    "resolution": "#2ca02c",
    "compound": "#d62728",
}


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
    return efficientnet(
        depth=depth, width=width, resolution=resolution, num_classes=num_classes, **kwargs
    )


def _flops(depth: float, width: float, resolution: int) -> int:
    return config_flops(
        efficientnet_config(depth=depth, width=width, resolution=resolution, num_classes=10)
    )


def matched_point(
    base: Baseline,
    family: str,
    target: float,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
) -> StudyPoint:
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
    guess = {
        "depth": target,
        "width": math.sqrt(target),
        "resolution": math.sqrt(target),
        "compound": math.log(target) / math.log(alpha * beta**2 * gamma**2),
    }[family]
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


class DatasetFactory:
    """`factory(split, resolution)` -> a dataset; picklable, so worker processes can use it."""

    def __init__(
        self,
        name: str = "synthetic",
        train_samples: int = 8000,
        val_samples: int = 1000,
        seed: int = 0,
    ):
        self.name, self.seed = name, seed
        self.samples = {"train": train_samples, "val": val_samples, "test": val_samples}

    def __call__(self, split: str, resolution: int):
        from .data import get_dataset

        return get_dataset(
            self.name, split, resolution, num_samples=self.samples[split], seed=self.seed
        )


def factor_accuracy(
    predictions: torch.Tensor, labels: torch.Tensor, class_factors: list[tuple]
) -> dict[str, float]:
    """Accuracy on each factor of a product class (synthetic: arrangement, colour, texture).

    A prediction of "line-warm-grid" for a "line-warm-hex" image is wrong as a class but right on
    arrangement and colour: this shows *which* part of the task a scaled model got better at
    (texture needs resolution, arrangement needs depth).
    """
    from .synthetic import ARRANGEMENTS, COLOURS, TEXTURES

    names = ("arrangement", "colour", "texture")
    index = torch.tensor(
        [[ARRANGEMENTS.index(a), COLOURS.index(c), TEXTURES.index(t)] for a, c, t in class_factors]
    )  # (classes, 3)
    right = (index[predictions] == index[labels]).double().mean(dim=0)  # (3,)
    return {f"{name}_accuracy": value for name, value in zip(names, right.tolist(), strict=True)}


def _predictions(model, dataset, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with torch.no_grad():
        return torch.cat([model(batch[0]).argmax(dim=1) for batch in loader])


def _train_one(
    point: StudyPoint, seed: int, dataset_factory, train_config, models_dir: Path | None
) -> dict:
    """Train one (point, seed); runs in the main process or in a worker process."""
    from .training import TrainConfig, fit, model_signature

    train = dataset_factory("train", point.resolution)
    val = dataset_factory("val", point.resolution)
    torch.manual_seed(seed)
    model = _build(point.depth, point.width, point.resolution, len(train.classes))
    config = TrainConfig(**{**asdict(train_config), "seed": seed, "out_dir": None, "resume": False})
    start, cpu_start = time.perf_counter(), time.process_time()
    # No validation after every epoch: the study reports the trained model only (below).
    history = fit(model, train, None, config)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model = model.cpu().to(memory_format=torch.contiguous_format)
    predictions = _predictions(model, val)
    row = {
        **asdict(point),
        "seed": seed,
        "accuracy": (predictions == val.labels).double().mean().item(),
        "train_accuracy": history.last["accuracy"],
        "seconds": seconds,
        # CPU time of this process: with one thread, the wall time on an idle machine.
        "cpu_seconds": cpu_seconds,
    }
    if hasattr(val, "class_factors"):
        row.update(factor_accuracy(predictions, val.labels, val.class_factors))
    if models_dir is not None:
        # A plain state_dict in float16 (half the bytes of float32; any torch loads it). The row
        # records the accuracy of the model as stored, too.
        weights = {
            k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()
        }
        model.load_state_dict(weights)
        saved = _predictions(model, val)
        row["saved_model_accuracy"] = (saved == val.labels).double().mean().item()
        torch.save(
            {
                "model": weights,
                "model_signature": model_signature(model),
                "study_point": asdict(point),
                "seed": seed,
                "accuracy": row["accuracy"],
                "saved_model_accuracy": row["saved_model_accuracy"],
            },
            models_dir / model_filename(point.family, point.target, seed),
        )
    return row


def model_filename(family: str, target: float, seed: int) -> str:
    """Where `run_study(save_models=True)` puts a model: ``compound-x2-seed0.pt``."""
    return f"{family}-x{target:g}-seed{seed}.pt"


def _worker_init():
    # One thread per worker process: two processes with two threads each on two cores make
    # every operator wait for a busy core (many times slower, see docs/benchmarks.md).
    torch.set_num_threads(1)


def run_study(
    points: list[StudyPoint],
    dataset_factory,
    train_config,
    out_dir: str | Path,
    seeds: tuple[int, ...] = (0,),
    log=print,
    workers: int = 1,
    save_models: bool = False,
) -> list[dict]:
    """Train every planned model (per seed) and write results.json, results.csv, plot.png.

    `dataset_factory(split, resolution)` returns a dataset; each model gets data rendered at
    its own resolution. `workers` > 1 trains that many models at once, in separate processes
    of one thread each (the factory must then be picklable, like `DatasetFactory`); the results
    equal those of a serial run with one thread. `save_models` writes each trained model to
    ``out_dir/models/`` (`model_filename`), loadable with `effnet_edu.training.load_checkpoint`.
    Returns one row per (point, seed), in plan order.
    """
    import concurrent.futures
    import multiprocessing

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if getattr(train_config, "ema_decay", None) is not None:
        raise ValueError(
            "the study scores and saves each model's trained weights; weight EMA "
            "is not supported here (set ema_decay=None)"
        )
    out_dir = Path(out_dir)
    results_path = out_dir / "results.json"
    if results_path.exists() and not getattr(train_config, "overwrite", False):
        raise FileExistsError(
            f"{results_path} already exists; choose another output folder or pass overwrite"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    models_dir = None
    if save_models:
        models_dir = out_dir / "models"
        models_dir.mkdir(exist_ok=True)
    jobs = [(point, seed) for point in points for seed in seeds]

    def report(row):
        log(
            f"{row['family']:>10} x{row['flops_ratio']:4.2f} FLOPs (d={row['depth']:.2f}, "
            f"w={row['width']:.2f}, r={row['resolution']}), seed {row['seed']}: val accuracy "
            f"{row['accuracy']:.3f} [{row['seconds']:.0f} s]"
        )

    if workers == 1:
        rows = []
        for point, seed in jobs:
            rows.append(_train_one(point, seed, dataset_factory, train_config, models_dir))
            report(rows[-1])
    else:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_worker_init
        ) as pool:
            # Biggest models first, so the last one to finish is a small one.
            order = sorted(range(len(jobs)), key=lambda i: -jobs[i][0].flops)
            futures = {
                pool.submit(_train_one, *jobs[i], dataset_factory, train_config, models_dir): i
                for i in order
            }
            done = {}
            for future in concurrent.futures.as_completed(futures):
                done[futures[future]] = future.result()
                report(done[futures[future]])
        rows = [done[i] for i in range(len(jobs))]
    write_results(rows, out_dir)
    return rows


def write_results(rows: list[dict], out_dir: str | Path) -> None:
    """results.json, results.csv (one row per model and seed) and plot.png in `out_dir`."""
    out_dir = Path(out_dir)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    fields = list(dict.fromkeys(key for row in rows for key in row))  # union, in order
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    plot_study(rows, out_dir / "plot.png")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread of accuracy per (family, target) over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["family"], r["target"]), []).append(r)
    summary = []
    for (family, target), group in groups.items():
        accuracies = torch.tensor([g["accuracy"] for g in group], dtype=torch.float64)
        factors = {
            key: sum(g[key] for g in group) / len(group) for key in FACTOR_KEYS if key in group[0]
        }
        summary.append(
            {
                "family": family,
                "target": target,
                "flops": group[0]["flops"],
                "flops_ratio": group[0]["flops_ratio"],
                "depth": group[0]["depth"],
                "width": group[0]["width"],
                "resolution": group[0]["resolution"],
                "accuracy": accuracies.mean().item(),
                "spread": accuracies.std().item() if len(group) > 1 else 0.0,
                "seeds": len(group),
                **factors,
            }
        )
    return summary


def plot_study(rows: list[dict], path: str | Path | None = None):
    """Accuracy against FLOPs, one line per scaling family (the paper's Figure 8 layout).

    When the rows carry per-factor accuracy (synthetic data), two more panels show which part
    of the task each family improved: the arrangement of the discs and their texture.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    summary = summarize(rows)
    baseline = [s for s in summary if s["family"] == "baseline"]
    panels = [("accuracy", "validation accuracy, 24 classes (%)")]
    panels += [
        (key, f"{key.split('_')[0]} right (%)")
        for key in ("arrangement_accuracy", "texture_accuracy")
        if key in summary[0]
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 0.6, 4.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for family in FAMILIES[1:]:
            points = sorted(
                baseline + [s for s in summary if s["family"] == family], key=lambda s: s["flops"]
            )
            if len(points) <= len(baseline):
                continue
            ax.errorbar(
                [p["flops"] / 1e6 for p in points],
                [100 * p[key] for p in points],
                yerr=[100 * p["spread"] if key == "accuracy" else 0 for p in points],
                marker="o",
                capsize=3,
                color=FAMILY_COLORS[family],
                label=f"{family} scaling",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_xlabel("FLOPs (millions of multiply-adds per image)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    best = max(
        (s for s in summary if s["family"] != "baseline"), key=lambda s: s["accuracy"], default=None
    )
    title = "Scaling a small EfficientNet on synthetic objects"
    if best is not None:
        title += f": best is {best['family']} scaling ({100 * best['accuracy']:.1f} %)"
    axes[0][0].legend(fontsize=9)
    if len(panels) > 1:
        axes[0][1].set_title("which part of the label improved: arrangement ...")
        axes[0][2].set_title("... and texture (chance: 33 % and 25 %)")
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
