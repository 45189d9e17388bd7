"""The command line, as a user runs it."""

import subprocess
import sys


def test_info_prints_versions_device_and_table():
    out = subprocess.run([sys.executable, "-m", "effnet_edu.cli", "info"], capture_output=True,
                         text=True, check=True).stdout
    assert "torch " in out and "device: " in out
    assert "| b0 | 1.0 | 1.0 | 224 | 0.2 | 0.00 | 5,288,548 | 0.386 |" in out
    assert "| b7 | 2.0 | 3.1 | 600 | 0.5 | 6.63 | 66,347,960 | 37.746 |" in out


def test_unknown_command_fails_clearly():
    result = subprocess.run([sys.executable, "-m", "effnet_edu.cli", "fly"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'fly'" in result.stderr
