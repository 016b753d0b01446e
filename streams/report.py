"""Pictures for people without Grafana: the key panels rendered from the stored data into PNGs + ``index.html``.

``sci-monitor report --since 1h --out DIR`` queries InfluxDB (InfluxQL through the v1 ``/query`` API, so 1.x and
2.x with a DBRP mapping) and draws with matplotlib (Agg, no display needed):

- ``throughput.png``: windows/s per modality;
- ``decisions.png``: stopped vs abstained windows (escalations) per interval;
- ``stream.png``: SP and ΔSP of one stream (the one with the most ΔSP alerts unless ``--stream``), ΔSP alerts
  marked by severity, escalations marked, the alert levels of the settings drawn;
- ``trust.png``: online accuracy and misclassification AUROC (fleet, from :mod:`streams.trust`);
- ``drift.png``: rolling mean SP per stream with the drift detections marked.

A panel without data in the range is still written (saying so), so the page always has every image.
"""

from __future__ import annotations

import html
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from streams.settings import Settings

PANELS = ("throughput", "decisions", "stream", "trust", "drift")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Queryable(Protocol):
    def query(self, influxql: str) -> list[dict[str, Any]]: ...


def parse_duration(text: str) -> float:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"2d"`` -> seconds.

    >>> parse_duration("1h"), parse_duration("1.5m")
    (3600.0, 90.0)
    """
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}: expected a number and s, m, h or d (e.g. 1h)")
    return float(m[1]) * _UNIT_S[m[2]]


def bucket_s(since_s: float, target: int = 120) -> int:
    """An interval giving about ``target`` buckets over ``since_s``, rounded to a readable step.

    >>> bucket_s(3600), bucket_s(60), bucket_s(86400)
    (30, 1, 900)
    """
    raw = since_s / target
    return next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if s >= raw), 3600)


@dataclass(frozen=True)
class Figure:
    name: str  # file stem
    title: str
    caption: str
    has_data: bool


def _times(rows: list[dict]) -> list[datetime]:
    return [datetime.fromtimestamp(r["time"] / 1e9, UTC) for r in rows]


def _by(rows: list[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r.get(key, "")), []).append(r)
    return out


class Report:
    """Queries the stored data of the last ``since_s`` seconds and writes the figures and the page."""

    def __init__(self, store: Queryable, settings: Settings, since_s: float, stream: str | None = None) -> None:
        self.store, self.s, self.since_s, self.stream = store, settings, since_s, stream
        self.bucket = bucket_s(since_s)
        self.where = f"time > now() - {math.ceil(since_s)}s"
        self.span = ""

    def zoom(self) -> None:
        """Narrow the range to where windows and metrics were stored (a short replay in a long range would be a
        spike at the edge of an empty plot), keeping about 120 buckets over it. The metric points are timed by the
        worker's clock, after the windows they describe."""
        ends = []
        for measurement, field in (("sci_window", "seq"), ("sci_trust", "n")):
            for fn in ("first", "last"):
                rows = self._q(f'SELECT {fn}("{field}") FROM "{measurement}" WHERE {self.where}')
                ends += [r["time"] for r in rows]
        if not ends:
            return
        t0, t1 = min(ends), max(ends)
        self.bucket = bucket_s(max((t1 - t0) / 1e9, 60.0))
        pad = self.bucket * 1_000_000_000
        self.where = f"time >= {t0 - pad} AND time <= {t1 + pad}"
        fmt = "%Y-%m-%d %H:%M:%S"
        self.span = (f"data stored from {datetime.fromtimestamp(t0 / 1e9, UTC).strftime(fmt)} to "
                     f"{datetime.fromtimestamp(t1 / 1e9, UTC).strftime(fmt)} UTC")

    def _q(self, influxql: str) -> list[dict[str, Any]]:
        return self.store.query(influxql)

    # ------------------------------------------------------------------------------------------- figures
    def throughput(self, ax) -> bool:
        rows = self._q(f'SELECT count("seq") FROM "sci_window" WHERE {self.where} '
                       f'GROUP BY time({self.bucket}s), "modality" fill(0)')
        for modality, rs in sorted(_by(rows, "modality").items()):
            ax.plot(_times(rs), [r["count"] / self.bucket for r in rs], label=modality, lw=1.2)
        ax.set_ylabel("windows/s")
        return bool(rows)

    def decisions(self, ax) -> bool:
        rows = self._q(f'SELECT count("seq") FROM "sci_window" WHERE {self.where} '
                       f'GROUP BY time({self.bucket}s), "decision" fill(0)')
        groups = _by(rows, "decision")
        width = self.bucket / 86400 * 0.9  # matplotlib dates are in days
        bottom = None
        for decision, color in (("stopped", "#4c9a2a"), ("abstained", "#d62728")):
            rs = groups.get(decision, [])
            if not rs:
                continue
            values = [r["count"] for r in rs]
            label = "abstained (escalations)" if decision == "abstained" else "stopped (answered)"
            ax.bar(_times(rs), values, width=width, bottom=bottom, color=color, label=label, align="edge")
            bottom = values if bottom is None else [a + b for a, b in zip(bottom, values, strict=True)]
        ax.set_ylabel(f"windows per {self.bucket} s")
        return bool(rows)

    def pick_stream(self) -> str | None:
        """The stream asked for, else the one with the most ΔSP alerts, else the busiest."""
        if self.stream:
            return self.stream
        for cond in (' AND "alert" >= 1', ""):
            rows = self._q(f'SELECT count("seq") FROM "sci_window" WHERE {self.where}{cond} GROUP BY "stream"')
            if rows:
                return max(rows, key=lambda r: (r["count"], r["stream"]))["stream"]
        return None

    def stream_panel(self, ax) -> bool:
        stream = self.pick_stream()
        if stream is None:
            return False
        esc = stream.replace("\\", "\\\\").replace("'", "\\'")
        rows = self._q(f'SELECT "sp", "delta_sp", "decision", "alert" FROM "sci_window" WHERE {self.where} '
                       f"AND \"stream\" = '{esc}'")
        if not rows:
            return False
        t = _times(rows)
        ax.plot(t, [r["sp"] for r in rows], ".", ms=2.5, color="#1f77b4", label="SP")
        ax.plot(t, [r["delta_sp"] for r in rows], ".", ms=2.5, color="#7f7f7f", label="ΔSP")
        # the alert each window raised, as the worker decided it (the serving card's levels, or the overrides)
        for code, color, label in ((1, "#ff7f0e", "ΔSP alert (warning)"), (2, "#d62728", "ΔSP alert (critical)")):
            hits = [(ti, r["delta_sp"]) for ti, r in zip(t, rows, strict=True) if r.get("alert") == code]
            if hits:
                ax.plot(*zip(*hits, strict=True), "o", ms=5, mfc="none", color=color, label=label)
        abst = [(ti, r["sp"]) for ti, r in zip(t, rows, strict=True) if r["decision"] == "abstained"]
        if abst:
            ax.plot(*zip(*abst, strict=True), "x", ms=5, color="#9467bd", label="escalation (abstained)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"SP and ΔSP of {stream}", fontsize=10)
        self.stream = stream
        return True

    def trust_panel(self, ax) -> bool:
        rows = self._q(f'SELECT "accuracy", "auroc", "ece" FROM "sci_trust" WHERE {self.where} '
                       "AND \"scope\" = 'fleet'")
        t = _times(rows)
        drew = False
        for key, label in (("accuracy", "online accuracy"), ("auroc", "misclassification AUROC (1 − SP)"),
                           ("ece", "ECE")):
            pts = [(ti, r[key]) for ti, r in zip(t, rows, strict=True) if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), lw=1.4, label=label)
                drew = True
        ax.set_ylim(0, 1.02)
        return drew

    def drift_panel(self, ax) -> bool:
        rows = self._q(f'SELECT "sp_mean" FROM "sci_trust" WHERE {self.where} AND "scope" = \'stream\' '
                       'GROUP BY "stream"')
        for stream, rs in sorted(_by(rows, "stream").items()):
            ax.plot(_times(rs), [r["sp_mean"] for r in rs], lw=1, label=stream)
        drifts = self._q(f'SELECT "drift", "mean_after" FROM "sci_drift" WHERE {self.where} GROUP BY "stream", '
                         '"signal"')
        for i, d in enumerate(drifts):
            ax.axvline(datetime.fromtimestamp(d["time"] / 1e9, UTC), color="#9467bd", lw=1, ls=":",
                       label="drift detected" if i == 0 else None)
        ax.set_ylabel("rolling mean SP")
        ax.set_ylim(0, 1.02)
        return bool(rows) or bool(drifts)

    # ------------------------------------------------------------------------------------------- writing
    def write(self, out: str | Path) -> Path:
        """Write every PNG and ``index.html`` into ``out``; returns the page's path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.zoom()
        specs = (
            ("throughput", "Throughput", "Windows per second per modality.", self.throughput),
            ("decisions", "Decisions and escalations", "Windows answered (stopped) and abstained (escalated to a "
             "person) per interval.", self.decisions),
            ("stream", "SP and ΔSP of one stream", "Every window of the stream: SP and ΔSP = |SP* − SP|, ΔSP "
             "alerts circled by the severity the worker gave them (each model's card levels, unless "
             "overridden in the settings), escalations crossed.", self.stream_panel),
            ("trust", "Online accuracy and AUROC", f"Fleet metrics over the last {self.s.trust_window} windows "
             "with ground truth: accuracy, misclassification AUROC of 1 − SP, ECE.", self.trust_panel),
            ("drift", "Drift", "Rolling mean SP per stream; dotted lines: drift detections (ADWIN on SP and on "
             "the novelty score).", self.drift_panel),
        )
        figures = []
        for name, title, caption, draw in specs:
            fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
            has = draw(ax)
            if not has:
                ax.text(0.5, 0.5, "no data in this range", ha="center", va="center", transform=ax.transAxes,
                        color="#888888", fontsize=14)
            else:
                ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
                handles, _ = ax.get_legend_handles_labels()
                if handles:
                    ax.legend(fontsize=7, loc="upper left", ncols=min(4, len(handles)), framealpha=0.8)
            if not ax.get_title():
                ax.set_title(title, fontsize=10)
            ax.set_xlabel("time (UTC)")
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(out / f"{name}.png")
            plt.close(fig)
            figures.append(Figure(name, title, caption, has))
        page = out / "index.html"
        page.write_text(self._html(figures))
        return page

    def _html(self, figures: list[Figure]) -> str:
        now = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        items = "\n".join(
            f'<figure id="{f.name}"><h2>{html.escape(f.title)}</h2>'
            f'<img src="{f.name}.png" alt="{html.escape(f.title)}" width="900" height="360">'
            f"<figcaption>{html.escape(f.caption)}{'' if f.has_data else ' (no data in this range)'}"
            "</figcaption></figure>" for f in figures)
        return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>sci-monitor report"
                f"</title><style>body{{font-family:sans-serif;max-width:940px;margin:2em auto}}figure{{margin:0 0 "
                f"2em}}figcaption{{color:#555}}</style></head><body>\n<h1>sci-monitor report</h1>\n<p>Last "
                f"{self.since_s:g} s of stored data ({self.span or 'none'}), generated {now}, InfluxQL "
                f"buckets of {self.bucket} s.</p>\n"
                f"{items}\n</body></html>\n")


def report_command(settings: Settings, since: str, out: str | Path, stream: str | None = None) -> Path:
    """``sci-monitor report``: query the configured InfluxDB and write the report; returns index.html."""
    from streams.influx import make_sink

    with make_sink(settings) as sink:
        return Report(sink, settings, parse_duration(since), stream).write(out)
