"""The training engine: it learns, it resumes exactly, it never overwrites or damages a run."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import effnet_edu as ee
from effnet_edu.training import (
    CheckpointError,
    EpochSampler,
    ExponentialMovingAverage,
    TrainConfig,
    autocast_dtype,
    cpu_supports_bf16,
    depthwise_in_fp32,
    evaluate,
    fit,
    load_checkpoint,
    lr_multiplier,
    select_device,
)


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
    # One thread and a fixed initialisation. The last bits of the arithmetic still differ between
    # CPUs (AVX2, AVX-512, AMX kernels), and a short run at lr 0.05 amplified them: seed 1 reached
    # 1.0 on an EPYC and 0.69 on a Sapphire Rapids Xeon. At lr 0.02 for 12 epochs, init seeds 1-8
    # all reach 1.0 on that Xeon, so the margin below is wide on any CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1)
    model = tiny_model()
    try:
        history = fit(
            model,
            easy_data(),
            easy_data(48, seed=1),
            epochs=12,
            batch_size=16,
            lr=0.02,
            progress=False,
            amp="off",
        )
    finally:
        torch.set_num_threads(threads)
    assert len(history) == 12 and history.last is history[-1] and history.epochs == list(history)
    expected = {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "seconds"}
    assert set(history.last) >= expected
    assert history["val_accuracy"][-1] > 0.8  # chance is 1/3
    assert history["loss"][-1] < history["loss"][0]
    assert model.training  # fit leaves the model in train mode


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
    defaults = dict(epochs=3, batch_size=8, steps_per_epoch=5, ema_decay=0.9, seed=3)
    defaults |= dict(out_dir=str(out_dir), progress=False, amp="off")
    return TrainConfig(**{**defaults, **overrides})


@pytest.mark.parametrize("how", ["on_step", "data"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, how):
    data = easy_data(64)
    torch.manual_seed(7)
    reference = tiny_model(dropout=0.3, stochastic_depth=0.5)
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
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
        sampler = EpochSampler(len(data), seed=3)
        sampler.set_epoch(1)
        order = list(sampler)  # the second epoch's order
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
        torch.load(p / "checkpoint.pt", weights_only=True)
        for p in (tmp_path / "run", tmp_path / "reference")
    )
    assert all(torch.equal(ours["ema"][k], theirs["ema"][k]) for k in theirs["ema"])
    assert ours["history"][2]["loss"] == pytest.approx(theirs["history"][2]["loss"], rel=1e-6)


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
    data, path = easy_data(32), tmp_path / "checkpoint.pt"
    fit(tiny_model(), data, config=run_config(tmp_path, epochs=1, ema_decay=None))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="different architecture.*width"):
        wider = ee.efficientnet(depth=0.25, width=0.5, resolution=32, num_classes=3)
        fit(wider, data, config=run_config(tmp_path, epochs=2, resume=True))
    with pytest.raises(ValueError, match="different architecture.*num_classes"):
        load_checkpoint(path, tiny_model(num_classes=4))
    assert path.read_bytes() == before  # a refused resume changes nothing
    model, checkpoint = load_checkpoint(path)  # rebuilt from its config
    assert model.config == tiny_model().config and checkpoint["epoch"] == 1
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    # The same shapes under another name or regularisation are the same architecture.
    same = ee.efficientnet(depth=0.25, width=0.25, resolution=32, num_classes=3, dropout=0.0)
    assert load_checkpoint(path, same)[0] is same
    # A resumed step lands where the saved batch size put it: another batch size is refused.
    with pytest.raises(ValueError, match="batch_size=8, this run has batch_size=4"):
        fit(tiny_model(), data, config=run_config(tmp_path, epochs=1, resume=True, batch_size=4))
    assert path.read_bytes() == before


def test_bad_checkpoint_files_are_named_and_left_alone(tmp_path):
    fit(tiny_model(), easy_data(32), config=run_config(tmp_path / "run", epochs=1))
    good = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    files = {
        "truncated.pt": good[: len(good) // 2],
        "notes.txt": b"hello, not a checkpoint\n",
    }
    torch.save(tiny_model().state_dict(), tmp_path / "weights.pt")  # a plain state_dict
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    for name, what in [
        ("truncated.pt", "corrupt"),
        ("notes.txt", "corrupt"),
        ("weights.pt", "plain state_dict"),
    ]:
        path = tmp_path / name
        before = path.read_bytes()
        with pytest.raises(CheckpointError, match=what) as error:
            load_checkpoint(path)
        assert str(path) in str(error.value) and isinstance(error.value, ValueError)
        assert path.read_bytes() == before
    (tmp_path / "run" / "checkpoint.pt").write_bytes(good[:1000])  # a resume from a corrupt file
    with pytest.raises(CheckpointError, match="checkpoint.pt is truncated, corrupt"):
        fit(tiny_model(), easy_data(32), config=run_config(tmp_path / "run", resume=True))
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == good[:1000]


def test_fp16_weights_load_into_an_fp32_model(tmp_path):
    torch.manual_seed(0)
    source = tiny_model()
    half = {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}
    signature = ee.training.model_signature(source)
    torch.save({"model": half, "model_signature": signature}, tmp_path / "small.pt")
    model, _ = load_checkpoint(tmp_path / "small.pt")
    for key, value in model.state_dict().items():
        assert value.dtype == source.state_dict()[key].dtype
        assert torch.equal(value, half[key].to(value.dtype)), key


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume=True but there is no checkpoint"):
        fit(tiny_model(), easy_data(32), config=run_config(tmp_path, resume=True))


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", -1),
        ("batch_size", 0),
        ("num_workers", -2),
        ("seed", -1),
        ("seed", 1.5),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("weight_decay", -1e-4),
        ("weight_decay", float("inf")),
        ("warmup_epochs", float("nan")),
        ("warmup_epochs", float("inf")),
        ("step_epochs", 0),
        ("optimizer", "lamb"),
        ("schedule", "poly"),
        ("amp", "fp8"),
        ("label_smoothing", 1.0),
        ("ema_decay", 1.5),
        ("device", "tpu"),
        ("device", "cuda:x"),
    ],
)
def test_bad_train_config_names_the_field_and_value(field, value):
    with pytest.raises(ValueError) as error:
        TrainConfig(**{field: value})
    assert field in str(error.value) and repr(value) in str(error.value)


def test_device_names_are_checked_by_name_alone():
    """TrainConfig takes any valid name (availability is checked when training starts), and
    select_device refuses the names that TrainConfig refuses, with the same message."""
    for name in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        TrainConfig(device=name)
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device must be .*'cuda:N'.*got 'gpu'"):
        select_device("gpu")


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
    def order(epoch=0, skip=0, **kwargs):
        sampler = EpochSampler(10, seed=1, **kwargs)
        sampler.set_epoch(epoch, skip)
        return list(sampler)

    full = order()
    assert sorted(full) == list(range(10)) and full != list(range(10))
    assert full != order(epoch=1) and order(epoch=1) == order(epoch=1)
    shards = [order(rank=r, world_size=2) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    assert order(skip=4) == full[4:] and order(skip=4, length=6) == full[4:6]


def test_ema_warms_up_its_decay_as_tensorflow():
    model = nn.Linear(1, 1, bias=False, dtype=torch.float64)
    nn.init.constant_(model.weight, 1.0)
    ema = ExponentialMovingAverage(model, decay=0.5)
    expected = 1.0
    for t, weight in enumerate([3.0, -2.0, 5.0, 7.0, 0.5] + [4.0] * 10):
        nn.init.constant_(model.weight, weight)
        ema.update(model)
        decay = min(0.5, (1 + t) / (10 + t))  # 0.1, 0.18, ... then 0.5 from t = 8
        expected = decay * expected + (1 - decay) * weight
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-12)
    assert ema.updates == 15


def test_evaluate_runs_where_the_model_is_and_restores_its_mode():
    torch.manual_seed(0)
    model, data = tiny_model().train(), easy_data(40)
    result = evaluate(model, data, batch_size=16, amp="off", channels_last=False)
    assert model.training and next(model.parameters()).device.type == "cpu"
    model.eval()
    with torch.no_grad():
        logits = model(data.tensors[0])
    assert result["count"] == 40
    assert result["loss"] == pytest.approx(
        F.cross_entropy(logits, data.tensors[1]).item(), rel=1e-5
    )
    assert result["accuracy"] == (logits.argmax(1) == data.tensors[1]).double().mean().item()


class Separable(nn.Module):
    """A 1x1 expansion, a 3x3 depthwise convolution, a 1x1 projection: plain torch layers."""

    def __init__(self):
        super().__init__()
        self.expand, self.depthwise = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.project, self.head = nn.Conv2d(8, 3, 1), nn.Flatten()

    def forward(self, x):
        return self.head(self.project(self.depthwise(self.expand(x))).mean((2, 3), keepdim=True))


def record_dtypes(model):
    seen = {}
    for name in ("expand", "depthwise", "project"):

        def hook(module, args, output, name=name):
            seen[name] = (args[0].dtype, output.dtype)

        getattr(model, name).register_forward_hook(hook)
    return seen


def test_depthwise_convolutions_train_in_fp32_under_cpu_bf16():
    model, x, cpu = Separable(), torch.randn(2, 3, 8, 8), torch.device("cpu")
    seen = record_dtypes(model)
    bf16, fp32 = torch.bfloat16, torch.float32
    with depthwise_in_fp32(model, cpu, bf16), torch.autocast("cpu", dtype=bf16):
        model(x).float().sum().backward()
        assert seen == {"expand": (fp32, bf16), "depthwise": (fp32, fp32), "project": (fp32, bf16)}
        with torch.no_grad():  # inference: bf16 throughout
            model(x)
        assert seen["depthwise"] == (bf16, bf16)
        with pytest.raises(RuntimeError):  # a failing forward leaves autocast on
            model.depthwise(torch.randn(2, 5, 8, 8))
        assert torch.is_autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=bf16):  # the hooks are gone
        model(x)
    assert seen["depthwise"] == (bf16, bf16)


def test_fit_applies_the_policy_only_while_it_runs():
    model = Separable()
    seen = record_dtypes(model)
    data = TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,)))
    fit(model, data, epochs=1, batch_size=8, amp="bf16", device="cpu", progress=False)
    assert seen["depthwise"][1] == torch.float32 and seen["project"][1] == torch.bfloat16
    assert len(model.depthwise._forward_pre_hooks) == 0


@pytest.mark.parametrize(
    "avx512_bf16, amx, native", [(False, False, False), (True, False, True), (False, True, True)]
)
def test_cpu_bf16_only_where_it_is_native(monkeypatch, avx512_bf16, amx, native):
    """Plain AVX-512 runs oneDNN's bf16 by emulation (slower than fp32): auto stays in fp32."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_supports_bf16() is native
    expected = torch.bfloat16 if native else None
    assert autocast_dtype(torch.device("cpu"), "auto") == expected


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_gpu_bf16_only_from_compute_capability_8(monkeypatch, capability, dtype):
    """A T4 (7.5) or V100 (7.0) would emulate bf16: fp16 with a gradient scaler there."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert autocast_dtype(torch.device("cuda"), "auto") == dtype


# ------------------------------------------------------------------------------------------------
# The GPU path, tested on the CPU: what the loop does per step, the data path, the recipes


def test_tensor_loader_yields_what_a_dataloader_yields():
    from effnet_edu.training import TensorLoader

    data = ee.SyntheticObjects("train", 40, 32, seed=3)
    sampler = EpochSampler(len(data), seed=1, length=36)
    for drop_last, batches in ((True, 4), (False, 5)):  # 36 = 4 x 8 + 4
        ours = list(TensorLoader(data, 8, torch.device("cpu"), sampler, drop_last=drop_last))
        theirs = list(torch.utils.data.DataLoader(data, 8, sampler=sampler, drop_last=drop_last))
        assert len(ours) == len(theirs) == batches
        for (images, labels), (images_dl, labels_dl, _) in zip(ours, theirs, strict=True):
            assert torch.equal(images, images_dl) and torch.equal(labels, labels_dl)
    assert len(list(TensorLoader(data, 16, torch.device("cpu")))) == 3  # 16 + 16 + 8, in order


class _OneAtATime(Dataset):
    """The same samples without `tensors()`: served by a DataLoader."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]


def test_fit_trains_the_same_from_tensors_as_from_a_dataloader():
    data, val = ee.SyntheticObjects("train", 64, 32, seed=0), ee.SyntheticObjects("val", 32, 32)
    weights = []
    for train, held_out in ((data, val), (_OneAtATime(data), _OneAtATime(val))):
        torch.manual_seed(0)
        model = tiny_model(num_classes=24)
        history = fit(model, train, held_out, epochs=2, batch_size=16, amp="off", progress=False)
        weights.append((model.state_dict(), history["val_loss"]))
    (first, losses), (second, losses_dl) = weights
    assert losses == losses_dl and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("source", ["DataLoader", "TensorLoader"])
def test_training_step_does_not_wait_for_the_device(monkeypatch, source):
    # Every read of a tensor's value into Python (item, tolist, bool, float, int) makes the CPU
    # wait for the GPU. Count them all: a few per logging interval and epoch, none per step. Both
    # data paths: samples one at a time (DataLoader) and data already in tensors (TensorLoader,
    # what the synthetic sets use, on the GPU too).
    import effnet_edu.training as training

    if source == "DataLoader":
        data, model = easy_data(320), tiny_model()
    else:
        data, model = ee.SyntheticObjects("train", 320, 32, seed=1), tiny_model(num_classes=24)
    reads = {"count": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads["count"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(training, "LOG_EVERY", 10)
    torch.manual_seed(0)
    epochs, steps = 2, 20
    fit(model, data, epochs=epochs, batch_size=16, optimizer="sgd", amp="off", progress=False)
    # per epoch: the running means every 10 steps (2) and at the end of the epoch (1); on the CPU
    # side, the sampler's order and (DataLoader only) the loader's seed, which never touch the GPU
    cpu_side = 2 if source == "DataLoader" else 1
    assert reads["count"] == epochs * (steps // 10 + 1 + cpu_side)


def test_loaders_are_built_once_with_persistent_workers(monkeypatch):
    import effnet_edu.training as training

    built = []

    class Counted(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            built.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(training, "DataLoader", Counted)
    torch.manual_seed(0)
    fit(tiny_model(), easy_data(64), easy_data(32), epochs=3, batch_size=16, num_workers=1,
        amp="off", progress=False)  # fmt: skip
    assert len(built) == 2  # training and validation, for all three epochs
    assert all(b["num_workers"] == 1 and b["persistent_workers"] for b in built)


def test_rmsprop_tf_matches_a_hand_computation():
    from effnet_edu.training import RMSpropTF, build_optimizer

    weight = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = RMSpropTF([weight], lr=0.1, decay=0.9, momentum=0.9, eps=1e-3)
    w, ms, mom = [1.0, -2.0], [1.0, 1.0], [0.0, 0.0]  # TensorFlow starts ms at one
    for grads in ([0.5, -1.0], [0.2, 3.0], [-0.4, 0.1]):
        weight.grad = torch.tensor(grads, dtype=torch.float64)
        optimizer.step()
        for i, g in enumerate(grads):
            ms[i] = 0.9 * ms[i] + 0.1 * g * g
            mom[i] = 0.9 * mom[i] + 0.1 * g / (ms[i] + 1e-3) ** 0.5  # epsilon inside the root
            w[i] -= mom[i]
        assert weight.tolist() == pytest.approx(w, rel=1e-12)
    # torch's RMSprop (ms from 0, epsilon outside the root) takes a different first step
    other = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    torch_rmsprop = torch.optim.RMSprop([other], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    other.grad = torch.tensor([0.5, -1.0], dtype=torch.float64)
    torch_rmsprop.step()
    assert other[0].item() == pytest.approx(1 - 0.1 * 0.5 / ((0.1 * 0.25) ** 0.5 + 1e-3))
    assert other[0].item() != pytest.approx(1 - 0.1 * 0.5 / (0.925 + 1e-3) ** 0.5)
    model = nn.Linear(2, 2)
    assert isinstance(build_optimizer(model, TrainConfig(optimizer="rmsprop_tf")), RMSpropTF)


def test_frozen_batchnorm_keeps_its_running_statistics():
    torch.manual_seed(0)
    model = tiny_model()
    frozen = model.stages[:2]
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    fit(model, easy_data(64), easy_data(32), epochs=2, batch_size=16, amp="off", progress=False)
    after = frozen.state_dict()  # validation after epoch 1 must not have switched them back
    assert all(torch.equal(before[k], after[k]) for k in before)  # running mean/var included
    trained = [m for m in model.stages[2:].modules() if isinstance(m, nn.BatchNorm2d)]
    assert trained and all(m.training for m in trained)
    assert not any(m.training for m in frozen.modules() if isinstance(m, nn.BatchNorm2d))


def test_each_rank_draws_its_own_random_numbers(monkeypatch):
    import effnet_edu.training as training

    seeds = {}
    for rank in (0, 1):  # what fit seeds torch with on rank 0 and on rank 1 (dropout's masks)
        monkeypatch.setattr(training, "distributed_info", lambda rank=rank: (rank, 1))
        model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 32 * 32, 3))
        fit(
            model,
            easy_data(32),
            epochs=1,
            batch_size=16,
            amp="off",
            channels_last=False,
            seed=5,
            progress=False,
            on_step=lambda step, r=rank: seeds.setdefault(r, torch.initial_seed()),
        )
    assert seeds == {0: 5, 1: 6}


def test_torchrun_gives_each_process_its_own_gpu(monkeypatch):
    import effnet_edu.training as training

    current = []  # the GPU made current: collectives (all_gather_object) put their data there
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(training, "select_device", lambda device: torch.device(device))
    monkeypatch.setattr(training, "distributed_info", lambda: (1, 2))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert training.process_device("cuda") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]
    with pytest.raises(ValueError, match="one GPU"):
        training.process_device("cuda:0")
    assert training.process_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")  # two processes, and none knows its GPU: not GPU 0 for all
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        training.process_device("cuda")


def test_each_rank_resumes_its_own_random_stream(tmp_path, monkeypatch):
    import effnet_edu.training as training

    fit(tiny_model(), easy_data(32), config=run_config(tmp_path, epochs=1))
    path = tmp_path / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["rng_ranks"] is None  # one process: its stream is checkpoint["rng"]
    streams = [torch.Generator().manual_seed(s).get_state() for s in (11, 12)]
    checkpoint["rng_ranks"] = [{"cpu": s, "cuda": None} for s in streams]  # as two ranks save it
    torch.save(checkpoint, path)

    def resumed_state(rank, world):
        monkeypatch.setattr(training, "distributed_info", lambda: (rank, world))
        config = run_config(tmp_path, epochs=1)
        run = training._Run(tiny_model(), config, torch.device("cpu"), steps=5)
        run.resume(path)
        return torch.get_rng_state()

    assert torch.equal(resumed_state(0, 2), streams[0])
    assert torch.equal(resumed_state(1, 2), streams[1])
    # Saved by another number of processes (or mid-epoch, by rank 0 alone): rank 0 continues the
    # saved stream, any other rank draws its own, never a copy of rank 0's.
    assert torch.equal(resumed_state(0, 3), checkpoint["rng"]["cpu"])
    assert not torch.equal(resumed_state(2, 3), checkpoint["rng"]["cpu"])


def test_fp16_training_turns_on_the_gradient_scaler(monkeypatch):
    import effnet_edu.training as training

    config, cpu = TrainConfig(amp="off", progress=False), torch.device("cpu")
    assert not training._Run(tiny_model(), config, cpu, steps=1).scaler.is_enabled()
    monkeypatch.setattr(training, "autocast_dtype", lambda device, amp: torch.float16)  # a T4
    assert training._Run(tiny_model(), config, cpu, steps=1).scaler.is_enabled()
