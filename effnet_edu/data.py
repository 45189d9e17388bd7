"""Data: a synthetic dataset that needs depth, width *and* resolution; real ones behind one call.

`SyntheticObjects` renders its images on the fly, with no download, and is built so that each of
the paper's three scaling dimensions (Section 3.2) has something to do:

- **resolution** -- four *textures* (plain, stripes, grid, hex) with a period of 4.8-6 pixels at
  64 px. At 32 px a period is only 2.4-3 pixels: the pattern is still there but faint (the pixel
  blur keeps about half its contrast) and a grid is hard to tell from a hex; at 48 px and above it
  is clear. Below about 26 px it is finer than two pixels (beyond the Nyquist limit), so the
  renderer removes it, as a camera's anti-aliasing filter would (`texture_visibility`).
- **depth** -- three *arrangements* of the same three discs (a line, an L, a triangle) spread over
  most of the image. Every disc looks the same up close; only a large receptive field sees how
  they are placed.
- **width** -- 3 arrangements x 2 colour families x 4 textures = 24 classes to hold apart.

The *target* is the group of three identical discs, always the largest things in the picture;
smaller distractor shapes (with the same textures and any colour), random lines and blotchy
low-frequency colour noise surround it. Position, size, rotation, texture phase and colour are
random per sample; each sample also carries the mask of the target's pixels.

`get_dataset` puts CIFAR-10, Imagenette and any folder of images behind the same call.

Used by: notebooks 01, 03, 04 and 05 (05 compares GradCAM with the target mask),
`effnet_edu.study` and the `effnet-edu train` / `scale-study` commands.
"""

from __future__ import annotations

import functools
import math
import os
import urllib.error
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

# ----------------------------------------------------------------------------- class design

ARRANGEMENTS = ("line", "L", "triangle")  # where the three discs sit: needs receptive field
COLOURS = ("warm", "cool")  # hue family of the discs: easy, one pixel is enough
TEXTURES = ("plain", "stripes", "grid", "hex")  # fine pattern on the discs: needs resolution
SPLITS = ("train", "val", "test")
DEFAULT_NUM_SAMPLES = {"train": 10_000, "val": 2_000, "test": 2_000}
MIN_SYNTHETIC_RESOLUTION = 16

# Each texture is a sum of cosine gratings of one spatial frequency; they differ only in how many
# gratings there are and at which angles. Dividing by sqrt(count) gives every texture the same
# energy, so "how much fine detail" cannot tell stripes, grid and hex apart -- only its shape can.
_GRATING_ANGLES = torch.tensor(
    [
        [0.0, 0.0, 0.0],  # plain: no grating
        [0.0, 0.0, 0.0],  # stripes: one
        [0.0, math.pi / 2, 0.0],  # grid: two at right angles
        [0.0, math.pi / 3, 2 * math.pi / 3],
    ]
)  # hex: three at 60 degrees
_GRATING_WEIGHTS = torch.tensor(
    [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
)
_GRATING_WEIGHTS /= _GRATING_WEIGHTS.sum(dim=1, keepdim=True).clamp(min=1).sqrt()
TEXTURE_PERIOD_PIXELS_AT_64 = (4.8, 6.0)  # period range, in pixels of a 64 px image
TEXTURE_AMPLITUDE = 0.25  # +-brightness of a texture before the pixel blur
PIXEL_BLUR_SIGMA = 0.5  # std of the Gaussian "lens", in pixels of the rendered image

HUE_CENTRES = {"warm": 0.03, "cool": 0.60}  # red-orange and blue, hue in [0, 1)
HUE_JITTER = 0.05
PART_RADIUS = 0.21  # disc radius, in units where the image spans [-1, 1]
PART_SPACING = 0.58  # distance between neighbouring discs (same units)
SCALE_JITTER = (0.85, 1.1)  # both of the above are multiplied by one random factor
DISTRACTOR_RADIUS = (0.09, 0.16)  # always smaller than the smallest disc (0.21 * 0.85 = 0.18)
DISTRACTOR_SHAPES = ("disc", "ring", "triangle", "square")
NUM_DISTRACTORS = 4  # slots; each is filled with probability 0.75
NUM_LINES = 4  # slots; each is filled with probability 0.75
_CHUNK = 240  # samples drawn per random generator: 10 of each class, see `_chunk_generator`
_RENDER_PIXELS = 60 * 64 * 64  # pixels rendered at once (60 images of 64 x 64)


def synthetic_classes() -> list[tuple[str, str, str]]:
    """The 24 classes as (arrangement, colour, texture), in label order.

    Neighbouring labels differ only in texture: labels 4k..4k+3 are one arrangement and colour
    with the four textures, so a confusion matrix shows resolution trouble as 4x4 blocks.
    """
    return [(a, c, t) for a in ARRANGEMENTS for c in COLOURS for t in TEXTURES]


def synthetic_class_groups() -> dict[str, list[list[int]]]:
    """Sets of classes that differ in one factor only, e.g. `groups["texture"][0] == [0, 1, 2, 3]`.

    "texture" sets can only be told apart with enough resolution, "arrangement" sets with a large
    enough receptive field (depth), "colour" sets with a single pixel.
    """
    factors = synthetic_classes()
    groups: dict[str, list[list[int]]] = {}
    for position, factor in enumerate(("arrangement", "colour", "texture")):
        siblings: dict[tuple, list[int]] = {}
        for label, values in enumerate(factors):
            rest = values[:position] + values[position + 1 :]
            siblings.setdefault(rest, []).append(label)
        groups[factor] = list(siblings.values())
    return groups


# ----------------------------------------------------------------------------- small pure functions


def grating_contrast(period_pixels: torch.Tensor) -> torch.Tensor:
    """How much of a cosine grating survives rendering: 0 beyond Nyquist, a soft blur below.

    A grating with a period under 2 pixels cannot be sampled (it would alias into a false, coarser
    pattern), so it is dropped; the rest is multiplied by the frequency response of a Gaussian
    blur of `PIXEL_BLUR_SIGMA` pixels, exp(-2 pi^2 sigma^2 / period^2).
    """
    response = torch.exp(-2 * math.pi**2 * PIXEL_BLUR_SIGMA**2 / period_pixels**2)
    return torch.where(period_pixels > 2.0, response, torch.zeros_like(response))


def texture_visibility(resolution: int) -> str:
    """ "visible", "partly gone" or "gone": do the textures keep 2 pixels per period at R px?"""
    shortest, longest = (p * resolution / 64 for p in TEXTURE_PERIOD_PIXELS_AT_64)
    return "gone" if longest <= 2 else "partly gone" if shortest <= 2 else "visible"


def edge_coverage(signed_distance: torch.Tensor, pixel: float) -> torch.Tensor:
    """Fraction of a pixel inside a shape, from the signed distance (< 0 inside) to its edge."""
    return (0.5 - signed_distance / pixel).clamp(0.0, 1.0)


def band_coverage(distance: torch.Tensor, width: torch.Tensor, pixel: float) -> torch.Tensor:
    """Fraction of a pixel covered by a band (a line) of `width` at `distance` from its centre.

    The overlap of the pixel [d - p/2, d + p/2] with the band [-w/2, w/2], divided by p (as if
    the band ran along a side of the pixel): bands thinner than a pixel come out faint, not
    jagged or missing.
    """
    overlap = ((width + pixel) / 2 - distance.abs()).clamp(min=0.0)
    return torch.minimum(overlap, width.clamp(max=pixel)) / pixel


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(...,) hue, saturation, value in [0, 1] -> (..., 3) RGB in [0, 1]."""
    n = torch.tensor([5.0, 3.0, 1.0])
    k = (n + hue[..., None] * 6) % 6  # (..., 3)
    ramp = torch.minimum(k, 4 - k).clamp(0.0, 1.0)
    return value[..., None] * (1 - saturation[..., None] * ramp)


def texture(
    x: torch.Tensor,
    y: torch.Tensor,
    kind: torch.Tensor,
    period: torch.Tensor,
    angle: torch.Tensor,
    phase: torch.Tensor,
    pixel: float,
) -> torch.Tensor:
    """Zero-mean texture value at points (x, y), already blurred for pixels of size `pixel`.

    x: (B, 1, W) or (B, H, W), y: (B, H, 1) or (B, H, W) coordinates; kind: (B,) index into
    `TEXTURES`; period, angle: (B,) in scene units and radians; phase: (B, 3), one per grating.
    Returns (B, H, W).
    """
    angles = angle[:, None] + _GRATING_ANGLES[kind]  # (B, 3)
    weights = _GRATING_WEIGHTS[kind] * grating_contrast(period / pixel)[:, None]  # (B, 3)
    wavenumber = (2 * math.pi / period)[:, None]  # (B, 1)
    kx, ky = wavenumber * angles.cos(), wavenumber * angles.sin()  # (B, 3) each
    kx, ky, phase, weights = (t[:, :, None, None] for t in (kx, ky, phase, weights))  # (B,3,1,1)
    value = 0.0
    for i in range(3):  # one grating at a time: (B, H, W) tensors stay small
        wave = torch.cos((kx[:, i] * x + phase[:, i]) + ky[:, i] * y)  # (B, H, W)
        value = value + weights[:, i] * wave
    return value


# ----------------------------------------------------------------------------- random scenes


def _chunk_generator(seed: int, split: str, chunk: int) -> torch.Generator:
    """A generator for samples [chunk * 240, (chunk + 1) * 240) of one (seed, split).

    Seeding per chunk makes a dataset of 1,000 samples the first 1,000 of one of 10,000, and the
    same scene come out at every resolution; NumPy's SeedSequence mixes the three numbers so that
    nearby seeds and the three splits give unrelated streams.
    """
    state = np.random.SeedSequence([seed, SPLITS.index(split), chunk]).generate_state(1)
    return torch.Generator().manual_seed(int(state[0]))


def _draw_scenes(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random number of `_CHUNK` scenes, in units where the image spans [-1, 1]."""
    n, g = _CHUNK, generator

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(n, *shape, generator=g)

    num_classes = len(ARRANGEMENTS) * len(COLOURS) * len(TEXTURES)
    label = torch.randperm(n, generator=g) % num_classes  # balanced: 10 of each class per chunk
    arrangement = label // (len(COLOURS) * len(TEXTURES))
    colour = label // len(TEXTURES) % len(COLOURS)
    texture_index = label % len(TEXTURES)

    # The three discs: a fixed layout per arrangement, then scaled, rotated and moved.
    scale = uniform(*SCALE_JITTER)
    radius = PART_RADIUS * scale  # (n,)
    layouts = torch.tensor(
        [
            [[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]],  # line
            [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]],  # L (right angle)
            [[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]],
        ]
    )  # triangle
    parts = layouts[arrangement] * (PART_SPACING * scale)[:, None, None]  # (n, 3, 2)
    parts = parts + 0.02 * torch.randn(n, 3, 2, generator=g)  # hand-placed, not ruled
    parts = parts - parts.mean(dim=1, keepdim=True)
    rotation = uniform(0, 2 * math.pi)
    cos, sin = rotation.cos()[:, None], rotation.sin()[:, None]
    parts = torch.stack(
        [cos * parts[..., 0] - sin * parts[..., 1], sin * parts[..., 0] + cos * parts[..., 1]],
        dim=-1,
    )
    limit = (0.97 - radius)[:, None]  # every disc stays whole inside the image
    low, high = -limit - parts.amin(dim=1), limit - parts.amax(dim=1)  # (n, 2) allowed shifts
    parts = parts + (low + (high - low) * torch.rand(n, 2, generator=g))[:, None, :]

    hue = (
        torch.tensor([HUE_CENTRES[c] for c in COLOURS])[colour] + uniform(-HUE_JITTER, HUE_JITTER)
    ) % 1.0
    target_rgb = hsv_to_rgb(hue, uniform(0.55, 0.9), uniform(0.45, 0.7))  # (n, 3)
    period_64 = uniform(*TEXTURE_PERIOD_PIXELS_AT_64)
    scene = {
        "label": label,
        "parts": parts,
        "radius": radius,
        "target_rgb": target_rgb,
        "texture": texture_index,
        "period": period_64 * 2 / 64,
        "angle": uniform(0, math.pi),
        "phase": uniform(0, 2 * math.pi, 3),
        # background: a low-saturation colour plus two octaves of smooth colour noise
        "background_rgb": hsv_to_rgb(uniform(0, 1), uniform(0.1, 0.4), uniform(0.35, 0.75)),
        "noise_coarse": uniform(-0.5, 0.5, 3, 4, 4),
        "noise_fine": uniform(-0.5, 0.5, 3, 8, 8),
        # lines: x cos(angle) + y sin(angle) = offset
        "line_on": torch.rand(n, NUM_LINES, generator=g) < 0.75,
        "line_angle": uniform(0, math.pi, NUM_LINES),
        "line_offset": uniform(-0.9, 0.9, NUM_LINES),
        "line_width": uniform(0.012, 0.035, NUM_LINES),
        "line_rgb": uniform(0, 1, NUM_LINES, 3),
    }
    # Distractors: smaller shapes with the same textures in any colour. Each takes the first of
    # 8 candidate positions that keeps it off the three discs.
    k = NUM_DISTRACTORS
    d_radius = uniform(*DISTRACTOR_RADIUS, k)  # (n, k)
    candidates = uniform(-0.9, 0.9, k, 8, 2)  # (n, k, 8, 2)
    gap = (candidates[:, :, :, None, :] - parts[:, None, None, :, :]).norm(dim=-1)  # (n,k,8,3)
    free = (gap > (radius[:, None, None, None] + d_radius[:, :, None, None] + 0.03)).all(-1)
    first_free = free.float().argmax(dim=-1)  # (n, k); 0 when none is free (rare): overlap then
    scene.update(
        {
            "distractor_on": torch.rand(n, k, generator=g) < 0.75,
            "distractor_centre": candidates[torch.arange(n)[:, None], torch.arange(k), first_free],
            "distractor_radius": d_radius,
            "distractor_shape": torch.randint(len(DISTRACTOR_SHAPES), (n, k), generator=g),
            "distractor_rotation": uniform(0, 2 * math.pi, k),
            "distractor_rgb": hsv_to_rgb(
                uniform(0, 1, k), uniform(0.3, 0.9, k), uniform(0.35, 0.9, k)
            ),
            "distractor_texture": torch.randint(len(TEXTURES), (n, k), generator=g),
            "distractor_period": uniform(*TEXTURE_PERIOD_PIXELS_AT_64, k) * 2 / 64,
            "distractor_angle": uniform(0, math.pi, k),
            "distractor_phase": uniform(0, 2 * math.pi, k, 3),
        }
    )
    return scene


# ----------------------------------------------------------------------------- rendering


def _pixel_centres(resolution: int) -> torch.Tensor:
    """(R,) centres of the pixels of an R-pixel axis, in units where the image spans [-1, 1]."""
    return (torch.arange(resolution) + 0.5) * (2 / resolution) - 1


def _bilinear_matrix(size: int, resolution: int) -> torch.Tensor:
    """(R, size) matrix M such that M @ grid @ M.T is `F.interpolate(grid, mode="bilinear")`."""
    identity = torch.eye(size)[:, None, :]  # (size, 1, size): one row per grid point
    return F.interpolate(identity, size=resolution, mode="linear")[:, 0, :].T


def _shape_signed_distance(dx, dy, shape, radius, rotation):
    """Signed distance (< 0 inside) to `DISTRACTOR_SHAPES[shape]` centred at the origin.

    dx: (N, 1, C) and dy: (N, C, 1) offsets from the centre; shape, radius, rotation: (N,).
    Returns (N, C, C). Polygons are exact inside and close enough outside for anti-aliasing.
    """
    shape, radius = shape[:, None, None], radius[:, None, None]  # (N, 1, 1)
    rho = torch.sqrt(dx**2 + dy**2)  # (N, C, C)
    theta = torch.atan2(dy, dx) - rotation[:, None, None]
    sides = torch.where(shape == DISTRACTOR_SHAPES.index("triangle"), 3.0, 4.0)
    sector = 2 * math.pi / sides  # fold the angle into one side's sector, centred on its normal
    polygon = rho * torch.cos(torch.remainder(theta, sector) - sector / 2) - radius * torch.cos(
        math.pi / sides
    )  # `radius` reaches the corners
    disc = rho - 0.85 * radius  # a bit smaller than its `radius`: about as big as the others
    ring = (rho - 0.75 * radius).abs() - 0.25 * radius
    return torch.where(shape == 0, disc, torch.where(shape == 1, ring, polygon))


def _render(scene: dict[str, torch.Tensor], resolution: int, distractors: bool):
    """Scenes -> images (B, 3, R, R) float in [0, 1], target masks (B, 1, R, R) bool.

    Every pixel is (close to) the average of the scene over the pixel's area: edges get their
    covered fraction, textures are blurred by `grating_contrast`. So the same scene looks sharp
    at 128 px and soft at 32 px, without aliasing -- nothing is drawn big and then shrunk.
    """
    b, r = scene["label"].shape[0], resolution
    pixel = 2 / r  # pixel size in scene units
    centres = _pixel_centres(r)
    x, y = centres[None, None, :], centres[None, :, None]  # (1, 1, R), (1, R, 1): broadcast

    def blend(canvas, alpha, colour):  # (B, 3, H, W), (B, H, W), (B, 3, H or 1, W or 1)
        return torch.lerp(canvas, colour.expand_as(canvas), alpha[:, None])

    # 1. background: colour + smooth noise, bilinear upsampling of 4x4 and 8x8 grids of random
    #    colours (the same smooth function at every resolution)
    canvas = scene["background_rgb"][:, :, None, None].expand(b, 3, r, r)
    for grid, strength in ((scene["noise_coarse"], 0.45), (scene["noise_fine"], 0.2)):
        upsample = _bilinear_matrix(grid.shape[-1], r)  # (R, G)
        canvas = canvas + strength * (upsample @ grid @ upsample.T)  # (B, 3, R, R)

    if distractors:
        # 2. random straight lines across the image
        for i in range(NUM_LINES):
            angle = scene["line_angle"][:, i, None, None]  # (B, 1, 1)
            distance = (x * angle.cos() - scene["line_offset"][:, i, None, None]) + y * angle.sin()
            width = (scene["line_width"][:, i] * scene["line_on"][:, i])[:, None, None]
            canvas = blend(
                canvas,
                band_coverage(distance, width, pixel),
                scene["line_rgb"][:, i, :, None, None],
            )

        # 3. distractors, each drawn in a small C x C window around it (they are small), pasted
        #    into a canvas padded by C so that windows may hang over the border. The K windows of
        #    every image are computed as one batch of B * K.
        k, c = NUM_DISTRACTORS, math.ceil(2 * DISTRACTOR_RADIUS[1] / pixel) + 3
        centre = scene["distractor_centre"].flatten(0, 1)  # (B * K, 2)
        origin = torch.floor((centre - DISTRACTOR_RADIUS[1] + 1) / pixel).long() - 1  # pixels
        cols = origin[:, 0, None] + torch.arange(c)  # (B * K, C) image columns of the window
        rows = origin[:, 1, None] + torch.arange(c)
        wx = ((cols + 0.5) * pixel - 1)[:, None, :]  # (B * K, 1, C) scene coordinates
        wy = ((rows + 0.5) * pixel - 1)[:, :, None]  # (B * K, C, 1)
        flat = {
            key: scene[f"distractor_{key}"].flatten(0, 1)
            for key in (
                "shape",
                "radius",
                "rotation",
                "texture",
                "period",
                "angle",
                "phase",
                "rgb",
                "on",
            )
        }
        signed = _shape_signed_distance(
            wx - centre[:, 0, None, None],
            wy - centre[:, 1, None, None],
            flat["shape"],
            flat["radius"],
            flat["rotation"],
        )
        alpha = edge_coverage(signed, pixel) * flat["on"][:, None, None]  # (B * K, C, C)
        shade = texture(
            wx, wy, flat["texture"], flat["period"], flat["angle"], flat["phase"], pixel
        )  # (B * K, C, C)
        colour = (flat["rgb"][:, :, None, None] + TEXTURE_AMPLITUDE * shade[:, None]).clamp(0, 1)
        windows = [t.unflatten(0, (b, k)) for t in (alpha, colour, rows + c, cols + c)]
        padded = F.pad(canvas, (c, c, c, c))  # (B, 3, R + 2C, R + 2C)
        for i in range(k):  # one after the other: later distractors cover earlier ones
            alpha, colour, rows, cols = (t[:, i] for t in windows)
            index = (
                torch.arange(b)[:, None, None, None],
                torch.arange(3)[None, :, None, None],
                rows[:, None, :, None],
                cols[:, None, None, :],
            )
            padded[index] = blend(padded[index], alpha, colour)  # (B, 3, C, C)
        canvas = padded[:, :, c : c + r, c : c + r]

    # 4. the target: three discs on top of everything
    parts = scene["parts"][:, :, :, None, None]  # (B, 3 discs, 2, 1, 1)
    squared = [(x - parts[:, i, 0]) ** 2 + (y - parts[:, i, 1]) ** 2 for i in range(3)]
    nearest = functools.reduce(torch.minimum, squared).sqrt()  # (B, R, R) to the nearest centre
    signed = nearest - scene["radius"][:, None, None]
    shade = texture(x, y, scene["texture"], scene["period"], scene["angle"], scene["phase"], pixel)
    colour = scene["target_rgb"][:, :, None, None] + TEXTURE_AMPLITUDE * shade[:, None]
    canvas = blend(canvas, edge_coverage(signed, pixel), colour.clamp(0, 1))

    images = canvas.clamp(0, 1)  # (B, 3, R, R)
    masks = (signed <= 0)[:, None]  # (B, 1, R, R): pixel centre inside a disc
    return images, masks


# ----------------------------------------------------------------------------- the dataset


def _check_int(value, name: str, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"{name} must be an integer >= {minimum}{hint}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{hint}, got {value!r}")
    return int(value)


def _check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    return split


class SyntheticObjects(Dataset):
    """Three discs in a line, an L or a triangle, on a cluttered background: 24 classes.

    Each item is ``(image, label, mask)``: image (3, R, R) float32 in [0, 1] (then `transform`),
    label an int in [0, 24), mask (1, R, R) float32, 1 on the target's pixels. The whole split is
    rendered when the dataset is built and kept as `images` (N, 3, R, R) uint8, `labels` (N,)
    int64 and `masks` (N, 1, R, R) bool; where the discs are, in pixels: `centres` (N, 3, 2) as
    (x, y), `radii` (N,) and `boxes` (N, 4) as (x0, y0, x1, y1) around all three.

    `classes` names the labels ("line-warm-stripes", ...), `class_factors` gives each as a tuple
    (arrangement, colour, texture), and `class_groups` lists the classes that differ in one factor
    only: `class_groups["texture"]` needs resolution, `["arrangement"]` depth (see
    `synthetic_class_groups`).

    The same `seed` gives bit-identical data (on one machine and PyTorch version); the three
    splits use unrelated random streams; the first n samples do not depend on `num_samples` or
    on `resolution` (the *scenes* are the same, only the pixels differ). `distractors=False`
    leaves out the distractor shapes and the lines: the three discs on a smooth background.
    """

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        resolution: int = 64,
        seed: int = 0,
        transform: Callable | None = None,
        distractors: bool = True,
    ):
        self.split = _check_split(split)
        if num_samples is None:
            num_samples = DEFAULT_NUM_SAMPLES[split]
        self.num_samples = _check_int(num_samples, "num_samples", 1)
        self.resolution = _check_int(
            resolution,
            "resolution",
            MIN_SYNTHETIC_RESOLUTION,
            " pixels (below that the discs are a pixel or two wide)",
        )
        self.seed = _check_int(seed, "seed", 0)
        if transform is not None and not callable(transform):
            raise ValueError(
                f"transform must be a callable applied to each (3, R, R) image "
                f"tensor, or None; got {transform!r}"
            )
        self.transform = transform
        self.distractors = bool(distractors)
        self.class_factors = synthetic_classes()
        self.classes = ["-".join(factors) for factors in self.class_factors]
        self.class_groups = synthetic_class_groups()
        self.images, self.labels, self.masks, self.centres, self.radii = self._generate()
        self.boxes = torch.cat(
            [
                (self.centres - self.radii[:, None, None]).amin(dim=1),
                (self.centres + self.radii[:, None, None]).amax(dim=1),
            ],
            dim=1,
        )

    def _generate(self):
        # One thread: on tensors this small, coordinating threads costs more than it saves (and
        # far more when other programs keep the cores busy). The caller's setting is restored.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._render_all()
        finally:
            torch.set_num_threads(threads)

    def _render_all(self):
        images, masks, labels, centres, radii = [], [], [], [], []
        pixel = 2 / self.resolution
        # Render a few dozen images at a time: small tensors stay in the CPU cache (faster).
        batch = max(1, _RENDER_PIXELS // self.resolution**2)
        for chunk in range(math.ceil(self.num_samples / _CHUNK)):
            scene = _draw_scenes(_chunk_generator(self.seed, self.split, chunk))
            keep = min(_CHUNK, self.num_samples - chunk * _CHUNK)
            for start in range(0, keep, batch):
                part = {
                    key: value[start : min(start + batch, keep)] for key, value in scene.items()
                }
                image, mask = _render(part, self.resolution, self.distractors)
                images.append((image * 255).round_().to(torch.uint8))
                masks.append(mask)
                labels.append(part["label"])
                centres.append((part["parts"] + 1) / pixel)  # scene units -> pixels
                radii.append(part["radius"] / pixel)
        return (
            torch.cat(images),
            torch.cat(labels),
            torch.cat(masks),
            torch.cat(centres),
            torch.cat(radii),
        )  # ..., (N, 3, 2), (N,)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        image = self.images[index].float() / 255  # (3, R, R)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), self.masks[index].float()

    def __repr__(self) -> str:
        return (
            f"SyntheticObjects(split={self.split!r}, num_samples={self.num_samples}, "
            f"resolution={self.resolution}, seed={self.seed}, distractors={self.distractors}"
            f"): {len(self.classes)} classes"
        )


# ----------------------------------------------------------------------------- real datasets

DATASET_NAMES = ("synthetic", "cifar10", "imagenette", "folder:PATH")

_NO_DOWNLOAD_HINT = "get_dataset('synthetic', ...) needs no download and works offline."
_DOWNLOADS = {  # name -> (folder torchvision creates under root, archive, size)
    "cifar10": (
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "163 MB",
    ),
    "imagenette": (
        "imagenette2-160",
        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
        "94 MB",
    ),
}


def load_image(path: str):
    """Open an image file as RGB (PIL), or raise an error that names the file.

    `torchvision.datasets.ImageFolder` uses this as its loader: PIL's own errors (e.g.
    "cannot identify image file <_io.BufferedReader ...>") do not always say which file was bad.
    """
    from PIL import Image

    try:
        with open(path, "rb") as file:
            return Image.open(file).convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:  # UnidentifiedImageError is an OSError
        raise RuntimeError(
            f"cannot read image file {path!r} ({type(error).__name__}: {error}); "
            f"it is damaged or not an image: replace or delete it"
        ) from error


def _real_transform(resolution: int, transform: Callable | None, crop: bool):
    from torchvision import transforms

    steps = [transforms.Resize(resolution)]  # shorter side -> resolution
    steps += [transforms.CenterCrop(resolution)] if crop else []
    steps += [transforms.ToTensor()]  # (3, R, R) float in [0, 1], like SyntheticObjects
    steps += [transform] if transform is not None else []
    return transforms.Compose(steps)


def _downloadable(name: str, split: str, root: str, download: bool, transform):
    """CIFAR-10 or Imagenette through torchvision, with errors that say what to do."""
    from torchvision import datasets

    folder, url, size = _DOWNLOADS[name]
    where = os.path.join(os.path.abspath(root), folder)
    try:
        if name == "cifar10":  # CIFAR-10 has no validation set: "val" and "test" are its test set
            return datasets.CIFAR10(
                root, train=split == "train", download=download, transform=transform
            )
        return datasets.Imagenette(
            root,
            split="train" if split == "train" else "val",
            size="160px",
            download=download,
            transform=transform,
        )
    except (OSError, RuntimeError) as error:  # urllib.error.URLError is an OSError
        if not download:
            raise RuntimeError(
                f"{name} was not found in {where} ({error}). Pass download=True to fetch it "
                f"({size}) into root={root!r}, or download {url} yourself and extract it "
                f"there. {_NO_DOWNLOAD_HINT}"
            ) from error
        offline = isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError))
        raise RuntimeError(
            f"downloading {name} from {url} into {where} failed "
            f"({type(error).__name__}: {error}). "
            + ("This machine seems to be offline: " if offline else "")
            + f"download the archive elsewhere and extract it into root={root!r} (so that "
            f"{where} exists), then use download=False. {_NO_DOWNLOAD_HINT}"
        ) from error


def _image_folder(path: str, transform):
    from torchvision import datasets

    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"folder:{path} -- no such directory ({os.path.abspath(path)}). Expected one "
            f"subfolder per class with images inside, e.g. {path}/cat/001.png, {path}/dog/002.jpg"
        )
    try:
        return datasets.ImageFolder(path, transform=transform, loader=load_image)
    except FileNotFoundError as error:  # no class subfolders, or no images in them
        raise FileNotFoundError(
            f"folder:{path} has no usable images: {str(error).rstrip('.')}. Expected one "
            f"subfolder per class with images inside, e.g. {path}/cat/001.png, "
            f"{path}/dog/002.jpg (extensions: {', '.join(datasets.folder.IMG_EXTENSIONS)})"
        ) from error


def get_dataset(
    name: str,
    split: str = "train",
    resolution: int = 64,
    root: str = "data",
    download: bool = False,
    transform: Callable | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """One call for every dataset of the course; images come out as (3, R, R) floats in [0, 1].

    - "synthetic": `SyntheticObjects` (no download), items are (image, label, mask);
    - "cifar10": CIFAR-10 (train, or its test set for "val" and "test"), resized to `resolution`;
    - "imagenette": the 10-class ImageNet subset at 160 px, resized and centre-cropped;
    - "folder:PATH": `torchvision.datasets.ImageFolder`, one subfolder per class.
    Real datasets yield (image, label): training code uses the first two elements of any item.
    `num_samples` keeps a random subset (drawn with `seed`) of a real dataset.
    """
    _check_split(split)
    resolution = _check_int(resolution, "resolution", MIN_SYNTHETIC_RESOLUTION, " pixels")
    if num_samples is not None:
        num_samples = _check_int(num_samples, "num_samples", 1)
    if not isinstance(name, str) or not (name in DATASET_NAMES[:3] or name.startswith("folder:")):
        raise ValueError(
            f"unknown dataset {name!r}; valid: {', '.join(DATASET_NAMES)} "
            f"(e.g. 'folder:data/my_photos')"
        )
    if name == "synthetic":
        return SyntheticObjects(split, num_samples, resolution, seed, transform)

    if name.startswith("folder:"):
        dataset = _image_folder(
            name.removeprefix("folder:"), _real_transform(resolution, transform, crop=True)
        )
    else:
        dataset = _downloadable(
            name,
            split,
            root,
            download,
            _real_transform(resolution, transform, crop=name != "cifar10"),
        )
    if num_samples is None:
        return dataset
    if num_samples > len(dataset):
        raise ValueError(
            f"num_samples={num_samples} but {name} ({split}) has only "
            f"{len(dataset)} images; pass num_samples <= {len(dataset)} or None"
        )
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(dataset), generator=generator)[:num_samples].sort().values
    return Subset(dataset, keep.tolist())


def class_names(dataset: Dataset) -> list[str]:
    """The class names of any dataset `get_dataset` returns (Subsets included), in label order."""
    if isinstance(dataset, Subset):
        return class_names(dataset.dataset)
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise ValueError(
            f"{type(dataset).__name__} has no `classes` attribute to name its "
            f"labels; use a dataset from get_dataset(...)"
        )
    # Imagenette gives tuples of synonyms, e.g. ("tench", "Tinca tinca"): keep the first.
    return [c[0] if isinstance(c, tuple) else str(c) for c in classes]


def _labels_of(dataset: Dataset) -> list[int]:
    if isinstance(dataset, Subset):
        labels = _labels_of(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    if isinstance(dataset, SyntheticObjects):
        return dataset.labels.tolist()
    if hasattr(dataset, "targets"):  # CIFAR10, ImageFolder
        return list(dataset.targets)
    if hasattr(dataset, "_samples"):  # Imagenette
        return [label for _, label in dataset._samples]
    return [dataset[i][1] for i in range(len(dataset))]


# ----------------------------------------------------------------------------- pictures


def _strip(images: list[torch.Tensor], gap: int = 2, fill: float = 1.0) -> torch.Tensor:
    """n (C, H, W) images side by side, `gap` columns of `fill` apart: (C, H, n*(W+gap) - gap)."""
    spacer = torch.full((images[0].shape[0], images[0].shape[1], gap), fill)
    pieces = [piece for image in images for piece in (image, spacer)][:-1]
    return torch.cat(pieces, dim=2)


def plot_class_grid(
    dataset: Dataset,
    per_class: int = 4,
    path: str | Path | None = None,
    show_masks: bool = True,
    columns: int = 4,
    title: str | None = None,
):
    """A panel per class with its first `per_class` examples, labelled with the class name.

    For `SyntheticObjects` a white outline marks the target mask (`show_masks`); its classes are
    in label order, so with `columns=4` each row holds the four textures of one arrangement and
    colour. Returns the matplotlib figure; saves it to `path` if given.
    """
    import matplotlib.pyplot as plt

    per_class = _check_int(per_class, "per_class", 1)
    names, labels = class_names(dataset), _labels_of(dataset)
    chosen = {label: [] for label in range(len(names))}
    for index, label in enumerate(labels):
        if len(chosen[label]) < per_class:
            chosen[label].append(index)
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * per_class * 0.95 + 0.4, rows * 1.2 + 0.8), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for label, indices in chosen.items():
        axis = axes.flat[label]
        axis.set_title(names[label], fontsize=8, pad=2)
        if not indices:
            axis.text(0.5, 0.5, "no example", ha="center", va="center", fontsize=7)
            continue
        items = [dataset[i] for i in indices]
        strip = _strip([item[0].clamp(0, 1) for item in items])  # (3, H, n * (W + 2) - 2)
        axis.imshow(strip.permute(1, 2, 0).numpy(), interpolation="nearest")
        if show_masks and len(items[0]) > 2:  # (image, label, mask) items
            masks = _strip([item[2].float() for item in items], fill=0.0)  # (1, H, ...)
            axis.contour(masks[0].numpy(), levels=[0.5], colors="white", linewidths=0.6)
    if title is None:
        size = tuple(dataset[0][0].shape[-2:])
        title = f"{type(dataset).__name__}: {per_class} examples of each of {len(names)} classes"
        title += f" ({size[0]}x{size[1]} px)"
        if isinstance(dataset, SyntheticObjects):
            title = (
                f"SyntheticObjects at {dataset.resolution} px: 24 classes = 3 arrangements "
                f"of the three largest discs x 2 colours x 4 textures;\nthe four panels of "
                f"a row differ only in texture"
                + (" (white outline: the target mask)" if show_masks else "")
            )
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    return figure


def plot_resolution_grid(
    resolutions: tuple[int, ...] = (24, 48, 96),
    split: str = "val",
    seed: int = 0,
    path: str | Path | None = None,
):
    """The same four scenes (one per texture) rendered at each resolution, with a close-up.

    The scenes do not depend on the resolution, only their pixels do: this is the picture behind
    "resolution scaling" -- at 24 px the textures are partly gone, at 48 px they are there.
    """
    import matplotlib.pyplot as plt

    datasets = [SyntheticObjects(split, _CHUNK, r, seed) for r in resolutions]
    labels = datasets[0].labels
    rows = [int((labels % len(TEXTURES) == t).nonzero()[0]) for t in range(len(TEXTURES))]
    figure, axes = plt.subplots(
        len(rows),
        2 * len(resolutions),
        squeeze=False,
        figsize=(2 * len(resolutions) * 1.6, len(rows) * 1.7),
    )
    for row, index in enumerate(rows):
        for column, dataset in enumerate(datasets):
            image = dataset.images[index].permute(1, 2, 0).numpy()  # (R, R, 3)
            # close-up: a window 16 px wide at 64 px (so 8 at 32, 32 at 128) on the first disc
            half = dataset.resolution / 8
            left, top = (dataset.centres[index, 0] - half).round().int().clamp(min=0).tolist()
            close_up = image[top : top + int(2 * half), left : left + int(2 * half)]
            for axis, picture, kind in (
                (axes[row, column], image, "whole"),
                (axes[row, len(datasets) + column], close_up, "close-up"),
            ):
                axis.imshow(picture, interpolation="nearest")
                axis.set_xticks([]), axis.set_yticks([])
                if row == 0:
                    axis.set_title(f"{dataset.resolution} px, {kind}", fontsize=9)
        axes[row, 0].set_ylabel(datasets[0].classes[int(labels[index])], fontsize=8)
    states = ", ".join(f"{texture_visibility(r)} at {r} px" for r in resolutions)
    figure.suptitle(f"The same scenes at each resolution: the textures are {states}", fontsize=10)
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    return figure
