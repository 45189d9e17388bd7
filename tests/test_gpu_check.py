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
