"""The `effnet-edu` command line.

    effnet-edu info          versions, the compute device, and the B0-B7 table
    effnet-edu train         train a model (by name, phi or multipliers) on a dataset
    effnet-edu scale-study   depth vs width vs resolution vs compound scaling at matched FLOPs

`train` also runs under ``torchrun --nproc_per_node=N`` (DistributedDataParallel).

Used by: the README's quick start and CI.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

from . import __version__


def _device_line() -> str:
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return f"cuda ({torch.cuda.device_count()} GPU: {names})"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


def variants_table() -> str:
    """B0-B7 as released: multipliers, parameters and multiply-adds at their own resolution."""
    from .model import efficientnet
    from .profiling import count_flops, count_params
    from .scaling import OFFICIAL_VARIANTS, explain_official_variants

    fits = {f.name: f for f in explain_official_variants()}
    lines = [
        "| variant | width | depth | resolution | dropout | fitted phi | params | GMACs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in OFFICIAL_VARIANTS.items():
        model = efficientnet(name)
        lines.append(
            f"| {name} | {v.width} | {v.depth} | {v.resolution} | {v.dropout} | "
            f"{fits[name].phi:.2f} | {count_params(model):,} | "
            f"{count_flops(model) / 1e9:.3f} |"
        )
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    import numpy
    import torch
    import torchvision

    print(f"effnet-edu {__version__}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, numpy {numpy.__version__}"
    )
    print(f"device: {_device_line()}")
    print()
    print(variants_table())
    return 0


class UsageError(Exception):
    """Bad input on the command line: printed as 'error: ...' with exit status 2."""


def _build_model(args: argparse.Namespace, num_classes: int):
    from .model import efficientnet, efficientnet_lite

    common = {"num_classes": num_classes}
    if args.stochastic_depth is not None:
        common["stochastic_depth"] = args.stochastic_depth
    named = args.model is not None
    custom = args.phi is not None or args.depth is not None or args.width is not None
    if named and custom:
        raise UsageError("give either --model NAME or --phi / --depth / --width, not both")
    if named and args.model.startswith("lite"):
        k = args.model.removeprefix("lite")
        if not k.isdigit():
            raise UsageError(f"unknown model {args.model!r}; valid: b0-b7, lite0-lite4")
        return efficientnet_lite(int(k), **common)
    extra = {"activation": "memory_efficient_silu"} if args.memory_efficient else {}
    if named:
        model = efficientnet(args.model, **common, **extra)
    elif args.phi is not None:
        if args.depth is not None or args.width is not None:
            raise UsageError(
                "--phi sets depth, width and resolution together; "
                "do not also pass --depth or --width"
            )
        model = efficientnet(phi=args.phi, **common, **extra)
    else:
        model = efficientnet(
            depth=args.depth or 1.0,
            width=args.width or 1.0,
            resolution=args.resolution or 224,
            **common,
            **extra,
        )
    model.gradient_checkpointing = args.memory_efficient
    return model


def cmd_train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .data import class_names, get_dataset
    from .training import TrainConfig, distributed_info, fit, init_distributed

    init_distributed()
    rank, world = distributed_info()
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        ema_decay=args.ema_decay,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        device=args.device,
        seed=args.seed,
        num_workers=args.num_workers,
        steps_per_epoch=args.steps_per_epoch,
        out_dir=args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    # Data before the model: the model needs the number of classes.
    probe_resolution = args.resolution or 64
    train = get_dataset(
        args.dataset,
        "train",
        probe_resolution,
        root=args.data_root,
        download=args.download,
        num_samples=args.train_samples,
        seed=args.seed,
    )
    model = _build_model(args, len(class_names(train)))
    resolution = args.resolution or model.config.resolution
    if resolution != probe_resolution:
        train = get_dataset(
            args.dataset,
            "train",
            resolution,
            root=args.data_root,
            download=args.download,
            num_samples=args.train_samples,
            seed=args.seed,
        )
    val = get_dataset(
        args.dataset,
        "val",
        resolution,
        root=args.data_root,
        download=args.download,
        num_samples=args.val_samples,
        seed=args.seed,
    )
    if rank == 0:
        print(
            f"{model.config.name} on {args.dataset} at {resolution} px: "
            f"{len(train)} training / {len(val)} validation images, "
            f"{len(class_names(train))} classes, {world} process(es)"
        )
    history = fit(model, train, val, config)
    if rank == 0:
        out = Path(args.out)
        (out / "history.json").write_text(
            json.dumps(
                {
                    "model": model.config.name,
                    "dataset": args.dataset,
                    "resolution": resolution,
                    "world_size": world,
                    "history": history.epochs,
                },
                indent=2,
            )
        )
        last = history.last
        print(
            f"done: val accuracy {last['val_accuracy']:.4f}, {last['images_per_s']:.0f} "
            f"images/s; checkpoint and history in {out}"
        )
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def cmd_scale_study(args: argparse.Namespace) -> int:
    from .study import FACTOR_KEYS, Baseline, DatasetFactory, plan, run_study, summarize
    from .training import TrainConfig

    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        label_smoothing=0.0,
        device=args.device,
        amp=args.amp,
        progress=False,
        overwrite=args.overwrite,
    )
    base = Baseline(depth=args.base_depth, width=args.base_width, resolution=args.base_resolution)
    points = plan(base, tuple(args.targets))
    print(
        f"{len(points)} models x {len(args.seeds)} seed(s), {args.epochs} epochs each, "
        f"{args.train_samples} training images, {args.workers} worker(s)"
    )
    dataset = DatasetFactory(args.dataset, args.train_samples, args.val_samples)
    start = time.perf_counter()
    rows = run_study(
        points,
        dataset,
        config,
        args.out,
        seeds=tuple(args.seeds),
        workers=args.workers,
        save_models=args.save_models,
    )
    factors = [k for k in FACTOR_KEYS if k in rows[0]]
    print(f"\ntook {(time.perf_counter() - start) / 60:.1f} min")
    print(
        "| family | FLOPs ratio | depth | width | resolution | val accuracy (%) | "
        + " | ".join(f"{k.replace('_', ' ')} (%)" for k in factors)
        + " |"
    )
    print("|---" * (6 + len(factors)) + "|")
    for s in summarize(rows):
        print(
            f"| {s['family']} | {s['flops_ratio']:.2f} | {s['depth']:.2f} | "
            f"{s['width']:.2f} | {s['resolution']} | {100 * s['accuracy']:.1f} "
            f"+- {100 * s['spread']:.1f} | "
            + " | ".join(f"{100 * s[k]:.1f}" for k in factors)
            + " |"
        )
    print(f"results in {args.out}/results.json, results.csv, plot.png")
    return 0


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= minimum, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnet-edu", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"effnet-edu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="versions, device and the B0-B7 table")
    info.set_defaults(func=cmd_info)

    train = sub.add_parser(
        "train",
        help="train a model",
        description="Train an EfficientNet. Example: effnet-edu train "
        "--depth 0.5 --width 0.5 --resolution 64 --epochs 5 --out runs/tiny",
    )
    model = train.add_argument_group("model (a name, or phi, or multipliers)")
    model.add_argument("--model", help="b0-b7 or lite0-lite4")
    model.add_argument("--phi", type=float, help="compound coefficient (>= 0)")
    model.add_argument("--depth", type=float, help="depth multiplier (B0 = 1.0)")
    model.add_argument("--width", type=float, help="width multiplier (B0 = 1.0)")
    model.add_argument(
        "--resolution",
        type=_positive_int,
        help="input resolution in pixels (default: the model's own)",
    )
    model.add_argument("--stochastic-depth", type=float, help="final block's drop probability")
    model.add_argument(
        "--memory-efficient",
        action="store_true",
        help="memory-efficient swish and per-stage activation checkpointing",
    )
    data = train.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="synthetic",
        help="synthetic, cifar10, imagenette or folder:PATH (default: synthetic)",
    )
    data.add_argument("--data-root", default="data", help="where downloaded datasets live")
    data.add_argument("--download", action="store_true", help="download cifar10/imagenette")
    data.add_argument("--train-samples", type=_positive_int, help="training images to use")
    data.add_argument("--val-samples", type=_positive_int, help="validation images to use")
    data.add_argument("--num-workers", type=_non_negative_int, default=0)
    run = train.add_argument_group("training")
    run.add_argument("--epochs", type=int, default=5)
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--lr", type=float, default=0.05)
    run.add_argument("--optimizer", default="sgd", help="sgd, adamw, rmsprop, rmsprop_tf")
    run.add_argument("--schedule", default="cosine", help="cosine, step, constant")
    run.add_argument("--warmup-epochs", type=float, default=0.5)
    run.add_argument("--label-smoothing", type=float, default=0.1)
    run.add_argument("--ema-decay", type=float, help="keep an EMA of the weights (e.g. 0.999)")
    run.add_argument("--steps-per-epoch", type=_positive_int, help="cap steps (quick runs)")
    run.add_argument("--seed", type=int, default=0)
    hardware = train.add_argument_group("hardware")
    hardware.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    hardware.add_argument("--amp", default="auto", help="auto, bf16, fp16, off")
    hardware.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    hardware.add_argument("--compile", action="store_true", help="torch.compile the model")
    output = train.add_argument_group("output")
    output.add_argument("--out", required=True, help="folder for checkpoint.pt, history.json")
    output.add_argument("--resume", action="store_true", help="continue the run in --out")
    output.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    study = sub.add_parser(
        "scale-study",
        help="compare scaling methods at matched FLOPs",
        description="Train a small baseline scaled by depth, width, "
        "resolution and compound scaling to the same FLOPs (the paper's "
        "Figure 8 / Table 7 in miniature); writes results.json, "
        "results.csv and plot.png.",
    )
    study.add_argument("--out", required=True, help="output folder")
    study.add_argument("--dataset", default="synthetic")
    study.add_argument(
        "--targets",
        type=float,
        nargs="+",
        default=[2.0],
        help="FLOPs ratios to the baseline (default: 2)",
    )
    study.add_argument("--base-depth", type=float, default=0.5)
    study.add_argument("--base-width", type=float, default=0.5)
    study.add_argument("--base-resolution", type=_positive_int, default=48)
    study.add_argument("--epochs", type=int, default=4)
    study.add_argument("--batch-size", type=int, default=64)
    study.add_argument("--optimizer", default="adamw")
    study.add_argument("--lr", type=float, default=3e-3)
    study.add_argument("--weight-decay", type=float, default=0.05)
    study.add_argument("--train-samples", type=_positive_int, default=6000)
    study.add_argument("--val-samples", type=_positive_int, default=1000)
    study.add_argument("--seeds", type=int, nargs="+", default=[0])
    study.add_argument("--device", default="auto")
    study.add_argument("--amp", default="auto")
    study.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="models trained at once, one process and one thread each "
        "(e.g. the number of CPU cores; default 1)",
    )
    study.add_argument(
        "--save-models",
        action="store_true",
        help="keep every trained model in OUT/models/ (4/8-bit weights, "
        "effnet_edu.compression; 0.6-1 MB a model)",
    )
    study.add_argument("--overwrite", action="store_true")
    study.set_defaults(func=cmd_scale_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (
        UsageError,
        ValueError,
        TypeError,
        FileNotFoundError,
        FileExistsError,
        RuntimeError,
    ) as error:
        # Bad input or a refused action: one clear line, no traceback, exit status 2.
        print(f"effnet-edu {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
