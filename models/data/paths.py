"""Where the raw recordings live and where derived arrays are cached.

Data directory (raw files, never copied into the repository), first match wins:
  1. the ``override`` argument,
  2. the environment variable ``SCI_DATA_DIR``,
  3. in a source checkout, ``<repo root>/../shared/data`` (repo root = the folder that holds the ``models``
     package and ``pyproject.toml``); when installed, ``$XDG_DATA_HOME/sci-monitor`` (default
     ``~/.local/share/sci-monitor``), never a folder inside ``site-packages``.
It holds one subfolder per dataset: ``mitdb/`` (WFDB files) and ``cwru/`` (``12k_DE/*.mat``,
``normal/*.mat``).

Cache directory (derived ``.npz`` arrays): ``SCI_CACHE_DIR``, default ``$XDG_CACHE_HOME/sci-monitor``
(``~/.cache/sci-monitor`` when ``XDG_CACHE_HOME`` is unset). Every cache
file name carries a hash of the builder's parameters, a format version and the source files' size and mtime,
so a cache built from other parameters, other code or other files is never read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

DATASETS = ("mitdb", "cwru")
REPO_ROOT = Path(__file__).resolve().parents[2]
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file()


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or fallback).expanduser() / "sci-monitor"


DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" if IN_CHECKOUT else _xdg("XDG_DATA_HOME", "~/.local/share")

_HINT = (
    "set SCI_DATA_DIR to the folder that holds mitdb/ and cwru/, or run `sci-monitor data fetch mitdb|cwru`"
)


class DataNotFoundError(FileNotFoundError):
    """The data directory or one of its datasets is missing; the message says what to set or run."""


def data_dir(override: str | os.PathLike[str] | None = None, must_exist: bool = True) -> Path:
    """The data root: ``override``, else ``$SCI_DATA_DIR``, else ``<repo>/../shared/data``.

    With ``must_exist`` (default) a missing folder raises :class:`DataNotFoundError`; ``must_exist=False``
    only resolves the path (used by the fetcher to know where to download to).
    """
    if override is not None:
        path, origin = Path(override), "the given data directory"
    elif os.environ.get("SCI_DATA_DIR"):
        path, origin = Path(os.environ["SCI_DATA_DIR"]), "SCI_DATA_DIR"
    else:
        path, origin = DEFAULT_DATA_DIR, "the default data directory"
    path = path.expanduser()
    if must_exist and not path.is_dir():
        raise DataNotFoundError(f"data directory not found: {path} ({origin}); {_HINT}")
    return path


def dataset_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``<data root>/<name>`` for ``name`` in ``DATASETS``; raises :class:`DataNotFoundError` if absent or
    empty."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    path = data_dir(root) / name
    if not path.is_dir() or not any(p.is_file() for p in path.rglob("*")):
        raise DataNotFoundError(
            f"dataset {name!r} not found or empty at {path}; {_HINT.replace('mitdb|cwru', name)}"
        )
    return path


def cache_dir() -> Path:
    """Folder for derived arrays: ``$SCI_CACHE_DIR``, default ``$XDG_CACHE_HOME/sci-monitor`` (created on
    demand)."""
    path = Path(os.environ["SCI_CACHE_DIR"]).expanduser() if os.environ.get("SCI_CACHE_DIR") else _xdg(
        "XDG_CACHE_HOME", "~/.cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(params: dict, sources: Iterable[Path] = ()) -> str:
    """Short hash of JSON-serialisable ``params`` plus each source file's resolved path, size and mtime."""
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sources]
    blob = json.dumps({"params": params, "sources": stamp}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_arrays(
    namespace: str,
    params: dict,
    sources: Iterable[Path],
    build: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Load ``<cache>/<namespace>/<key>.npz`` or call ``build()`` and save its arrays there (atomic rename).

    ``params`` must hold everything the result depends on, including a format ``version`` the caller bumps
    when the builder's code changes.
    """
    folder = cache_dir() / namespace
    path = folder / f"{cache_key(params, sources)}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # truncated or corrupt: rebuild
    arrays = build()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arrays
