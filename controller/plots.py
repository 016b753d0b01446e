"""Evaluation figures (PNG) for the SCI controller, drawn with matplotlib's Agg canvas (no display needed).

Figures are built with `matplotlib.figure.Figure` directly instead of pyplot, so nothing touches the global
backend or leaks open figures, and the functions are safe to call from worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_delta_sp", "plot_passes_hist", "plot_risk_coverage", "plot_shift"]

_CORRECT_COLOR = "#1b7837"
_WRONG_COLOR = "#b2182b"
_DPI = 120


def _new_figure(width: float = 6.4, height: float = 4.2) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG: give a path ending in .png, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def _split(values, correct, name: str) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if v.size != ok.size:
        raise ValueError(f"{name} and correct must have the same length, got {v.size} and {ok.size}")
    if v.size == 0:
        raise ValueError(f"{name} is empty: nothing to plot")
    finite = np.isfinite(v)
    return v[finite & ok], v[finite & ~ok]


def plot_risk_coverage(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Risk-coverage curves of several confidence scores on one axis.

    curves: {name: (coverage float[N], risk float[N])}, e.g. from controller.metrics.risk_coverage; the
    legend shows each curve's AURC (mean risk). path: output .png. Returns the written path.
    """
    if not curves:
        raise ValueError("curves is empty: pass at least one {name: (coverage, risk)}")
    fig, ax = _new_figure()
    for name, (coverage, risk) in curves.items():
        cov = np.asarray(coverage, dtype=np.float64)
        rsk = np.asarray(risk, dtype=np.float64)
        if cov.shape != rsk.shape or cov.ndim != 1:
            raise ValueError(f"curve {name!r}: coverage and risk must be 1-D with equal length")
        ax.plot(cov, rsk, linewidth=1.6, label=f"{name} (AURC {rsk.mean():.4f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("coverage (fraction of windows kept)")
    ax.set_ylabel("selective risk (error rate of kept windows)")
    ax.set_title("Risk-coverage")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def plot_passes_hist(passes, correct, path: str | Path, title: str) -> Path:
    """Histogram of MC-dropout passes per window, correct vs wrong, one bar pair per integer pass count.

    passes: int[N]; correct: bool[N]. Bars are fractions within each group (the groups differ in size by
    orders of magnitude); the legend gives counts and means. Returns the written path.
    """
    ok_p, wrong_p = _split(passes, correct, "passes")
    all_p = np.r_[ok_p, wrong_p].astype(np.int64)
    values = np.arange(all_p.min(), all_p.max() + 1)
    fig, ax = _new_figure()
    width = 0.4
    for offset, group, label, color in (
        (-width / 2, ok_p, "correct", _CORRECT_COLOR),
        (width / 2, wrong_p, "wrong", _WRONG_COLOR),
    ):
        if group.size == 0:
            continue
        counts = np.bincount(group.astype(np.int64) - values[0], minlength=values.size)
        ax.bar(
            values + offset,
            counts / group.size,
            width=width,
            color=color,
            label=f"{label} (n={group.size}, mean {group.mean():.2f})",
        )
    step = max(1, int(np.ceil(values.size / 20)))
    ax.set_xticks(values[::step])
    ax.set_xlabel("MC-dropout passes per window")
    ax.set_ylabel("fraction of windows in group")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_delta_sp(delta_sp, correct, path: str | Path, title: str) -> Path:
    """Distributions of ΔSP = |SP* − SP| for correct vs wrong windows (shared bins, density-normalised).

    delta_sp: float[N] (non-finite values are dropped); correct: bool[N]. Dashed lines mark each group's
    median. Returns the written path.
    """
    ok_d, wrong_d = _split(delta_sp, correct, "delta_sp")
    both = np.r_[ok_d, wrong_d]
    if both.size == 0:
        raise ValueError("delta_sp has no finite values to plot")
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 41)
    fig, ax = _new_figure()
    for group, label, color in ((ok_d, "correct", _CORRECT_COLOR), (wrong_d, "wrong", _WRONG_COLOR)):
        if group.size == 0:
            continue
        median = float(np.median(group))
        ax.hist(group, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=color)
        ax.hist(
            group,
            bins=bins,
            density=True,
            histtype="step",
            linewidth=1.5,
            color=color,
            label=f"{label} (n={group.size}, median {median:.3f})",
        )
        ax.axvline(median, color=color, linestyle="--", linewidth=1.2)
    ax.set_xlabel("ΔSP = |SP* − SP|")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_shift(report: Mapping, path: str | Path) -> Path:
    """Answered-wrong rate per shift: the controller beside one plain pass (`sci-monitor evaluate-shift` report)."""
    shifts = report["shifts"]
    names = list(shifts)
    ctl = [shifts[n]["answered_wrong_rate"] for n in names]
    det = [shifts[n]["deterministic_answered_wrong_rate"] for n in names]
    fig, ax = _new_figure(width=max(6.4, 0.45 * len(names) + 2), height=4.6)
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, det, 0.4, label="plain pass (answers all)", color="#999999")
    ax.bar(pos + 0.2, ctl, 0.4, label="controller", color=_WRONG_COLOR)
    ax.axhline(report["in_distribution"]["answered_wrong_rate"], color="k", lw=0.8, ls="--",
               label="controller, in distribution")
    ax.set_xticks(pos, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("answered and wrong (share of windows)")
    ax.set_title(f"{report['dataset']}: shift benchmark (test windows)")
    ax.legend(fontsize=8)
    return _save(fig, path)
