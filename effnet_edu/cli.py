"""The `effnet-edu` command line.

    effnet-edu info          versions, the compute device, and the B0-B7 table

Used by: the README's quick start and CI.
"""

from __future__ import annotations

import argparse
import platform
import sys

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
    lines = ["| variant | width | depth | resolution | dropout | fitted phi | params | GMACs |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in OFFICIAL_VARIANTS.items():
        model = efficientnet(name)
        lines.append(f"| {name} | {v.width} | {v.depth} | {v.resolution} | {v.dropout} | "
                     f"{fits[name].phi:.2f} | {count_params(model):,} | "
                     f"{count_flops(model) / 1e9:.3f} |")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    import numpy
    import torch
    import torchvision

    print(f"effnet-edu {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, numpy {numpy.__version__}")
    print(f"device: {_device_line()}")
    print()
    print(variants_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="effnet-edu", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"effnet-edu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="versions, device and the B0-B7 table")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
