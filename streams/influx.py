"""InfluxDB storage of per-window decisions: measurement ``sci_window``, line protocol, InfluxDB 1.x and 2.x.

Schema: tags ``stream, modality, lead, model, decision (stopped|abstained), predicted, reason, quality`` (the
input-check verdict: ``ok`` or the failed checks joined by ``+``); fields ``sp`` (float), ``delta_sp`` (float),
``passes`` (int), ``max_prob`` (float), ``latency_ms`` (float), ``seq`` (int), ``alert`` (int: 0 none, 1 warning,
2 critical, by the ΔSP levels in force for the window), ``novelty`` (float, the gate's score, > 1 unfamiliar) and
``confidence`` (float, the risk rule's score) where the card has them, ``truth`` (string) when the truth is known
and ``correct`` (bool) when a model also predicted; time = window start in ns, so a replayed window (same tags +
time) overwrites its earlier point instead of adding one. Empty tags (no lead, no model, no input checks) and
non-finite floats are left out.

Line protocol lives only here. :func:`window_point` builds one ``influxdb_client.Point``; :func:`window_points`
builds the identical lines for a whole batch with numpy string ufuncs (the hot path, several times faster than
Points; ``tests/test_influx_sink.py`` checks the equivalence); :func:`decision_columns` turns
:class:`~streams.sinks.WindowDecision` records into its columns. :class:`InfluxV1Sink` posts to ``/write`` (1.x,
and 2.x/3.x through their v1 compatibility API); :class:`InfluxV2Sink` uses ``influxdb_client``'s synchronous
write API (org/bucket/token). :func:`make_sink` picks one from the settings or from the ``X-Influxdb-Version``
header of ``GET /ping``.

Both implement :class:`~streams.sinks.WindowSink`: writes are chunked (``influx_batch_lines``) and each chunk is
tried once: connection errors, timeouts, 429 and 5xx raise :class:`~streams.sinks.SinkUnavailable`, other 4xx
:class:`~streams.sinks.SinkRejected` with the server's message. Retrying is the caller's
:class:`~streams.sinks.RetryPolicy` (the worker's, in one place). The sinks block (HTTP); call them from a thread.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import requests
from influxdb_client import Point, WritePrecision

from streams.settings import Settings
from streams.sinks import RetryPolicy, SinkError, SinkRejected, SinkUnavailable, WindowDecision

MEASUREMENT = "sci_window"
TAGS = ("decision", "lead", "modality", "model", "predicted", "quality", "reason", "stream")  # sorted, as Point
OPTIONAL_TAGS = ("lead", "quality", "reason")
FLOAT_FIELDS = ("delta_sp", "latency_ms", "max_prob", "sp")
INT_FIELDS = ("passes", "seq")
REQUIRED_COLUMNS = (*(t for t in TAGS if t not in OPTIONAL_TAGS), *FLOAT_FIELDS, *INT_FIELDS, "t0_ns")
_SD = np.dtypes.StringDType()
_ESCAPE_TAG = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})


# ------------------------------------------------------------------------------------------------ points
def window_point(stream: str, modality: str, model: str, decision: str, predicted: str, sp: float,
                 delta_sp: float, passes: int, max_prob: float, latency_ms: float, seq: int, t0_ns: int,
                 truth: str | None = None, lead: str | None = None, reason: str | None = None,
                 quality: str | None = None, novelty: float = math.nan, confidence: float = math.nan,
                 alert: int = 0) -> Point:
    """One ``sci_window`` point; ``t0_ns`` = window start (ns since epoch). NaN floats and empty tags are left
    out."""
    p = Point(MEASUREMENT)
    for key, value in zip(TAGS, (decision, lead, modality, model, predicted, quality, reason, stream), strict=True):
        if value:
            p.tag(key, value)
    p.field("sp", float(sp)).field("delta_sp", float(delta_sp)).field("passes", int(passes))
    p.field("max_prob", float(max_prob)).field("latency_ms", float(latency_ms)).field("seq", int(seq))
    p.field("alert", int(alert))
    for key, value in (("novelty", novelty), ("confidence", confidence)):
        if value is not None and math.isfinite(value):
            p.field(key, float(value))
    if truth is not None and truth != "":
        p.field("truth", str(truth))
        if predicted:
            p.field("correct", str(truth) == str(predicted))
    return p.time(int(t0_ns), WritePrecision.NS)


def window_points(rows: Mapping[str, Any]) -> list[str]:
    """Line protocol for a batch, byte-identical to ``window_point(...).to_line_protocol()`` per row.

    ``rows``: parallel 1-D arrays/lists of length n with the keys of :func:`window_point` (``stream``,
    ``modality``, ``model``, ``decision``, ``predicted``: str; ``sp``, ``delta_sp``, ``max_prob``,
    ``latency_ms``: float; ``passes``, ``seq``, ``t0_ns``: int) and optionally ``truth`` (str, ``None`` or
    ``""`` where unknown), ``lead``, ``reason`` and ``quality`` (str, ``None`` or ``""`` for no tag),
    ``novelty`` and ``confidence`` (float, NaN for none) and ``alert`` (int, 0 when absent). Scalars broadcast
    (e.g. one ``model`` for the whole batch). Built column-wise with numpy StringDType ufuncs; every row has
    ``alert`` (the first field), ``passes`` and ``seq``, so fields before ``passes`` carry a trailing comma and
    fields after ``seq`` a leading one.
    """
    missing = [k for k in REQUIRED_COLUMNS if k not in rows]
    if missing:
        raise ValueError(f"window_points: missing columns {missing}")
    cols = {k: np.asarray(v) for k, v in rows.items()}
    n = max((c.shape[0] for c in cols.values() if c.ndim == 1), default=1)
    bad = {k: c.shape for k, c in cols.items() if c.ndim > 1 or (c.ndim == 1 and c.shape[0] != n)}
    if bad:
        raise ValueError(f"window_points: columns must be scalars or 1-D of length {n}, got shapes {bad}")
    if n == 0:
        return []

    pieces: list[str | np.ndarray] = [MEASUREMENT, *(_tag_piece(key, cols[key]) for key in TAGS if key in cols), " "]
    pieces += ["alert=", _int_text(cols.get("alert", np.asarray(0))), "i,"]  # fields in Point's (sorted) order
    if "confidence" in cols:
        pieces.append(_float_piece("confidence", cols["confidence"], trailing=True))
    truth = cols.get("truth")
    if truth is not None:
        if truth.dtype == object:  # None marks unknown
            truth = np.where(np.not_equal(truth, None), truth, "")
        truth = np.broadcast_to(truth.astype(_SD), (n,))
        known = truth != ""
        if known.any():
            predicted = np.broadcast_to(cols["predicted"].astype(_SD), (n,))
            correct = np.where(truth == predicted, "correct=true,", "correct=false,")
            pieces.append(np.where(known & (predicted != ""), correct, ""))
        else:
            truth = None
    pieces += [_float_piece(k, cols[k], trailing=True) for k in ("delta_sp", "latency_ms", "max_prob", "novelty")
               if k in cols]
    pieces += ["passes=", _int_text(cols["passes"]), "i,seq=", _int_text(cols["seq"]), "i"]
    pieces.append(_float_piece("sp", cols["sp"], trailing=False))
    if truth is not None:
        escaped = np.strings.replace(np.strings.replace(truth, "\\", "\\\\"), '"', '\\"')
        pieces.append(np.where(known, ',truth="' + escaped + '"', ""))
    pieces += [" ", _int_text(cols["t0_ns"])]

    while len(pieces) > 1:  # pairwise, so each character is copied log2(len(pieces)) times, not len(pieces)
        pieces = [pieces[i] + pieces[i + 1] if i + 1 < len(pieces) else pieces[i]
                  for i in range(0, len(pieces), 2)]
    return np.broadcast_to(np.asarray(pieces[0], dtype=_SD), (n,)).tolist()


def _tag_piece(key: str, values: np.ndarray) -> str | np.ndarray:
    """``,key=value`` per row; escaped once per distinct value (a batch has few), then gathered."""
    if values.dtype == object:  # None marks "no tag"
        values = np.where(np.not_equal(values, None), values, "").astype(_SD)
    if values.ndim == 0:
        return _tag_text(key, str(values))
    distinct, index = np.unique(values, return_inverse=True)
    return np.array([_tag_text(key, str(v)) for v in distinct.tolist()], dtype=_SD)[index]


def _tag_text(key: str, value: str) -> str:
    """Point's tag escaping (``, = space \\n \\t \\r``; a trailing backslash gets a space); an empty
    value drops the tag, as with Point."""
    text = value.translate(_ESCAPE_TAG)
    text += " " if text.endswith("\\") else ""
    return f",{key}={text}" if text else ""


def _float_piece(key: str, values: np.ndarray, trailing: bool) -> str | np.ndarray:
    """``key=<repr>`` (Point trims a trailing ``.0``), trailing or leading comma; non-finite -> ``""``."""
    x = values.astype(np.float64)
    text = x.astype(_SD)
    finite = np.isfinite(x)
    whole = finite & (np.trunc(x) == x) & (np.abs(x) < 1e16)  # exactly the reprs that end in ".0"
    if whole.any():
        text = np.where(whole, np.strings.slice(text, 0, -2), text)
    piece = f"{key}=" + text + "," if trailing else f",{key}=" + text
    return piece if finite.all() else np.where(finite, piece, "")


def _int_text(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int64).astype(_SD)


def decision_columns(decisions: Sequence[WindowDecision]) -> dict[str, list[Any]]:
    """The columns of :func:`window_points` for a batch of decisions."""
    ws, rs = [d.window for d in decisions], [d.result for d in decisions]
    return {
        "stream": [w.stream for w in ws], "modality": [w.modality for w in ws], "lead": [r.lead for r in rs],
        "model": [r.model for r in rs], "decision": [d.decision for d in decisions],
        "predicted": [r.label for r in rs], "reason": [r.reason for r in rs], "sp": [r.sp for r in rs],
        "delta_sp": [r.delta_sp for r in rs], "passes": [r.passes for r in rs],
        "max_prob": [d.max_prob for d in decisions], "latency_ms": [d.latency_ms for d in decisions],
        "seq": [w.seq for w in ws], "t0_ns": [w.t0_ns for w in ws], "truth": [w.label for w in ws],
        "quality": np.array([r.quality for r in rs], dtype=object), "novelty": [r.novelty for r in rs],
        "confidence": [r.confidence for r in rs], "alert": [d.alert for d in decisions],
    }


def _as_lines(points: Iterable[str | Point]) -> list[str]:
    """Line-protocol strings (Points serialised at their ns precision); empty lines dropped."""
    lines = [p if isinstance(p, str) else p.to_line_protocol() for p in points]
    return [line for line in lines if line]


# ------------------------------------------------------------------------------------------------- sinks
class InfluxSink(abc.ABC):
    """A :class:`~streams.sinks.WindowSink` on InfluxDB: chunked writes, one attempt each; counts ``written``
    and ``failed`` points and HTTP write ``requests``.

    ``failed`` counts every point of a ``write`` call from the chunk that raised on (a 1.x "partial write"
    400 may still have stored some of them).
    """

    def __init__(self, url: str, *, db: str, rp: str = "", batch_lines: int = 5000, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.db, self.rp = db, rp
        self.batch_lines, self.timeout_s = batch_lines, timeout_s
        self.written = 0
        self.failed = 0
        self.requests = 0
        self._session = requests.Session()

    def write(self, decisions: Sequence[WindowDecision]) -> None:
        """Store a batch of decisions (one point each); see :meth:`write_lines` for errors."""
        if decisions:
            self.write_lines(window_points(decision_columns(decisions)))

    def write_lines(self, points: Iterable[str | Point]) -> None:
        """Write points (line-protocol strings or Points, all ns precision), each chunk once. Raises
        :class:`~streams.sinks.SinkUnavailable` (retry later) or :class:`~streams.sinks.SinkRejected` (4xx);
        chunks before the failing one stay written (rewrites overwrite)."""
        lines = _as_lines(points)
        for start in range(0, len(lines), self.batch_lines):
            chunk = lines[start:start + self.batch_lines]
            self.requests += 1
            try:
                self._send("\n".join(chunk).encode())
            except SinkError:
                self.failed += len(lines) - start
                raise
            self.written += len(chunk)

    @abc.abstractmethod
    def _send(self, body: bytes) -> None:
        """POST one chunk; raise :class:`SinkUnavailable` for transient failures, :class:`SinkRejected` else."""

    def health(self) -> tuple[bool, str]:
        """(True, "InfluxDB <version> at <url>") when ``GET /ping`` answers, else (False, why)."""
        try:
            r = self._session.get(f"{self.url}/ping", timeout=min(2.0, self.timeout_s))
        except requests.RequestException as exc:
            return False, f"InfluxDB at {self.url} unreachable ({type(exc).__name__})"
        ok = r.status_code < 300
        return ok, f"InfluxDB {r.headers.get('X-Influxdb-Version', '?')} at {self.url} answered {r.status_code}"

    def counters(self) -> Mapping[str, int]:
        return {"written": self.written, "failed": self.failed, "requests": self.requests}

    def _query_auth(self) -> dict[str, Any]:
        return {}

    def query(self, influxql: str, *, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL through the v1 ``/query`` API; one dict per row (columns plus series tags; ``time``
        in ns). Raises :class:`SinkError` with the server's message on errors."""
        params = {"q": influxql, "db": db or self.db, "epoch": "ns"}
        if self.rp:
            params["rp"] = self.rp
        try:
            r = self._session.post(f"{self.url}/query", data=params, timeout=self.timeout_s,
                                   **self._query_auth())
            body = r.json()
        except (requests.RequestException, ValueError) as exc:
            raise SinkError(f"InfluxQL query to {self.url} failed: {exc}") from exc
        errors = [body.get("error")] + [res.get("error") for res in body.get("results", [])]
        errors = [e for e in errors if e]
        if r.status_code != 200 or errors:
            raise SinkError(f"InfluxQL query failed ({r.status_code}): {'; '.join(errors) or r.text[:200]}")
        return [{**series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}
                for res in body.get("results", []) for series in res.get("series", [])
                for values in series["values"]]

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> InfluxSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raise_for_status(url: str, status: int, text: str) -> None:
    if status == 429 or status >= 500:
        raise SinkUnavailable(f"InfluxDB at {url} answered HTTP {status}: {text.strip()[:300]}")
    if status >= 300:
        raise SinkRejected(f"InfluxDB at {url} rejected the write (HTTP {status}): {text.strip()[:500]}")


class InfluxV1Sink(InfluxSink):
    """InfluxDB 1.x ``POST /write?db=&rp=&precision=ns`` with optional basic auth."""

    def __init__(self, url: str, *, db: str, rp: str = "", user: str = "", password: str = "",
                 **kwargs: Any) -> None:
        super().__init__(url, db=db, rp=rp, **kwargs)
        self._auth = (user, password) if user else None
        self._params = {"db": db, "precision": "ns", **({"rp": rp} if rp else {})}

    @classmethod
    def from_settings(cls, s: Settings) -> InfluxV1Sink:
        return cls(s.influx_url, db=s.influx_db, rp=s.influx_rp, user=s.influx_user,
                   password=s.influx_password, **_common(s))

    def _query_auth(self) -> dict[str, Any]:
        return {"auth": self._auth}

    def _send(self, body: bytes) -> None:
        try:
            r = self._session.post(f"{self.url}/write", params=self._params, data=body, auth=self._auth,
                                   timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise SinkUnavailable(f"InfluxDB at {self.url}: {type(exc).__name__}") from None
        _raise_for_status(self.url, r.status_code, r.text)


class InfluxV2Sink(InfluxSink):
    """InfluxDB 2.x through ``influxdb_client`` (synchronous write API, org/bucket/token).

    ``query`` uses the v1-compatible ``/query`` endpoint with ``db=bucket`` (2.x needs a DBRP mapping for it).
    """

    def __init__(self, url: str, *, bucket: str, org: str, token: str, **kwargs: Any) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        super().__init__(url, db=bucket, **kwargs)
        self.bucket, self.org, self._token = bucket, org, token
        self._client = InfluxDBClient(url=self.url, token=token, org=org, timeout=int(self.timeout_s * 1000),
                                      retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    @classmethod
    def from_settings(cls, s: Settings) -> InfluxV2Sink:
        token = s.influx_token or (f"{s.influx_user}:{s.influx_password}" if s.influx_user else "")
        return cls(s.influx_url, bucket=s.influx_bucket, org=s.influx_org, token=token, **_common(s))

    def _query_auth(self) -> dict[str, Any]:
        return {"headers": {"Authorization": f"Token {self._token}"}} if self._token else {}

    def _send(self, body: bytes) -> None:
        import urllib3
        from influxdb_client.rest import ApiException

        try:
            self._write_api.write(bucket=self.bucket, org=self.org, record=body,
                                  write_precision=WritePrecision.NS)
        except ApiException as exc:
            _raise_for_status(self.url, exc.status or 0, str(exc.body or exc.reason))
            raise SinkUnavailable(f"InfluxDB at {self.url}: no HTTP answer ({exc.reason})") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkUnavailable(f"InfluxDB at {self.url}: {type(exc).__name__}") from None

    def close(self) -> None:
        self._write_api.close()
        self._client.close()
        super().close()


def _common(s: Settings) -> dict[str, Any]:
    return {"batch_lines": s.influx_batch_lines, "timeout_s": s.influx_timeout_s}


def detect_influx_version(url: str, *, timeout_s: float = 2.0, retry: RetryPolicy | None = None) -> str:
    """"1" or "2" from ``GET /ping``'s ``X-Influxdb-Version`` header (``1.6.7~rc0`` -> "1", ``v2.7.4`` ->
    "2", 3.x -> "2"). Connection errors are retried under ``retry`` (default: one attempt); raises
    :class:`SinkError` saying what to do."""

    def ping() -> requests.Response:
        try:
            return requests.get(f"{url.rstrip('/')}/ping", timeout=timeout_s)
        except requests.RequestException as exc:
            raise SinkUnavailable(f"cannot reach InfluxDB at {url} to detect its version ({type(exc).__name__}); "
                                  "start it (`sci-monitor stack up`) or set SCI_INFLUX_VERSION=1|2") from None

    r = (retry or RetryPolicy(max_attempts=1)).call(ping, "InfluxDB version detection")
    version = r.headers.get("X-Influxdb-Version", "")
    major = version.lstrip("vV").split(".", 1)[0]
    if not major.isdigit():
        raise SinkError(f"{url}/ping answered {r.status_code} without a usable X-Influxdb-Version header "
                        f"({version!r}); set SCI_INFLUX_VERSION=1|2")
    return "1" if int(major) <= 1 else "2"


def make_sink(settings: Settings, retry: RetryPolicy | None = None) -> InfluxSink:
    """The sink for ``settings.influx_version`` ("1", "2", or "auto": detected from ``GET /ping`` under
    ``retry``)."""
    version = settings.influx_version
    if version == "auto":
        version = detect_influx_version(settings.influx_url, timeout_s=min(2.0, settings.influx_timeout_s),
                                        retry=retry)
    return InfluxV1Sink.from_settings(settings) if version == "1" else InfluxV2Sink.from_settings(settings)
