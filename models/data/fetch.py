"""Download the datasets from their publishers into a data directory (for users with internet access).

``fetch("mitdb", dest)`` -> ``dest/mitdb/NNN.{hea,dat,atr}`` for the 44 non-paced records of PhysioNet
``mitdb`` 1.0.0 (``wfdb.dl_database``) plus PhysioNet's ``SHA256SUMS.txt`` lines for those files.
``fetch("cwru", dest)`` -> ``dest/cwru/12k_DE/12k_Drive_End_<fault>_<load>_<id>.mat`` (60 drive-end fault
files, 12 kHz) and ``dest/cwru/normal/normal_0_97.mat`` from the CWRU Bearing Data Center, named as in the
shared data.

Files already present and complete are never downloaded again: mitdb files are checked against
``SHA256SUMS.txt`` when it exists (else: present, non-empty, ``.dat`` size matching its header); cwru files
must load with ``scipy.io.loadmat`` and hold a ``*_DE_time`` variable. Network failures raise
:class:`FetchError` with one line saying what failed and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from models.data.mitdb import ALL_RECORDS, wfdb  # wfdb imported without its pandas warnings
from models.data.paths import data_dir

MITDB_DB = "mitdb"
MITDB_SUMS_URL = "https://physionet.org/files/mitdb/1.0.0/SHA256SUMS.txt"
MITDB_EXTENSIONS = (".hea", ".dat", ".atr")
CWRU_URL = "https://engineering.case.edu/sites/default/files/{file_id}.mat"
_USER_AGENT = "sci-monitor-data-fetch/0.1"
_TIMEOUT_S = 60

# Publisher file numbers of the 12 kHz drive-end fault recordings at loads 0, 1, 2, 3 hp (file 157 does not
# exist).
CWRU_FAULT_IDS = {
    "B007": (118, 119, 120, 121), "B014": (185, 186, 187, 188), "B021": (222, 223, 224, 225),
    "B028": (3005, 3006, 3007, 3008),
    "IR007": (105, 106, 107, 108), "IR014": (169, 170, 171, 172), "IR021": (209, 210, 211, 212),
    "IR028": (3001, 3002, 3003, 3004),
    "OR007@3": (144, 145, 146, 147), "OR007@6": (130, 131, 132, 133), "OR007@12": (156, 158, 159, 160),
    "OR014@6": (197, 198, 199, 200),
    "OR021@3": (246, 247, 248, 249), "OR021@6": (234, 235, 236, 237), "OR021@12": (258, 259, 260, 261),
}  # fmt: skip
CWRU_NORMAL_IDS = (97,)  # normal baseline at load 0 (48 kHz, see models.data.cwru)
# relative path under dest/cwru -> publisher file id
CWRU_FILES = {
    **{
        f"12k_DE/12k_Drive_End_{code}_{load}_{fid}.mat": fid
        for code, ids in CWRU_FAULT_IDS.items()
        for load, fid in enumerate(ids)
    },
    **{f"normal/normal_{load}_{fid}.mat": fid for load, fid in enumerate(CWRU_NORMAL_IDS)},
}

_HINT = "check the internet connection, or set SCI_DATA_DIR to a folder that already holds the data"


class FetchError(RuntimeError):
    """A download failed; the message names the file, the source and what to do."""


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split())


@dataclass(frozen=True)
class FetchReport:
    """What ``fetch`` found: ``present`` files that were already complete, ``downloaded`` files it fetched
    (paths relative to ``folder`` = ``dest/<dataset>``)."""

    dataset: str
    folder: Path
    present: tuple[str, ...]
    downloaded: tuple[str, ...]

    @property
    def summary(self) -> str:
        return (
            f"{self.dataset}: {len(self.present)} files already present, {len(self.downloaded)} downloaded "
            f"in {self.folder}"
        )


def fetch(dataset: str, dest: str | Path | None = None, progress: bool = True) -> FetchReport:
    """Make ``dest/<dataset>`` complete (``dest`` defaults to ``data_dir(must_exist=False)``); returns a
    report."""
    root = Path(dest) if dest is not None else data_dir(must_exist=False)
    if dataset == "mitdb":
        return _fetch_mitdb(root.expanduser() / "mitdb", progress)
    if dataset == "cwru":
        return _fetch_cwru(root.expanduser() / "cwru", progress)
    raise ValueError(f"unknown dataset {dataset!r}; expected 'mitdb' or 'cwru'")


# ---------------------------------------------------------------------------------------------------- mitdb
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_sums(folder: Path) -> dict[str, str]:
    path = folder / "SHA256SUMS.txt"
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _dat_size_ok(folder: Path, record: str) -> bool:
    try:
        hdr = wfdb.rdheader(str(folder / record))
    except Exception:  # unreadable header = incomplete record
        return False
    if set(hdr.fmt) != {"212"}:
        return (folder / f"{record}.dat").stat().st_size > 0
    return (folder / f"{record}.dat").stat().st_size == hdr.sig_len * hdr.n_sig * 3 // 2


def _mitdb_complete(folder: Path, sums: dict[str, str]) -> tuple[list[str], list[str]]:
    """(files of complete records, incomplete record names)."""
    good, missing = [], []
    for rec in ALL_RECORDS:
        names = [rec + ext for ext in MITDB_EXTENSIONS]
        ok = all((folder / n).is_file() and (folder / n).stat().st_size > 0 for n in names)
        if ok and sums:
            ok = all(n in sums and _sha256(folder / n) == sums[n] for n in names)
        elif ok:
            ok = _dat_size_ok(folder, rec)
        if ok:
            good.extend(names)
        else:
            missing.append(rec)
    return good, missing


def _download_mitdb(folder: Path, records: list[str], progress: bool) -> None:
    for rec in records:  # drop partial or corrupt files so wfdb does not resume them
        for ext in MITDB_EXTENSIONS:
            (folder / f"{rec}{ext}").unlink(missing_ok=True)
    out = contextlib.nullcontext() if progress else contextlib.redirect_stdout(io.StringIO())
    try:
        with out:
            wfdb.dl_database(MITDB_DB, str(folder), records=records, annotators=["atr"])
    except Exception as exc:  # requests / urllib / OS errors from wfdb
        raise FetchError(
            f"could not download MIT-BIH records {records} from PhysioNet ({MITDB_DB}): {_one_line(exc)}; "
            f"{_HINT}"
        ) from exc


def _download_mitdb_sums(folder: Path) -> None:
    """Write PhysioNet's checksums of the 44 records' files to ``folder/SHA256SUMS.txt``."""
    text = _http_get(MITDB_SUMS_URL, "MIT-BIH SHA256SUMS.txt").decode()
    wanted = {rec + ext for rec in ALL_RECORDS for ext in MITDB_EXTENSIONS}
    lines = [ln for ln in text.splitlines() if len(ln.split()) == 2 and ln.split()[1].lstrip("*") in wanted]
    (folder / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")


def _fetch_mitdb(folder: Path, progress: bool) -> FetchReport:
    folder.mkdir(parents=True, exist_ok=True)
    present, missing = _mitdb_complete(folder, _read_sums(folder))
    if not missing:
        return FetchReport("mitdb", folder, tuple(present), ())
    _download_mitdb(folder, missing, progress)
    if not (folder / "SHA256SUMS.txt").is_file():
        _download_mitdb_sums(folder)
    good, still = _mitdb_complete(folder, _read_sums(folder))
    if still:
        raise FetchError(
            f"MIT-BIH records {still} in {folder} are still incomplete or fail SHA256SUMS.txt after "
            "downloading; delete them and run `sci-monitor data fetch mitdb` again"
        )
    return FetchReport("mitdb", folder, tuple(present), tuple(sorted(set(good) - set(present))))


# ----------------------------------------------------------------------------------------------------- cwru
def _mat_ok(path: Path) -> bool:
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception:  # truncated or not a .mat file
        return False
    de = [k for k in mat if k.endswith("_DE_time")]
    return len(de) == 1 and np.asarray(mat[de[0]]).size > 0


def _http_get(url: str, what: str) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
            return resp.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = _one_line(getattr(exc, "reason", exc))
        raise FetchError(f"could not download {what} from {url}: {reason}; {_HINT}") from exc


def _download_cwru_file(path: Path, file_id: int) -> None:
    data = _http_get(CWRU_URL.format(file_id=file_id), f"CWRU file {file_id}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    if not _mat_ok(Path(tmp)):
        Path(tmp).unlink(missing_ok=True)
        url = CWRU_URL.format(file_id=file_id)
        raise FetchError(
            f"CWRU file {file_id} from {url} is not a valid .mat file with a *_DE_time variable; "
            "the publisher's URL may have changed"
        )
    os.replace(tmp, path)


def _fetch_cwru(folder: Path, progress: bool) -> FetchReport:
    present = [rel for rel in CWRU_FILES if (folder / rel).is_file() and _mat_ok(folder / rel)]
    todo = [rel for rel in CWRU_FILES if rel not in present]
    if not todo:
        return FetchReport("cwru", folder, tuple(present), ())
    if progress:
        from rich.progress import track

        items = track(todo, description=f"CWRU -> {folder}")
    else:
        items = todo
    for rel in items:
        _download_cwru_file(folder / rel, CWRU_FILES[rel])
    return FetchReport("cwru", folder, tuple(present), tuple(todo))
