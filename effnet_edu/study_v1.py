"""The first scale study (results/scale_study_v1), kept only for notebooks 02, 03 and 05 and
assignment A3 until they move to the redesigned study in `effnet_edu.study` (issue 13): it used
the paper's constants instead of the paper's method, unmatched FLOPs and untrained models, so
do not build on it. It will be deleted when the notebooks move.

The scaling study in miniature: depth vs width vs resolution vs compound, at matched FLOPs.

The paper's Figure 3 scales B0 one dimension at a time; Table 7 and Figure 8 compare that with
compound scaling at the *same* FLOPs. Here a small baseline is scaled to a few FLOP budgets in each
of the four ways, trained with one recipe on the synthetic data, and scored against its FLOPs.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .model import efficientnet, efficientnet_config
from .profiling import config_flops, count_flops, count_params
from .scaling import ALPHA, BETA, GAMMA

FAMILIES = ("baseline", "depth", "width", "resolution", "compound")
# Per-factor accuracy that `factor_accuracy` adds to a row (synthetic data).
FACTOR_KEYS = ("arrangement_accuracy", "colour_accuracy", "texture_accuracy")
# One colour per scaling method, shared by every figure of the project.
FAMILY_COLORS = dict(
    baseline="#555555", depth="#1f77b4", width="#ff7f0e", resolution="#2ca02c", compound="#d62728"
)


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


def _build(point: StudyPoint, num_classes: int):
    # Short runs: light dropout, no stochastic depth (it slows early learning down).
    shape = {"depth": point.depth, "width": point.width, "resolution": point.resolution}
    return efficientnet(**shape, num_classes=num_classes, dropout=0.1, stochastic_depth=0.0)


def _flops(depth: float, width: float, resolution: int) -> int:
    config = efficientnet_config(depth=depth, width=width, resolution=resolution, num_classes=10)
    return config_flops(config)


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
    # FLOPs grow as d * w^2 * r^2 (Section 3.3): search around the multiplier that alone gives it.
    if family == "compound":
        guess = math.log(target) / math.log(alpha * beta**2 * gamma**2)
    else:
        guess = target if family == "depth" else math.sqrt(target)
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
        model = _build(p, 10)
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

        samples = self.samples[split]
        return get_dataset(self.name, split, resolution, num_samples=samples, seed=self.seed)


def factor_accuracy(
    predictions: torch.Tensor, labels: torch.Tensor, class_factors: list[tuple]
) -> dict[str, float]:
    """Accuracy on each factor of a product class (synthetic: arrangement, colour, texture).

    "line-warm-grid" for a "line-warm-hex" image is the wrong class but right on arrangement and
    colour: this shows *which* part of the task a scaled model got better at (texture needs
    resolution, arrangement needs depth).
    """
    from .synthetic import ARRANGEMENTS, COLOURS, TEXTURES

    index = torch.tensor(
        [[ARRANGEMENTS.index(a), COLOURS.index(c), TEXTURES.index(t)] for a, c, t in class_factors]
    )  # (classes, 3)
    right = (index[predictions] == index[labels]).double().mean(dim=0)  # (3,)
    return dict(zip(FACTOR_KEYS, right.tolist(), strict=True))


def _predictions(model, dataset, batch_size: int = 256) -> tuple[torch.Tensor, float]:
    """The model's top-1 class for every sample of `dataset`, and their accuracy."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with torch.no_grad():
        predictions = torch.cat([model(batch[0]).argmax(dim=1) for batch in loader])
    return predictions, (predictions == dataset.labels).double().mean().item()


def _train_one(
    point: StudyPoint, seed: int, dataset_factory, train_config, models_dir: Path | None
) -> dict:
    """Train one (point, seed); runs in the main process or in a worker process."""
    from .training import fit, model_signature

    train, val = (dataset_factory(split, point.resolution) for split in ("train", "val"))
    torch.manual_seed(seed)
    model = _build(point, len(train.classes))
    config = replace(train_config, seed=seed, out_dir=None, resume=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = fit(model, train, None, config)  # no validation per epoch: scored once, below
    # Wall time, and this process's CPU time (with one thread: the wall time on an idle machine).
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model = model.cpu().to(memory_format=torch.contiguous_format)
    predictions, accuracy = _predictions(model, val)
    row = {**asdict(point), "seed": seed, "accuracy": accuracy, "seconds": seconds}
    row.update(train_accuracy=history.last["accuracy"], cpu_seconds=cpu_seconds)
    if hasattr(val, "class_factors"):
        row.update(factor_accuracy(predictions, val.labels, val.class_factors))
    if models_dir is not None:
        # A plain state_dict in float16 (half the bytes; any torch loads it), scored as stored.
        state = model.state_dict()
        weights = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(weights)
        _, row["saved_model_accuracy"] = _predictions(model, val)
        signature = model_signature(model)
        checkpoint = {"model": weights, "model_signature": signature, "study_point": asdict(point)}
        checkpoint.update({k: row[k] for k in ("seed", "accuracy", "saved_model_accuracy")})
        torch.save(checkpoint, models_dir / model_filename(point.family, point.target, seed))
    return row


def model_filename(family: str, target: float, seed: int) -> str:
    """Where `run_study(save_models=True)` puts a model: ``compound-x2-seed0.pt``."""
    return f"{family}-x{target:g}-seed{seed}.pt"


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

    `dataset_factory(split, resolution)` gives each model data at its own resolution. `workers`
    > 1 trains that many at once, in one-thread processes (so the factory must be picklable, like
    `DatasetFactory`), with a serial one-thread run's results. `save_models` writes each model to
    ``out_dir/models/`` (`model_filename`, `load_checkpoint`). Returns a row per (point, seed)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if (ema := getattr(train_config, "ema_decay", None)) is not None:  # scored: trained weights
        raise ValueError(f"ema_decay={ema!r}: weight EMA is not supported by the study, use None")
    out_dir = Path(out_dir)
    results = out_dir / "results.json"
    if results.exists() and not getattr(train_config, "overwrite", False):
        raise FileExistsError(f"{results} already exists: use another folder or overwrite=True")
    models_dir = out_dir / "models" if save_models else None
    (models_dir or out_dir).mkdir(parents=True, exist_ok=True)  # creates out_dir too
    jobs = [(point, seed) for point in points for seed in seeds]
    shared = (dataset_factory, train_config, models_dir)

    def done(row: dict) -> dict:
        log(
            "{family:>10} x{flops_ratio:4.2f} FLOPs (d={depth:.2f}, w={width:.2f}, r={resolution}),"
            " seed {seed}: val accuracy {accuracy:.3f} [{seconds:.0f} s]".format(**row)
        )
        return row

    if workers == 1:
        rows = [done(_train_one(point, seed, *shared)) for point, seed in jobs]
    else:
        context = get_context("spawn")  # no fork of a threaded parent
        # One thread per worker: more threads than cores make every operator wait for a busy core.
        one_thread = {"initializer": torch.set_num_threads, "initargs": (1,)}
        with ProcessPoolExecutor(workers, mp_context=context, **one_thread) as pool:
            # Biggest models first, so the last one to finish is a small one.
            order = sorted(range(len(jobs)), key=lambda i: -jobs[i][0].flops)
            futures = {pool.submit(_train_one, *jobs[i], *shared): i for i in order}
            rows = [None] * len(jobs)
            for future in as_completed(futures):
                rows[futures[future]] = done(future.result())
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
    """Mean and spread (sample std; 0 for one seed) of accuracy per (family, target) over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["family"], r["target"]), []).append(r)
    same = ("family", "target", "flops", "flops_ratio", "depth", "width", "resolution")
    summary = []
    for group in groups.values():
        accuracies = torch.tensor([g["accuracy"] for g in group], dtype=torch.float64)
        factors = [key for key in FACTOR_KEYS if key in group[0]]
        row = {key: group[0][key] for key in same}  # the same for every seed
        row["accuracy"] = accuracies.mean().item()
        row["spread"] = accuracies.std().item() if len(group) > 1 else 0.0
        row["seeds"] = len(group)
        summary.append(row | {key: sum(g[key] for g in group) / len(group) for key in factors})
    return summary


def plot_study(rows: list[dict], path: str | Path | None = None):
    """Accuracy against FLOPs, one line per scaling family (the paper's Figure 8 layout); with
    per-factor accuracy (synthetic data), two panels more: did arrangement or texture improve?"""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    summary = summarize(rows)
    baseline = [s for s in summary if s["family"] == "baseline"]
    factors = [key for key in ("arrangement_accuracy", "texture_accuracy") if key in summary[0]]
    panels = [("accuracy", "validation accuracy, 24 classes (%)")]
    panels += [(key, f"{key.split('_')[0]} right (%)") for key in factors]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 0.6, 4.2), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        for family in FAMILIES[1:]:
            scaled = [s for s in summary if s["family"] == family]
            if not scaled:
                continue
            points = sorted(baseline + scaled, key=lambda s: s["flops"])
            x, y = [p["flops"] / 1e6 for p in points], [100 * p[key] for p in points]
            error = [100 * p["spread"] if key == "accuracy" else 0 for p in points]
            color, label = FAMILY_COLORS[family], f"{family} scaling"
            ax.errorbar(x, y, yerr=error, marker="o", capsize=3, color=color, label=label)
        ax.set(xscale="log", xlabel="FLOPs (millions of multiply-adds per image)", ylabel=ylabel)
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # after the scale, which resets it
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.grid(alpha=0.3)
    scaled = [s for s in summary if s["family"] != "baseline"]
    best = max(scaled, key=lambda s: s["accuracy"], default=None)
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
