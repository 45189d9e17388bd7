"""Small checkpoints: weight-only quantization of a trained model's state_dict.

A float32 weight takes 4 bytes. Most of an EfficientNet's weights sit in a few large pointwise
(1x1) convolutions of the last stages and the head, and those tolerate few bits. So
`compress_state_dict` stores

- the weights of large pointwise convolutions (1x1, at least 16,384 weights) in 4 bits, two to
  a byte;
- every other weight tensor (the stem, the depthwise k x k filters, squeeze-excitation and small
  1x1 convolutions, the classifier, which is the most sensitive) in 8 bits;
- one-dimensional tensors (BatchNorm, biases) in float16, integer buffers unchanged.

Quantization is symmetric and per output channel: w ~ scale * q with q in [-7, 7] (4 bits) or
[-127, 127] (8 bits) and scale = the channel's largest |w| / 7 or / 127. This is the kind of
model EfficientNet-Lite was designed for (integer weights).

On the scale study's models this is about a fifth of the float32 size, and the accuracy of the
round-tripped model moves by about one point on 1,000 validation images (as much as a different
validation set would move it), so the study measures its shipped models after the round trip.
The result holds only tensors, lists and strings, so `torch.load(weights_only=True)` reads it;
`decompress_state_dict` returns a float32 state_dict for `load_state_dict`.
"""

from __future__ import annotations

import math

import torch

FORMAT = "effnet-edu-quantized-1"
LARGE = 16384  # 1x1 convolutions with at least this many weights get 4 bits


def _bits_for(tensor: torch.Tensor, large: int) -> int | None:
    """4 or 8 bits for a weight tensor; None keeps it as a plain tensor (float16 if floating)."""
    if not tensor.is_floating_point() or tensor.dim() < 2:
        return None
    pointwise = tensor.dim() == 4 and tensor.shape[2:] == (1, 1)  # a 1x1 convolution
    return 4 if pointwise and tensor.numel() >= large else 8


def _quantize(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric quantization: (codes int8 of the weight's shape, scales)."""
    qmax = 2 ** (bits - 1) - 1
    rows = weight.detach().float().reshape(weight.shape[0], -1)
    scale = rows.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / qmax
    codes = torch.round(rows / scale[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return codes.reshape(weight.shape), scale


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
    entries, buffers, others = [], {4: [], 8: [], "scale": [], "half": []}, {}
    for key, value in state_dict.items():
        bits = _bits_for(value, large)
        if bits is None and value.is_floating_point():
            entries.append([key, "half", list(value.shape)])
            buffers["half"].append(value.detach().flatten().half())
        elif bits is None:
            entries.append([key, "other", list(value.shape)])
            others[key] = value.detach().clone()
        else:
            codes, scale = _quantize(value, bits)
            entries.append([key, f"int{bits}", list(value.shape)])
            buffers[bits].append(_pack4(codes) if bits == 4 else codes.flatten())
            buffers["scale"].append(scale)
    empty = {4: torch.uint8, 8: torch.int8, "scale": torch.float32, "half": torch.float16}
    joined = {name: torch.cat(parts) if parts else torch.empty(0, dtype=empty[name])
              for name, parts in buffers.items()}
    return {"format": FORMAT, "entries": entries, "int4": joined[4], "int8": joined[8],
            "scales": joined["scale"], "halves": joined["half"], "others": others}


def decompress_state_dict(compressed: dict) -> dict:
    """float32 weights (and the untouched integer buffers) from `compress_state_dict`'s dict."""
    if not isinstance(compressed, dict) or compressed.get("format") != FORMAT:
        found = compressed.get("format") if isinstance(compressed, dict) else type(compressed)
        raise ValueError(f"not a compressed state_dict of format {FORMAT!r} (found {found!r})")
    offsets = {"int4": 0, "int8": 0, "scales": 0, "halves": 0}

    def take(buffer, count):
        start = offsets[buffer]
        offsets[buffer] += count
        return compressed[buffer][start:start + count]

    state_dict = {}
    for key, kind, shape in compressed["entries"]:
        numel = math.prod(shape)
        if kind == "other":
            state_dict[key] = compressed["others"][key]
        elif kind == "half":
            state_dict[key] = take("halves", numel).float().reshape(shape)
        else:
            codes = (_unpack4(take("int4", (numel + 1) // 2), numel) if kind == "int4"
                     else take("int8", numel))
            rows = codes.float().reshape(shape[0], -1) * take("scales", shape[0])[:, None]
            state_dict[key] = rows.reshape(shape)
    return state_dict


def compressed_bytes(compressed: dict) -> int:
    """Bytes of tensor data in a compressed dict (about what it adds to a checkpoint file)."""
    tensors = [compressed[name] for name in ("int4", "int8", "scales", "halves")]
    tensors += list(compressed["others"].values())
    return sum(t.numel() * t.element_size() for t in tensors)
