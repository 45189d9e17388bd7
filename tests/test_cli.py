"""The command line, as a user runs it."""

import subprocess
import sys


def test_info_prints_versions_device_and_table():
    out = subprocess.run(
        [sys.executable, "-m", "effnet_edu.cli", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert "torch " in out and "device: " in out
    assert "| b0 | 1.0 | 1.0 | 224 | 0.2 | 0.00 | 5,288,548 | 0.386 |" in out
    assert "| b7 | 2.0 | 3.1 | 600 | 0.5 | 6.63 | 66,347,960 | 37.746 |" in out


def test_unknown_command_fails_clearly():
    result = subprocess.run(
        [sys.executable, "-m", "effnet_edu.cli", "fly"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "invalid choice: 'fly'" in result.stderr


def effnet_edu(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "effnet_edu.cli", *args], capture_output=True, text=True, cwd=cwd
    )


TINY = [
    "--depth",
    "0.25",
    "--width",
    "0.25",
    "--resolution",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--train-samples",
    "32",
    "--val-samples",
    "16",
    "--quiet",
    "--device",
    "cpu",
]


def test_help_texts():
    for command in ("train", "scale-study"):
        result = effnet_edu(command, "--help")
        assert result.returncode == 0 and "--out" in result.stdout
    assert "--phi" in effnet_edu("train", "--help").stdout
    assert "--targets" in effnet_edu("scale-study", "--help").stdout


def test_train_writes_checkpoint_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    result = effnet_edu("train", *TINY, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "checkpoint.pt").is_file() and (out / "history.json").is_file()
    before = (out / "checkpoint.pt").read_bytes()
    again = effnet_edu("train", *TINY, "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert "--resume" in again.stderr and "Traceback" not in again.stderr
    assert (out / "checkpoint.pt").read_bytes() == before


def test_bad_arguments_exit_nonzero_with_a_clear_message(tmp_path):
    cases = [
        (["--dataset", "mnist"], "unknown dataset 'mnist'; valid: synthetic"),
        (["--epochs", "-2"], "epochs must be an integer >= 1, got -2"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["--dataset", f"folder:{tmp_path / 'nowhere'}"], str(tmp_path / "nowhere")),
        (["--model", "b9"], "unknown EfficientNet variant 'b9'"),
        (["--phi", "-1"], "phi must be a finite number >= 0"),
        (["--train-samples", "0"], "must be >= 1, got 0"),
    ]
    for extra, message in cases:
        args = (
            [a for a in TINY if a not in ("--depth", "0.25", "--width")]
            if ("--model" in extra or "--phi" in extra)
            else TINY
        )
        result = effnet_edu("train", *args, *extra, "--out", str(tmp_path / "x"))
        assert result.returncode != 0, extra
        assert message in result.stderr, (extra, result.stderr[-500:])
        assert "Traceback" not in result.stderr, extra
    assert not (tmp_path / "x" / "checkpoint.pt").exists()


def test_torchrun_two_processes_on_cpu(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={port}",
            "-m",
            "effnet_edu.cli",
            "train",
            *TINY,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    assert result.stdout.count("done: val accuracy") == 1  # rank 0 alone reports
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "history.json"]
    import torch

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["history"][0]["epoch"] == 1
