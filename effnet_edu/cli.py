"""The `effnet-edu` command line.

    effnet-edu info          versions, the compute device, and the B0-B7 table
    effnet-edu train         train a model (by name, phi or multipliers) on a dataset
    effnet-edu scale-study   depth vs width vs resolution vs compound scaling at matched FLOPs

`train` also runs under ``torchrun --nproc_per_node=N`` (DistributedDataParallel).

Each flag is checked once: argparse reads it as a number (`type=`), and the library checks its
range where it goes (`TrainConfig`, `efficientnet_config`, `get_dataset`, the study's `plan`),
naming the parameter: the flag without its dashes. Every check runs before anything is trained
or written. Sample counts and seeds are checked here, as a study uses them late.

Exit status: 0 done; 2 bad input, nothing changed (argparse's errors, and the library's
ValueError, FileNotFoundError, FileExistsError: a bad value, a file missing, corrupt or in the
way); 1 a failure while running (RuntimeError: a download, the device).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import numpy
import torch
import torchvision

import effnet_edu as ee

from .training import AMP_MODES, OPTIMIZERS, SCHEDULES, init_distributed


def cmd_info(args: argparse.Namespace) -> int:
    """Versions, the device, and B0-B7 as released (Table 2) with the phi that explains each."""
    versions = [f"{m.__name__} {m.__version__}" for m in (ee, torch, torchvision, numpy)]
    print(", ".join(versions + [f"python {platform.python_version()}"]))
    device = ee.select_device("auto")
    detail = torch.cuda.get_device_name() if device.type == "cuda" else ""
    print(f"device: {device} {detail or f'({torch.get_num_threads()} threads)'}\n")
    print("| variant | width | depth | resolution | dropout | fitted phi | params | GMACs |")
    print("|---" * 8 + "|")
    for variant in ee.explain_official_variants():
        c = ee.efficientnet_config(variant.name)
        print(
            f"| {variant.name} | {c.width} | {c.depth} | {c.resolution} | {c.dropout} | "
            f"{variant.phi:.2f} | {ee.config_params(c):,} | {ee.config_flops(c) / 1e9:.3f} |"
        )
    return 0


def _train_config(args: argparse.Namespace, **fixed) -> ee.TrainConfig:
    """The flags named after TrainConfig's fields, plus `fixed`; TrainConfig checks them."""
    fields = {f.name for f in dataclasses.fields(ee.TrainConfig)}
    return ee.TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}, **fixed)


def _model_config(args: argparse.Namespace):
    """The model the flags ask for: --model NAME, or --phi, or --depth/--width/--resolution."""
    options = {} if args.stochastic_depth is None else {"stochastic_depth": args.stochastic_depth}
    size = {"depth": args.depth, "width": args.width}
    if args.model is None and args.phi is None:  # else --resolution sizes only the data
        size["resolution"] = args.resolution
    return ee.efficientnet_config(args.model, phi=args.phi, **size, **options)


def cmd_train(args: argparse.Namespace) -> int:
    rank, _, world = init_distributed(args.device)
    config = _train_config(args, out_dir=args.out, progress=not args.quiet)
    model_config = _model_config(args)
    resolution = model_config.resolution if args.resolution is None else args.resolution
    where = {"root": args.data_root, "download": args.download, "seed": args.seed}
    train = ee.get_dataset(
        args.dataset, "train", resolution, num_samples=args.train_samples, **where
    )
    val = ee.get_dataset(args.dataset, "val", resolution, num_samples=args.val_samples, **where)
    classes = ee.class_names(train)
    model = ee.EfficientNet(dataclasses.replace(model_config, num_classes=len(classes)))
    model.gradient_checkpointing = args.memory_efficient
    if rank == 0:
        print(
            f"{model_config.name} on {args.dataset} at {resolution} px: {len(train)} training / "
            f"{len(val)} validation images, {len(classes)} classes, {world} process(es)"
        )
    if ee.select_device(args.device).type == "cuda":  # as notebook 04's GPU branch does
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its kernels once
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (Ampere+)
        torch.backends.cudnn.allow_tf32 = True
    history = ee.fit(model, train, val, config)
    if rank == 0:
        run = {"model": model_config.name, "dataset": args.dataset, "resolution": resolution}
        run.update(world_size=world, history=history.epochs)
        Path(args.out, "history.json").write_text(json.dumps(run, indent=2))
        last = history.last
        print(
            f"done: val accuracy {last['val_accuracy']:.4f}, {last['images_per_s']:.0f} "
            f"images/s; checkpoint and history in {args.out}"
        )
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


def cmd_scale_study(args: argparse.Namespace) -> int:
    from .study import PRESETS, best_candidate, run_study

    preset = PRESETS[args.preset]
    out = args.out or f"results/scale_study{'' if args.preset == 'full' else '_' + args.preset}"
    rows = run_study(preset, out, workers=args.workers)
    ours = best_candidate(rows, preset)
    print(f"{len(rows)} models in {out}/results.csv; our alpha, beta, gamma: {ours}")
    return 0


def _int_at_least(minimum: int):
    """An argparse type: a whole number >= minimum, with a message that says so."""

    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return int(text)

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnet-edu", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"effnet-edu {ee.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("info", help="versions, device and the B0-B7 table").set_defaults(func=cmd_info)
    count, seed = _int_at_least(1), _int_at_least(0)

    example = "effnet-edu train --depth 0.5 --width 0.5 --resolution 64 --epochs 5 --out runs/tiny"
    train = sub.add_parser("train", help="train a model", description=f"Example: {example}")
    train.set_defaults(func=cmd_train)
    model = train.add_argument_group("model (a name, or phi, or multipliers)")
    model.add_argument("--model", help="b0-b7 or lite0-lite4")
    model.add_argument("--phi", type=float, help="compound coefficient (>= 0)")
    model.add_argument("--depth", type=float, help="depth multiplier (B0 = 1.0)")
    model.add_argument("--width", type=float, help="width multiplier (B0 = 1.0)")
    model.add_argument("--resolution", type=int, help="input pixels (default: the model's own)")
    model.add_argument("--stochastic-depth", type=float, help="final block's drop probability")
    model.add_argument("--memory-efficient", action="store_true", help="checkpoint each stage")
    data = train.add_argument_group("data")
    data.add_argument("--dataset", default="synthetic", help=", ".join(ee.DATASET_NAMES))
    data.add_argument("--data-root", default="data", help="where downloaded datasets live")
    data.add_argument("--download", action="store_true", help="download cifar10/imagenette")
    data.add_argument("--train-samples", type=count, help="training images to use (default: all)")
    data.add_argument("--val-samples", type=count, help="validation images to use (default: all)")
    data.add_argument("--num-workers", type=int, default=0, help="data loader processes")
    run = train.add_argument_group("training")
    run.add_argument("--epochs", type=int, default=5)
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--lr", type=float, default=0.05)
    run.add_argument("--optimizer", default="sgd", help=", ".join(OPTIMIZERS))
    run.add_argument("--schedule", default="cosine", help=", ".join(SCHEDULES))
    run.add_argument("--warmup-epochs", type=float, default=0.5)
    run.add_argument("--label-smoothing", type=float, default=0.1)
    run.add_argument("--ema-decay", type=float, help="keep an EMA of the weights (e.g. 0.999)")
    run.add_argument("--steps-per-epoch", type=int, help="cap steps (quick runs)")
    run.add_argument("--seed", type=seed, default=0)
    hardware = train.add_argument_group("hardware")
    hardware.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    hardware.add_argument("--amp", default="auto", help=", ".join(AMP_MODES))
    hardware.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    hardware.add_argument("--compile", action="store_true", help="torch.compile the model")
    output = train.add_argument_group("output")
    output.add_argument("--out", required=True, help="folder for checkpoint.pt, history.json")
    output.add_argument("--resume", action="store_true", help="continue the run in --out")
    output.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    output.add_argument("--quiet", action="store_true", help="no progress bars")

    from .study import PRESETS

    about = "compare scaling methods at matched FLOPs (Figure 8 and Table 7 in miniature)"
    study = sub.add_parser("scale-study", help=about, description=about)
    study.set_defaults(func=cmd_scale_study)
    study.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="quick",
        help="quick: 5 models, about 3 minutes on 2 CPU cores; full: the study the notebooks "
        "read (40 epochs); half: the same design at 20 epochs, its short-budget arm; gpu: more "
        "seeds and epochs, on CUDA",
    )
    study.add_argument(
        "--out",
        help="folder (default: results/scale_study for full, results/scale_study_PRESET otherwise)",
    )
    study.add_argument("--workers", type=count, default=1, help="models trained at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad flags: argparse prints why and exits with 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"effnet-edu {args.command}: error: {error}", file=sys.stderr)
        return 1 if isinstance(error, RuntimeError) else 2


if __name__ == "__main__":
    sys.exit(main())
