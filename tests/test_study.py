"""The scale study: matched FLOPs, per-factor accuracy, parallel workers, saved models."""

import math

import pytest
import torch

from effnet_edu import efficientnet
from effnet_edu.data import SyntheticObjects
from effnet_edu.profiling import count_flops
from effnet_edu.study import (
    FAMILIES,
    Baseline,
    DatasetFactory,
    factor_accuracy,
    matched_point,
    model_filename,
    plan,
    run_study,
    summarize,
)
from effnet_edu.training import TrainConfig, evaluate, load_checkpoint


@pytest.mark.parametrize("family", FAMILIES[1:])
@pytest.mark.parametrize("target", [2.0, 4.0])
def test_matched_point_hits_the_flops_target(family, target):
    base = Baseline()
    point = matched_point(base, family, target)
    # Measured by FlopCounter-equivalent hooks on the built models, not by the planner's formula.
    ratio = count_flops(
        efficientnet(
            depth=point.depth, width=point.width, resolution=point.resolution, num_classes=24
        )
    ) / count_flops(
        efficientnet(depth=base.depth, width=base.width, resolution=base.resolution, num_classes=24)
    )
    assert abs(math.log(ratio / target)) < math.log(1.25), (family, target, ratio)
    changed = {
        "depth": point.depth != base.depth,
        "width": point.width != base.width,
        "resolution": point.resolution != base.resolution,
    }
    if family == "compound":
        assert all(changed.values())
    else:
        assert changed == {name: name == family for name in changed}


def test_matched_point_rejects_bad_input():
    with pytest.raises(ValueError, match="family must be one of"):
        matched_point(Baseline(), "height", 2.0)
    with pytest.raises(ValueError, match="target FLOPs ratio must be >= 1"):
        matched_point(Baseline(), "depth", 0.5)


def test_factor_accuracy_counts_each_factor():
    data = SyntheticObjects("val", 24, 16)
    labels = torch.arange(24)
    # Labels 4k..4k+3 share arrangement and colour and differ in texture: shifting the texture
    # index keeps arrangement and colour right and gets every texture wrong.
    wrong_texture = labels // 4 * 4 + (labels + 1) % 4
    scores = factor_accuracy(wrong_texture, labels, data.class_factors)
    assert scores == {"arrangement_accuracy": 1.0, "colour_accuracy": 1.0, "texture_accuracy": 0.0}
    wrong_arrangement = (labels + 8) % 24  # same colour and texture, the next arrangement
    scores = factor_accuracy(wrong_arrangement, labels, data.class_factors)
    assert scores == {"arrangement_accuracy": 0.0, "colour_accuracy": 1.0, "texture_accuracy": 1.0}


def test_run_study_in_parallel_equals_serial_and_saves_models(tmp_path):
    base = Baseline(depth=0.25, width=0.25, resolution=32)
    points = [p for p in plan(base, (2.0,)) if p.family in ("baseline", "resolution")]
    factory = DatasetFactory("synthetic", train_samples=64, val_samples=48)
    config = TrainConfig(
        epochs=1,
        batch_size=32,
        optimizer="adamw",
        lr=3e-3,
        label_smoothing=0.0,
        progress=False,
        device="cpu",
    )
    # Workers train with one thread each; the serial run must too for bit-equal results (a
    # different thread count changes the order of floating-point sums).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_study(points, factory, config, tmp_path / "serial", log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    parallel = run_study(
        points,
        factory,
        config,
        tmp_path / "parallel",
        workers=2,
        save_models=True,
        log=lambda _: None,
    )
    drop = ("seconds", "cpu_seconds", "saved_model_accuracy")  # timings; only saved models
    assert [{k: v for k, v in r.items() if k not in drop} for r in serial] == [
        {k: v for k, v in r.items() if k not in drop} for r in parallel
    ]
    assert {"arrangement_accuracy", "colour_accuracy", "texture_accuracy"} <= set(serial[0])
    for name in ("results.json", "results.csv", "plot.png"):
        assert (tmp_path / "parallel" / name).is_file()
    # A saved model is the trained one in float16, a plain state_dict: reloaded, it scores exactly
    # what the study recorded for the saved model (the trained model's own score is on the row).
    for row in parallel:
        path = tmp_path / "parallel" / "models" / model_filename(row["family"], row["target"], 0)
        model, checkpoint = load_checkpoint(path)
        val = factory("val", row["resolution"])
        torch.set_num_threads(1)  # as in the workers: equal sums, so equal predictions
        try:
            accuracy = evaluate(model, val, device="cpu", amp="off", channels_last=False)[
                "accuracy"
            ]
        finally:
            torch.set_num_threads(threads)
        assert accuracy == pytest.approx(row["saved_model_accuracy"], abs=1e-9)
        assert checkpoint["accuracy"] == row["accuracy"]
        assert {v.dtype for v in checkpoint["model"].values() if v.is_floating_point()} == {
            torch.float16
        }
    assert summarize(parallel)[1]["texture_accuracy"] == parallel[1]["texture_accuracy"]
    assert "saved_model_accuracy" not in summarize(parallel)[1]
    with pytest.raises(FileExistsError, match="already exists"):
        run_study(points, factory, config, tmp_path / "serial", log=lambda _: None)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        run_study(points, factory, config, tmp_path / "other", workers=0)
    with pytest.raises(ValueError, match=r"ema_decay=0\.99: weight EMA is not supported"):
        ema = TrainConfig(epochs=1, ema_decay=0.99, progress=False, device="cpu")
        run_study(points, factory, ema, tmp_path / "other")
