"""Grafana as code: dashboards and unified-alerting provisioning generated from :class:`Settings`.

Every threshold used by an alert rule is read from the same settings the worker uses (the ``[monitor]`` section for
rates, latency and silence); ΔSP alerts are counted from the ``alert`` field the worker stores with each window
(0 none, 1 warning, 2 critical, decided at the serving card's levels or the settings' overrides), so no ΔSP level
is restated here and the files cannot drift from the worker: ``sci-monitor grafana render --out grafana`` writes
them, the committed files are that output for the default settings (a test checks it); whoever changes a
threshold re-renders with the same environment (``.env.example`` says how).

Outputs (paths relative to ``--out``):

- ``dashboards/sci-monitor.json`` overview (throughput, decisions, abstention, ΔSP vs the alert levels, passes,
  latency, SP); ``sci-stream.json`` one stream's drill-down with escalation, ΔSP-alert and drift annotations;
  ``sci-trust.json`` online model trust (accuracy, misclassification AUROC, ECE and calibration, passes on wrong
  vs right windows, drift); ``sci-compute.json`` batch sizes and controller time per batch.
- ``provisioning/alerting/sci-monitor.json``: one rule group (escalation rate, ΔSP alert rate, worker silence,
  latency p95, drift), a webhook contact point (URL from ``SCI_ALERT_WEBHOOK_URL`` in Grafana's environment) and
  the notification policy routing to it.

Queries are raw InfluxQL that runs on InfluxDB 1.6+ and on 2.x through the DBRP mapping: no subqueries in
alert rules, no ``SHOW`` outside template variables. Measurements: ``sci_window`` (one point per window, see
:mod:`streams.influx`), ``sci_trust`` / ``sci_calibration`` / ``sci_drift`` / ``sci_batch`` (online metrics,
:mod:`streams.trust`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.settings import Settings

DS_UID = "sci-influxdb"
DS = {"type": "influxdb", "uid": DS_UID}
EXPR = {"type": "__expr__", "uid": "__expr__"}
FOLDER = "sci-monitor"
W = '"modality" =~ /^$modality$/ AND "stream" =~ /^$stream$/'  # the overview's template-variable filter
S = '"stream" =~ /^$stream$/'  # the drill-down's


# ------------------------------------------------------------------------------------------------- panels
class _Grid:
    """Places panels left to right, wrapping at 24 columns; ids from 1."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> tuple[int, dict[str, int]]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        pid, self.next_id = self.next_id, self.next_id + 1
        return pid, pos


def _q(ref: str, query: str, alias: str | None = None, hide: bool = False) -> dict[str, Any]:
    t = {"refId": ref, "datasource": DS, "query": query, "rawQuery": True, "resultFormat": "time_series"}
    if alias:
        t["alias"] = alias
    if hide:
        t["hide"] = True
    return t


def _math(ref: str, expression: str) -> dict[str, Any]:
    return {"refId": ref, "datasource": EXPR, "type": "math", "expression": expression, "hide": False}


def _thresholds(levels: list[tuple[str, float]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                          *({"color": c, "value": v} for c, v in levels)]}


_LEGEND = {"showLegend": True, "displayMode": "list", "placement": "bottom"}
_TOOLTIP = {"mode": "multi", "sort": "desc"}


def _panel(grid: _Grid, kind: str, title: str, description: str, targets: list[dict], *, w: int, h: int,
           unit: str = "none", defaults: dict | None = None, options: dict | None = None) -> dict[str, Any]:
    pid, pos = grid.place(w, h)
    return {"id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": pos, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": []},
            "options": options or {}}


def _stat(grid: _Grid, title: str, description: str, targets: list[dict], unit: str = "short",
          calcs: tuple[str, ...] = ("lastNotNull",), w: int = 4) -> dict[str, Any]:
    return _panel(grid, "stat", title, description, targets, w=w, h=4, unit=unit, options={
        "reduceOptions": {"calcs": list(calcs), "fields": "", "values": False}, "colorMode": "value",
        "graphMode": "none", "textMode": "value_and_name" if len(calcs) > 1 else "auto", "justifyMode": "auto"})


def _series(grid: _Grid, title: str, description: str, targets: list[dict], unit: str = "none", *, w: int = 12,
            h: int = 8, points: str = "never", extra: dict | None = None, custom: dict | None = None
            ) -> dict[str, Any]:
    defaults = {"custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": points,
                           "spanNulls": False, **(custom or {})}, **(extra or {})}
    return _panel(grid, "timeseries", title, description, targets, w=w, h=h, unit=unit, defaults=defaults,
                  options={"legend": _LEGEND, "tooltip": _TOOLTIP})


def _variable(name: str, label: str, query: str, multi: bool) -> dict[str, Any]:
    current = ({"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {})
    return {"name": name, "label": label, "type": "query", "datasource": DS, "query": query, "definition": query,
            "refresh": 2, "includeAll": multi, "multi": multi, "allValue": ".*" if multi else None,
            "current": current, "options": [], "sort": 1, "hide": 0, "regex": "", "skipUrlSync": False}


def _dashboard(uid: str, title: str, description: str, panels: list[dict], variables: list[dict],
               annotations: list[dict] | None = None, links: list[dict] | None = None) -> dict[str, Any]:
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}
    return {"uid": uid, "title": title, "description": description, "tags": ["sci-monitor"], "schemaVersion": 39,
            "version": 1, "editable": False, "graphTooltip": 1, "timezone": "", "fiscalYearStartMonth": 0,
            "liveNow": False, "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "timepicker": {},
            "links": links or [], "annotations": {"list": [builtin, *(annotations or [])]},
            "templating": {"list": variables}, "panels": panels}


def _links() -> list[dict]:
    return [{"title": "sci-monitor dashboards", "type": "dashboards", "tags": ["sci-monitor"], "asDropdown": True,
             "includeVars": False, "keepTime": True}]


def _modality_var() -> dict:
    return _variable("modality", "Modality", 'SHOW TAG VALUES FROM "sci_window" WITH KEY = "modality"', True)


def _stream_var(multi: bool) -> dict:
    where = ' WHERE "modality" =~ /^$modality$/' if multi else ""
    return _variable("stream", "Stream", f'SHOW TAG VALUES FROM "sci_window" WITH KEY = "stream"{where}', multi)


# ---------------------------------------------------------------------------------------------- dashboards
def overview(s: Settings) -> dict[str, Any]:
    """``sci-monitor``: the fleet at a glance (uid kept: it is Grafana's home dashboard)."""
    g = _Grid()
    cnt = f'SELECT count("seq") FROM "sci_window" WHERE $timeFilter AND {W}'
    rate = f'SELECT count("seq") / 10 FROM "sci_window" WHERE $timeFilter AND {W}'
    panels = [
        _stat(g, "Windows", "Windows processed in the time range.", [_q("A", cnt)]),
        _stat(g, "Windows/s", "Throughput in 10 s buckets while windows arrive (idle buckets are left out, not "
              "averaged in as zeros): mean over those buckets and the peak.",
              [_q("A", f"{rate} GROUP BY time(10s) fill(none)")], calcs=("mean", "max")),
        _stat(g, "Abstention rate", "Share of windows the controller abstained on (escalated to a person).",
              [_q("A", f"{cnt} AND \"decision\" = 'abstained'", hide=True), _q("B", cnt, hide=True),
               _math("C", "$A / $B")], unit="percentunit"),
        _stat(g, "Mean passes", "MC-dropout passes per window.",
              [_q("A", f'SELECT mean("passes") FROM "sci_window" WHERE $timeFilter AND {W}')], unit="none"),
        _stat(g, "Latency p95", "Produce → decision, 95th percentile.",
              [_q("A", f'SELECT percentile("latency_ms", 95) FROM "sci_window" WHERE $timeFilter AND {W}')],
              unit="ms"),
        _stat(g, "Accuracy (truth known)", "Share of windows with ground truth whose label was right (replays of "
              "annotated recordings).",
              [_q("A", f'SELECT count("correct") FROM "sci_window" WHERE $timeFilter AND {W} AND "correct" = true',
                  hide=True),
               _q("B", f'SELECT count("correct") FROM "sci_window" WHERE $timeFilter AND {W}', hide=True),
               _math("C", "$A / $B")], unit="percentunit"),
        _series(g, "Windows/s by modality", "Windows per second per interval.",
                [_q("A", f'SELECT count("seq") * 1000 / $__interval_ms FROM "sci_window" WHERE $timeFilter AND {W} '
                    'GROUP BY time($__interval), "modality" fill(0)', alias="$tag_modality")], unit="short"),
        _series(g, "Labels by predicted class", "Stopped (answered) windows per predicted class and interval.",
                [_q("A", f"{cnt} AND \"decision\" = 'stopped' GROUP BY time($__interval), \"predicted\" fill(0)",
                    alias="$tag_predicted")], unit="short", custom={"drawStyle": "bars", "fillOpacity": 60,
                                                                     "stacking": {"mode": "normal"}}),
        _series(g, "Abstention (escalation) rate", "Abstained windows / all windows per interval.",
                [_q("A", f"{cnt} AND \"decision\" = 'abstained' GROUP BY time($__interval) fill(0)", hide=True),
                 _q("B", f"{cnt} GROUP BY time($__interval) fill(none)", hide=True), _math("C", "$A / $B")],
                unit="percentunit", extra={"min": 0, "displayName": "abstention rate"}),
        _panel(g, "bargauge", "Decisions by predicted class", "Windows in the time range by predicted class and "
               "decision.", [_q("A", f'{cnt} GROUP BY "predicted", "decision"', alias="$tag_predicted $tag_decision")],
               w=12, h=8, unit="short", options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                                                   "values": False},
                                                 "orientation": "horizontal", "displayMode": "gradient",
                                                 "showUnfilled": True}),
        _delta_sp_panel(g, s, W, w=24),
        _panel(g, "histogram", "Passes per window", "MC-dropout passes per window by decision (latest 20k "
               "windows each).",
               [_q("A", f'SELECT "passes" FROM "sci_window" WHERE $timeFilter AND {W} GROUP BY "decision" '
                   "ORDER BY time DESC LIMIT 20000", alias="$tag_decision")], w=8, h=8,
               defaults={"custom": {"fillOpacity": 60, "lineWidth": 1}},
               options={"bucketSize": 1, "bucketOffset": 0.5, "combine": False, "legend": _LEGEND}),
        _series(g, "Mean passes by decision", "Mean MC-dropout passes per window and interval.",
                [_q("A", f'SELECT mean("passes") FROM "sci_window" WHERE $timeFilter AND {W} '
                    'GROUP BY time($__interval), "decision" fill(none)', alias="$tag_decision")], w=8),
        _series(g, "Latency p95 by modality", "95th percentile of per-window latency per interval; dashed: the "
                f"latency alert level ({s.latency_p95_max_ms:g} ms, setting latency_p95_max_ms).",
                [_q("A", f'SELECT percentile("latency_ms", 95) FROM "sci_window" WHERE $timeFilter AND {W} '
                    'GROUP BY time($__interval), "modality" fill(none)', alias="$tag_modality")], unit="ms", w=8,
                extra={"thresholds": _thresholds([("red", s.latency_p95_max_ms)])},
                custom={"thresholdsStyle": {"mode": "dashed"}}),
        _panel(g, "heatmap", "SP heatmap", "Distribution of per-stream mean SP = 1 − H(p̄)/log K across streams "
               "over time.", [_q("A", f'SELECT mean("sp") FROM "sci_window" WHERE $timeFilter AND {W} '
                                 'GROUP BY time($__interval), "stream" fill(none)', alias="$tag_stream")],
               w=12, h=9, options={"calculate": True, "calculation": {"yBuckets": {
                   "mode": "size", "value": "0.05", "scale": {"type": "linear"}}},
                   "color": {"mode": "scheme", "scheme": "Viridis", "steps": 64}, "cellGap": 1,
                   "yAxis": {"axisPlacement": "left", "min": 0, "max": 1}, "legend": {"show": True},
                   "tooltip": {"mode": "single", "yHistogram": True}}),
        _series(g, "SP per stream", "Mean SP per stream and interval (1 = certain, 0 = uniform).",
                [_q("A", f'SELECT mean("sp") FROM "sci_window" WHERE $timeFilter AND {W} '
                    'GROUP BY time($__interval), "stream" fill(none)', alias="$tag_stream")],
                extra={"min": 0, "max": 1}, h=9),
    ]
    return _dashboard("sci-monitor", "sci-monitor", "SCI streaming monitor: throughput, labels, abstention, ΔSP, "
                      "MC-dropout passes, latency, SP (InfluxQL on measurement sci_window).", panels,
                      [_modality_var(), _stream_var(True)], links=_links())


def _delta_sp_panel(g: _Grid, s: Settings, where: str, w: int) -> dict[str, Any]:
    return _series(
        g, "ΔSP per stream and ΔSP alerts",
        "Max ΔSP = |SP* − SP| per stream and interval; points: windows that raised a ΔSP alert (the worker decides "
        "at the serving model's card levels, or the settings' alert_threshold / alert_critical overrides).",
        [_q("A", f'SELECT max("delta_sp") FROM "sci_window" WHERE $timeFilter AND {where} '
            'GROUP BY time($__interval), "stream" fill(none)', alias="$tag_stream"),
         _q("B", f'SELECT max("delta_sp") FROM "sci_window" WHERE $timeFilter AND {where} AND "alert" >= 1 '
            'GROUP BY time($__interval), "stream" fill(none)', alias="alert $tag_stream")],
        w=w, h=9, points="auto", extra={"min": 0, "decimals": 3})


def _annotation(name: str, color: str, query: str, text: str) -> dict[str, Any]:
    return {"name": name, "datasource": DS, "enable": True, "hide": False, "iconColor": color, "query": query,
            "textColumn": text, "tagsColumn": "", "titleColumn": "", "target": {"query": query, "rawQuery": True,
                                                                                 "refId": "Anno"}}


def drill_down(s: Settings) -> dict[str, Any]:
    """``sci-stream``: one stream's SP, ΔSP, passes and decisions with escalation/alert/drift annotations."""
    g = _Grid()
    win = f'FROM "sci_window" WHERE $timeFilter AND {S}'
    panels = [
        _series(g, "SP and ΔSP", "SP (1 = certain) and ΔSP = |SP* − SP| of every window of the stream; ΔSP alert: "
                "the windows that raised one (at the serving model's card levels). Annotations: red = escalation "
                "(abstained), orange = ΔSP alert, purple = drift.",
                [_q("A", f'SELECT "sp" {win}', alias="SP"), _q("B", f'SELECT "delta_sp" {win}', alias="ΔSP"),
                 _q("C", f'SELECT "delta_sp" {win} AND "alert" >= 1', alias="ΔSP alert")],
                w=24, h=9, points="always", extra={"min": 0, "max": 1},
                custom={"lineWidth": 0, "pointSize": 3}),
        _series(g, "Passes per window", "MC-dropout passes spent on each window.",
                [_q("A", f'SELECT "passes" {win}', alias="passes")], w=12, points="always",
                custom={"lineWidth": 0, "pointSize": 3}),
        _series(g, "Decisions per interval", "Windows per decision and interval.",
                [_q("A", f'SELECT count("seq") {win} GROUP BY time($__interval), "decision" fill(0)',
                    alias="$tag_decision")], unit="short", w=12,
                custom={"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal"}}),
        _series(g, "Latency", "Produce → decision per window.",
                [_q("A", f'SELECT "latency_ms" {win}', alias="latency")], unit="ms", w=12, points="always",
                custom={"lineWidth": 0, "pointSize": 3}),
        _series(g, "Max probability", "Largest class probability of the MC mean.",
                [_q("A", f'SELECT "max_prob" {win}', alias="max prob")], unit="percentunit", w=12, points="always",
                custom={"lineWidth": 0, "pointSize": 3}),
    ]
    annotations = [
        _annotation("Escalations", "red", f"SELECT \"sp\", \"passes\" {win} AND \"decision\" = 'abstained'", "sp"),
        _annotation("ΔSP alerts", "orange", f'SELECT "delta_sp" {win} AND "alert" >= 1', "delta_sp"),
        _annotation("Drift", "purple", f'SELECT "drift", "mean_before", "mean_after" FROM "sci_drift" '
                    f'WHERE $timeFilter AND {S}', "mean_after"),
    ]
    return _dashboard("sci-stream", "sci-monitor: stream drill-down", "One stream: SP, ΔSP, passes, decisions, "
                      "latency, with escalations, ΔSP alerts and drift as annotations.", panels, [_stream_var(False)],
                      annotations, _links())


def trust(s: Settings) -> dict[str, Any]:
    """``sci-trust``: can the model be trusted today? Online metrics of :mod:`streams.trust`."""
    g = _Grid()
    fleet = 'FROM "sci_trust" WHERE $timeFilter AND "scope" = \'fleet\''
    per = 'FROM "sci_trust" WHERE $timeFilter AND "scope" = \'stream\' AND "stream" =~ /^$stream$/'
    n = s.trust_window
    panels = [
        _stat(g, "Online accuracy", f"Fleet accuracy over the last {n} windows with ground truth (latest value).",
              [_q("A", f'SELECT last("accuracy") {fleet}')], unit="percentunit", w=6),
        _stat(g, "Misclassification AUROC", "AUROC of 1 − SP for telling wrong windows from right ones over the "
              f"last {n} windows with ground truth (0.5 = no better than chance).",
              [_q("A", f'SELECT last("auroc") {fleet}')], unit="none", w=6),
        _stat(g, "ECE", f"Expected calibration error of the top-class probability over the last {n} windows with "
              f"ground truth ({s.ece_bins} equal-width bins).", [_q("A", f'SELECT last("ece") {fleet}')],
              unit="percentunit", w=6),
        _stat(g, "Drift events", "Drift detections (ADWIN on SP and on the novelty score) in the time range.",
              [_q("A", 'SELECT count("drift") FROM "sci_drift" WHERE $timeFilter AND "stream" =~ /^$stream$/')],
              w=6),
        _series(g, "Online accuracy and AUROC", "Rolling fleet accuracy and misclassification AUROC (truth known).",
                [_q("A", f'SELECT mean("accuracy") {fleet} GROUP BY time($__interval) fill(none)', alias="accuracy"),
                 _q("B", f'SELECT mean("auroc") {fleet} GROUP BY time($__interval) fill(none)', alias="AUROC")],
                extra={"min": 0, "max": 1}),
        _series(g, "Accuracy per stream", "Rolling accuracy per stream (truth known).",
                [_q("A", f'SELECT mean("accuracy") {per} GROUP BY time($__interval), "stream" fill(none)',
                    alias="$tag_stream")], unit="percentunit", extra={"min": 0, "max": 1}),
        _panel(g, "barchart", "Calibration (reliability)", "Fleet: accuracy vs mean confidence per confidence bin "
               "over the last rolling window; a calibrated model has accuracy = confidence.",
               [_q("A", 'SELECT last("accuracy") AS "accuracy", last("confidence") AS "confidence" FROM '
                   '"sci_calibration" WHERE $timeFilter GROUP BY "bin"', alias="$tag_bin $col")],
               w=12, h=8, unit="percentunit", options={"orientation": "vertical", "legend": _LEGEND,
                                                       "xTickLabelRotation": -45}),
        _series(g, "ECE", "Rolling expected calibration error, fleet.",
                [_q("A", f'SELECT mean("ece") {fleet} GROUP BY time($__interval) fill(none)', alias="ECE")],
                unit="percentunit", extra={"min": 0}),
        _series(g, "Passes on wrong vs right windows", "Mean MC-dropout passes on windows the model got wrong vs "
                "right (truth known): SCI should spend more on the wrong ones.",
                [_q("A", f'SELECT mean("passes_wrong") {fleet} GROUP BY time($__interval) fill(none)', alias="wrong"),
                 _q("B", f'SELECT mean("passes_right") {fleet} GROUP BY time($__interval) fill(none)',
                    alias="right")]),
        _series(g, "Abstention and ΔSP-alert rates", "Rolling fleet rates of abstained windows and ΔSP alerts.",
                [_q("A", f'SELECT mean("abstain_rate") {fleet} GROUP BY time($__interval) fill(none)',
                    alias="abstention"),
                 _q("B", f'SELECT mean("alert_rate") {fleet} GROUP BY time($__interval) fill(none)', alias="alerts")],
                unit="percentunit", extra={"min": 0}),
        _series(g, "Mean SP per stream (drift input)", "Rolling mean SP per stream; the drift detector watches "
                "SP and the novelty score window by window.",
                [_q("A", f'SELECT mean("sp_mean") {per} GROUP BY time($__interval), "stream" fill(none)',
                    alias="$tag_stream")], extra={"min": 0, "max": 1}),
        _series(g, "Mean novelty per stream (drift input)", "Rolling mean novelty score per stream (the gate's "
                "score: above 1 = unfamiliar); the second input of the drift detector.",
                [_q("A", f'SELECT mean("novelty_mean") {per} GROUP BY time($__interval), "stream" fill(none)',
                    alias="$tag_stream")], extra={"min": 0}),
        _series(g, "Drift events", "Drift detections per stream and signal (sp | novelty).",
                [_q("A", 'SELECT count("drift") FROM "sci_drift" WHERE $timeFilter AND "stream" =~ /^$stream$/ '
                    'GROUP BY time($__interval), "stream", "signal" fill(none)', alias="$tag_stream $tag_signal")],
                unit="short", custom={"drawStyle": "bars", "fillOpacity": 80}),
    ]
    return _dashboard("sci-trust", "sci-monitor: model trust", "Online accuracy, misclassification AUROC, "
                      "calibration, passes on wrong vs right windows and drift, from streams.trust.", panels,
                      [_modality_var(), _stream_var(True)], links=_links())


def compute(s: Settings) -> dict[str, Any]:
    """``sci-compute``: what the controller costs: batch sizes, controller time per batch and per window."""
    g = _Grid()
    b = 'FROM "sci_batch" WHERE $timeFilter'
    panels = [
        _stat(g, "Batches", "Classifier batches in the time range.", [_q("A", f'SELECT count("size") {b}')], w=6),
        _stat(g, "Mean batch size", f"Windows per batch (configured maximum batch_size = {s.batch_size}).",
              [_q("A", f'SELECT mean("size") {b}')], w=6),
        _stat(g, "Controller time p95", "95th percentile of the SCI controller's time per batch.",
              [_q("A", f'SELECT percentile("controller_ms", 95) {b}')], unit="ms", w=6),
        _stat(g, "Controller time per window", "Mean controller time per window.",
              [_q("A", f'SELECT sum("controller_ms") / sum("size") {b}')], unit="ms", w=6),
        _series(g, "Batch size", f"Mean and max windows per batch per interval (max {s.batch_size}).",
                [_q("A", f'SELECT mean("size") {b} GROUP BY time($__interval), "worker" fill(none)',
                    alias="mean $tag_worker"),
                 _q("B", f'SELECT max("size") {b} GROUP BY time($__interval), "worker" fill(none)',
                    alias="max $tag_worker")], unit="short"),
        _series(g, "Controller time per batch", "Mean and p95 controller time per batch per interval.",
                [_q("A", f'SELECT mean("controller_ms") {b} GROUP BY time($__interval), "worker" fill(none)',
                    alias="mean $tag_worker"),
                 _q("B", f'SELECT percentile("controller_ms", 95) {b} GROUP BY time($__interval), "worker" '
                    "fill(none)", alias="p95 $tag_worker")], unit="ms"),
        _series(g, "MC passes per batch", "Total dropout passes (head samples) per batch.",
                [_q("A", f'SELECT mean("passes") {b} GROUP BY time($__interval), "worker" fill(none)',
                    alias="$tag_worker")], unit="short"),
        _series(g, "Controller time per window", "Controller time per batch / windows in the batch.",
                [_q("A", f'SELECT sum("controller_ms") / sum("size") {b} GROUP BY time($__interval), "worker" '
                    "fill(none)", alias="$tag_worker")], unit="ms"),
    ]
    return _dashboard("sci-compute", "sci-monitor: compute", "Batch sizes and SCI controller time per batch "
                      "(measurement sci_batch).", panels, [], links=_links())


def dashboards(s: Settings) -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON for ``grafana/dashboards``."""
    return {"sci-monitor.json": overview(s), "sci-stream.json": drill_down(s), "sci-trust.json": trust(s),
            "sci-compute.json": compute(s)}


# ------------------------------------------------------------------------------------------------ alerting
def _rule_query(ref: str, query: str, window_s: float) -> dict[str, Any]:
    return {"refId": ref, "relativeTimeRange": {"from": int(window_s), "to": 0}, "datasourceUid": DS_UID,
            "model": {"refId": ref, "datasource": DS, "query": query, "rawQuery": True,
                      "resultFormat": "time_series", "intervalMs": 1000, "maxDataPoints": 43200}}


def _expr(ref: str, kind: str, expression: str, **extra: Any) -> dict[str, Any]:
    return {"refId": ref, "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": "__expr__",
            "model": {"refId": ref, "datasource": EXPR, "type": kind, "expression": expression, **extra}}


def _reduce(ref: str, of: str) -> dict[str, Any]:
    return _expr(ref, "reduce", of, reducer="last", settings={"mode": "dropNN"})


def _threshold(ref: str, of: str, op: str, value: float) -> dict[str, Any]:
    return _expr(ref, "threshold", of, conditions=[{"evaluator": {"type": op, "params": [value]}}])


def _rule(uid: str, title: str, data: list[dict], summary: str, *, no_data: str = "OK", for_: str = "2m",
          severity: str = "warning", dashboard: str = "sci-monitor") -> dict[str, Any]:
    return {"uid": uid, "title": title, "condition": data[-1]["refId"], "data": data, "dashboardUid": dashboard,
            "noDataState": no_data, "execErrState": "Error", "for": for_,
            "annotations": {"summary": summary}, "labels": {"team": "sci-monitor", "severity": severity},
            "isPaused": False}


def alert_rules(s: Settings) -> list[dict[str, Any]]:
    """The rule group's rules; every threshold is a setting (see the module docstring)."""
    win = s.rule_window_s
    tf = "$timeFilter"
    count = f'SELECT count("seq") FROM "sci_window" WHERE {tf}'
    return [
        _rule("sci-escalation-rate", "Escalation rate high", [
            _rule_query("A", f"{count} AND \"decision\" = 'abstained' GROUP BY \"stream\"", win),
            _rule_query("B", f'{count} GROUP BY "stream"', win),
            _reduce("C", "A"), _reduce("D", "B"), _expr("E", "math", "$C / $D"),
            _threshold("F", "E", "gt", s.escalation_rate_max)],
            f"{{{{ $labels.stream }}}}: more than {s.escalation_rate_max:.0%} of windows abstained (escalated) "
            f"over {win:g} s (setting escalation_rate_max)."),
        _rule("sci-alert-rate", "ΔSP alert rate high", [
            _rule_query("A", f'{count} AND "alert" >= 1 GROUP BY "stream"', win),
            _rule_query("B", f'{count} GROUP BY "stream"', win),
            _reduce("C", "A"), _reduce("D", "B"), _expr("E", "math", "$C / $D"),
            _threshold("F", "E", "gt", s.alert_rate_max)],
            f"{{{{ $labels.stream }}}}: more than {s.alert_rate_max:.0%} of windows raised a ΔSP alert over "
            f"{win:g} s (setting alert_rate_max; ΔSP levels from each model's card)."),
        _rule("sci-worker-silence", "Workers silent", [
            _rule_query("A", count, s.silence_s), _reduce("B", "A"), _threshold("C", "B", "lt", 1)],
            f"No window was stored for {s.silence_s:g} s: workers down, input stopped or storage failing "
            "(setting silence_s).", no_data="Alerting", for_="0s", severity="critical"),
        _rule("sci-latency", "Latency p95 high", [
            _rule_query("A", f'SELECT percentile("latency_ms", 95) FROM "sci_window" WHERE {tf} GROUP BY "modality"',
                        win),
            _reduce("B", "A"), _threshold("C", "B", "gt", s.latency_p95_max_ms)],
            f"{{{{ $labels.modality }}}}: produce → decision p95 above {s.latency_p95_max_ms:g} ms over {win:g} s "
            "(setting latency_p95_max_ms)."),
        _rule("sci-drift", "Input drift detected", [
            _rule_query("A", f'SELECT count("drift") FROM "sci_drift" WHERE {tf} GROUP BY "stream", "signal"', win),
            _reduce("B", "A"), _threshold("C", "B", "gt", 0)],
            f"{{{{ $labels.stream }}}}: the {{{{ $labels.signal }}}} distribution shifted (ADWIN, delta "
            f"{s.drift_delta:g}); check the model trust dashboard.", for_="0s", dashboard="sci-trust"),
    ]


def alerting(s: Settings) -> dict[str, Any]:
    """Grafana unified-alerting provisioning: rule group, contact point, notification policy (one file)."""
    return {
        "apiVersion": 1,
        "groups": [{"orgId": 1, "name": "sci-monitor", "folder": FOLDER, "interval": "1m",
                    "rules": alert_rules(s)}],
        "contactPoints": [{"orgId": 1, "name": "sci-monitor-webhook", "receivers": [{
            "uid": "sci-monitor-webhook", "type": "webhook", "disableResolveMessage": False,
            # Grafana expands ${...} from its environment when it provisions (docker-compose.yml sets it)
            "settings": {"url": "${SCI_ALERT_WEBHOOK_URL}", "httpMethod": "POST"}}]}],
        "policies": [{"orgId": 1, "receiver": "sci-monitor-webhook", "group_by": ["grafana_folder", "alertname",
                                                                                    "stream"],
                      "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"}],
    }


# ------------------------------------------------------------------------------------------------- render
def rendered(s: Settings) -> dict[str, str]:
    """Relative path -> file text of everything :func:`render` writes."""
    files = {f"dashboards/{name}": d for name, d in dashboards(s).items()}
    files["provisioning/alerting/sci-monitor.json"] = alerting(s)
    return {path: json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for path, doc in files.items()}


def render(s: Settings, out: str | Path) -> list[Path]:
    """Write the dashboards and alerting provisioning under ``out`` (e.g. the repository's ``grafana/``)."""
    paths = []
    for rel, text in rendered(s).items():
        path = Path(out) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


def queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, InfluxQL) of every InfluxDB query in a dashboard (panels, variables, annotations) or in the
    alerting file (rule data)."""
    for p in doc.get("panels", []):
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("type") == "influxdb":
                yield f"{doc['uid']} panel {p['title']!r} {t['refId']}", t["query"]
    for v in doc.get("templating", {}).get("list", []):
        yield f"{doc['uid']} variable {v['name']}", v["query"]
    for a in doc.get("annotations", {}).get("list", []):
        if a.get("datasource", {}).get("type") == "influxdb":
            yield f"{doc['uid']} annotation {a['name']!r}", a["query"]
    for group in doc.get("groups", []):
        for rule in group["rules"]:
            for d in rule["data"]:
                if d["datasourceUid"] != "__expr__":
                    yield f"rule {rule['uid']} {d['refId']}", d["model"]["query"]
