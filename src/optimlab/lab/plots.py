"""Pictures of races: a PNG (matplotlib), an interactive HTML page (plotly, offline), an animated GIF.

Everything here reads a race result duck-typed: `.landscape`, `.steps`, `.start`, and `.runs`, each
with `.label`, `.positions` (steps + 1, dim) and `.losses` (steps + 1,). A 2-D landscape is drawn
as contours with each path on them; a 1-D one (Reddi's) as x against the step. The second panel is
the loss against the step, on a log scale as loss − minimum where the landscape has a minimum.

Matplotlib is used through `Figure` and the Agg canvas, never pyplot, so nothing opens a window.
"""

from __future__ import annotations

import numpy as np
import torch

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22"]
FLOOR = 1e-12  # loss gaps below this are drawn at it: a log axis has no zero


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def grid(landscape, n: int = 160):
    """X, Y, Z over the landscape's view window (numpy arrays, n × n)."""
    (x0, x1), (y0, y1) = landscape.window
    xs, ys = torch.linspace(x0, x1, n, dtype=torch.float64), torch.linspace(y0, y1, n, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    with torch.no_grad():
        Z = landscape.loss(torch.stack([X, Y], -1))
    return X.numpy(), Y.numpy(), Z.numpy()


def loss_axis(landscape) -> tuple[str, str]:
    """The loss panel's scale and label: log(loss − minimum) where there is a minimum to approach;
    the average loss itself, linear, for an online problem (its iterates hop around the minimum every
    period, which a log gap turns into noise); symlog where the loss is unbounded below (the saddle)."""
    if landscape.online:
        return "linear", "average loss over a period"
    if landscape.min_value is None:
        return "symlog", "loss"
    return "log", "loss − minimum"


def loss_curve(landscape, losses: np.ndarray) -> np.ndarray:
    """What the loss panel plots: loss − min (floored) on a log axis, else the loss itself."""
    if loss_axis(landscape)[0] != "log":
        return losses
    return np.maximum(losses - landscape.min_value, FLOOR)


def contour_levels(landscape, Z: np.ndarray) -> np.ndarray:
    """Levels spaced evenly in log(loss − min) so a canyon's floor shows; linear where unbounded."""
    best = landscape.min_value
    if best is None:
        return np.linspace(Z.min(), Z.max(), 25)
    gap = Z - best
    top = float(gap.max())
    return best + np.geomspace(max(float(gap[gap > 0].min()), top * 1e-6), top, 25)


def _title(result) -> str:
    L = result.landscape
    text = f"{L.name}: {L.formula}"
    if L.noise:
        text += f"   (gradient noise σ = {L.noise:g}, seed {L.seed})"
    return text


def race_figure(result, upto: int | None = None):
    """A two-panel matplotlib Figure; returns (figure, update) where update(k) redraws up to step k."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    L = result.landscape
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_loss = fig.subplots(1, 2, width_ratios=[1.15, 1])
    steps = np.arange(result.steps + 1)
    paths, heads = [], []
    if L.dim == 2:
        X, Y, Z = grid(L)
        levels = contour_levels(L, Z)
        best = L.min_value
        norm = None if best is None else LogNorm(levels[0] - best, levels[-1] - best)
        shade = Z if best is None else np.maximum(Z - best, levels[0] - best)
        ax.contourf(X, Y, shade, levels=levels if best is None else levels - best, norm=norm, cmap="Greys_r",
                    alpha=0.45)
        ax.contour(X, Y, Z, levels=levels, colors="k", linewidths=0.4, alpha=0.35)
        for m in L.minima:
            ax.plot(*m, marker="*", ms=14, color="gold", mec="k", zorder=5)
        ax.plot(*result.start, "ko", ms=5, zorder=5)
        (x0, x1), (y0, y1) = L.window
        ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y")
        ax.set_aspect("equal", adjustable="box")
    else:
        if L.bounds:
            ax.axhspan(*L.bounds[0], color="0.93")
        for m in L.minima:
            ax.axhline(m[0], color="k", ls="--", lw=1, label="minimum")
        ax.set(xlim=(0, result.steps), ylim=L.window[0], xlabel="step", ylabel="x")
    for i, run in enumerate(result.runs):
        kw = dict(color=color(i), lw=1.4)
        if L.dim == 2:
            paths.append(ax.plot([], [], marker=".", ms=3, label=f"{run.label} ({run.settings})", **kw)[0])
        else:
            paths.append(ax.plot([], [], label=f"{run.label} ({run.settings})", **kw)[0])
        curve = loss_curve(L, run.losses)
        ax_loss.plot(steps, curve, label=run.label, **kw)
        heads.append(ax_loss.plot([], [], "o", color=color(i), ms=5)[0])
    scale, label = loss_axis(L)
    ax_loss.set_yscale(scale)
    ax_loss.set_ylabel(label)
    if scale == "linear" and L.min_value is not None:
        ax_loss.axhline(L.min_value, color="k", ls="--", lw=1)
    ax_loss.set_xlabel("step")
    ax_loss.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(_title(result), fontsize=11)

    for artist in (*paths, *heads):
        artist._race_moving = True  # what save_gif redraws per frame

    def update(k: int) -> None:
        for run, path, head in zip(result.runs, paths, heads):
            pos = run.positions[: k + 1]
            if L.dim == 2:
                path.set_data(pos[:, 0], pos[:, 1])
            else:
                path.set_data(steps[: k + 1], pos[:, 0])
            head.set_data([k], [loss_curve(L, run.losses)[k]])

    update(result.steps if upto is None else upto)
    return fig, update


def save_png(result, path, dpi: int = 100) -> None:
    fig, _ = race_figure(result)
    fig.savefig(path, dpi=dpi)


def frame_steps(steps: int, frames: int) -> list[int]:
    """At most `frames` steps from 0 to `steps`, evenly spread, the last one included."""
    return sorted(set(np.linspace(0, steps, min(frames, steps + 1)).round().astype(int).tolist()))


def save_gif(result, path, frames: int = 60, fps: int = 12, dpi: int = 60) -> None:
    from PIL import Image

    fig, update = race_figure(result, upto=0)
    fig.set_dpi(dpi)
    moving = [a for ax in fig.axes for a in ax.lines if getattr(a, "_race_moving", False)]
    for a in moving:  # blitting: the contours are drawn once, each frame redraws only the paths
        a.set_animated(True)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    images = []
    for k in frame_steps(result.steps, frames):
        update(k)
        fig.canvas.restore_region(background)
        for a in moving:
            a.axes.draw_artist(a)
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        images.append(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE))
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def save_html(result, path, frames: int = 120) -> None:
    """A self-contained page (plotly.js embedded, works offline) with a step slider and a play button."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    L = result.landscape
    steps = np.arange(result.steps + 1)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                        subplot_titles=("path" if L.dim == 2 else "x against step", "loss against step"))
    if L.dim == 2:
        X, Y, Z = grid(L, n=120)
        best = L.min_value
        shade = Z if best is None else np.log10(np.maximum(Z - best, FLOOR))
        fig.add_trace(go.Contour(x=X[0], y=Y[:, 0], z=shade, colorscale="Greys", reversescale=True,
                                 showscale=False, opacity=0.6, ncontours=25, hoverinfo="skip"), 1, 1)
        fig.add_trace(go.Scatter(x=[m[0] for m in L.minima], y=[m[1] for m in L.minima], mode="markers",
                                 marker=dict(symbol="star", size=14, color="gold", line=dict(width=1)),
                                 name="minimum"), 1, 1)
        (x0, x1), (y0, y1) = L.window
        fig.update_xaxes(range=[x0, x1], title_text="x", row=1, col=1)
        fig.update_yaxes(range=[y0, y1], title_text="y", scaleanchor="x", row=1, col=1)
    else:
        fig.update_xaxes(range=[0, result.steps], title_text="step", row=1, col=1)
        fig.update_yaxes(range=list(L.window[0]), title_text="x", row=1, col=1)
    moving = []  # indices of the traces each frame replaces: a path and a loss marker per optimizer

    def path_xy(run, k):
        pos = run.positions[: k + 1]
        return (pos[:, 0], pos[:, 1]) if L.dim == 2 else (steps[: k + 1], pos[:, 0])

    for i, run in enumerate(result.runs):
        c = color(i)
        curve = loss_curve(L, run.losses)
        x, y = path_xy(run, result.steps)
        moving.append(len(fig.data))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", marker=dict(size=3), line=dict(color=c),
                                 name=run.label, legendgroup=run.label), 1, 1)
        fig.add_trace(go.Scatter(x=steps, y=curve, mode="lines", line=dict(color=c), name=run.label,
                                 legendgroup=run.label, showlegend=False), 1, 2)
        moving.append(len(fig.data))
        fig.add_trace(go.Scatter(x=[result.steps], y=[curve[-1]], mode="markers",
                                 marker=dict(color=c, size=8),
                                 legendgroup=run.label, showlegend=False, hoverinfo="skip"), 1, 2)
    scale, label = loss_axis(L)
    fig.update_yaxes(type="log" if scale == "log" else "linear", title_text=label, row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=2)
    shown = frame_steps(result.steps, frames)
    fig.frames = [go.Frame(name=str(k), traces=moving, data=[
        trace for run in result.runs for trace in (
            go.Scatter(x=path_xy(run, k)[0], y=path_xy(run, k)[1]),
            go.Scatter(x=[k], y=[loss_curve(L, run.losses)[k]]))]) for k in shown]
    still = dict(mode="immediate", frame=dict(duration=0, redraw=False), transition=dict(duration=0))
    fig.update_layout(
        title=_title(result), height=560, template="plotly_white",
        sliders=[dict(active=len(shown) - 1, currentvalue=dict(prefix="step "), pad=dict(t=40),
                      steps=[dict(label=str(k), method="animate", args=[[str(k)], still]) for k in shown])],
        updatemenus=[dict(type="buttons", x=0, y=-0.12, xanchor="left", showactive=False, buttons=[
            dict(label="▶ play", method="animate",
                 args=[None, dict(frame=dict(duration=60, redraw=False), fromcurrent=True,
                                  mode="immediate")]),
            dict(label="❚❚ pause", method="animate", args=[[None], still])])])
    fig.write_html(path, include_plotlyjs=True, full_html=True)
