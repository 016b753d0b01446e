"""`sci-monitor rpeaks`: the streaming R-peak detector against the reference annotations, and live vs offline labels.

Per MIT-BIH record:

- **detector**: :func:`streams.rpeaks.detect_rpeaks` fed in the replay's chunks, compared with every reference beat
  annotation (all AAMI classes, Q included) by :func:`wfdb.processing.compare_annotations`: a detection matches a
  reference beat within :data:`MATCH_TOLERANCE_S` (150 ms, the usual ANSI/AAMI EC57 tolerance). Sensitivity =
  matched / reference beats, PPV = matched / detections, offset = detection − reference (ms) of the matched pairs.
- **labels**: the model's deterministic label (no dropout) of each live window (:func:`streams.replay.ecg_windows`,
  centred on the detected peak, beat features from the detected stream) against the label of the offline beat
  (:func:`models.data.mitdb.load_beats`, centred on the R fiducial of the annotation, features from the annotations;
  both sides use :func:`models.data.fiducial.r_fiducial`) it matches within 150 ms: the agreement. Accuracy offline
  = over all offline N/S/V/F beats; accuracy live = over the live windows whose ground truth is known (an annotated
  beat's R fiducial within the replay's 50 ms label tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.data import mitdb
from streams.replay import CHUNK_S, ecg_windows
from streams.rpeaks import detect_rpeaks

MATCH_TOLERANCE_S = 0.150


def _rate(num: int, den: int) -> float:
    """num / den, NaN when there is nothing to count.

    >>> _rate(3, 4), _rate(0, 0)
    (0.75, nan)
    """
    return num / den if den else float("nan")


@dataclass
class RecordCheck:
    """Detector and label agreement of one record (or the pooled ``overall`` row); counts are beats."""

    record: str
    n_ref: int = 0
    n_det: int = 0
    n_match: int = 0
    offsets_ms: np.ndarray | None = None  # detection − reference of matched pairs
    n_pairs: int = 0  # live windows matched to an offline beat
    n_agree: int = 0
    n_offline: int = 0
    n_offline_correct: int = 0
    n_live: int = 0  # live windows with a known ground truth
    n_live_correct: int = 0

    @property
    def sensitivity(self) -> float:
        return _rate(self.n_match, self.n_ref)

    @property
    def ppv(self) -> float:
        return _rate(self.n_match, self.n_det)

    @property
    def median_abs_offset_ms(self) -> float:
        o = self.offsets_ms
        return float(np.median(np.abs(o))) if o is not None and o.size else float("nan")

    @property
    def agreement(self) -> float:
        return _rate(self.n_agree, self.n_pairs)

    @property
    def accuracy_offline(self) -> float:
        return _rate(self.n_offline_correct, self.n_offline)

    @property
    def accuracy_live(self) -> float:
        return _rate(self.n_live_correct, self.n_live)

    def summary(self) -> dict:
        """JSON-ready numbers (rates rounded to 5 digits)."""
        d = {k: v for k, v in asdict(self).items() if k != "offsets_ms"}
        for k in ("sensitivity", "ppv", "median_abs_offset_ms", "agreement", "accuracy_offline", "accuracy_live"):
            v = getattr(self, k)
            d[k] = None if not np.isfinite(v) else round(v, 5)
        return d

    @staticmethod
    def pool(name: str, rows: Sequence[RecordCheck]) -> RecordCheck:
        ints = {k: sum(getattr(r, k) for r in rows) for k in asdict(RecordCheck("")) if k not in ("record",
                                                                                                "offsets_ms")}
        offsets = [r.offsets_ms for r in rows if r.offsets_ms is not None]
        return RecordCheck(name, offsets_ms=np.concatenate(offsets) if offsets else None, **ints)


def _predict(model: torch.nn.Module, x: np.ndarray, aux: np.ndarray, device: str | torch.device) -> np.ndarray:
    """Deterministic labels int64[N] of windows float32[N, L] with features float32[N, A], in batches of 4096."""
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 4096):
            xb = torch.as_tensor(x[i : i + 4096], device=device)
            ab = torch.as_tensor(aux[i : i + 4096], device=device)
            out.append(model(xb, ab).argmax(dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def _nearest(ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index int64[m] of the nearest element of sorted, non-empty ``ref`` int64[n] to each of ``x`` int64[m].

    >>> _nearest(np.array([10, 20, 40]), np.array([0, 14, 16, 31, 99])).tolist()
    [0, 0, 1, 2, 2]
    """
    j = np.clip(np.searchsorted(ref, x), 1, max(ref.size - 1, 1))
    lo = np.maximum(j - 1, 0)
    hi = np.minimum(j, ref.size - 1)
    return np.where(np.abs(ref[lo] - x) <= np.abs(ref[hi] - x), lo, hi)


def check_record(name: str, model: torch.nn.Module | None = None, classes: Sequence[str] = mitdb.CLASSES,
                 root: str | Path | None = None, device: str | torch.device = "cpu") -> RecordCheck:
    """Detector statistics of record ``name``; with ``model`` also the live/offline label agreement."""
    from wfdb.processing import compare_annotations

    rec = mitdb.load_record(name, root, lead=None)
    tol = round(MATCH_TOLERANCE_S * rec.fs)
    det = detect_rpeaks(rec.signal, rec.fs, chunk=max(1, round(CHUNK_S * rec.fs)))
    # compare_annotations matches when |test − ref| < window_width: tol + 1 makes the tolerance inclusive
    cmp = compare_annotations(rec.beat_samples, det, tol + 1)
    cmp.compare()
    m = cmp.matching_sample_nums
    hit = m >= 0
    out = RecordCheck(str(name), n_ref=int(rec.beat_samples.size), n_det=int(det.size), n_match=int(hit.sum()),
                      offsets_ms=(det[m[hit]] - rec.beat_samples[hit]) * 1000.0 / rec.fs)
    if model is None or rec.lead != mitdb.LEAD:
        return out
    offline = mitdb.load_beats([name], root)
    live = list(ecg_windows(name, root, start_ns=0))
    if not live or not len(offline):
        return out
    p_off = _predict(model, offline.x, offline.aux, device)
    x_live = np.stack([w.samples for w in live])
    aux_live = np.asarray([w.features["beat"] for w in live], np.float32)
    p_live = _predict(model, x_live, aux_live, device)
    s_live = np.asarray([int(w.meta["sample"]) for w in live])
    j = _nearest(offline.sample, s_live)
    pair = np.abs(offline.sample[j] - s_live) <= tol
    truth = np.asarray([classes.index(w.label) if w.label in classes else -1 for w in live])
    known = truth >= 0
    out.n_pairs = int(pair.sum())
    out.n_agree = int((p_live[pair] == p_off[j[pair]]).sum())
    out.n_offline = len(offline)
    out.n_offline_correct = int((p_off == offline.y).sum())
    out.n_live = int(known.sum())
    out.n_live_correct = int((p_live[known] == truth[known]).sum())
    return out


def check_records(records: Sequence[str], checkpoint: str | None = "mitdb", root: str | Path | None = None,
                  device: str | torch.device = "cpu") -> list[RecordCheck]:
    """:func:`check_record` for each record (label agreement with the ``checkpoint`` model unless None)."""
    model = None
    classes: Sequence[str] = mitdb.CLASSES
    if checkpoint:
        model, card = load_checkpoint(checkpoint, device)
        classes = tuple(card.classes)
    return [check_record(r, model, classes, root, device) for r in records]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def rpeaks_command(records: Sequence[str] | None, checkpoint: str | None, root: str | Path | None,
                   json_out: Path | None, device: str | torch.device, console) -> int:
    """`sci-monitor rpeaks`: per-record table, the pooled rows (all, DS1, DS2), optionally a JSON file."""
    import json

    from rich.table import Table

    names = [str(r) for r in (records or mitdb.ALL_RECORDS)]
    ckpt = None if checkpoint in (None, "", "none") else checkpoint
    rows = check_records(names, ckpt, root, device)
    pooled = [RecordCheck.pool("all", rows)]
    for split, members in (("DS1", mitdb.DS1), ("DS2", mitdb.DS2)):
        part = [r for r in rows if r.record in members]
        if part and len(part) < len(rows):
            pooled.append(RecordCheck.pool(split, part))
    t = Table(title=f"streaming R-peak detector vs annotations (match ≤ {MATCH_TOLERANCE_S * 1000:.0f} ms); "
                    f"labels: {ckpt or 'not checked'} (deterministic), live windows vs offline beats")
    cols = ("record", "ref", "det", "sens %", "PPV %", "med |off| ms", "agree %", "acc off %", "acc live %")
    for c in cols:
        t.add_column(c, justify="left" if c == "record" else "right")
    for r in [*rows, *pooled]:
        s = r.summary()
        t.add_row(r.record, str(r.n_ref), str(r.n_det), _pct(s["sensitivity"]), _pct(s["ppv"]),
                  "—" if s["median_abs_offset_ms"] is None else f"{s['median_abs_offset_ms']:.1f}",
                  _pct(s["agreement"]), _pct(s["accuracy_offline"]), _pct(s["accuracy_live"]))
    console.print(t)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        report = {"tolerance_s": MATCH_TOLERANCE_S, "checkpoint": ckpt,
                  "records": [r.summary() for r in rows], "pooled": [r.summary() for r in pooled]}
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0
