"""A synthetic dataset, rendered on the fly, that needs each scaling dimension (Section 3.2).

24 classes (width) = 3 *arrangements* x 2 colour families x 4 *textures*. The arrangement (line,
L, triangle) of three identical discs needs depth: only a large receptive field sees the layout.
The textures (plain, stripes, grid, hex; 4.8-6 px per period at 64 px) need resolution: clear
from 48 px, removed below about 26 px, where a period is under two pixels (Nyquist). The discs
sit among smaller distractors, lines and colour noise; their mask comes with each sample."""

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .scaling import check_int

ARRANGEMENTS = ("line", "L", "triangle")  # where the three discs sit: needs receptive field
COLOURS = ("warm", "cool")  # hue family of the discs: easy, one pixel is enough
TEXTURES = ("plain", "stripes", "grid", "hex")  # fine pattern on the discs: needs resolution
SPLITS = ("train", "val", "test")
DEFAULT_NUM_SAMPLES = {"train": 10_000, "val": 2_000, "test": 2_000}
MIN_SYNTHETIC_RESOLUTION = 16
_CLASS_GRID = (len(ARRANGEMENTS), len(COLOURS), len(TEXTURES))  # label = index into this grid

# A texture sums 0-3 cosine gratings of one frequency (plain, stripes, grid at right angles, hex
# at 60 degrees), over sqrt(count): all have the same energy, only the pattern tells them apart.
_GRATING_ANGLES = torch.tensor([[0.0, 0, 0], [0, 0, 0], [0, 90, 0], [0, 60, 120]]).deg2rad()
_GRATING_WEIGHTS = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
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
_CHUNK = 240  # samples drawn per random generator: 10 of each class, see `_draw_scenes`
_RENDER_PIXELS = 60 * 64 * 64  # pixels rendered at once (60 images of 64 x 64)


def synthetic_classes() -> list[tuple[str, str, str]]:
    """The 24 classes as (arrangement, colour, texture), in label order: labels 4k..4k+3 differ
    only in texture, so a confusion matrix shows resolution trouble as 4x4 blocks."""
    return [(a, c, t) for a in ARRANGEMENTS for c in COLOURS for t in TEXTURES]


def synthetic_class_groups() -> dict[str, list[list[int]]]:
    """Sets of classes that differ in one factor only, e.g. `groups["texture"][0] == [0, 1, 2, 3]`:
    "texture" sets need resolution, "arrangement" sets a large receptive field (depth)."""
    grid = torch.arange(math.prod(_CLASS_GRID)).reshape(_CLASS_GRID)  # (3, 2, 4) labels
    factors = ("arrangement", "colour", "texture")  # a set is a line of the grid along one axis
    return {f: grid.movedim(axis, -1).flatten(0, 1).tolist() for axis, f in enumerate(factors)}


def check_split(split) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    return split


def grating_contrast(period_pixels: torch.Tensor) -> torch.Tensor:
    """How much of a cosine grating survives rendering: 0 beyond Nyquist (a period under 2 px would
    alias into a false, coarser pattern), else a Gaussian blur's exp(-2 pi^2 sigma^2 / period^2)."""
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
    """Fraction of a pixel covered by a band (a line) of `width` at `distance` from its centre: the
    overlap of [d - p/2, d + p/2] with [-w/2, w/2], over p: thin lines are faint, not jagged."""
    overlap = ((width + pixel) / 2 - distance.abs()).clamp(min=0.0)
    return torch.minimum(overlap, width.clamp(max=pixel)) / pixel


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(...,) hue, saturation, value in [0, 1] -> (..., 3) RGB in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue[..., None] * 6) % 6  # (..., 3)
    return value[..., None] * (1 - saturation[..., None] * torch.minimum(k, 4 - k).clamp(0.0, 1.0))


def texture(x: torch.Tensor, y: torch.Tensor, shapes: dict, pixel: float) -> torch.Tensor:
    """(B, H, W) zero-mean texture at x: (B, 1, W), y: (B, H, 1), blurred for `pixel`-sized pixels,
    from `shapes`' "texture" (B,) index, "period" (B,) in scene units, "angle", "phase" (B, 3)."""
    kind, period = shapes["texture"], shapes["period"]
    angles = shapes["angle"][:, None] + _GRATING_ANGLES[kind]  # (B, 3)
    weights = _GRATING_WEIGHTS[kind] * grating_contrast(period / pixel)[:, None]  # (B, 3)
    wavenumber = (2 * math.pi / period)[:, None]  # (B, 1)
    kx, ky = wavenumber * angles.cos(), wavenumber * angles.sin()  # (B, 3) each
    kx, ky, phase, w = (t[:, :, None, None] for t in (kx, ky, shapes["phase"], weights))
    return sum(w[:, i] * torch.cos((kx[:, i] * x + phase[:, i]) + ky[:, i] * y) for i in range(3))


def _draw_scenes(seed: int, split: str, chunk: int) -> dict[str, torch.Tensor]:
    """The random numbers of scenes [240 chunk, 240 (chunk + 1)) (the image spans [-1, 1]), from a
    generator per chunk (NumPy's SeedSequence: unrelated streams for nearby seeds and the splits),
    so that 1,000 samples are the first 1,000 of 10,000, at any resolution."""
    state = np.random.SeedSequence([seed, SPLITS.index(split), chunk]).generate_state(1)
    n, g = _CHUNK, torch.Generator().manual_seed(int(state[0]))

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(n, *shape, generator=g)

    def grating(*shape):  # a texture's period (scene units), angle and three phases (radians)
        period = uniform(*TEXTURE_PERIOD_PIXELS_AT_64, *shape) * 2 / 64
        angle = uniform(0, math.pi, *shape)
        return {"period": period, "angle": angle, "phase": uniform(0, 2 * math.pi, *shape, 3)}

    label = torch.randperm(n, generator=g) % math.prod(_CLASS_GRID)  # 10 of each class
    arrangement, colour, texture_index = torch.unravel_index(label, _CLASS_GRID)
    # The three discs: a fixed layout per arrangement (line, L, triangle), scaled, rotated, moved.
    scale = uniform(*SCALE_JITTER)
    radius = PART_RADIUS * scale  # (n,)
    layouts = torch.tensor(
        [[[-1.0, 0], [0, 0], [1, 0]], [[0, 0], [1, 0], [0, 1]], [[0, 0], [1, 0], [0.5, 0.75**0.5]]]
    )
    parts = layouts[arrangement] * (PART_SPACING * scale)[:, None, None]  # (n, 3, 2)
    parts = parts + 0.02 * torch.randn(n, 3, 2, generator=g)  # hand-placed, not ruled
    parts = parts - parts.mean(dim=1, keepdim=True)
    rotation = uniform(0, 2 * math.pi)
    cos, sin, (px, py) = rotation.cos()[:, None], rotation.sin()[:, None], parts.unbind(-1)
    parts = torch.stack([cos * px - sin * py, sin * px + cos * py], dim=-1)
    limit = (0.97 - radius)[:, None]  # every disc stays whole inside the image
    parts = parts + uniform(-limit - parts.amin(dim=1), limit - parts.amax(dim=1), 2)[:, None, :]
    hue = torch.tensor([HUE_CENTRES[c] for c in COLOURS])[colour] + uniform(-HUE_JITTER, HUE_JITTER)
    scene = {
        "label": label,
        "parts": parts,
        "radius": radius,
        "rgb": hsv_to_rgb(hue % 1.0, uniform(0.55, 0.9), uniform(0.45, 0.7)),  # (n, 3)
        "texture": texture_index,
        **grating(),
        "background_rgb": hsv_to_rgb(uniform(0, 1), uniform(0.1, 0.4), uniform(0.35, 0.75)),
        "noise_coarse": uniform(-0.5, 0.5, 3, 4, 4),  # two octaves of smooth colour noise
        "noise_fine": uniform(-0.5, 0.5, 3, 8, 8),
        "line_on": uniform(0, 1, NUM_LINES) < 0.75,
        "line_angle": uniform(0, math.pi, NUM_LINES),  # x cos(angle) + y sin(angle) = offset
        "line_offset": uniform(-0.9, 0.9, NUM_LINES),
        "line_width": uniform(0.012, 0.035, NUM_LINES),
        "line_rgb": uniform(0, 1, NUM_LINES, 3),
    }
    # Distractors: smaller textured shapes of any colour, each at the first of 8 candidate positions
    # that keeps it off the discs (the first one if none does: rare).
    k = NUM_DISTRACTORS
    d_radius = uniform(*DISTRACTOR_RADIUS, k)  # (n, k)
    candidates = uniform(-0.9, 0.9, k, 8, 2)  # (n, k, 8, 2)
    gap = (candidates[:, :, :, None, :] - parts[:, None, None, :, :]).norm(dim=-1)  # (n,k,8,3)
    free = (gap > (radius[:, None, None, None] + d_radius[:, :, None, None] + 0.03)).all(-1)
    distractors = {
        "on": uniform(0, 1, k) < 0.75,
        "centre": candidates[torch.arange(n)[:, None], torch.arange(k), free.float().argmax(-1)],
        "radius": d_radius,
        "shape": torch.randint(len(DISTRACTOR_SHAPES), (n, k), generator=g),
        "rotation": uniform(0, 2 * math.pi, k),
        "rgb": hsv_to_rgb(uniform(0, 1, k), uniform(0.3, 0.9, k), uniform(0.35, 0.9, k)),
        "texture": torch.randint(len(TEXTURES), (n, k), generator=g),
        **grating(k),
    }
    return scene | {f"distractor_{key}": value for key, value in distractors.items()}


def _shape_signed_distance(dx: torch.Tensor, dy: torch.Tensor, shapes: dict) -> torch.Tensor:
    """(N, C, C) signed distance (< 0 inside) at offsets dx: (N, 1, C), dy: (N, C, 1) from the
    centres of `shapes` ("shape" indexes `DISTRACTOR_SHAPES`, "radius" and "rotation" (N,)): exact
    inside, close enough outside for anti-aliasing."""
    shape, radius = shapes["shape"][:, None, None], shapes["radius"][:, None, None]  # (N, 1, 1)
    rho = torch.sqrt(dx**2 + dy**2)  # (N, C, C)
    theta = torch.atan2(dy, dx) - shapes["rotation"][:, None, None]
    sides = torch.where(shape == DISTRACTOR_SHAPES.index("triangle"), 3.0, 4.0)
    sector = 2 * math.pi / sides  # fold the angle into one side's sector, centred on its normal
    corner = radius * torch.cos(math.pi / sides)  # `radius` reaches the corners
    polygon = rho * torch.cos(torch.remainder(theta, sector) - sector / 2) - corner
    disc = rho - 0.85 * radius  # a bit smaller than its `radius`: about as big as the others
    ring = (rho - 0.75 * radius).abs() - 0.25 * radius
    return torch.where(shape == 0, disc, torch.where(shape == 1, ring, polygon))


def _render(scene: dict, resolution: int, distractors: bool, amplitude: float = TEXTURE_AMPLITUDE):
    """Scenes -> images (B, 3, R, R) uint8 and target masks (B, 1, R, R) bool (pixel centres in a
    disc). A pixel is about the scene's average over its area (edges get their covered fraction,
    textures are blurred by `grating_contrast`): sharp at 128 px, soft at 32 px, never aliased."""
    b, r, pixel = scene["label"].shape[0], resolution, 2 / resolution  # pixel size in scene units
    centres = (torch.arange(r) + 0.5) * pixel - 1  # (R,) pixel centres in scene units
    x, y = centres[None, None, :], centres[None, :, None]  # (1, 1, R), (1, R, 1): broadcast

    def blend(canvas, alpha, colour):  # (B, 3, H, W), (B, H, W), (B, 3, H or 1, W or 1)
        return torch.lerp(canvas, colour.clamp(0, 1).expand_as(canvas), alpha[:, None])

    # 1. background: a colour plus smooth noise, 4x4 and 8x8 grids of colours upsampled bilinearly
    canvas = scene["background_rgb"][:, :, None, None].expand(b, 3, r, r)
    for grid, strength in ((scene["noise_coarse"], 0.45), (scene["noise_fine"], 0.2)):
        # (R, G) matrix M such that M @ grid @ M.T is the bilinear upsampling of `grid`
        upsample = F.interpolate(torch.eye(grid.shape[-1])[:, None], size=r, mode="linear")[:, 0].T
        canvas = canvas + strength * (upsample @ grid @ upsample.T)  # (B, 3, R, R)
    if distractors:
        for i in range(NUM_LINES):  # 2. random straight lines across the image
            angle = scene["line_angle"][:, i, None, None]  # (B, 1, 1)
            distance = (x * angle.cos() - scene["line_offset"][:, i, None, None]) + y * angle.sin()
            width = (scene["line_width"][:, i] * scene["line_on"][:, i])[:, None, None]
            coverage = band_coverage(distance, width, pixel)
            canvas = blend(canvas, coverage, scene["line_rgb"][:, i, :, None, None])
        # 3. distractors, each drawn in a small C x C window around it (far less work than the
        #    whole image), all B * K windows in one batch, pasted into a canvas padded by C
        k, c = NUM_DISTRACTORS, math.ceil(2 * DISTRACTOR_RADIUS[1] / pixel) + 3
        d = {key[11:]: v.flatten(0, 1) for key, v in scene.items() if key.startswith("distractor")}
        origin = torch.floor((d["centre"] - DISTRACTOR_RADIUS[1] + 1) / pixel).long() - 1
        cols, rows = (origin[:, i, None] + torch.arange(c) for i in (0, 1))  # (B * K, C) pixels
        wx, wy = ((p + 0.5) * pixel - 1 for p in (cols[:, None, :], rows[:, :, None]))
        centre = d["centre"][:, :, None, None]  # (B * K, 2, 1, 1)
        signed = _shape_signed_distance(wx - centre[:, 0], wy - centre[:, 1], d)
        alpha = edge_coverage(signed, pixel) * d["on"][:, None, None]  # (B * K, C, C)
        colour = d["rgb"][:, :, None, None] + amplitude * texture(wx, wy, d, pixel)[:, None]
        windows = [t.unflatten(0, (b, k)).unbind(1) for t in (alpha, colour, rows + c, cols + c)]
        padded = F.pad(canvas, (c, c, c, c))  # (B, 3, R + 2C, R + 2C)
        batch, channel = torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None]
        for alpha, colour, rows, cols in zip(*windows, strict=True):  # later ones cover earlier
            index = (batch, channel, rows[:, None, :, None], cols[:, None, None, :])
            padded[index] = blend(padded[index], alpha, colour)  # (B, 3, C, C)
        canvas = padded[:, :, c : c + r, c : c + r]
    # 4. the target: three discs on top of everything
    parts = scene["parts"][:, :, :, None, None]  # (B, 3 discs, 2, 1, 1)
    squared = (x - parts[:, :, 0]) ** 2 + (y - parts[:, :, 1]) ** 2  # (B, 3, R, R)
    signed = squared.amin(dim=1).sqrt() - scene["radius"][:, None, None]  # to the nearest disc
    shade = amplitude * texture(x, y, scene, pixel)[:, None]  # (B, 1, R, R)
    canvas = blend(canvas, edge_coverage(signed, pixel), scene["rgb"][:, :, None, None] + shade)
    return (canvas.clamp(0, 1) * 255).round_().byte(), (signed <= 0)[:, None]


class SyntheticObjects(Dataset):
    """Three discs in a line, an L or a triangle, on a cluttered background: 24 classes.

    Items are (image, label, mask): image (3, R, R) float32 in [0, 1] (then `transform`), label in
    [0, 24), mask (1, R, R) float32, 1 on the target. Rendered once and kept: `images` (N, 3, R, R)
    uint8, `labels` (N,), `masks` (N, 1, R, R) bool and, in pixels, the discs' `centres` (N, 3, 2)
    as (x, y), `radii` (N,), `boxes` (N, 4) as (x0, y0, x1, y1); `classes` ("line-warm-stripes",
    ...), `class_factors`, `class_groups`. A `seed` gives the same bits (on one machine and PyTorch
    version) whatever `num_samples` and `resolution`. An easier task (the scale study's first
    run's): `distractors=False` omits shapes and lines, a larger `texture_amplitude` makes
    textures stronger (default 0.25: +-brightness before the pixel blur)."""

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        resolution: int = 64,
        seed: int = 0,
        transform: Callable | None = None,
        distractors: bool = True,
        texture_amplitude: float = TEXTURE_AMPLITUDE,
    ):
        self.split, self.seed = check_split(split), check_int(seed, "seed", 0)
        n = DEFAULT_NUM_SAMPLES[split] if num_samples is None else num_samples
        self.num_samples = n = check_int(n, "num_samples", 1)
        hint = " pixels (below that the discs are a pixel or two wide)"
        self.resolution = r = check_int(resolution, "resolution", MIN_SYNTHETIC_RESOLUTION, hint)
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be a callable or None, got {transform!r}")
        self.transform, self.distractors = transform, bool(distractors)
        if not (type(texture_amplitude) in (int, float) and 0 <= texture_amplitude <= 1):
            raise ValueError(f"texture_amplitude must be in [0, 1], got {texture_amplitude!r}")
        self.texture_amplitude = float(texture_amplitude)
        self.class_factors, self.class_groups = synthetic_classes(), synthetic_class_groups()
        self.classes = ["-".join(factors) for factors in self.class_factors]
        # A few dozen images at a time (they stay in the CPU cache), one thread (more gain nothing)
        batch, threads = max(1, _RENDER_PIXELS // r**2), torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            chunks = [_draw_scenes(seed, split, i) for i in range(-(-n // _CHUNK))]
            scene = {key: torch.cat([chunk[key] for chunk in chunks])[:n] for key in chunks[0]}
            batches = [{k: v[i : i + batch] for k, v in scene.items()} for i in range(0, n, batch)]
            images, masks = zip(
                *(_render(b, r, self.distractors, self.texture_amplitude) for b in batches),
                strict=True,
            )
        finally:
            torch.set_num_threads(threads)
        self.images, self.masks, self.labels = torch.cat(images), torch.cat(masks), scene["label"]
        self.centres = (scene["parts"] + 1) / (2 / r)  # (N, 3, 2): scene units -> pixels
        self.radii = scene["radius"] / (2 / r)  # (N,)
        corners = self.centres - self.radii[:, None, None], self.centres + self.radii[:, None, None]
        self.boxes = torch.cat([corners[0].amin(dim=1), corners[1].amax(dim=1)], dim=1)  # (N, 4)

    def __len__(self) -> int:
        return self.num_samples

    def tensors(self):
        """(images uint8 (N, 3, R, R), labels (N,)) for `fit`'s `TensorLoader`, which cuts whole
        batches from them on the device; None with a `transform` (it needs one image at a time)."""
        return None if self.transform is not None else (self.images, self.labels)

    def __getitem__(self, index: int):
        image = self.images[index].float() / 255  # (3, R, R)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index]), self.masks[index].float()

    def __repr__(self) -> str:
        return f"SyntheticObjects{(self.split, self.num_samples, self.resolution, self.seed)!r}"


class FreshSyntheticObjects(Dataset):
    """Training images that are new every epoch: epoch e is ``SyntheticObjects("train",
    num_samples, resolution, seed=seed * 1000 + e)``. `fit` calls `set_epoch` before each epoch
    (and a resumed run at the epoch it resumes), so no image is seen twice and a model cannot
    overfit; the same seed gives the same stream. Items are (image, label), without masks;
    `options` (distractors, texture_amplitude) go to `SyntheticObjects`."""

    def __init__(self, num_samples: int, resolution: int = 64, seed: int = 0, **options):
        self.num_samples = check_int(num_samples, "num_samples", 1)
        self.resolution, self.seed, self.options = resolution, check_int(seed, "seed", 0), options
        self.epoch, self.data = None, None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            seed = self.seed * 1000 + check_int(epoch, "epoch", 0)
            self.epoch = epoch
            self.data = SyntheticObjects(
                "train", self.num_samples, self.resolution, seed, **self.options
            )

    def __len__(self) -> int:
        return self.num_samples

    def tensors(self):
        return self.data.tensors()  # this epoch's images and labels

    def __getitem__(self, index: int):
        return self.data.images[index].float() / 255, int(self.data.labels[index])
