"""Small checkpoints: weight-only quantization of a trained model's state_dict.

A float32 weight takes 4 bytes. Most of an EfficientNet's weights sit in a few large pointwise
(1x1) convolutions of the last stages and the head, and those tolerate few bits. So
`compress_state_dict` stores

- the weights of large pointwise convolutions (1x1, at least 16,384 weights) in 4 bits, two to
  a byte, with one float16 scale per group of 32 consecutive weights of an output channel;
- every other weight tensor (the stem, the depthwise k x k filters, squeeze-excitation and small
  1x1 convolutions, the classifier, which is the most sensitive) in 8 bits, with one float32
  scale per output channel;
- one-dimensional tensors (BatchNorm, biases) in float16, integer buffers unchanged.

Quantization is symmetric: w ~ scale * q with q in [-7, 7] (4 bits) or [-127, 127] (8 bits), and
scale = the largest |w| of the group (or channel) / 7 (or / 127), rounded as torch's
`fake_quantize_per_channel_affine` rounds (the tests compare against it). Groups matter at
4 bits: with one scale per output channel, a single large weight coarsens the 15 levels of all
the channel's other weights, and a scale-study model lost up to 3 points of accuracy; with
groups of 32 (half a bit more per weight) it moves by about one. This is the kind of model
EfficientNet-Lite was designed for (integer weights).

On the scale study's models this is about a fifth of the float32 size; the study measures its
shipped models after the round trip (`saved_model_accuracy`). The result holds only tensors,
lists and strings, so `torch.load(weights_only=True)` reads it; `decompress_state_dict` returns a
float32 state_dict for `load_state_dict`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FORMAT = "effnet-edu-quantized-2"
LARGE = 16384  # 1x1 convolutions with at least this many weights get 4 bits
GROUP = 32  # 4-bit weights share one scale per this many consecutive weights of a channel


def _bits_for(tensor: torch.Tensor, large: int) -> int | None:
    """4 or 8 bits for a weight tensor; None keeps it as a plain tensor (float16 if floating)."""
    if not tensor.is_floating_point() or tensor.dim() < 2:
        return None
    pointwise = tensor.dim() == 4 and tensor.shape[2:] == (1, 1)  # a 1x1 convolution
    return 4 if pointwise and tensor.numel() >= large else 8


def _grouped(rows: torch.Tensor, group: int) -> torch.Tensor:
    """(channels, n) -> (channels * ceil(n / group), group), zero-padded at each row's end."""
    pad = -rows.shape[1] % group
    return F.pad(rows, (0, pad)).reshape(-1, group)


def _quantize(
    rows: torch.Tensor, bits: int, half_scales: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of each row: (codes int8 of rows' shape, one scale per row)."""
    qmax = 2 ** (bits - 1) - 1
    largest = rows.abs().amax(dim=1)
    scale = torch.where(largest > 0, largest / qmax, 1.0)  # an all-zero row stays zero
    if half_scales:
        scale = scale.half().float()  # the scale as stored, so that codes match it
    # w * (1 / scale), as torch's quantizers compute it (w / scale rounds differently at ties).
    codes = torch.round(rows * (1.0 / scale)[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return codes, scale


def _pack4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes in [-7, 7] per byte (offset by 8, so each nibble is 1..15)."""
    flat = (codes.flatten().to(torch.int16) + 8).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def _unpack4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[:numel]
    return nibbles.to(torch.int16) - 8


def compress_state_dict(state_dict: dict, large: int = LARGE) -> dict:
    """A compact, weights_only-loadable dict; `decompress_state_dict` gives the weights back.

    The tensors of each kind are concatenated into one buffer (a checkpoint file pays a few
    hundred bytes per stored tensor, which adds up over a model's ~300 tensors).
    """
    if isinstance(large, bool) or not isinstance(large, int) or large < 1:
        raise ValueError(f"large must be an integer >= 1, got {large!r}")
    entries, others = [], {}
    buffers = {"int4": [], "int8": [], "group_scales": [], "scales": [], "halves": []}
    for key, value in state_dict.items():
        bits = _bits_for(value, large)
        if bits is None and value.is_floating_point():
            entries.append([key, "half", list(value.shape)])
            buffers["halves"].append(value.detach().flatten().half())
        elif bits is None:
            entries.append([key, "other", list(value.shape)])
            others[key] = value.detach().clone()
        else:
            rows = value.detach().float().reshape(value.shape[0], -1)
            entries.append([key, f"int{bits}", list(value.shape)])
            if bits == 4:
                codes, scale = _quantize(_grouped(rows, GROUP), 4, half_scales=True)
                codes = codes.reshape(rows.shape[0], -1)[:, : rows.shape[1]]  # drop the padding
                buffers["int4"].append(_pack4(codes))
                buffers["group_scales"].append(scale.half())
            else:
                codes, scale = _quantize(rows, 8, half_scales=False)
                buffers["int8"].append(codes.flatten())
                buffers["scales"].append(scale)
    dtypes = {
        "int4": torch.uint8,
        "int8": torch.int8,
        "group_scales": torch.float16,
        "scales": torch.float32,
        "halves": torch.float16,
    }
    joined = {
        name: torch.cat(parts) if parts else torch.empty(0, dtype=dtypes[name])
        for name, parts in buffers.items()
    }
    return {"format": FORMAT, "group": GROUP, "entries": entries, **joined, "others": others}


def decompress_state_dict(compressed: dict) -> dict:
    """float32 weights (and the untouched integer buffers) from `compress_state_dict`'s dict."""
    if not isinstance(compressed, dict) or compressed.get("format") != FORMAT:
        found = compressed.get("format") if isinstance(compressed, dict) else type(compressed)
        hint = (
            " (pass checkpoint['model_compressed'], not the whole checkpoint)"
            if isinstance(compressed, dict) and "model_compressed" in compressed
            else ""
        )
        raise ValueError(
            f"not a compressed state_dict of format {FORMAT!r} (found {found!r}){hint}"
        )
    group = compressed["group"]
    offsets = {"int4": 0, "int8": 0, "group_scales": 0, "scales": 0, "halves": 0}

    def take(buffer, count):
        start = offsets[buffer]
        offsets[buffer] += count
        if offsets[buffer] > compressed[buffer].numel():
            raise ValueError(
                f"compressed state_dict is truncated: its {buffer!r} buffer holds "
                f"{compressed[buffer].numel()} values, the entries need more"
            )
        return compressed[buffer][start : start + count]

    state_dict = {}
    for key, kind, shape in compressed["entries"]:
        numel = math.prod(shape)
        if kind == "other":
            state_dict[key] = compressed["others"][key]
        elif kind == "half":
            state_dict[key] = take("halves", numel).float().reshape(shape)
        elif kind == "int4":
            channels, n = shape[0], numel // shape[0]
            groups = -(-n // group)
            codes = _unpack4(take("int4", (numel + 1) // 2), numel).reshape(channels, n)
            scales = take("group_scales", channels * groups).float()
            rows = _grouped(codes.float(), group) * scales[:, None]
            state_dict[key] = rows.reshape(channels, -1)[:, :n].reshape(shape)
        elif kind == "int8":
            rows = take("int8", numel).float().reshape(shape[0], -1)
            state_dict[key] = (rows * take("scales", shape[0])[:, None]).reshape(shape)
        else:
            raise ValueError(
                f"entry {key!r} has unknown kind {kind!r}; valid: 'int4', 'int8', 'half', 'other'"
            )
    leftover = {
        name: compressed[name].numel() - used
        for name, used in offsets.items()
        if compressed[name].numel() != used
    }
    if leftover:
        raise ValueError(f"compressed state_dict has values no entry uses: {leftover}")
    return state_dict


def compressed_bytes(compressed: dict) -> int:
    """Bytes of tensor data in a compressed dict (about what it adds to a checkpoint file)."""
    tensors = [compressed[name] for name in ("int4", "int8", "group_scales", "scales", "halves")]
    tensors += list(compressed["others"].values())
    return sum(t.numel() * t.element_size() for t in tensors)
