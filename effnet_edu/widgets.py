"""Interactive explorers (ipywidgets) for the notebooks.

`PhiExplorer` is the compound-scaling slider: move phi and see the multipliers, the stage table
(channels and repeats per stage), parameters, multiply-adds and, optionally, measured latency,
with a plot that marks where the released B0-B7 sit.

Every explorer keeps its latest result in `.result`, so a notebook (and nbval, which has no
browser) can set ``explorer.slider.value = 3`` and assert what changed: cells that build or move
an explorer are marked ``# NBVAL_IGNORE_OUTPUT`` and followed by a cell that prints and asserts
``explorer.summary()`` / ``explorer.result``.

Used by: notebooks 03 (compound scaling) and 05 (GradCAM).
"""

from __future__ import annotations

import functools
import io
import threading

import ipywidgets as widgets
from IPython.display import Image, Markdown, display

from .model import efficientnet, efficientnet_config
from .profiling import config_flops, config_params, measure_latency
from .scaling import ALPHA, BETA, GAMMA, OFFICIAL_VARIANTS, explain_official_variants

PHI_COLOR = "#d62728"  # compound scaling's colour in every figure (see effnet_edu.study)
# ipykernel may run a widget callback on another thread while the main thread still draws, and
# matplotlib is not thread-safe: explorers draw on their own Figure objects (never through
# pyplot's global state, which IPython redraws after every message) and one at a time. They set
# their Output widget's content directly rather than printing inside ``with output:``, which can
# leave nbclient (nbconvert --execute) waiting forever (jupyter/nbclient#312).
_DRAW_LOCK = threading.RLock()


@functools.lru_cache(maxsize=64)
def _phi_numbers(phi: float, alpha: float, beta: float, gamma: float) -> dict:
    config = efficientnet_config(phi=phi, alpha=alpha, beta=beta, gamma=gamma)
    return {
        "phi": phi,
        "depth": config.depth,
        "width": config.width,
        "resolution": config.resolution,
        "params": config_params(config),
        "flops": config_flops(config),
        "config": config,
    }


@functools.lru_cache(maxsize=64)
def _phi_latency(phi: float, alpha: float, beta: float, gamma: float) -> float:
    model = efficientnet(phi=phi, alpha=alpha, beta=beta, gamma=gamma)
    return measure_latency(model, batch_size=1, warmup=1, repeats=3)["ms"]


class PhiExplorer:
    """A phi slider (fractional values allowed) driving a summary, a stage table and a plot."""

    def __init__(
        self,
        phi: float = 1.0,
        max_phi: float = 7.0,
        step: float = 0.1,
        alpha: float = ALPHA,
        beta: float = BETA,
        gamma: float = GAMMA,
        latency: bool = False,
    ):
        self.alpha, self.beta, self.gamma, self.latency = alpha, beta, gamma, latency
        self.slider = widgets.FloatSlider(
            value=phi,
            min=0.0,
            max=max_phi,
            step=step,
            description="φ",
            continuous_update=False,
            readout_format=".1f",
        )
        self.output = widgets.Output()
        self.result: dict = {}
        self.slider.observe(lambda change: self.update(change["new"]), names="value")
        self.widget = widgets.VBox([self.slider, self.output])
        self._official = [(f.name, f.phi) for f in explain_official_variants(alpha, beta, gamma)]
        self.update(phi)

    def compute(self, phi: float) -> dict:
        """The numbers for one phi (cached: moving back and forth costs nothing)."""
        result = dict(_phi_numbers(round(float(phi), 6), self.alpha, self.beta, self.gamma))
        base = _phi_numbers(0.0, self.alpha, self.beta, self.gamma)
        result["flops_ratio"] = result["flops"] / base["flops"]
        if self.latency:
            result["latency_ms"] = _phi_latency(
                round(float(phi), 6), self.alpha, self.beta, self.gamma
            )
        return result

    def summary(self) -> str:
        r = self.result
        text = (
            f"φ = {r['phi']:.2f}: depth × {r['depth']:.3f}, width × {r['width']:.3f}, "
            f"resolution {r['resolution']} px → {r['params'] / 1e6:.2f} M parameters, "
            f"{r['flops'] / 1e9:.3f} G multiply-adds ({r['flops_ratio']:.2f} × B0; "
            f"2^φ = {2 ** r['phi']:.2f})"
        )
        if "latency_ms" in r:
            text += f", {r['latency_ms']:.0f} ms per image on this machine"
        return text

    def figure(self):
        """The FLOPs-against-phi plot for the current result (a matplotlib Figure; `display` it)."""
        from matplotlib.figure import Figure

        phis = [i / 10 for i in range(0, int(self.slider.max * 10) + 1)]
        flops = [_phi_numbers(p, self.alpha, self.beta, self.gamma)["flops"] / 1e9 for p in phis]
        fig = Figure(figsize=(6.4, 3.6))
        ax = fig.subplots()
        ax.plot(phis, flops, color=PHI_COLOR, label="efficientnet(phi=φ)")
        for name, phi in self._official:
            official = config_flops(efficientnet_config(name)) / 1e9
            ax.scatter([phi], [official], color="black", zorder=3, s=18)
            ax.annotate(
                name.upper(),
                (phi, official),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
            )
        ax.scatter(
            [self.result["phi"]],
            [self.result["flops"] / 1e9],
            color=PHI_COLOR,
            s=80,
            zorder=4,
            label=f"φ = {self.result['phi']:.1f}",
        )
        ax.set_yscale("log")
        ax.set_xlabel("compound coefficient φ")
        ax.set_ylabel("multiply-adds per image (G, log scale)")
        ax.set_title("FLOPs grow about 2× per unit of φ; B0–B7 sit near the curve")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
        fig.tight_layout()
        return fig

    def update(self, phi: float) -> dict:
        with _DRAW_LOCK:
            self.result = self.compute(phi)
            png = io.BytesIO()
            self.figure().savefig(png, format="png", dpi=100)
            self.output.outputs = ()
            self.output.append_stdout(self.summary() + "\n")
            self.output.append_display_data(Markdown(self.result["config"].stage_table()))
            self.output.append_display_data(Image(data=png.getvalue(), format="png"))
        return self.result

    def _ipython_display_(self):
        display(self.widget)


def official_table() -> str:
    """The released B0-B7 next to pure compound scaling at their fitted phi (Markdown)."""
    lines = [
        "| variant | fitted φ | depth (pure) | width (pure) | resolution (pure) |",
        "|---|---|---|---|---|",
    ]
    for f in explain_official_variants():
        v = OFFICIAL_VARIANTS[f.name]
        lines.append(
            f"| {f.name} | {f.phi:.2f} | {v.depth} ({f.pure_depth:.2f}) | "
            f"{v.width} ({f.pure_width:.2f}) | {v.resolution} "
            f"({f.pure_resolution:.0f}) |"
        )
    return "\n".join(lines)
