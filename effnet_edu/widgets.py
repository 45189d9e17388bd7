"""Interactive explorers (ipywidgets): controls → a cached computation → what the student sees.

`Explorer` is the base of every explorer; `PhiExplorer` is notebook 03's compound-scaling slider
(multipliers, stage table, parameters, FLOPs and, optionally, latency for any φ).
"""

from __future__ import annotations

import functools
import io
import threading

import ipywidgets as widgets
from IPython.display import Image, Markdown
from matplotlib.figure import Figure

from .model import EfficientNet, efficientnet_config
from .profiling import config_flops, config_params, measure_latency
from .scaling import ALPHA, BETA, GAMMA, explain_official_variants

PHI_COLOR = "#d62728"  # compound scaling's colour in every figure (see effnet_edu.study)
# A widget callback may run on another thread than the cell (ipykernel), and matplotlib is not
# thread-safe: explorers draw on their own Figure, never through pyplot, and one at a time.
_DRAW_LOCK = threading.RLock()


class Explorer(widgets.VBox):
    """Controls → `compute(*values)` (cached) → `.result`, shown as `summary()` and `figure()`.

    Subclasses define those three and pass their controls. Setting a control from code
    (``explorer.phi.value = 2``) does what a drag does: a notebook can assert on `.result`.
    """

    def __init__(self, controls: list[widgets.ValueWidget], rows: list | None = None):
        self.controls, self.output = controls, widgets.Output()
        self.compute = functools.lru_cache(maxsize=128)(self.compute)  # moving back costs nothing
        for control in controls:
            control.observe(lambda change: self.update(), names="value")
        super().__init__([*(rows or controls), self.output])  # the explorer is the widget
        self.update()

    def displays(self) -> list:
        return []  # what is shown between the summary line and the figure

    def update(self) -> dict:
        with _DRAW_LOCK:
            self.result = self.compute(*(control.value for control in self.controls))
            png, figure = io.BytesIO(), self.figure()
            figure.savefig(png, format="png", dpi=figure.dpi)
            # Set the Output's content directly: capturing prints with ``with output:`` can
            # leave nbclient waiting forever (jupyter/nbclient#312).
            self.output.outputs = ()
            self.output.append_stdout(self.summary() + "\n")
            for item in [*self.displays(), Image(data=png.getvalue(), format="png")]:
                self.output.append_display_data(item)
        return self.result


class PhiExplorer(Explorer):
    """A φ slider (fractional φ allowed) → ``efficientnet_config(phi=φ)``: numbers, stages, plot."""

    def __init__(self, phi=1.0, max_phi=7.0, alpha=ALPHA, beta=BETA, gamma=GAMMA, latency=False):
        if not 0 <= phi <= max_phi:
            raise ValueError(f"phi must be in [0, max_phi={max_phi!r}], got {phi!r}")
        self.config = functools.partial(efficientnet_config, alpha=alpha, beta=beta, gamma=gamma)
        self.latency = latency
        phis = [i / 10 for i in range(int(max_phi * 10) + 1)]
        self.curve = [(p, config_flops(self.config(phi=p))) for p in phis]  # (φ, multiply-adds)
        fits = explain_official_variants(alpha, beta, gamma)  # B0-B7 at their fitted φ
        self.official = [(f.name, f.phi, config_flops(efficientnet_config(f.name))) for f in fits]
        self.phi = widgets.FloatSlider(  # from 0 in steps of 0.1, the defaults
            value=phi, max=max_phi, description="φ", continuous_update=False, readout_format=".1f"
        )
        super().__init__([self.phi])

    def compute(self, phi: float) -> dict:
        """The numbers for one φ."""
        phi = round(float(phi), 6)  # a slider's 0.30000000000000004 is 0.3
        config = self.config(phi=phi)
        flops = config_flops(config)
        result = {
            "phi": phi,
            "depth": config.depth,
            "width": config.width,
            "resolution": config.resolution,
            "params": config_params(config),
            "flops": flops,
            "flops_ratio": flops / self.curve[0][1],  # over φ = 0, i.e. B0
            "config": config,
        }
        if self.latency:
            model = EfficientNet(config)
            result["latency_ms"] = measure_latency(model, batch_size=1, warmup=1, repeats=3)["ms"]
        return result

    def summary(self) -> str:
        r = self.result
        ms = f", {r['latency_ms']:.0f} ms per image on this machine" if self.latency else ""
        return (
            f"φ = {r['phi']:.2f}: depth × {r['depth']:.3f}, width × {r['width']:.3f}, "
            f"resolution {r['resolution']} px → {r['params'] / 1e6:.2f} M parameters, "
            f"{r['flops'] / 1e9:.3f} G multiply-adds ({r['flops_ratio']:.2f} × B0; "
            f"2^φ = {2 ** r['phi']:.2f}){ms}"
        )

    def displays(self) -> list:
        return [Markdown(self.result["config"].stage_table())]

    def figure(self) -> Figure:
        """FLOPs against φ, B0-B7 at their fitted φ, the current φ marked (`display` it)."""
        fig = Figure(figsize=(6.4, 3.6), dpi=100)
        ax = fig.subplots()
        phis, flops = zip(*self.curve, strict=True)
        ax.plot(phis, [f / 1e9 for f in flops], color=PHI_COLOR, label="efficientnet(phi=φ)")
        for name, phi, macs in self.official:
            xy = (phi, macs / 1e9)
            ax.scatter(*xy, color="black", zorder=3, s=18)
            ax.annotate(name.upper(), xy, xytext=(4, -10), textcoords="offset points", size=8)
        r = self.result
        label = f"φ = {r['phi']:.1f}"
        ax.scatter([r["phi"]], [r["flops"] / 1e9], color=PHI_COLOR, s=80, zorder=4, label=label)
        ax.set(xlabel="compound coefficient φ", ylabel="multiply-adds per image (G, log scale)")
        ax.set(yscale="log", title="FLOPs grow about 2× per unit of φ; B0–B7 sit near the curve")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        fig.tight_layout()
        return fig


def official_table() -> str:
    """The released B0-B7 next to pure compound scaling at their fitted φ (Markdown)."""
    header = "| variant | fitted φ | depth (pure) | width (pure) | resolution (pure) |"
    lines = [header, "|---" * 5 + "|"]
    for f in explain_official_variants():
        lines.append(
            f"| {f.name} | {f.phi:.2f} | {f.depth} ({f.pure_depth:.2f}) | "
            f"{f.width} ({f.pure_width:.2f}) | {f.resolution} ({f.pure_resolution:.0f}) |"
        )
    return "\n".join(lines)
