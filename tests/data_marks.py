"""Skip marks for tests that read the real recordings (``SCI_DATA_DIR``, default ``../shared/data``)."""

from __future__ import annotations

import pytest

from models.data.paths import DataNotFoundError, dataset_dir


def needs_data(name: str) -> pytest.MarkDecorator:
    """Skip when dataset ``name`` ("mitdb" | "cwru") is absent; the reason says what to set or run."""
    try:
        dataset_dir(name)
    except DataNotFoundError as exc:
        return pytest.mark.skipif(True, reason=f"{name} data absent: {exc}")
    return pytest.mark.skipif(False, reason=f"{name} data present")
