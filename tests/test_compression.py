"""Weight-only 4/8-bit compression of checkpoints, against torch's own per-channel quantizer."""

import io
from pathlib import Path

import pytest
import torch

from effnet_edu import efficientnet
from effnet_edu.compression import (
    GROUP,
    LARGE,
    _pack4,
    _unpack4,
    compress_state_dict,
    compressed_bytes,
    decompress_state_dict,
)
from effnet_edu.training import load_checkpoint, model_signature

STUDY_MODELS = Path(__file__).resolve().parents[1] / "results" / "scale_study" / "models"


def _torch_per_channel(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """torch's per-channel fake quantizer with scale = max |w| / qmax per output channel."""
    qmax = 2 ** (bits - 1) - 1
    scales = weight.reshape(weight.shape[0], -1).abs().amax(dim=1) / qmax
    zero_points = torch.zeros(weight.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scales, zero_points, 0, -qmax, qmax)


def _torch_grouped4(weight: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    """The same quantizer at 4 bits on groups of `group` consecutive weights of a channel, each
    group with its own scale (max |w| / 7, stored as float16)."""
    rows = weight.reshape(weight.shape[0], -1)
    n = rows.shape[1]
    padded = torch.cat([rows, rows.new_zeros(rows.shape[0], -n % group)], dim=1)
    groups = padded.reshape(-1, group)
    scales = (groups.abs().amax(dim=1) / 7).half().float()
    zero_points = torch.zeros(groups.shape[0], dtype=torch.int32)
    quantized = torch.fake_quantize_per_channel_affine(groups, scales, zero_points, 0, -7, 7)
    return quantized.reshape(rows.shape[0], -1)[:, :n].reshape(weight.shape)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = efficientnet(depth=0.5, width=0.5, resolution=48, num_classes=24)
    with torch.no_grad():  # trained-looking BatchNorm statistics, not the 0/1 defaults
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    return net.eval()


def test_round_trip_equals_torch_per_channel_quantization(model):
    state = model.state_dict()
    restored = decompress_state_dict(compress_state_dict(state))
    assert list(restored) == list(state)
    kinds = {4: 0, 8: 0}
    for key, value in state.items():
        assert restored[key].shape == value.shape and restored[key].dtype == value.dtype, key
        if not value.is_floating_point():
            assert torch.equal(restored[key], value), key
        elif value.dim() == 1:  # BatchNorm and biases: float16
            assert torch.equal(restored[key], value.half().float()), key
        else:
            pointwise = value.dim() == 4 and value.shape[2:] == (1, 1)
            bits = 4 if pointwise and value.numel() >= LARGE else 8
            kinds[bits] += value.numel()
            reference = _torch_grouped4(value) if bits == 4 else _torch_per_channel(value, 8)
            assert torch.allclose(restored[key], reference, rtol=1e-5, atol=1e-7), key
    # Both kinds occur, and the large pointwise convolutions hold most of the weights.
    assert kinds[4] > kinds[8] > 0


def test_compressed_model_is_small_and_close(model):
    compressed = compress_state_dict(model.state_dict())
    float_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert compressed_bytes(compressed) < 0.2 * float_bytes
    clone = efficientnet(depth=0.5, width=0.5, resolution=48, num_classes=24).eval()
    clone.load_state_dict(decompress_state_dict(compressed))
    x = torch.rand(8, 3, 48, 48)
    with torch.no_grad():
        reference, approximate = model(x), clone(x)
    # Quantization moves the logits a little, not a lot (relative to their spread).
    assert (approximate - reference).abs().max() < 0.25 * reference.std()
    assert not torch.equal(approximate, reference)


def test_pack4_round_trips_every_code_and_odd_lengths():
    codes = torch.arange(-7, 8, dtype=torch.int8)  # 15 codes: odd length
    packed = _pack4(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 8
    assert torch.equal(_unpack4(packed, 15).to(torch.int8), codes)


def test_compressed_checkpoint_loads_with_weights_only(model, tmp_path):
    path = tmp_path / "small.pt"
    torch.save(
        {
            "model_compressed": compress_state_dict(model.state_dict()),
            "model_signature": model_signature(model),
        },
        path,
    )
    loaded, checkpoint = load_checkpoint(path)  # weights_only=True inside
    assert not loaded.training
    expected = decompress_state_dict(checkpoint["model_compressed"])
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_several_odd_sized_tensors_of_each_kind_round_trip():
    # The decoder walks shared buffers with running offsets: odd 4-bit lengths (a padding
    # nibble each), 8-bit and float16 tensors and integer buffers, interleaved.
    torch.manual_seed(1)
    state = {
        "a": torch.randn(3, 5, 1, 1),
        "b.running_mean": torch.randn(7),
        "c": torch.randn(7, 1, 1, 1),
        "d": torch.randn(4, 1, 3, 3),
        "e.num_batches_tracked": torch.tensor(12),
        "f": torch.randn(5, 70, 1, 1),
        "g": torch.randn(2, 9),
    }
    restored = decompress_state_dict(compress_state_dict(state, large=1))
    assert list(restored) == list(state)
    for key in ("a", "c", "f"):  # 1x1 convolutions: 4 bits, in groups
        assert torch.allclose(restored[key], _torch_grouped4(state[key]), atol=1e-7), key
    for key in ("d", "g"):  # k x k and linear: 8 bits
        assert torch.allclose(restored[key], _torch_per_channel(state[key], 8), atol=1e-7), key
    assert torch.equal(restored["b.running_mean"], state["b.running_mean"].half().float())
    assert torch.equal(restored["e.num_batches_tracked"], torch.tensor(12))


def test_bad_input_is_refused(model):
    with pytest.raises(ValueError, match="not a compressed state_dict"):
        decompress_state_dict({"conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="pass checkpoint\\['model_compressed'\\]"):
        decompress_state_dict({"model_compressed": {}})
    with pytest.raises(ValueError, match="large must be an integer >= 1"):
        compress_state_dict({}, large=0)
    good = compress_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="unknown kind 'int2'"):
        decompress_state_dict(
            {**good, "entries": [[*good["entries"][0][:1], "int2", good["entries"][0][2]]]}
        )
    with pytest.raises(ValueError, match="truncated"):
        decompress_state_dict({**good, "int8": good["int8"][:-1]})
    with pytest.raises(ValueError, match="values no entry uses"):
        decompress_state_dict({**good, "halves": torch.cat([good["halves"], good["halves"][:1]])})


def test_an_all_zero_channel_stays_zero():
    weight = torch.randn(4, 64, 1, 1)
    weight[2] = 0
    restored = decompress_state_dict(compress_state_dict({"w": weight}, large=1))["w"]
    assert torch.equal(restored[2], torch.zeros_like(restored[2]))
    assert torch.isfinite(restored).all()


def test_the_shipped_study_models_are_small():
    # Issue 5: checkpoints shipped in the repository are a few MB in all.
    paths = sorted(STUDY_MODELS.glob("*.pt"))
    assert len(paths) == 5
    assert sum(p.stat().st_size for p in paths) < 4_000_000
    for path in paths:
        checkpoint = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
        assert "model_compressed" in checkpoint and "saved_model_accuracy" in checkpoint
