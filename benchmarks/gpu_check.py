"""Check a GPU machine in one command (`make gpu-check`) and write one report.

It runs, on the first CUDA GPU:
1. notebooks 04 and 06 top to bottom, which take their GPU branches there (copies are executed,
   beside a link to notebooks/data so that real datasets on disk are found; the committed
   notebooks are left as they are);
2. the throughput benchmark (ours vs torchvision's B0: AMP, channels_last, torch.compile);
3. the FLOPs-versus-latency benchmark (B0/B1/B3 against ResNets and MobileNets);
4. a two-process `torchrun` training run (on two GPUs if there are two, else on the CPU: one GPU
   per process is the rule, see `effnet_edu.training.init_distributed`).

Everything goes to build/gpu-check/<date-time>/ (report.md, the logs, the executed notebook):
nothing earlier is replaced. Where there is no CUDA GPU it says so and exits with status 0.

    .venv/bin/python benchmarks/gpu_check.py [--quick] [--only STEP ... | --skip STEP ...]

Steps: notebook-04, notebook-06, throughput, flops-latency, torchrun (see STEPS).
"""

import argparse
import datetime
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# a source checkout, and bench_throughput beside us
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from bench_throughput import machine_description  # noqa: E402

NOTEBOOKS = ("04_training_on_gpu.ipynb", "06_flops_are_not_latency.ipynb")
STEPS = (*(f"notebook-{name[:2]}" for name in NOTEBOOKS), "throughput", "flops-latency", "torchrun")


def chosen_steps(only: list[str] | None, skip: list[str] | None) -> list[str]:
    """The steps to run, in STEPS order; an unknown name is an error that lists the valid ones."""
    for name in (*(only or ()), *(skip or ())):
        if name not in STEPS:
            raise SystemExit(f"gpu-check: unknown step {name!r}; the steps are: {', '.join(STEPS)}")
    return [s for s in STEPS if (only is None or s in only) and s not in (skip or ())]


def run_step(name: str, command: list[str], folder: Path, env=None) -> dict:
    """Run one step with its output in folder/<name>.log; returns what the report says of it."""
    log = folder / f"{name}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    status = "passed" if result.returncode == 0 else f"FAILED (exit status {result.returncode})"
    print(f"{name}: {status} in {seconds:.0f} s; log in {log}")
    return {"name": name, "status": status, "seconds": seconds, "log": log, "command": command}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="benchmarks' smoke settings")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", nargs="+", metavar="STEP", help=f"run only these: {STEPS}")
    which.add_argument("--skip", nargs="+", metavar="STEP", help="run all but these")
    args = parser.parse_args()
    wanted = chosen_steps(args.only, args.skip)
    if not torch.cuda.is_available():
        print(
            "gpu-check: skipped, no CUDA GPU here (torch.cuda.is_available() is False). "
            "Run `make gpu-check` on a machine with an NVIDIA GPU and a CUDA build of PyTorch."
        )
        return 0
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = ROOT / "build" / "gpu-check" / stamp
    folder.mkdir(parents=True)
    python, quick = sys.executable, ["--quick"] if args.quick else []
    notebooks = [folder / name for name in NOTEBOOKS]
    for notebook in notebooks:
        shutil.copy(ROOT / "notebooks" / notebook.name, notebook)
    if (ROOT / "notebooks" / "data").is_dir():  # DATA_ROOT = "data", relative to the notebook
        (folder / "data").symlink_to(ROOT / "notebooks" / "data", target_is_directory=True)
    gpus = torch.cuda.device_count()
    ddp_device = "cuda" if gpus >= 2 else "cpu"
    tiny = ["--depth", "0.25", "--width", "0.25", "--resolution", "32", "--epochs", "1"]
    tiny += ["--train-samples", "256", "--val-samples", "64", "--batch-size", "32", "--quiet"]
    steps = [
        *((f"notebook-{notebook.name[:2]}", [python, "-m", "jupyter", "nbconvert", "--to",
                                              "notebook", "--execute", "--inplace",
                                              "--ExecutePreprocessor.timeout=1800", str(notebook)])
          for notebook in notebooks),
        ("throughput", [python, "benchmarks/bench_throughput.py", "--device", "cuda", *quick,
                        "--out", str(folder / "throughput.md")]),
        ("flops-latency", [python, "benchmarks/bench_flops_latency.py", "--device", "cuda",
                           *quick, "--out", str(folder / "flops_latency.md"),
                           "--json", str(folder / "flops_latency.json"),
                           "--plot", str(folder / "flops_latency.png")]),
        ("torchrun", [python, "-m", "torch.distributed.run", "--nproc_per_node=2",
                      f"--master_port={free_port()}", "-m", "effnet_edu.cli", "train", *tiny,
                      "--device", ddp_device, "--out", str(folder / "ddp")]),
    ]  # fmt: skip
    assert [name for name, _ in steps] == list(STEPS)
    steps = [(name, command) for name, command in steps if name in wanted]
    env = os.environ | {"TQDM_DISABLE": "1"}
    results = [run_step(name, command, folder, env) for name, command in steps]
    lines = [
        f"# GPU check, {stamp}",
        "",
        f"- GPU: {torch.cuda.get_device_name(0)} (compute capability "
        f"{'.'.join(map(str, torch.cuda.get_device_capability(0)))}), {gpus} GPU(s)",
        f"- {machine_description(torch.device('cuda'))}; CUDA {torch.version.cuda}",
        *(
            [
                f"- torchrun ran on: {ddp_device}"
                + (
                    ""
                    if gpus >= 2
                    else " (one GPU only, and each process needs a GPU of its own: two CPU "
                    "processes over gloo, so NCCL and DDP on CUDA were not exercised)"
                )
            ]
            if "torchrun" in wanted
            else []
        ),
        "",
        "| step | result | seconds | log |",
        "|---|---|---|---|",
        *(
            f"| {r['name']} | {r['status']} | {r['seconds']:.0f} | {r['log'].name} |"
            for r in results
        ),
    ]
    for name in ("throughput.md", "flops_latency.md"):
        if (folder / name).exists():
            lines += ["", (folder / name).read_text()]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    print(f"report: {folder / 'report.md'}")
    return 0 if all(r["status"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
