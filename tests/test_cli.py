"""The command line, run in-process with `main([...])` as a user would type it."""

import json
import socket
import subprocess
import sys

import pytest
import torch
import torchvision

from effnet_edu import cli
from effnet_edu.cli import main

TINY = "--depth 0.25 --width 0.25 --resolution 32 --epochs 1 --batch-size 8".split()
TINY += "--train-samples 16 --val-samples 8 --steps-per-epoch 1 --quiet --device cpu".split()


def run(*argv: str) -> int:
    """main's exit status; argparse's own errors exit through SystemExit."""
    try:
        return main(list(argv))
    except SystemExit as stop:
        return stop.code


def test_info_table_matches_torchvision_metadata(capsys):
    assert run("info") == 0
    out = capsys.readouterr().out
    assert f"torch {torch.__version__}" in out and "device: " in out
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines()[4:]}
    for k in range(8):
        weights = torchvision.models.get_weight(f"EfficientNet_B{k}_Weights.IMAGENET1K_V1")
        row = rows[f"b{k}"]
        assert row[7].strip() == f"{weights.meta['num_params']:,}"
        if int(row[4]) == weights.transforms.keywords["crop_size"]:  # B2: torchvision uses 288
            assert row[8].strip() == f"{weights.meta['_ops']:.3f}"


BAD = [  # (flags, the argument and the value its message must name)
    (["--epochs", "-2"], "epochs", "-2"),
    (["--batch-size", "0"], "batch-size", "0"),
    (["--steps-per-epoch", "0"], "steps-per-epoch", "0"),
    (["--train-samples", "0"], "train-samples", "0"),
    (["--val-samples", "-1"], "val-samples", "-1"),
    (["--depth", "0"], "depth", "0"),
    (["--resolution", "0"], "resolution", "0"),
    (["--ema-decay", "0"], "ema-decay", "0"),
    (["--num-workers", "-1"], "num-workers", "-1"),
    (["--seed", "-1"], "seed", "-1"),
    (["--lr", "fast"], "lr", "fast"),
    (["--epochs", "2.5"], "epochs", "2.5"),
    (["--label-smoothing", "nan"], "label-smoothing", "nan"),
    (["--optimizer", "adam"], "optimizer", "adam"),
    (["--amp", "fp8"], "amp", "fp8"),
    (["--dataset", "mnist"], "dataset", "mnist"),
    (["--dataset", "folder:no/such/folder"], "folder", "no/such/folder"),
]
BAD_MODELS = [  # TINY without its multipliers
    (["--model", "b9"], "variant", "b9"),
    (["--model", "lite0", "--depth", "2"], "depth", "2"),
    (["--phi", "-1"], "phi", "-1"),
    (["--phi", "1", "--width", "2"], "width", "2"),
    (["--stochastic-depth", "1"], "stochastic-depth", "1"),
]


@pytest.mark.parametrize("flags, name, value", BAD + BAD_MODELS)
def test_bad_train_flags_exit_2_naming_argument_and_value(flags, name, value, tmp_path, capsys):
    tiny = TINY if (flags, name, value) in BAD else TINY[4:]
    assert run("train", *tiny, *flags, "--out", str(tmp_path / "run")) == 2
    error = capsys.readouterr().err.replace("_", "-").splitlines()[-1]
    assert error.startswith("effnet-edu train: error: ")
    assert name in error and value in error, error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, name, value",
    [
        (["fly"], "fly", "invalid choice"),
        (["scale-study", "--preset", "huge"], "preset", "huge"),
        (["scale-study", "--workers", "0"], "workers", "0"),
    ],
)
def test_bad_commands_and_study_flags_exit_2(flags, name, value, tmp_path, capsys):
    assert run(*flags, "--out", str(tmp_path / "study")) == 2
    error = capsys.readouterr().err.replace("_", "-").splitlines()[-1]
    assert name in error and value in error, error
    assert not (tmp_path / "study").exists()


def test_zero_is_a_value_not_a_missing_flag(tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    def fake_fit(model, train, val, config):
        seen.update(model=model.config, config=config, resolution=train[0][0].shape[-1])
        raise Stop

    seen = {}
    monkeypatch.setattr(cli.ee, "fit", fake_fit)
    zeros = "--phi 0 --stochastic-depth 0 --label-smoothing 0 --warmup-epochs 0 --seed 0".split()
    with pytest.raises(Stop):
        main(["train", *TINY[4:], *zeros, "--out", str(tmp_path / "run")])
    assert seen["model"].phi == 0 and seen["model"].stochastic_depth == 0
    assert seen["config"].label_smoothing == 0 and seen["config"].warmup_epochs == 0
    assert seen["resolution"] == 32  # --resolution sizes the data of a phi model


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("earlier") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert json.loads((out / "history.json").read_text())["history"][0]["epoch"] == 1
    return out


def test_train_refuses_to_replace_an_earlier_run(earlier_run, capsys):
    before = {p.name: p.read_bytes() for p in earlier_run.iterdir()}
    assert run("train", *TINY, "--out", str(earlier_run)) == 2
    error = capsys.readouterr().err
    assert str(earlier_run / "checkpoint.pt") in error and "resume" in error
    assert {p.name: p.read_bytes() for p in earlier_run.iterdir()} == before


def test_resume_without_a_checkpoint_names_the_file(tmp_path, capsys):
    assert run("train", *TINY, "--resume", "--out", str(tmp_path)) == 2
    assert str(tmp_path / "checkpoint.pt") in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_resume_of_a_damaged_checkpoint_names_the_file(damage, earlier_run, tmp_path, capsys):
    good = (earlier_run / "checkpoint.pt").read_bytes()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"not a checkpoint\n")
    before = path.read_bytes()
    assert run("train", *TINY, "--resume", "--out", str(tmp_path)) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("effnet-edu train: error: ") and str(path) in error
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_scale_study_offers_every_preset():
    from effnet_edu.cli import build_parser
    from effnet_edu.study import PRESETS

    parser = build_parser()
    assert set(PRESETS) == {"full", "half", "quick", "gpu"}
    for name in PRESETS:  # a preset the package defines but the command refuses is unreachable
        assert parser.parse_args(["scale-study", "--preset", name]).preset == name


def test_scale_study_default_folders(monkeypatch):
    # The study the notebooks read is results/scale_study; every other preset has its own folder.
    from effnet_edu import study

    seen = []
    monkeypatch.setattr(study, "run_study", lambda preset, out, workers: seen.append(out) or [])
    monkeypatch.setattr(study, "best_candidate", lambda rows, preset: None)
    for name in ("full", "half", "quick", "gpu"):
        assert run("scale-study", "--preset", name) == 0
    assert seen == [
        "results/scale_study",
        "results/scale_study_half",
        "results/scale_study_quick",
        "results/scale_study_gpu",
    ]


def test_study_refuses_a_folder_that_holds_a_study(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text("[]")
    assert run("scale-study", "--preset", "quick", "--out", str(tmp_path)) == 2
    assert str(results) in capsys.readouterr().err
    assert results.read_text() == "[]" and [p.name for p in tmp_path.iterdir()] == [results.name]


def test_torchrun_two_processes_on_cpu(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    command += [f"--master_port={port}", "-m", "effnet_edu.cli", "train", *TINY, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    assert result.stdout.count("done: val accuracy") == 1  # rank 0 alone reports
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "history.json"]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["history"][0]["epoch"] == 1
    ranks = checkpoint["rng_ranks"]  # each rank's stream, so that each resumes its own
    assert len(ranks) == 2 and not torch.equal(ranks[0]["cpu"], ranks[1]["cpu"])
    assert torch.equal(ranks[0]["cpu"], checkpoint["rng"]["cpu"])
