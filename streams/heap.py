"""The worker's garbage collector: freeze the start-up heap, and measure every collection pause.

A worker imports torch, numpy and Faust and loads its models before it consumes anything: some 300,000
GC-tracked objects that live as long as the process. CPython's full (generation 2) collection walks all of them, and
while it runs every thread waits on the GIL: the event loop, the model thread and the storage thread. ``gc.freeze()``
(the standard remedy for long-lived start-up heaps, Python docs of the ``gc`` module) moves them to a permanent
generation that collections skip, so the collections left walk only what streaming itself keeps alive.

:class:`GcPauses` times every collection through ``gc.callbacks`` into a Prometheus histogram
(``sci_gc_pause_seconds{generation}``), so the claim is visible on ``/metrics`` of a live worker.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram


def freeze_startup_heap() -> int:
    """Collect once, then move every object tracked so far to the permanent generation; returns how many.

    Call it after the long-lived state exists (models loaded, connections made), before the stream starts. Objects
    frozen are never collected, even once unreachable: call it once per process, in the process that serves.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses:
    """Observes the wall time of every garbage collection of this process into ``histogram`` (labelled by
    generation) while installed; :meth:`remove` uninstalls it. Collections are timed from ``gc.callbacks``' start
    to stop, which wraps the whole collection.

    >>> from prometheus_client import CollectorRegistry
    >>> registry = CollectorRegistry()
    >>> pauses = GcPauses(Histogram("pause_seconds", "doc", ("generation",), registry=registry))
    >>> _ = gc.collect(2)
    >>> pauses.remove()
    >>> registry.get_sample_value("pause_seconds_count", {"generation": "2"})
    1.0
    """

    def __init__(self, histogram: Histogram) -> None:
        # the labelled children exist before the first collection: a collection can start in any thread at any
        # allocation, also in one that holds the histogram's own lock (the /metrics thread copies its children
        # under it), so the callback must never take that lock, only a child's value lock (held for no allocation)
        self._children = [histogram.labels(str(g)) for g in range(3)]
        self._started = [0.0, 0.0, 0.0]
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        generation = info["generation"]
        if phase == "start":
            self._started[generation] = time.perf_counter()
        else:
            self._children[generation].observe(time.perf_counter() - self._started[generation])

    def remove(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
