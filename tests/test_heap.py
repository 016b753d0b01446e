"""The worker's garbage collector (streams/heap.py): the frozen start-up heap and the pause histogram."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from prometheus_client import CollectorRegistry, Histogram

from streams.heap import GcPauses

# run in a child process: a frozen heap is never collected, which the test session's own heap must not suffer
_FROZEN_CHILD = textwrap.dedent("""
    import gc, time, weakref
    from streams.heap import freeze_startup_heap

    class Node:
        pass

    def cycles(n):
        nodes = [Node() for _ in range(n)]
        for a, b in zip(nodes, nodes[1:] + nodes[:1]):
            a.next = b
        return nodes

    def full_collection_s():
        t0 = time.perf_counter()
        gc.collect()
        return time.perf_counter() - t0

    heap = [cycles(10) for _ in range(30_000)]  # 300,000 long-lived tracked objects, as a loaded worker has
    old = Node(); old.self = old
    old_ref = weakref.ref(old)
    before = min(full_collection_s() for _ in range(3))
    frozen = freeze_startup_heap()
    after = min(full_collection_s() for _ in range(3))
    del old
    new = Node(); new.self = new
    new_ref = weakref.ref(new)
    del new
    gc.collect()
    print(frozen >= 300_000, old_ref() is not None, new_ref() is None, after < before / 10)
""")


def test_a_frozen_start_up_heap_is_skipped_by_full_collections():
    r = subprocess.run([sys.executable, "-c", _FROZEN_CHILD], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # every start-up object frozen; a start-up cycle dropped later stays (the price), a new one is collected;
    # a full collection no longer walks the start-up heap
    assert r.stdout.split() == ["True", "True", "True", "True"], r.stdout


def test_collection_pauses_are_observed_by_generation_until_removed():
    registry = CollectorRegistry()
    pauses = GcPauses(Histogram("pause_seconds", "doc", ("generation",), registry=registry))

    def observed(generation: int) -> float | None:
        return registry.get_sample_value("pause_seconds_count", {"generation": str(generation)})

    try:
        for generation in (0, 1, 2):
            gc.collect(generation)
    finally:
        pauses.remove()
    counts = [observed(g) for g in (0, 1, 2)]
    assert all(c is not None and c >= 1 for c in counts), counts
    gc.collect(2)
    assert observed(2) == counts[2]  # removed: no longer observed


def test_a_collection_inside_the_histograms_own_lock_does_not_deadlock():
    """A collection can start at any allocation, also while a thread holds the histogram's lock (the /metrics
    thread copies the labelled children under it); the callback must not need that lock."""
    import threading

    histogram = Histogram("pause_seconds", "doc", ("generation",), registry=CollectorRegistry())
    pauses = GcPauses(histogram)

    def collect_under_the_lock() -> None:
        with histogram._lock:
            gc.collect()

    try:
        t = threading.Thread(target=collect_under_the_lock, daemon=True)
        t.start()
        t.join(timeout=10)
        assert not t.is_alive(), "the GC callback waited on the histogram's own lock"
    finally:
        pauses.remove()
