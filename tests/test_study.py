"""The scale study: the grid, matched FLOPs, resumable runs, paired statistics, saved models."""

import json
import math

import pytest
import torch

from effnet_edu import efficientnet
from effnet_edu.data import SyntheticObjects
from effnet_edu.profiling import count_flops
from effnet_edu.study import (
    DIRECTIONS,
    FAMILIES,
    GRID,
    PRESETS,
    Baseline,
    Preset,
    Recipe,
    best_candidate,
    factor_accuracy,
    load_rows,
    model_filename,
    paired_bootstrap,
    plan,
    run_study,
    scaled_shape,
    study_data_options,
)
from effnet_edu.synthetic import FreshSyntheticObjects
from effnet_edu.training import TrainConfig, load_checkpoint


def test_grid_lies_on_the_constraint_and_holds_the_named_directions():
    assert len(GRID) >= 8 and len(set(GRID)) == len(GRID)
    for alpha, beta, gamma in GRID:
        assert min(alpha, beta, gamma) >= 1
        assert 1.9 <= alpha * beta**2 * gamma**2 <= 2.1, (alpha, beta, gamma)
    assert {(1.2, 1.1, 1.15), (2.0, 1.0, 1.0), (1.0, 2**0.5, 1.0), (1.0, 1.0, 2**0.5)} <= set(GRID)


def _measured_ratio(depth, width, resolution, base):
    """FLOPs ratio measured by the profiler's hooks on built models, not by the planner."""

    def flops(d, w, r):
        return count_flops(efficientnet(depth=d, width=w, resolution=r, num_classes=24))

    return flops(depth, width, resolution) / flops(base.depth, base.width, base.resolution)


def test_full_study_models_are_within_5_percent_of_their_flops_target():
    preset, base = PRESETS["full"], PRESETS["full"].baseline
    jobs = plan(preset, ours=GRID[-1])
    shapes = {(j.family, j.target, j.depth, j.width, j.resolution) for j in jobs}
    shapes = {s for s in shapes if s[0] != "baseline"}
    for family, target, depth, width, resolution in shapes:  # Figure 4's models too
        ratio = _measured_ratio(depth, width, resolution, base)
        assert abs(ratio / target - 1) <= 0.05, (family, target, ratio)
    # Every candidate can be scaled to every target, whichever wins the grid.
    for direction in GRID:
        for target in (4, 8):
            shape = scaled_shape(base, direction, target)
            assert abs(_measured_ratio(*shape, base) / target - 1) <= 0.05, (direction, target)
    # A one-dimension family changes that dimension only.
    for job in jobs:
        changed = (job.depth != base.depth, job.width != base.width, job.resolution != 54)
        if job.family in ("depth", "width", "resolution") and job.experiment != "figure4":
            assert changed == tuple(job.family == f for f in ("depth", "width", "resolution"))


def test_plan_lists_each_model_once_with_the_seeds_the_design_needs():
    preset = PRESETS["half"]
    first, full = plan(preset), plan(preset, ours=(1.1, 1.1, 1.22))
    names = [j.run_name for j in full]
    assert len(names) == len(set(names))
    assert {j.run_name for j in first} <= set(names)
    grid = [j for j in full if j.stage == "grid"]
    assert len(grid) == len(GRID) * 2
    for family in FAMILIES[1:]:
        for target, seeds in ((2, 3), (4, 3), (8, 1)):
            direction = (1.1, 1.1, 1.22) if family == "compound" else DIRECTIONS[family]
            chosen = [
                j
                for j in full
                if j.target == target and j.experiment in ("grid", "matched")
                and (j.alpha, j.beta, j.gamma) == direction
            ]  # fmt: skip
            assert len({j.seed for j in chosen}) >= seeds, (family, target)
    with pytest.raises(ValueError, match="must all be >= 1"):
        scaled_shape(Baseline(), (0.9, 1.2, 1.2), 2)
    with pytest.raises(ValueError, match="target FLOPs ratio must be >= 1"):
        scaled_shape(Baseline(), (2.0, 1.0, 1.0), 0.5)


def test_factor_accuracy_counts_each_factor():
    data = SyntheticObjects("val", 24, 16)
    labels = torch.arange(24)
    wrong_texture = labels // 4 * 4 + (labels + 1) % 4  # same arrangement and colour
    scores = factor_accuracy(wrong_texture, labels, data.class_factors)
    assert scores == {"arrangement_accuracy": 1.0, "colour_accuracy": 1.0, "texture_accuracy": 0.0}
    wrong_arrangement = (labels + 8) % 24  # same colour and texture, the next arrangement
    scores = factor_accuracy(wrong_arrangement, labels, data.class_factors)
    assert scores == {"arrangement_accuracy": 0.0, "colour_accuracy": 1.0, "texture_accuracy": 1.0}


def test_paired_bootstrap_against_hand_computed_cases():
    torch.manual_seed(0)
    a = torch.rand(3, 400) < 0.6
    same = paired_bootstrap(a[:1], a[:1].clone())  # one seed each: only images are resampled
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0
    seeds = paired_bootstrap(a, a.clone())  # resampled seeds differ: an interval around zero
    assert seeds["low"] < 0 < seeds["high"]
    better = a | (torch.rand(3, 400) < 0.3)  # right wherever a is, and on more images
    result = paired_bootstrap(better, a)
    assert result["difference"] == pytest.approx(
        (better.double().mean() - a.double().mean()).item()
    )
    assert 0 < result["low"] <= result["difference"] <= result["high"]
    assert result["other_side"] < 0.01
    # Pairing matters: two models wrong on different images differ by zero, with a wide interval.
    x = torch.zeros(1, 400, dtype=torch.bool)
    x[0, :200] = True
    y = ~x
    wide = paired_bootstrap(x, y)
    assert wide["low"] < -0.05 and wide["high"] > 0.05
    with pytest.raises(ValueError, match="the same images"):
        paired_bootstrap(a, a[:, :10])
    # One seed each: the resampled difference is a mean of n per-image differences, so its
    # 95 % interval is about observed +- 1.96 * std(d) / sqrt(n) (normal approximation).
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(1, 2000, generator=g) < 0.7, torch.rand(1, 2000, generator=g) < 0.6
    d = (x.double() - y.double())[0]
    half = 1.96 * d.std().item() / 2000**0.5
    r = paired_bootstrap(x, y, samples=4000)
    assert r["low"] == pytest.approx(d.mean().item() - half, abs=0.15 * half)
    assert r["high"] == pytest.approx(d.mean().item() + half, abs=0.15 * half)


def test_fresh_synthetic_data_changes_every_epoch_and_repeats_per_seed():
    data = FreshSyntheticObjects(32, 24, seed=3)
    first = data[0][0].clone()
    data.set_epoch(1)
    assert not torch.equal(data[0][0], first)
    assert torch.equal(FreshSyntheticObjects(32, 24, seed=3)[0][0], first)
    # served from its tensors, this epoch's, by fit's TensorLoader: no workers to miss set_epoch
    from effnet_edu.training import TensorLoader, _build_loader

    loader = _build_loader(data, TrainConfig(batch_size=8, num_workers=1), torch.device("cpu"))
    assert isinstance(loader, TensorLoader) and loader.dataset is data


TINY = Preset(
    "test",
    recipe=Recipe(epochs=2, images_per_epoch=96, batch_size=32, val_images=64, test_images=64),
    grid=(DIRECTIONS["depth"], DIRECTIONS["compound_paper"]),
    grid_seeds=(0,),
    targets=((2, (0,)),),
    short_epochs=None,
    long_epochs=4,
    figure4=None,
    saved=((1, (0,)), (2, (0,))),
)


class Stop(Exception):
    pass


def test_a_stopped_study_resumes_and_equals_one_never_stopped(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: bit-equal results
    try:
        whole = run_study(TINY, tmp_path / "whole", log=lambda _: None)

        def stop_after_first(line):
            if line.startswith("[1 done"):
                raise Stop

        with pytest.raises(Stop):
            run_study(TINY, tmp_path / "stopped", log=stop_after_first)
        assert len(load_rows(tmp_path / "stopped")) == 1
        lines = []
        resumed = run_study(TINY, tmp_path / "stopped", log=lines.append)
    finally:
        torch.set_num_threads(threads)
    assert sum(line.startswith("[") for line in lines) == len(whole) - 1  # trained only the rest
    drop = ("seconds", "cpu_seconds")

    def same(rows):
        return sorted(json.dumps({k: v for k, v in r.items() if k not in drop}) for r in rows)

    assert same(resumed) == same(whole)
    assert best_candidate(whole, TINY) in TINY.grid
    header = (tmp_path / "whole" / "results.csv").read_text().splitlines()[0].split(",")
    for column in ("stage", "family", "target", "flops_ratio", "depth", "width", "resolution",
                   "seed", "epochs", "val_accuracy", "alpha", "beta", "gamma"):  # fmt: skip
        assert column in header
    # The saved models are plain fp16 state_dicts that reload to the accuracy recorded.
    plateau = [r for r in whole if r["experiment"] == "plateau"]
    assert [(r["family"], r["seed"], r["epochs"]) for r in plateau] == [("baseline", 0, 4)]
    for row in whole:
        if row["target"] > 2 or row["stage"] == "grid" and row["family"] == "compound":
            continue
        if row["experiment"] == "plateau":  # the long baseline: a result row, no weights
            assert "saved_test_accuracy" not in row
            continue
        path = tmp_path / "whole" / "models" / model_filename(row["family"], row["target"], 0)
        weights = torch.load(path, weights_only=True)
        assert {v.dtype for v in weights["model"].values() if v.is_floating_point()} == {
            torch.float16
        }
        model, _ = load_checkpoint(path)
        test = SyntheticObjects("test", 64, row["resolution"], **study_data_options(Recipe()))
        with torch.no_grad():
            accuracy = (model(test.images.float() / 255).argmax(1) == test.labels).double().mean()
        assert math.isclose(accuracy.item(), row["saved_test_accuracy"], abs_tol=0.005)
    other = Preset("test", recipe=Recipe(epochs=3, images_per_epoch=96, batch_size=32))
    with pytest.raises(ValueError, match="another baseline or recipe"):
        run_study(other, tmp_path / "whole", log=lambda _: None)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        run_study(TINY, tmp_path / "x", workers=0)


def test_parallel_workers_give_the_serial_results(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_study(TINY, tmp_path / "serial", log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    parallel = run_study(TINY, tmp_path / "parallel", workers=2, log=lambda _: None)
    drop = ("seconds", "cpu_seconds")
    key = sorted(
        json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True) for r in serial
    )
    assert key == sorted(
        json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True) for r in parallel
    )


def test_mcnemar_against_hand_computations_and_scipy():
    from scipy.stats import binomtest

    from effnet_edu.study import mcnemar

    def pair(only_a, only_b, both=5, neither=3):
        a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
        b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
        return torch.tensor(a), torch.tensor(b)

    result = mcnemar(*pair(3, 0))  # n = 3 disagreements, all one way: p = 2 / 2^3
    assert (result["only_a"], result["only_b"], result["p"]) == (3, 0, 0.25)
    assert result["difference"] == pytest.approx(3 / 11)
    assert mcnemar(*pair(5, 5))["p"] == 1.0
    assert mcnemar(*pair(10, 2))["p"] == pytest.approx(2 * (1 + 12 + 66) / 2**12)
    assert mcnemar(*pair(0, 0))["p"] == 1.0  # no disagreement: no evidence either way
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2000, generator=g) < 0.7, torch.rand(2000, generator=g) < 0.65
    result = mcnemar(a, b)
    n = result["only_a"] + result["only_b"]
    assert result["p"] == pytest.approx(binomtest(result["only_a"], n, 0.5).pvalue, rel=1e-9)
    with pytest.raises(ValueError, match="bool"):
        mcnemar(a.float(), b)


def test_train_job_trains_at_the_recipe_learning_rate_and_records_it(monkeypatch):
    import effnet_edu.study as study
    import effnet_edu.training as training

    seen = {}

    def fake_fit(model, train, val, config):  # the config train_job hands to fit, no training
        seen["lr"] = config.lr
        return [{"accuracy": 0.0, "val_accuracy": 0.0}]

    monkeypatch.setattr(training, "fit", fake_fit)
    monkeypatch.setattr(study, "attention_of", lambda *args, **kwargs: {})
    recipe, base = Recipe(images_per_epoch=8, val_images=8, test_images=8), Baseline()
    job = study._job(base, "scaling", "matched", "width", 2, DIRECTIONS["width"], 0, 1)
    row = study.train_job(job, recipe, base)
    assert seen["lr"] == row["lr"] == recipe.lr  # the same for every model, as in the paper


def test_the_full_preset_saves_notebook_05s_models_and_git_keeps_them():
    # The weights notebook 05 loads: the baseline and every family at 2x, one seed. A .gitignore
    # that dropped them would lose them with the checkout (as the first run's seed-0 models were).
    import subprocess
    from pathlib import Path

    from effnet_edu.study import _is_saved, missing

    full = PRESETS["full"]
    saved = [j for j in plan(full, DIRECTIONS["width"]) if _is_saved(j, full)]
    # (compound = our winner, here the width corner: the width model itself)
    expected = [
        ("baseline", 1),
        ("compound_paper", 2),
        ("depth", 2),
        ("resolution", 2),
        ("width", 2),
    ]
    assert sorted((j.family, j.target) for j in saved) == expected
    assert {j.epochs for j in saved} == {40}
    half = PRESETS["half"]  # the same design at 20 epochs saves the same models
    saved_half = [j for j in plan(half, DIRECTIONS["width"]) if _is_saved(j, half)]
    assert [(j.family, j.target, j.seed) for j in saved_half] == [
        (j.family, j.target, j.seed) for j in saved
    ]
    root = Path(__file__).resolve().parents[1]

    def ignored(folder, names):
        paths = [f"{folder}/{name}" for name in names]
        command = ["git", "check-ignore", *paths]
        return subprocess.run(command, cwd=root, capture_output=True, text=True).stdout.split()

    names = [model_filename(j.family, j.target, j.seed) for j in saved] + ["compound-x2-seed2.pt"]
    assert ignored("results/scale_study/models", names) == []
    assert ignored("results/scale_study/models", ["depth-x4-seed0.pt"]) != []  # other models: out
    # No notebook loads the 20-epoch study's weights: git keeps none of them.
    assert len(ignored("results/scale_study_half/models", names)) == len(names)
    assert len(missing([], full)) == len(plan(full))  # nothing trained: all missing
