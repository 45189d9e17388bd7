"""The scaling study in miniature, by the paper's method (Section 3.3).

Step 1 searches alpha, beta, gamma on *our* baseline: at phi = 1 (twice the baseline's FLOPs), a
grid of candidates on alpha * beta^2 * gamma^2 ~ 2, each trained with a few seeds; the best one is
our alpha, beta, gamma. Step 2 scales the baseline to 2, 4 and 8 times its FLOPs by depth only,
width only, resolution only, compound with our coefficients and compound with the paper's, every
model within 5 % of its FLOPs target, trained with one recipe, and compares them paired: all
models are scored on the same test images. Every model's result is written the moment it is
trained (``runs/``), so a study can be stopped, continued and extended with more seeds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

import torch

from .model import efficientnet, efficientnet_config
from .profiling import config_flops
from .scaling import ALPHA, BETA, GAMMA

FAMILIES = ("baseline", "depth", "width", "resolution", "compound", "compound_paper")
FACTOR_KEYS = ("arrangement_accuracy", "colour_accuracy", "texture_accuracy")
FAMILY_COLORS = dict(  # one colour per scaling method, in every figure of the project
    baseline="#555555",
    depth="#1f77b4",
    width="#ff7f0e",
    resolution="#17becf",  # cyan: green is EfficientNet itself in the big-picture figures
    compound="#d62728",
    compound_paper="#9467bd",
)
ROOT2 = 2**0.5
# Directions of growth (alpha, beta, gamma) with alpha * beta^2 * gamma^2 ~ 2: FLOPs double per phi.
DIRECTIONS = {
    "depth": (2.0, 1.0, 1.0),
    "width": (1.0, ROOT2, 1.0),
    "resolution": (1.0, 1.0, ROOT2),
    "compound_paper": (ALPHA, BETA, GAMMA),
}
# Step 1: the three one-dimension corners, the paper's values, three edges (two dimensions at
# once) and three more inside, spread over the shares of the FLOPs each dimension gets.
GRID = (
    DIRECTIONS["depth"],
    DIRECTIONS["width"],
    DIRECTIONS["resolution"],
    DIRECTIONS["compound_paper"],
    (1.4, 1.2, 1.0),
    (1.4, 1.0, 1.2),
    (1.0, 1.2, 1.18),
    (1.5, 1.1, 1.05),
    (1.1, 1.2, 1.1),
    (1.1, 1.1, 1.22),
)
FLOPS_TOLERANCE = 0.05  # every scaled model within 5 % of its FLOPs target


@dataclass(frozen=True)
class Baseline:
    """The network every model is scaled from: multipliers of B0's depth and width, and pixels.

    d = 0.7 and 54 px are where one-dimension scaling can reach 2, 4 and 8 times the FLOPs within
    5 % (at d = 0.5 the next whole block per stage jumps from 1.6x to 2.5x; at 48 px the last
    feature map jumps from 2 x 2 to 3 x 3 and the FLOPs from 1.8x to 2.3x)."""

    depth: float = 0.7
    width: float = 0.5
    resolution: int = 54


@dataclass(frozen=True)
class Recipe:
    """How every model of a study is trained: the same for all, as in the paper."""

    epochs: int = 20
    images_per_epoch: int = 4000  # fresh synthetic images every epoch: no overfitting
    batch_size: int = 128
    lr: float = 6e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    dropout: float = 0.1
    val_images: int = 2000  # picks the grid's winner; its first 1,000 give the learning curves
    test_images: int = 2000  # scores step 2, the same images for every model (paired)
    distractors: bool = True  # the package's default data: distractor shapes and lines
    texture_amplitude: float = 0.25
    # Every residual block starts as the identity (`EfficientNet.zero_init_residual_`): with the
    # default initialisation, deeper models learnt several times more slowly per image in 80,000
    # images; with it, depth x2 learns as fast as the baseline (docs/scale_study.md, pilots).
    zero_init_residual: bool = True
    device: str = "cpu"
    amp: str = "off"  # fp32: deterministic, and on this CPU faster than bf16 for small models

    def train_config(self, seed: int, epochs: int):
        from .training import TrainConfig

        return TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer="adamw",
            weight_decay=self.weight_decay,
            schedule="cosine",
            warmup_epochs=self.warmup_epochs,
            label_smoothing=self.label_smoothing,
            amp=self.amp,
            channels_last=True,
            device=self.device,
            seed=seed,
            progress=False,
        )


@dataclass(frozen=True)
class Preset:
    """What a study trains: the grid and its seeds, the targets of step 2 and their seeds, and
    the extra experiments (a short training budget at 2x; the baseline trained twice as long;
    Figure 4's second width curve)."""

    name: str
    baseline: Baseline = Baseline()
    recipe: Recipe = Recipe()
    grid: tuple = GRID
    grid_seeds: tuple = (0, 1)
    targets: tuple = ((2, (0, 1, 2)), (4, (0, 1, 2)), (8, (0,)))  # (FLOPs ratio, seeds)
    short_epochs: int | None = 5  # the same 2x comparison at this budget (None: skip)
    long_epochs: int | None = 40  # the baseline (seed 0) trained this long: is it at a plateau?
    figure4: tuple | None = (1.4, 1.0, 1.2)  # width scaled on top of this grid candidate
    # (target, seeds) whose weights are written, for notebook 05's pictures: seed 2 at 2x (step 2's
    # own seed, not used to pick the grid's winner) and a fourth baseline seed, 3, trained for its
    # weights (the first three baselines' were not kept).
    saved: tuple = ((1, (3,)), (2, (2,)))


PRESETS = {
    # The study (notebooks 02, 03 and 05 and assignment A3 read it). 40 epochs, because the
    # 20-epoch baseline is still climbing: its 40-epoch run (the half preset's "plateau" job) ends
    # 22 points higher and moves 0.7 points over its last quarter; seeds 1-3 at 40 epochs still
    # gain 1.7-9.2 points there, and 80-epoch pilots of seeds 1 and 3 do not converge either
    # (docs/scale_study.md).
    "full": Preset("full", recipe=Recipe(epochs=40), short_epochs=None, long_epochs=None),
    # The same design at 20 epochs: the full study's short-budget arm, at every target (with a
    # 5-epoch 2x comparison and the baseline's 40-epoch plateau run).
    "half": Preset("half"),
    "quick": Preset(
        "quick",
        recipe=Recipe(epochs=5, images_per_epoch=2000, val_images=1000, test_images=1000),
        grid=GRID[:4],
        grid_seeds=(0,),
        targets=((2, (0,)),),
        short_epochs=None,
        long_epochs=None,
        figure4=None,
        saved=(),
    ),
    "gpu": Preset(
        "gpu",
        recipe=Recipe(epochs=60, device="cuda", amp="auto"),
        grid_seeds=(0, 1, 2),
        targets=((2, (0, 1, 2, 3, 4)), (4, (0, 1, 2, 3, 4)), (8, (0, 1, 2))),
        short_epochs=12,
        long_epochs=120,
    ),
}


@dataclass(frozen=True)
class Job:
    """One model to train: where it comes from (stage, experiment, family, direction, target),
    its shape (depth and width multipliers of B0, pixels), its seed and its training budget."""

    stage: str  # "grid" (step 1) or "scaling" (step 2)
    experiment: str  # "grid", "matched", "budget" (short), "plateau" (long) or "figure4"
    family: str
    target: float
    alpha: float
    beta: float
    gamma: float
    depth: float
    width: float
    resolution: int
    seed: int
    epochs: int

    @property
    def run_name(self) -> str:
        """The file name of its result: the shape, seed and budget identify a trained model."""
        shape = f"d{self.depth:.4f}-w{self.width:.4f}-r{self.resolution}"
        return f"{shape}-e{self.epochs}-s{self.seed}"


@cache
def shape_flops(depth: float, width: float, resolution: int) -> int:
    """Multiply-adds of one image through the study's network of this shape (24 classes)."""
    config = efficientnet_config(depth=depth, width=width, resolution=resolution, num_classes=24)
    return config_flops(config)


def final_map(resolution: int) -> int:
    """Side of the last feature map: five stride-2 steps of ceil(size / 2), i.e. ceil(R / 32).
    It moves in steps (48 and 64 px both end in 2 x 2, 65 px in 3 x 3): the FLOPs jump there."""
    return math.ceil(resolution / 32)


@cache
def scaled_shape(base: Baseline, direction: tuple, target: float) -> tuple[float, float, int]:
    """(depth, width, resolution) of `base` grown along `direction` = (alpha, beta, gamma) to
    `target` times its FLOPs, within `FLOPS_TOLERANCE`.

    phi = log2(target) gives the nominal d * alpha^phi, w * beta^phi, r * gamma^phi. Whole
    blocks, channels in multiples of 8 and whole pixels make FLOPs a step function, so: first
    scan phi finely (one multiplier for all three); if no phi lands within 2 %, also nudge each
    dimension that grows by up to 30 % (pixels by up to 5; if that is not enough, 50 % and 12
    pixels) and keep the shape closest to nominal."""
    alpha, beta, gamma = direction
    if min(direction) < 1:
        raise ValueError(f"alpha, beta, gamma must all be >= 1, got {direction}")
    if not target >= 1:
        raise ValueError(f"target FLOPs ratio must be >= 1, got {target!r}")
    goal = target * shape_flops(base.depth, base.width, base.resolution)

    def shape(phi, nudge=(1.0, 1.0, 0)):
        d = round(base.depth * alpha**phi * nudge[0], 4)
        w = round(base.width * beta**phi * nudge[1], 4)
        return d, w, max(16, round(base.resolution * gamma**phi) + nudge[2])

    def error(s):
        return abs(math.log(shape_flops(*s) / goal))

    phi = math.log(target) / math.log(alpha * beta**2 * gamma**2)
    best = min((shape(phi * (0.7 + 0.6 * i / 600)) for i in range(601)), key=error)
    nominal = shape(phi)

    def distance(s):  # from the nominal shape, in log-FLOPs shares
        return sum(math.log(x / y) ** 2 for x, y in zip(s, nominal, strict=True))

    def nudged(steps, pixels):
        nudges = [
            (a, b, c)
            for a in (steps if alpha > 1 else [1.0])
            for b in (steps if beta > 1 else [1.0])
            for c in (pixels if gamma > 1 else [0])
        ]
        close = [shape(phi, n) for n in nudges]
        close = [s for s in close if error(s) < 0.02] or [min(close, key=error)]
        return min(close, key=distance)

    if error(best) > 0.02 and sum(x > 1 for x in direction) > 1:
        best = nudged([1.0 + 0.02 * k for k in range(-15, 16)], range(-5, 6))
        if abs(shape_flops(*best) / goal - 1) > FLOPS_TOLERANCE:  # rarely: look further
            best = nudged([1.0 + 0.02 * k for k in range(-25, 26)], range(-12, 13))
    if abs(shape_flops(*best) / goal - 1) > FLOPS_TOLERANCE:
        raise ValueError(
            f"no shape along {direction} is within {FLOPS_TOLERANCE:.0%} of {target}x the "
            f"baseline's FLOPs (closest: {shape_flops(*best) / goal * target:.3f}x)"
        )
    return best


def _job(base, stage, experiment, family, target, direction, seed, epochs) -> Job:
    if target == 1:
        shape = (base.depth, base.width, base.resolution)
    else:
        shape = scaled_shape(base, direction, target)
    return Job(stage, experiment, family, target, *direction, *shape, seed, epochs)


def grid_family(direction: tuple) -> str:
    """The family a grid candidate belongs to: a corner's dimension, the paper's, or compound."""
    named = {v: k for k, v in DIRECTIONS.items()}
    return named.get(tuple(direction), "compound")


def plan(preset: Preset, ours: tuple | None = None) -> list[Job]:
    """Every model `preset` trains. Without `ours` (the grid's winner, known once step 1 is done):
    step 1 and every model of step 2 that does not depend on it. A model is listed once: the 2x
    models of step 2 for the grid's seeds are the grid's own."""
    base, epochs, jobs = preset.baseline, preset.recipe.epochs, []
    seeds_2x = dict(preset.targets).get(2, ())
    budgets = [(epochs, "matched")] + (
        [(preset.short_epochs, "budget")] * bool(preset.short_epochs)
    )
    for e, experiment in budgets:
        seeds = set(seeds_2x) | (set(preset.grid_seeds) if e == epochs else set())
        seeds = sorted(seeds | (set(dict(preset.saved).get(1, ())) if e == epochs else set()))
        jobs += [_job(base, "scaling", experiment, "baseline", 1, (1, 1, 1), s, e) for s in seeds]
    if preset.long_epochs:  # the baseline's plateau, tested: the same baseline, trained longer
        jobs.append(
            _job(base, "scaling", "plateau", "baseline", 1, (1, 1, 1), 0, preset.long_epochs)
        )
    for direction in preset.grid:
        family = grid_family(direction)
        jobs += [
            _job(base, "grid", "grid", family, 2, direction, s, epochs) for s in preset.grid_seeds
        ]
    families = dict(DIRECTIONS)
    if ours is not None:
        families["compound"] = tuple(ours)
    for family, direction in families.items():
        for target, seeds in preset.targets:
            for seed in seeds:
                in_grid = target == 2 and tuple(direction) in map(tuple, preset.grid)
                if not (in_grid and seed in preset.grid_seeds):
                    jobs.append(
                        _job(base, "scaling", "matched", family, target, direction, seed, epochs)
                    )
        if preset.short_epochs:
            jobs += [
                _job(base, "scaling", "budget", family, 2, direction, s, preset.short_epochs)
                for s in seeds_2x
            ]
    if preset.figure4:  # width grown on top of a grid candidate that left width alone
        a, b, g = preset.figure4
        start = scaled_shape(base, preset.figure4, 2)
        for target in (4, 8):
            grown = Baseline(start[0], base.width, start[2])
            ratio = target * shape_flops(base.depth, base.width, base.resolution)
            d, w, r = scaled_shape(grown, DIRECTIONS["width"], ratio / shape_flops(*start))
            jobs.append(Job("scaling", "figure4", "width", target, a, b, g, d, w, r, 0, epochs))
    unique = {}
    for job in jobs:
        unique.setdefault(job.run_name, job)
    return list(unique.values())


def best_candidate(rows: list[dict], preset: Preset) -> tuple | None:
    """Our alpha, beta, gamma: the grid candidate with the best mean validation accuracy over its
    seeds (None until every grid model is trained)."""
    grid = [r for r in rows if r["stage"] == "grid"]
    if len(grid) < len(preset.grid) * len(preset.grid_seeds):
        return None
    means = {}
    for direction in preset.grid:
        accs = [r["val_accuracy"] for r in grid if _direction(r) == tuple(direction)]
        means[tuple(direction)] = sum(accs) / len(accs)
    return max(means, key=means.get)


def missing(rows: list[dict], preset: Preset | str = "full") -> list[Job]:
    """The models `preset` plans that `rows` do not hold yet (before step 1 is complete, step 2's
    compound models are not known, so they are not listed)."""
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    done = {r["run_name"] for r in rows}
    return [j for j in plan(preset, best_candidate(rows, preset)) if j.run_name not in done]


def _direction(row: dict) -> tuple:
    return (row["alpha"], row["beta"], row["gamma"])


# ------------------------------------------------------------------------------------------------
# Training one model


def factor_accuracy(
    predictions: torch.Tensor, labels: torch.Tensor, class_factors: list[tuple]
) -> dict[str, float]:
    """Accuracy on each factor of a product class (synthetic: arrangement, colour, texture).

    "line-warm-grid" for a "line-warm-hex" image is the wrong class but right on arrangement and
    colour: this shows *which* part of the task a scaled model got better at."""
    from .synthetic import ARRANGEMENTS, COLOURS, TEXTURES

    index = torch.tensor(
        [[ARRANGEMENTS.index(a), COLOURS.index(c), TEXTURES.index(t)] for a, c, t in class_factors]
    )  # (classes, 3)
    right = (index[predictions] == index[labels]).double().mean(dim=0)  # (3,)
    return dict(zip(FACTOR_KEYS, right.tolist(), strict=True))


def predict(model, dataset, batch_size: int = 250) -> torch.Tensor:
    """The model's top-1 class for every sample of `dataset` (fp32, eval mode)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with torch.no_grad():
        return torch.cat([model(batch[0]).argmax(dim=1) for batch in loader])


def study_data_options(recipe: Recipe) -> dict:
    """The `SyntheticObjects` options of the study's task (pass them to score a study model)."""
    return {"distractors": recipe.distractors, "texture_amplitude": recipe.texture_amplitude}


def build(job: Job, recipe: Recipe):
    """The untrained model of `job` (light dropout, no stochastic depth: short runs; residual
    blocks starting as the identity if the recipe says so)."""
    shape = {"depth": job.depth, "width": job.width, "resolution": job.resolution}
    options = {"dropout": recipe.dropout, "stochastic_depth": 0.0}
    zero = recipe.zero_init_residual
    return efficientnet(**shape, num_classes=24, zero_init_residual=zero, **options)


def train_job(job: Job, recipe: Recipe, base: Baseline, models_dir: Path | None = None) -> dict:
    """Train one model and score it; returns its result row (with the learning curve and the test
    predictions). Runs in the main process or in a one-thread worker process."""
    from .synthetic import FreshSyntheticObjects, SyntheticObjects
    from .training import fit

    r, options = job.resolution, study_data_options(recipe)
    train = FreshSyntheticObjects(recipe.images_per_epoch, r, seed=1000 + job.seed, **options)
    val = SyntheticObjects("val", recipe.val_images, r, **options)
    test = SyntheticObjects("test", recipe.test_images, r, **options)
    curve_set = SyntheticObjects("val", min(1000, recipe.val_images), r, **options)  # its start
    torch.manual_seed(job.seed)
    model = build(job, recipe)
    config = recipe.train_config(job.seed, job.epochs)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = fit(model, train, curve_set, config)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model = model.cpu().to(memory_format=torch.contiguous_format)
    val_predictions, test_predictions = predict(model, val), predict(model, test)
    base_flops = shape_flops(base.depth, base.width, base.resolution)
    flops = shape_flops(job.depth, job.width, job.resolution)
    row = asdict(job) | {
        "flops": flops,
        "flops_ratio": flops / base_flops,
        "params": sum(p.numel() for p in model.parameters()),
        "final_map": final_map(r),
        "lr": config.lr,
        "val_accuracy": (val_predictions == val.labels).double().mean().item(),
        "test_accuracy": (test_predictions == test.labels).double().mean().item(),
        "train_accuracy": history[-1]["accuracy"],
        **factor_accuracy(test_predictions, test.labels, test.class_factors),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "curve": [round(record["val_accuracy"], 4) for record in history],
        "test_predictions": test_predictions.tolist(),
    }
    row["attention"] = attention_of(model, test, ATTENTION_SCENES)
    if models_dir is not None:
        row["saved_test_accuracy"] = save_model(model, row, models_dir, test)
    return row


ATTENTION_SCENES = 200  # the first test scenes, scored for every model (Figure 7 in numbers)


def attention_of(model, scenes, count: int, layer: str = "head") -> dict[str, list[float]]:
    """Grad-CAM of the predicted class at `layer` on the first `count` scenes, scored against
    the discs' masks: per-image energy share, pointing game and IoU (`attention_scores`)."""
    from .attention import attention_scores, gradcam

    images = scenes.images[:count].float() / 255
    cams = gradcam(model, images, None, layer)  # None: each image's top-1 class
    scores = attention_scores(cams, scenes.masks[:count, 0].numpy())
    return {k: [round(float(x), 4) for x in v] for k, v in scores.items()}


def model_filename(family: str, target: float, seed: int, epochs: int | None = None) -> str:
    """Where a study keeps a model's weights: ``compound-x2-seed0.pt``."""
    suffix = "" if epochs is None else f"-e{epochs}"
    return f"{family}-x{target:g}-seed{seed}{suffix}.pt"


def save_model(model, row: dict, models_dir: Path, test) -> float:
    """Write the model as a plain fp16 state_dict (any torch loads it, `load_checkpoint` too) and
    return its test accuracy as stored, which the notebooks check against the trained one."""
    from .training import model_signature

    weights = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    stored = (predict(model, test) == test.labels).double().mean().item()
    keys = ("stage", "family", "target", "seed", "epochs", "test_accuracy")
    checkpoint = {"model": weights, "model_signature": model_signature(model)}
    checkpoint |= {k: row[k] for k in keys} | {"saved_test_accuracy": stored}
    models_dir.mkdir(parents=True, exist_ok=True)
    name = model_filename(row["family"], row["target"], row["seed"])
    if row["family"] == "compound" and row["stage"] == "grid":  # a candidate: which one
        name = f"candidate-a{row['alpha']:.2f}-b{row['beta']:.2f}-g{row['gamma']:.2f}-" + name
    path = models_dir / name
    _atomic_write(path, lambda f: torch.save(checkpoint, f))
    return stored


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename: a stop never leaves half a file."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        write(f)
    os.replace(partial, path)


# ------------------------------------------------------------------------------------------------
# Running a study


def _spec(preset: Preset) -> dict:
    return {
        "preset": preset.name,
        "baseline": asdict(preset.baseline),
        "recipe": asdict(preset.recipe),
    }


def load_rows(out_dir: str | Path) -> list[dict]:
    """Every finished model's result row in `out_dir/runs/` (in name order)."""
    runs = Path(out_dir) / "runs"
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


def _is_saved(job: Job, preset: Preset) -> bool:
    chosen = any(job.target == t and job.seed in seeds for t, seeds in preset.saved)
    return chosen and job.experiment in ("matched", "grid")


def run_study(preset: Preset | str, out_dir: str | Path, workers: int = 1, log=print) -> list[dict]:
    """Train every model of `preset` not yet in `out_dir` and write the results as they come.

    Each model's row goes to ``out_dir/runs/<shape>-e<epochs>-s<seed>.json`` when it finishes, and
    results.csv and results.json are rewritten; a rerun skips finished models, so a stopped study
    continues where it stopped (and a preset with more seeds adds only the new ones). The first
    call writes ``study.json`` (preset, baseline, recipe); a later call with another baseline or
    recipe is refused: its models would not be comparable. `workers` > 1 trains that many models
    at once in one-thread processes; one thread makes each model's result the same as a serial
    run's. The baselines go first, then step 1's models: step 2's compound models wait for its
    winner."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    preset = PRESETS[preset] if isinstance(preset, str) else preset
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    out_dir = Path(out_dir)
    spec_path, spec = out_dir / "study.json", _spec(preset)
    if spec_path.exists():
        stored = json.loads(spec_path.read_text())
        if {k: stored.get(k) for k in ("baseline", "recipe")} != {
            k: spec[k] for k in ("baseline", "recipe")
        }:
            raise ValueError(
                f"{out_dir} holds a study with another baseline or recipe ({stored}); its models "
                "would not be comparable with these. Use another folder."
            )
    elif found := [out_dir / n for n in ("results.csv", "results.json") if (out_dir / n).exists()]:
        raise FileExistsError(
            f"{found[0]} is there but no study.json (an older study's or another tool's results): "
            "use another folder"
        )
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec, indent=2))
    (out_dir / "runs").mkdir(exist_ok=True)
    rows = {r["run_name"]: r for r in load_rows(out_dir)}
    models_dir = out_dir / "models"
    start, trained, cost_done, seconds_done = time.perf_counter(), 0, 0.0, 0.0

    def pending(ours):
        jobs = [j for j in plan(preset, ours) if j.run_name not in rows]

        # The baselines first (they are the design's check: does the baseline plateau?), then
        # step 1 (step 2's compound models wait for its winner), then the models whose weights
        # the notebooks load, then whole experiments, cheapest first (the short budget and the
        # long baseline, then 4x, then 8x), so that a stopped study has finished experiments;
        # within each, the most costly model first.
        def order(j):
            first = 0 if j.family == "baseline" else 1 if j.stage == "grid" else 2
            if first == 2 and not _is_saved(j, preset):
                first = 3 if j.experiment in ("budget", "plateau") else 3 + j.target
            return (first, -_cost(j))

        return sorted(jobs, key=order)

    def finish(job: Job, row: dict, total: int):
        nonlocal trained, cost_done, seconds_done
        row["run_name"] = job.run_name
        _atomic_write(
            out_dir / "runs" / f"{job.run_name}.json", lambda f: f.write(json.dumps(row).encode())
        )
        rows[job.run_name] = row
        write_results(list(rows.values()), out_dir)
        trained, cost_done, seconds_done = (
            trained + 1,
            cost_done + _cost(job),
            seconds_done + row["cpu_seconds"],
        )
        left = [
            j
            for j in plan(preset, best_candidate(list(rows.values()), preset))
            if j.run_name not in rows
        ]
        eta = sum(map(_cost, left)) * seconds_done / cost_done / workers
        log(
            f"[{len(rows)} done, {len(left)} left] {job.family} x{job.target:g} ({job.experiment}, "
            f"seed {job.seed}, {job.epochs} epochs): test accuracy {row['test_accuracy']:.3f}, "
            f"{row['seconds']:.0f} s; {(time.perf_counter() - start) / 60:.0f} min so far, "
            f"about {eta / 60:.0f} min left"
        )

    def task(job):
        saved = models_dir if _is_saved(job, preset) else None
        return (job, preset.recipe, preset.baseline, saved)

    ours, failures = best_candidate(list(rows.values()), preset), []
    queue = pending(ours)
    total = len(queue)
    log(f"{preset.name} study in {out_dir}: {len(rows)} models done, {total} to train now")
    if workers == 1:
        while queue:
            job = queue.pop(0)
            finish(job, train_job(*task(job)), total)
            if ours is None and (ours := best_candidate(list(rows.values()), preset)) is not None:
                queue = pending(ours)
    else:
        context = get_context("spawn")  # no fork of a threaded parent
        one_thread = {"initializer": torch.set_num_threads, "initargs": (1,)}
        with ProcessPoolExecutor(workers, mp_context=context, **one_thread) as pool:
            running = {}
            while queue or running:
                busy = {j.run_name for j in running.values()}
                for job in [j for j in queue if j.run_name not in busy][: workers - len(running)]:
                    running[pool.submit(train_job, *task(job))] = job
                    queue.remove(job)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    try:
                        row = future.result()
                    except Exception as error:  # keep the other models training; raise at the end
                        log(f"{job.run_name} failed: {type(error).__name__}: {error}")
                        failures.append((job, error))
                        continue
                    finish(job, row, total)
                if (
                    ours is None
                    and (ours := best_candidate(list(rows.values()), preset)) is not None
                ):
                    busy = {j.run_name for j in running.values()}
                    queue = [j for j in pending(ours) if j.run_name not in busy]
    if failures:
        job, error = failures[0]
        raise RuntimeError(f"{len(failures)} model(s) failed, first {job.run_name}") from error
    if ours is not None:
        log(f"our alpha, beta, gamma: {ours}")
    return list(rows.values())


def _cost(job: Job) -> float:
    """Rough training cost (CPU-seconds are about proportional to FLOPs^0.8 times epochs)."""
    return shape_flops(job.depth, job.width, job.resolution) ** 0.8 * job.epochs


COLUMNS = (
    "stage", "experiment", "family", "target", "flops_ratio", "depth", "width", "resolution",
    "final_map", "seed", "epochs", "lr", "val_accuracy", "test_accuracy", "train_accuracy",
    *FACTOR_KEYS, "alpha", "beta", "gamma", "flops", "params", "seconds", "cpu_seconds", "run_name",
)  # fmt: skip


def write_results(rows: list[dict], out_dir: str | Path) -> None:
    """results.csv (one row per trained model; grid rows carry alpha, beta, gamma) and
    results.json (the same rows with learning curves and per-image test predictions)."""
    out_dir = Path(out_dir)
    rows = sorted(
        rows, key=lambda r: (r["stage"], r["experiment"], r["family"], r["target"], r["seed"])
    )
    _atomic_write(out_dir / "results.json", lambda f: f.write(json.dumps(rows).encode()))
    lines = []
    for row in rows:
        line = {k: row.get(k, "") for k in COLUMNS}
        if row["stage"] != "grid":
            line.update(alpha="", beta="", gamma="")
        lines.append(line)

    def write(f):
        import io

        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(lines)
        f.write(text.getvalue().encode())

    _atomic_write(out_dir / "results.csv", write)


# ------------------------------------------------------------------------------------------------
# Reading a study: selections, paired statistics


def select(
    rows, family=None, target=None, experiment=("grid", "matched"), direction=None, epochs=None
):
    """The rows of one comparison point: `family` at `target`, trained in `experiment` (grid rows
    count as step 2's 2x models), or by `direction` (alpha, beta, gamma) for grid candidates.
    Sorted by seed, so that seed-by-seed comparisons can zip two selections."""
    chosen = []
    for r in rows:
        if family is not None and r["family"] != family:
            continue
        if target is not None and r["target"] != target:
            continue
        if r["experiment"] not in ((experiment,) if isinstance(experiment, str) else experiment):
            continue
        if (
            direction is not None
            and r["family"] != "baseline"
            and _direction(r) != tuple(direction)
        ):
            continue
        if epochs is not None and r["epochs"] != epochs:
            continue
        chosen.append(r)
    return sorted(chosen, key=lambda r: r["seed"])


def correct_matrix(rows: list[dict], labels: torch.Tensor) -> torch.Tensor:
    """(seeds, images) bool: which test images each model got right."""
    return torch.stack([torch.tensor(r["test_predictions"]) == labels for r in rows])


def paired_bootstrap(
    a: torch.Tensor, b: torch.Tensor, samples: int = 4000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Accuracy of a minus accuracy of b, with a bootstrap interval that resamples *images*
    (the same images for both: the pairing) and, independently, each side's *seeds*.

    a, b: (seeds, images) bool, right or wrong per test image. Returns the observed difference,
    the interval at `confidence` (pass 1 - 0.05 / m for m comparisons: Bonferroni) and the share of
    resamples on the other side of zero."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"need (seeds, images) for both, the same images; got {a.shape}, {b.shape}"
        )
    g = torch.Generator().manual_seed(seed)
    n = a.shape[1]
    a, b = a.double(), b.double()

    # Each resample: images drawn with replacement (counted per image) and, for each side, seeds
    # drawn with replacement (counted per seed); a side's accuracy is then its seed counts times
    # its right/wrong matrix times the image counts, over (seeds * images). In chunks of samples.
    def counted(size, k, draws):  # (k, size): how often each index was drawn, per resample
        picks = torch.randint(size, (k, draws), generator=g)
        ones = torch.ones(k, draws, dtype=torch.float64)
        return torch.zeros(k, size, dtype=torch.float64).scatter_add_(1, picks, ones)

    diffs = []
    for start in range(0, samples, 500):
        k = min(500, samples - start)
        images = counted(n, k, n)
        sides = [((counted(x.shape[0], k, x.shape[0]) @ x) * images).sum(dim=1) for x in (a, b)]
        diffs.append(sides[0] / (n * a.shape[0]) - sides[1] / (n * b.shape[0]))
    diffs = torch.cat(diffs)
    observed = (a.mean() - b.mean()).item()
    tail = (1 - confidence) / 2
    low, high = torch.quantile(diffs, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    other_side = (
        (diffs <= 0).double().mean().item() if observed > 0 else (diffs >= 0).double().mean().item()
    )
    return {"difference": observed, "low": low, "high": high, "other_side": other_side}


def mcnemar(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Exact McNemar test of two models scored on the same images (one seed each).

    a, b: (images,) bool, right or wrong per image. Only the images on which they disagree carry
    information: `only_a` right by a alone, `only_b` by b alone. If both models were equally
    accurate, each disagreement would go either way with probability 1/2, so the two-sided exact
    p-value is min(1, 2 P(X <= min(only_a, only_b))) for X ~ Binomial(only_a + only_b, 1/2)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.ndim != 1 or a.shape != b.shape or a.dtype != torch.bool or b.dtype != torch.bool:
        raise ValueError(
            f"need two (images,) bool tensors over the same images; got {a.dtype} {tuple(a.shape)}"
            f" and {b.dtype} {tuple(b.shape)}"
        )
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)  # exact, then one rounding
    return {
        "only_a": only_a,
        "only_b": only_b,
        "difference": (only_a - only_b) / a.numel(),
        "p": float(min(Fraction(1), 2 * tail)),
    }


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread (sample std over seeds) of test accuracy per (experiment, family, target)."""
    groups: dict = {}
    for r in rows:
        key = (r["experiment"], r["family"], r["target"], _direction(r), r["epochs"])
        groups.setdefault(key, []).append(r)
    out = []
    for (experiment, family, target, direction, epochs), group in groups.items():
        accs = torch.tensor([g["test_accuracy"] for g in group], dtype=torch.float64)
        out.append(
            {
                "experiment": experiment, "family": family, "target": target,
                "alpha": direction[0], "beta": direction[1], "gamma": direction[2],
                "epochs": epochs, "seeds": len(group),
                "depth": group[0]["depth"], "width": group[0]["width"],
                "resolution": group[0]["resolution"], "flops_ratio": group[0]["flops_ratio"],
                "test_accuracy": accs.mean().item(),
                "spread": accs.std().item() if len(group) > 1 else 0.0,
                "val_accuracy": sum(g["val_accuracy"] for g in group) / len(group),
                **{k: sum(g[k] for g in group) / len(group) for k in FACTOR_KEYS},
            }
        )  # fmt: skip
    return out
