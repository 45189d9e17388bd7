"""Training engine: `fit` and `evaluate`.

`fit` is a short loop over named steps (the loader, one epoch, evaluation, the weight EMA,
checkpoints), with mixed precision, a CPU bf16 policy and the recipe's pieces as options: the
paper's RMSProp and step decay (Section 5.2), the official code's warm-up and weight EMA."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .model import EfficientNet, EfficientNetConfig

OPTIMIZERS = ("sgd", "adamw", "rmsprop", "rmsprop_tf")
SCHEDULES = ("cosine", "step", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
DEVICE_NAME = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")  # the names DEVICES lists
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 2
LOG_EVERY = 10  # steps between reads of the running loss (a host-device sync) and NaN checks


def select_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks cuda, then mps, then cpu; an explicit choice must be available."""
    device, cuda, mps = str(device), torch.cuda.is_available(), torch.backends.mps.is_available()
    if not DEVICE_NAME.fullmatch(device):
        raise ValueError(f"device must be {DEVICES}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (device.startswith("cuda") and not cuda) or (device.startswith("mps") and not mps):
        raise ValueError(f"device {device!r} was requested but is not available here; use 'auto'")
    return torch.device(device)


def process_device(device: str = "auto") -> torch.device:
    """`select_device`, and under torchrun on GPUs the GPU of this process (cuda:LOCAL_RANK):
    "cuda:N" there would put every rank on one GPU, so it is refused. A GPU chosen is made the
    current one (collectives such as all_gather_object use the current GPU)."""
    chosen = _process_device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return chosen


def _process_device(device: str) -> torch.device:
    chosen, (_, world) = select_device(device), distributed_info()
    if world == 1 or chosen.type != "cuda":
        return chosen
    if chosen.index is not None:
        raise ValueError(
            f"device {device!r} under torchrun would put all {world} processes on one GPU; pass "
            "device='cuda' (or 'auto'): each process then uses the GPU of its LOCAL_RANK"
        )
    if "LOCAL_RANK" not in os.environ:
        raise ValueError(
            f"{world} processes but no LOCAL_RANK in the environment, so this process cannot tell "
            "which GPU is its own: launch with torchrun, which sets it"
        )
    return torch.device("cuda", int(os.environ["LOCAL_RANK"]))


def cpu_supports_bf16() -> bool:
    """True when this x86 CPU computes bf16 natively (AVX512-BF16 or AMX). oneDNN also runs bf16
    on plain AVX-512 by emulation, which is slower than fp32: those CPUs train in fp32."""
    native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in native)


def autocast_dtype(device: torch.device, amp: str | bool = "auto") -> torch.dtype | None:
    """The autocast dtype for `device` (None: fp32). "auto": bf16 on GPUs that compute it natively
    (compute capability >= 8.0: Ampere and newer), else fp16 with a gradient scaler (a T4 or V100
    would emulate bf16); bf16 on CPUs with native bf16 (`cpu_supports_bf16`), else fp32, as on
    Apple GPUs. "bf16"/"fp16" force a dtype; "off" is deterministic fp32."""
    amp = {True: "auto", False: "off", None: "off"}.get(amp, amp)
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("amp='fp16' is for GPUs; on a CPU use amp='bf16' or 'off'")
    if amp != "auto":
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if device.type == "cuda":
        native = torch.cuda.get_device_capability(device) >= (
            8,
            0,
        )  # is_bf16_supported() counts emulation
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None


@contextlib.contextmanager
def depthwise_in_fp32(model: nn.Module, device: torch.device, dtype: torch.dtype | None):
    """The CPU bf16 policy: while training under CPU bf16 autocast, depthwise convolutions (any
    `nn.Conv2d` with groups > 1) run in fp32. bf16 pays off in matrix products such as 1x1
    convolutions; a depthwise one does only k^2 multiply-adds per output and oneDNN's bf16 kernel
    for its backward is slower than fp32's. Hooks, removed on exit, do it with gradients on."""
    switched_off = []  # the convolution now running with autocast off

    def before(module, args):
        if torch.is_grad_enabled() and torch.is_autocast_enabled("cpu"):
            torch.set_autocast_enabled("cpu", False)
            switched_off.append(module)
            return (args[0].float(), *args[1:])

    def after(module, args, output):  # runs even when the forward raised (always_call)
        if switched_off and switched_off[-1] is module:
            torch.set_autocast_enabled("cpu", True)
            switched_off.pop()

    on = device.type == "cpu" and dtype == torch.bfloat16
    convs = [m for m in model.modules() if on and isinstance(m, nn.Conv2d) and m.groups > 1]
    handles = [conv.register_forward_pre_hook(before) for conv in convs]
    handles += [conv.register_forward_hook(after, always_call=True) for conv in convs]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class TrainConfig:
    """Every knob of a training run, checked here. Defaults suit a short run on synthetic data."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05  # for SGD at this batch size
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-5
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    step_decay: float = 0.97  # schedule="step": lr *= step_decay every step_epochs (paper)
    step_epochs: float = 2.4
    label_smoothing: float = 0.1
    ema_decay: float | None = None  # e.g. 0.999; the paper uses 0.9999 over 350 epochs
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    steps_per_epoch: int | None = None  # cap, for quick runs
    out_dir: str | None = None  # where checkpoint.pt goes; None: no checkpoints
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        def whole(value, minimum):  # an int (not a bool) >= minimum
            return type(value) is int and value >= minimum

        def number(value):  # an int or float, not a bool; nan then fails every comparison
            return type(value) in (int, float)

        rules = {  # field: (what is valid, the test of its value)
            "epochs": ("an integer >= 1", lambda v: whole(v, 1)),
            "batch_size": ("an integer >= 1", lambda v: whole(v, 1)),
            "num_workers": ("an integer >= 0", lambda v: whole(v, 0)),
            "seed": ("an integer >= 0", lambda v: whole(v, 0)),
            "steps_per_epoch": ("None or an integer >= 1", lambda v: v is None or whole(v, 1)),
            "lr": ("a finite number > 0", lambda v: number(v) and 0 < v < math.inf),
            "momentum": ("in [0, 1)", lambda v: number(v) and 0 <= v < 1),
            "weight_decay": ("a finite number >= 0", lambda v: number(v) and 0 <= v < math.inf),
            "warmup_epochs": ("a finite number >= 0", lambda v: number(v) and 0 <= v < math.inf),
            "step_epochs": ("a finite number > 0", lambda v: number(v) and 0 < v < math.inf),
            "step_decay": ("in (0, 1]", lambda v: number(v) and 0 < v <= 1),
            "label_smoothing": ("in [0, 1)", lambda v: number(v) and 0 <= v < 1),
            "ema_decay": ("None or in (0, 1)", lambda v: v is None or number(v) and 0 < v < 1),
            "optimizer": (f"one of {OPTIMIZERS}", lambda v: v in OPTIMIZERS),
            "schedule": (f"one of {SCHEDULES}", lambda v: v in SCHEDULES),
            "amp": (f"one of {AMP_MODES}", lambda v: v in AMP_MODES),
            "device": (DEVICES, lambda v: isinstance(v, str) and DEVICE_NAME.fullmatch(v)),
        }
        for name, (valid, ok) in rules.items():
            if not ok(getattr(self, name)):
                raise ValueError(f"{name} must be {valid}, got {getattr(self, name)!r}")


class History(list):
    """The per-epoch records (loss, accuracy, val_loss, val_accuracy, lr, images_per_s, seconds):
    `history[-1]` is the last epoch's, `history["loss"]` a list over epochs."""

    epochs = property(list)  # the records, as a plain list
    last = property(lambda self: self[-1])

    def __getitem__(self, key):
        return [e.get(key) for e in self] if isinstance(key, str) else super().__getitem__(key)


def distributed_info() -> tuple[int, int]:
    """(rank, world_size): (0, 1) unless running under an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str = "auto") -> tuple[int, int, int]:
    """Join the process group `torchrun` describes in the environment: NCCL when `device` is a
    GPU (each process on the GPU of its LOCAL_RANK), else gloo. Returns (rank, local_rank,
    world_size); (0, 0, 1) when not launched by torchrun."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 0, 1
    local_rank, cuda = int(os.environ.get("LOCAL_RANK", "0")), select_device(device).type == "cuda"
    if cuda and local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"process {local_rank} has no GPU of its own ({torch.cuda.device_count()} here): use "
            "--nproc_per_node <= the number of GPUs, or --device cpu"
        )
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), local_rank, dist.get_world_size()


class EpochSampler(Sampler[int]):
    """Rank r of `world_size` takes every world_size-th index of a permutation that depends only on
    (seed, epoch), at most `length`; `set_epoch(epoch, skip)` drops the first `skip` (resume)."""

    def __init__(self, size, seed=0, rank=0, world_size=1, length=None):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.skip, self.per_rank = 0, 0, math.ceil(size / world_size)
        self.length = self.per_rank if length is None else min(length, self.per_rank)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        order += order[: self.per_rank * self.world_size - self.size]  # all ranks get as many
        return iter(order[self.rank :: self.world_size][self.skip : self.length])

    def __len__(self) -> int:
        return max(0, self.length - self.skip)


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow computes it (`tf.compat.v1.train.RMSPropOptimizer`), which the paper
    trains with (Section 5.2: decay 0.9, momentum 0.9) and whose epsilon (1e-3) the official code
    sets. It differs from `torch.optim.RMSprop` in two places that matter with so large an
    epsilon: the mean square starts at 1, not 0, and epsilon sits inside the square root:

        ms  = decay * ms + (1 - decay) * g^2          (ms starts at 1)
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        w   = w - mom

    Weight decay, as in `torch.optim.RMSprop`, adds weight_decay * w to g first."""

    def __init__(self, params, lr=0.016, decay=0.9, momentum=0.9, eps=1e-3, weight_decay=0.0):
        defaults = {"lr": lr, "decay": decay, "momentum": momentum, "eps": eps}
        super().__init__(params, defaults | {"weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            for weight in (p for p in group["params"] if p.grad is not None):
                grad, state = weight.grad, self.state[weight]
                if group["weight_decay"]:
                    grad = grad + group["weight_decay"] * weight
                if not state:  # TensorFlow's initial values
                    state["mean_square"] = torch.ones_like(weight)
                    state["momentum"] = torch.zeros_like(weight)
                mean_square, momentum = state["mean_square"], state["momentum"]
                mean_square.mul_(group["decay"]).addcmul_(grad, grad, value=1 - group["decay"])
                step = grad / (mean_square + group["eps"]).sqrt()
                momentum.mul_(group["momentum"]).add_(step, alpha=group["lr"])
                weight.sub_(momentum)
        return loss


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov), AdamW, PyTorch's RMSProp, or `RMSpropTF` with the paper's decay 0.9 and
    momentum 0.9 (Section 5.2) and the official code's epsilon 1e-3. No weight decay on 1-d
    parameters (BatchNorm's and all biases: the official code exempts BatchNorm's alone; biases
    too is the common PyTorch recipe). On a GPU, SGD and AdamW are the fused versions: one kernel
    per step, and with fp16 the gradient scaler's overflow check stays on the GPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    optimizer, options = {
        "sgd": (torch.optim.SGD, {"momentum": config.momentum, "nesterov": True, **fused}),
        "adamw": (torch.optim.AdamW, fused),
        "rmsprop": (torch.optim.RMSprop, {"momentum": config.momentum}),
        "rmsprop_tf": (RMSpropTF, {"decay": 0.9, "eps": 1e-3, "momentum": 0.9}),
    }[config.optimizer]
    return optimizer(groups, lr=config.lr, **options)


def lr_multiplier(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Learning-rate factor at optimiser step `step`: linear warm-up, then the schedule."""
    epoch = step / steps_per_epoch
    if config.warmup_epochs > 0 and epoch < config.warmup_epochs:
        return min(1.0, (step + 1) / (config.warmup_epochs * steps_per_epoch))
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return config.step_decay ** math.floor(epoch / config.step_epochs)
    progress = (epoch - config.warmup_epochs) / max(config.epochs - config.warmup_epochs, 1e-8)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class ExponentialMovingAverage:
    """ema = d * ema + (1 - d) * weights, over weights and float buffers (integer ones are copied),
    with TensorFlow's warm-up (`num_updates`) d = min(decay, (1 + t) / (10 + t)) after t updates."""

    def __init__(self, model: nn.Module, decay: float):
        self.module, self.decay, self.updates = copy.deepcopy(model).eval(), decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        pairs = zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        for ema, now in pairs:
            if ema.is_floating_point():
                ema.lerp_(now, 1.0 - decay)  # ema + (1 - d) * (now - ema)
            else:
                ema.copy_(now)


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint: truncated, corrupt, foreign, or another model's."""


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model._orig_mod if hasattr(model, "_orig_mod") else model.module
    return model


def model_signature(model: nn.Module) -> dict:
    """What identifies an architecture: the resolved config, or the class and shapes."""
    model = _unwrap(model)
    if getattr(model, "config", None) is not None:
        return {"class": type(model).__name__, **asdict(model.config)}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return {"class": type(model).__name__, "shapes": shapes}


_NOT_ARCHITECTURE = ("name", "phi", "dropout", "stochastic_depth")


def _read_checkpoint(path, map_location="cpu", model: nn.Module | None = None) -> dict:
    """The checkpoint in `path`, read with weights_only=True (no code runs); `model` must match."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated zip, a text file, a pickle of other objects
        why = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(f"{path} is truncated, corrupt or not a checkpoint: {why}") from None
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("model_signature"), dict)):
        tensors = isinstance(checkpoint, dict) and all(map(torch.is_tensor, checkpoint.values()))
        found = "a plain state_dict" if tensors else f"a {type(checkpoint).__name__}"
        raise CheckpointError(f"{path} is not a checkpoint (no model_signature): it is {found}")
    # Names and regularisation (dropout, stochastic depth) do not change the architecture.
    saved, current = (
        {k: v for k, v in signature.items() if k not in _NOT_ARCHITECTURE}
        for signature in (
            checkpoint["model_signature"],
            {} if model is None else model_signature(model),
        )
    )
    if model is not None and saved != current:
        keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        diff = "; ".join(f"{k}: {saved.get(k)!r:.60} vs {current.get(k)!r:.60}" for k in keys)
        raise CheckpointError(f"{path} is for a different architecture (file vs model): {diff}")
    return checkpoint


def load_checkpoint(path, model: nn.Module | None = None, map_location="cpu"):
    """(model in eval mode, checkpoint) from `fit`'s checkpoint or a dict with "model" weights and
    a "model_signature": into `model` if given (same architecture), else into an `EfficientNet`
    rebuilt from its config; the EMA's weights if kept, cast to the model's dtype."""
    checkpoint = _read_checkpoint(path, map_location, model)
    weights = checkpoint.get("ema") or checkpoint.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} holds no model weights (no 'model' state_dict)")
    if model is None:
        stored = dict(checkpoint["model_signature"])
        if stored.pop("class", None) != "EfficientNet":
            raise CheckpointError(f"{path} holds no EfficientNet; pass model=... to load it")
        try:
            model = EfficientNet(EfficientNetConfig.from_dict(stored))
        except (TypeError, ValueError, KeyError) as error:
            raise CheckpointError(f"{path}: cannot rebuild its model ({error})") from None
    _unwrap(model).load_state_dict(weights)  # copies each tensor, cast to the model's dtype
    return model.eval(), checkpoint


def _checkpoint_path(config: TrainConfig) -> Path | None:
    """Where the run's checkpoint goes; refuses to replace an earlier run unless asked."""
    path = None if config.out_dir is None else Path(config.out_dir) / CHECKPOINT_NAME
    if config.resume and (path is None or not path.exists()):
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}")
    if path is not None and path.exists() and not (config.resume or config.overwrite):
        raise FileExistsError(
            f"{path} already exists (an earlier run). Pass resume=True (--resume) to continue "
            "it, overwrite=True (--overwrite) to replace it, or choose another out_dir."
        )
    return path


def evaluate(model, data, device=None, batch_size=256, amp="auto", channels_last=True) -> dict:
    """Mean loss and top-1 accuracy of `model` on `data` (a Dataset, DataLoader or TensorLoader),
    on the model's device (or, with `device`, moved there first); its train/eval mode is restored.
    ``amp="off"``: deterministic fp32. Under DDP, every rank evaluates all of `data`."""
    here = next(model.parameters(), torch.empty(0)).device  # where the model is
    device = select_device(here if device is None else device)
    dtype = autocast_dtype(device, amp)
    if _in_tensors(data):
        data = TensorLoader(data, batch_size, device)
    elif not isinstance(data, (DataLoader, TensorLoader)):  # its own generator: global RNG alone
        data = DataLoader(data, batch_size, generator=torch.Generator())
    was_training, totals, count = model.training, torch.zeros(2, device=device), 0
    layout = torch.channels_last if channels_last else torch.preserve_format
    model.to(device).eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for images, labels, *_ in data:  # datasets may yield more (a mask): ignored
            images = images.to(device, non_blocking=True, memory_format=layout)
            logits = model(images).float()
            labels = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(logits, labels, reduction="sum")
            totals += torch.stack([loss, (logits.argmax(1) == labels).sum()])  # (loss, correct)
            count += len(labels)
    train_mode(model) if was_training else model.eval()  # frozen BatchNorm stays in eval mode
    loss, correct = totals.tolist()
    return {"loss": loss / max(count, 1), "accuracy": correct / max(count, 1), "count": count}


class TensorLoader:
    """A loader for data held in tensors (the synthetic sets, whose `tensors()` gives uint8
    images (N, 3, R, R) and labels (N,)): the tensors are copied to the device once (again only
    when the data changes, as `FreshSyntheticObjects` does every epoch) and each batch is cut from
    them by index there, with no per-sample Python and no workers. It yields what a DataLoader over
    the same data and sampler would: images / 255 in fp32 and labels, bit for bit on a CPU (on a
    GPU the division may round the last bit differently)."""

    def __init__(
        self, dataset, batch_size: int, device: torch.device, sampler=None, drop_last=False
    ):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.sampler = range(len(dataset)) if sampler is None else sampler
        self.drop_last, self._source, self._tensors = drop_last, None, None

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __iter__(self):
        images, labels = self.dataset.tensors()
        if self._source is not images:  # new data: one copy to the device
            self._source, self._tensors = images, (images.to(self.device), labels.to(self.device))
        images, labels = self._tensors
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            yield images[index].float() / 255, labels[index]  # (B, 3, R, R), (B,)


def _in_tensors(data) -> bool:
    """Whether `data` can be served by a `TensorLoader` (its `tensors()` gives them)."""
    return callable(getattr(data, "tensors", None)) and data.tensors() is not None


def _validation_loader(data, config: TrainConfig, device: torch.device):
    """The validation loader, built once: the run's workers (kept between epochs), pinned memory."""
    if data is None or isinstance(data, (DataLoader, TensorLoader)):
        return data
    if _in_tensors(data):
        return TensorLoader(data, 2 * config.batch_size, device)
    workers = {"num_workers": config.num_workers, "persistent_workers": config.num_workers > 0}
    generator, pin = torch.Generator(), device.type == "cuda"
    return DataLoader(data, 2 * config.batch_size, generator=generator, pin_memory=pin, **workers)


def _build_loader(data, config: TrainConfig, device: torch.device):
    """The training loader, built once (workers kept between epochs): full batches, shuffled.
    Data held in tensors gets a `TensorLoader` (no workers needed); others a DataLoader."""
    (rank, world), batch, cap = distributed_info(), config.batch_size, config.steps_per_epoch
    samples = math.ceil(len(data) / world)
    if samples < batch:
        raise ValueError(
            f"batch_size {batch} is larger than the {samples} training samples per process"
        )
    steps = samples // batch if cap is None else min(samples // batch, cap)
    sampler = EpochSampler(len(data), config.seed, rank, world, length=steps * batch)
    if _in_tensors(data):
        return TensorLoader(data, batch, device, sampler, drop_last=True)
    if hasattr(data, "set_epoch") and config.num_workers > 0:
        raise ValueError(
            "this dataset changes every epoch (it has set_epoch), which worker processes would "
            "not see: use num_workers=0"
        )
    workers = {"num_workers": config.num_workers, "persistent_workers": config.num_workers > 0}
    # Its own generator: starting an epoch must not draw from the global RNG, or a resumed
    # run's dropout masks would drift from the uninterrupted run's.
    generator = torch.Generator().manual_seed(config.seed + rank)  # workers' augmentations
    options = {"sampler": sampler, "drop_last": True, "pin_memory": device.type == "cuda"}
    return DataLoader(data, batch, generator=generator, **workers, **options)


def train_mode(model: nn.Module) -> nn.Module:
    """`model.train()`, except for BatchNorm layers whose weights are all frozen
    (requires_grad=False, as in transfer learning): they stay in eval mode, so they normalise with
    their pretrained running statistics and keep them, instead of re-estimating them from the new
    data's batches while the layers after them were trained against the old ones."""
    model.train()
    for module in model.modules():
        weights = list(module.parameters(recurse=False))
        frozen = weights and not any(w.requires_grad for w in weights)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and frozen:
            module.eval()
    return model


class _Run:
    """A run in progress: its parts and how far it got, all that its checkpoint holds."""

    PARTS = ("model", "optimizer", "scheduler", "scaler")  # saved with their state_dict

    def __init__(self, model: nn.Module, config: TrainConfig, device: torch.device, steps: int):
        self.config, self.device, self.steps = config, device, steps  # steps per epoch
        (self.rank, self.world), self.dtype = distributed_info(), autocast_dtype(device, config.amp)
        self.layout = torch.channels_last if config.channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=self.layout)
        self.optimizer = build_optimizer(model, config)
        self.scheduler = LambdaLR(self.optimizer, lambda step: lr_multiplier(step, steps, config))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        decay = config.ema_decay
        self.ema = None if decay is None else ExponentialMovingAverage(model, decay)
        self.totals = torch.zeros(2, device=device)  # the epoch's (loss sum, correct), on device
        self.epoch, self.step, self.history = 0, 0, History()  # epoch in progress, steps done
        self.in_update = False  # True while the weights change: no consistent state to save
        self.rng = self.rng_state()  # the generators' states after the last completed step

    def rng_state(self) -> dict:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        mps = torch.mps.get_rng_state() if self.device.type == "mps" else None
        return {"cpu": torch.get_rng_state(), "cuda": cuda, "mps": mps}

    def train_epoch(self, net: nn.Module, loader: DataLoader, on_step) -> dict:
        """Train from step `step` of epoch `epoch` to the epoch's end; returns its record."""
        device, batch, dtype, first = self.device, self.config.batch_size, self.dtype, self.step
        criterion = nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)
        loader.sampler.set_epoch(self.epoch, skip=self.step * batch)
        if hasattr(loader.dataset, "set_epoch"):  # data that changes every epoch
            loader.dataset.set_epoch(self.epoch)
        start, hide = time.perf_counter(), self.rank != 0 or not self.config.progress
        bar = tqdm(total=self.steps, initial=first, desc=f"epoch {self.epoch + 1}", disable=hide)
        train_mode(net)
        for images, labels, *_ in loader:
            images = images.to(device, non_blocking=True, memory_format=self.layout)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = net(images)
                loss = criterion(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.in_update = True
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.totals += torch.stack([loss.detach() * batch, (logits.argmax(1) == labels).sum()])
            self.step, self.rng, self.in_update = self.step + 1, self.rng_state(), False
            bar.update()
            if self.step % LOG_EVERY == 0:
                bar.set_postfix_str("loss {:.3f}, accuracy {:.3f}".format(*self.means()))
            if on_step is not None:
                on_step(self.epoch * self.steps + self.step)
        bar.close()
        (loss, accuracy), seconds = self.means(self.world), time.perf_counter() - start
        lr, images = self.optimizer.param_groups[0]["lr"], (self.step - first) * batch * self.world
        record = {"epoch": self.epoch + 1, "loss": loss, "accuracy": accuracy, "lr": lr}
        return record | {"images_per_s": images / seconds, "seconds": seconds}

    def means(self, world: int = 1) -> tuple[float, float]:
        """The epoch's mean loss and accuracy so far, over `world` ranks (reads the device)."""
        totals = self.totals.clone()
        if world > 1:
            dist.all_reduce(totals)
        loss, accuracy = (totals / (self.step * self.config.batch_size * world)).tolist()
        if not math.isfinite(loss):
            where, lr = f"by step {self.step} of epoch {self.epoch + 1}", self.config.lr
            raise FloatingPointError(f"the training loss is {loss} {where}; lower lr (now {lr})")
        return loss, accuracy

    def gather_rng(self) -> list[dict] | None:
        """Every rank's generator states, on every rank (a collective: all ranks must call it);
        None in a single process."""
        if self.world == 1:
            return None
        states = [None] * self.world
        dist.all_gather_object(states, self.rng)
        return states

    def save(self, path: Path, rng_ranks: list[dict] | None = None) -> None:
        """Write a temporary file, then rename it: never a half-written checkpoint. `rng_ranks`
        (from `gather_rng`) lets each rank of a resumed DDP run restore its own random stream."""
        state = {name: getattr(self, name).state_dict() for name in self.PARTS}
        state.update(ema=None if self.ema is None else self.ema.module.state_dict())
        state.update(ema_updates=0 if self.ema is None else self.ema.updates, rng=self.rng)
        state.update(rng_ranks=rng_ranks)  # every rank's generators (end of epoch, under DDP)
        state.update(epoch=self.epoch, step=self.step, totals=self.totals.cpu())
        state.update(history=list(self.history), format=CHECKPOINT_FORMAT)
        state.update(model_signature=model_signature(self.model), train_config=asdict(self.config))
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(state, temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)  # only left if the write failed

    def resume(self, path: Path) -> None:
        checkpoint = _read_checkpoint(path, model=self.model)
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} holds no training state of format {CHECKPOINT_FORMAT} (an older run, or "
                "weights only): load its weights with load_checkpoint, or start a new run"
            )
        saved = checkpoint.get("train_config", {})
        for name in ("batch_size", "steps_per_epoch", "epochs"):  # where a resumed step lands
            if saved.get(name) != getattr(self.config, name):
                raise CheckpointError(
                    f"{path} was written with {name}={saved.get(name)!r}, this run has "
                    f"{name}={getattr(self.config, name)!r}: resume with the same value"
                )
        for name in self.PARTS:
            getattr(self, name).load_state_dict(checkpoint[name])
        if self.ema is not None and checkpoint["ema"] is not None:
            self.ema.module.load_state_dict(checkpoint["ema"])
            self.ema.updates = checkpoint["ema_updates"]
        self.epoch, self.step, self.rng = checkpoint["epoch"], checkpoint["step"], checkpoint["rng"]
        self.totals = checkpoint["totals"].to(self.device)
        self.history = History(checkpoint["history"])
        ranks = checkpoint.get("rng_ranks")
        if ranks is not None and len(ranks) == self.world:
            self.rng = ranks[self.rank]  # each rank continues its own stream: as if never stopped
        torch.set_rng_state(self.rng["cpu"])
        if self.device.type == "cuda" and self.rng["cuda"] is not None:
            torch.cuda.set_rng_state(self.rng["cuda"], self.device)
        if self.device.type == "mps" and self.rng.get("mps") is not None:
            torch.mps.set_rng_state(self.rng["mps"])
        if self.rank > 0 and (ranks is None or len(ranks) != self.world):
            # Saved mid-epoch by rank 0 alone, or by another number of processes: rank 0's stream
            # is all there is. Give each other rank its own (reproducible, but not the stream an
            # uninterrupted run would have drawn), never a copy of rank 0's.
            global_step = self.epoch * self.steps + self.step
            torch.manual_seed(self.config.seed + self.rank + 1_000_003 * (1 + global_step))
            self.rng = self.rng_state()


def fit(model, train_data, val_data=None, config=None, on_step=None, on_epoch=None, **overrides):
    """Train `model` on `train_data` with a `TrainConfig` (or its fields as keyword arguments);
    returns the per-epoch `History`. `on_step(global_step)` runs after every optimiser step,
    `on_epoch(history)` after every epoch; validation scores the EMA if there is one.

    Seeds torch; moves `model` to the device (channels_last if asked) and trains it in place; it
    ends in train mode with the last raw weights (the EMA's are in the checkpoint). With `out_dir`,
    a checkpoint is written atomically after every epoch and when the run stops (Ctrl-C, an
    error): the state after the last completed step, from which ``resume=True`` continues. While it
    runs, on a CPU under bf16, `depthwise_in_fp32` keeps the depthwise convolutions in fp32."""
    config = TrainConfig(**{**(asdict(config) if config is not None else {}), **overrides})
    device = process_device(config.device)
    # Each rank its own random stream (dropout, stochastic depth, augmentation); DDP copies rank
    # 0's weights to the others, and the sampler's shuffle uses config.seed alone, as it must.
    torch.manual_seed(config.seed + distributed_info()[0])
    loader, path = _build_loader(train_data, config, device), _checkpoint_path(config)
    run = _Run(model, config, device, len(loader))
    if config.resume:
        run.resume(path)
        if run.rank == 0:
            print(f"Resuming from {path}: epoch {run.epoch + 1}, step {run.step}")
    ids = [device.index] if device.type == "cuda" else None  # the GPU of this process, if any
    net = nn.parallel.DistributedDataParallel(model, device_ids=ids) if run.world > 1 else model
    net = torch.compile(net) if config.compile else net
    evaluation = (2 * config.batch_size, config.amp, config.channels_last)  # batch, amp, layout
    val_data = _validation_loader(val_data, config, device)
    try:
        with depthwise_in_fp32(model, device, run.dtype):
            while run.epoch < config.epochs:
                record = run.train_epoch(net, loader, on_step)
                if val_data is not None:
                    scored = model if run.ema is None else run.ema.module
                    result = evaluate(scored, val_data, device, *evaluation)
                    record.update(val_loss=result["loss"], val_accuracy=result["accuracy"])
                run.history.append(record)
                run.epoch, run.step, run.rng = run.epoch + 1, 0, run.rng_state()
                run.totals.zero_()
                rng_ranks = run.gather_rng() if path is not None else None  # all ranks take part
                if path is not None and run.rank == 0:
                    run.save(path, rng_ranks)
                if run.rank == 0 and on_epoch is not None:
                    on_epoch(run.history)
                if run.rank == 0 and config.progress:
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
                    print(f"epoch {record['epoch']}/{config.epochs}: {shown}")
    except BaseException as error:
        if path is not None and run.rank == 0:
            stopped = f"Stopped ({type(error).__name__})"
            if run.in_update or isinstance(error, FloatingPointError):  # no consistent state
                print(f"{stopped}: kept the checkpoint of the last finished epoch, {path}")
            else:
                run.save(path)
                print(f"{stopped} at epoch {run.epoch + 1}, step {run.step}: saved {path}")
        raise
    return run.history
