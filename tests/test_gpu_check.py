"""`make gpu-check` (benchmarks/gpu_check.py) skips cleanly on a machine without a CUDA GPU."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: make gpu-check runs it all")
def test_gpu_check_skips_without_a_gpu(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "skipped, no CUDA GPU here" in result.stdout


def test_gpu_check_plans_every_step_on_a_gpu(tmp_path, monkeypatch):
    """With CUDA mocked (one GPU), the plan: both notebooks copied beside a link to the data,
    the benchmarks on CUDA, torchrun on the CPU (one GPU cannot give each process its own), and
    one report. The steps themselves are recorded, not run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    (tmp_path / "notebooks" / "data").mkdir(parents=True)
    for name in gpu_check.NOTEBOOKS:
        (tmp_path / "notebooks" / name).write_text("{}")
    planned = []

    def run_step(name, command, folder, env=None):
        planned.append((name, command))
        return {"name": name, "status": "passed", "seconds": 1.0, "log": folder / f"{name}.log"}

    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)
    monkeypatch.setattr(gpu_check, "run_step", run_step)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Mock GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    assert gpu_check.main() == 0
    (folder,) = (tmp_path / "build" / "gpu-check").iterdir()
    names = [name for name, _ in planned]
    assert names == ["notebook-04", "notebook-06", "throughput", "flops-latency", "torchrun"]
    assert "CPU " in (folder / "report.md").read_text()  # the machine line names the CPU
    for name in gpu_check.NOTEBOOKS:
        assert (folder / name).exists()  # a copy is executed, not the committed notebook
        assert any(str(folder / name) in command for _, command in planned)
    assert (folder / "data").resolve() == (tmp_path / "notebooks" / "data").resolve()
    commands = dict(planned)
    assert "cuda" in commands["throughput"] and "cuda" in commands["flops-latency"]
    assert commands["torchrun"][commands["torchrun"].index("--device") + 1] == "cpu"
    report = (folder / "report.md").read_text()
    assert "Mock GPU (compute capability 9.0), 1 GPU(s)" in report
    assert "one GPU only" in report


def test_gpu_check_runs_only_the_steps_asked_for_and_names_the_valid_ones(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.chosen_steps(None, None) == list(gpu_check.STEPS)
    assert gpu_check.chosen_steps(["torchrun", "throughput"], None) == ["throughput", "torchrun"]
    assert gpu_check.chosen_steps(None, ["notebook-04"]) == [
        "notebook-06", "throughput", "flops-latency", "torchrun"]  # fmt: skip
    with pytest.raises(SystemExit, match="unknown step 'notebook-4'; the steps are: notebook-04"):
        gpu_check.chosen_steps(["notebook-4"], None)
