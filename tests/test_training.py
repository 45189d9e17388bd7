"""The training engine: it learns, it resumes exactly, it never overwrites a user's run."""

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import effnet_edu as ee
from effnet_edu.training import EpochSampler, TrainConfig, fit, load_checkpoint, lr_multiplier


def tiny_model(num_classes=3, **kwargs):
    return ee.efficientnet(depth=0.25, width=0.25, resolution=32, num_classes=num_classes, **kwargs)


def easy_data(n=96, seed=0):
    """Three classes told apart by which colour channel is bright: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.rand(n, 3, 32, 32, generator=g) * 0.5
    images[torch.arange(n), labels] += 0.5
    return TensorDataset(images, labels)


def test_fit_learns_and_reports_history():
    model = tiny_model()
    history = fit(
        model,
        easy_data(),
        easy_data(48, seed=1),
        epochs=8,
        batch_size=16,
        lr=0.05,
        progress=False,
        amp="off",
    )
    assert len(history) == 8
    assert set(history.last) >= {
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "images_per_s",
        "seconds",
    }
    assert history["val_accuracy"][-1] > 0.8  # chance is 1/3
    assert history["loss"][-1] < history["loss"][0]


class Exploding(Dataset):
    """Wraps a dataset and raises once a chosen sample is requested (a corrupt file, say)."""

    def __init__(self, data, bad_index):
        self.data, self.bad_index = data, bad_index

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.bad_index:
            raise OSError(f"cannot read sample {i}")
        return self.data[i]


def run_config(out_dir, **overrides):
    return TrainConfig(
        **{
            **dict(
                epochs=3,
                batch_size=8,
                lr=0.05,
                steps_per_epoch=5,
                ema_decay=0.9,
                out_dir=str(out_dir),
                progress=False,
                amp="off",
                seed=3,
            ),
            **overrides,
        }
    )


def final_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("how", ["on_step", "data"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, how):
    data = easy_data(64)
    torch.manual_seed(7)
    reference = tiny_model(dropout=0.3, stochastic_depth=0.5)
    initial = final_state(reference)
    fit(reference, data, config=run_config(tmp_path / "reference"))

    model = tiny_model(dropout=0.3, stochastic_depth=0.5)
    model.load_state_dict(initial)
    if how == "on_step":

        def stop(global_step):
            if global_step == 7:  # epoch 2, step 2
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            fit(model, data, config=run_config(tmp_path / "run"), on_step=stop)
    else:
        order = list(EpochSampler(len(data), seed=3, epoch=1))  # second epoch's order
        with pytest.raises(OSError, match="cannot read sample"):
            fit(model, Exploding(data, order[8 * 3 + 2]), config=run_config(tmp_path / "run"))
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == ((1, 2) if how == "on_step" else (1, 3))

    resumed = tiny_model(dropout=0.3, stochastic_depth=0.5)
    history = fit(resumed, data, config=run_config(tmp_path / "run", resume=True))
    assert len(history) == 3
    expected = reference.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key
    ours, theirs = (
        torch.load(p / "checkpoint.pt", weights_only=True)["ema"]
        for p in (tmp_path / "run", tmp_path / "reference")
    )
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_existing_checkpoint_is_never_overwritten(tmp_path):
    data = easy_data(32)
    fit(tiny_model(), data, config=run_config(tmp_path, epochs=1))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"resume=True \(--resume\) to continue it"):
        fit(tiny_model(), data, config=run_config(tmp_path, epochs=1))
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary leftovers
    fit(tiny_model(), data, config=run_config(tmp_path, epochs=1, overwrite=True))
    assert (tmp_path / "checkpoint.pt").read_bytes() != before


def test_checkpoint_refuses_another_architecture(tmp_path):
    data = easy_data(32)
    fit(tiny_model(), data, config=run_config(tmp_path, epochs=1, ema_decay=None))
    with pytest.raises(ValueError, match="different architecture.*width"):
        fit(
            ee.efficientnet(depth=0.25, width=0.5, resolution=32, num_classes=3),
            data,
            config=run_config(tmp_path, epochs=2, resume=True),
        )
    with pytest.raises(ValueError, match="different architecture.*num_classes"):
        load_checkpoint(tmp_path / "checkpoint.pt", tiny_model(num_classes=4))
    model, checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")  # rebuilt from its config
    assert model.config == tiny_model().config and checkpoint["epoch"] == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume=True but there is no checkpoint"):
        fit(tiny_model(), easy_data(32), config=run_config(tmp_path, resume=True))


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", -1),
        ("batch_size", 0),
        ("lr", 0.0),
        ("optimizer", "lamb"),
        ("schedule", "poly"),
        ("amp", "fp8"),
        ("label_smoothing", 1.0),
    ],
)
def test_bad_train_config(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        TrainConfig(**{field: value})


def test_batch_larger_than_data_is_explained():
    with pytest.raises(ValueError, match="batch_size 64 is larger than the 32 training samples"):
        fit(tiny_model(), easy_data(32), batch_size=64, progress=False)


def test_schedules():
    config = TrainConfig(epochs=10, warmup_epochs=1, schedule="cosine")
    assert lr_multiplier(0, 100, config) == pytest.approx(0.01)  # warm-up starts small
    assert lr_multiplier(99, 100, config) == pytest.approx(1.0)
    odd = TrainConfig(epochs=10, warmup_epochs=0.3, schedule="constant")
    assert max(lr_multiplier(s, 39, odd) for s in range(39)) == 1.0  # never overshoots
    assert lr_multiplier(550, 100, config) == pytest.approx(0.5)  # half-way through the cosine
    step = TrainConfig(epochs=10, warmup_epochs=0, schedule="step")
    assert lr_multiplier(480, 100, step) == pytest.approx(0.97**2)  # 4.8 epochs = 2 x 2.4


def test_epoch_sampler_shards_and_skips():
    full = list(EpochSampler(10, seed=1, epoch=0))
    assert sorted(full) == list(range(10)) and full != list(range(10))
    assert full != list(EpochSampler(10, seed=1, epoch=1))
    shards = [list(EpochSampler(10, 1, 0, rank=r, world_size=2)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    assert list(EpochSampler(10, 1, 0, skip=4)) == full[4:]
