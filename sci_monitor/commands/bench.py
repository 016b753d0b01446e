"""`sci-monitor bench controller|pipeline`: benchmarks that print JSON (speed targets live here, not in tests)."""

from __future__ import annotations

import argparse

from sci_monitor import options

NAME = "bench"
HELP = "benchmarks that print JSON (controller, pipeline)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH", parser_class=type(p))
    c = sub.add_parser("controller", help="SCI vs one deterministic pass, fixed-T and a per-window loop")
    options.add_json(c, "the result")
    c.add_argument("--models", nargs="+", default=["mitdb", "cwru", "paper-bearings"],
                   choices=options.recipe_names(), metavar="NAME",
                   help="checkpoints (default mitdb cwru paper-bearings)")
    c.add_argument("--batch-sizes", type=options.positive_int, nargs="+", default=[1, 64, 1024])
    c.add_argument("--windows", type=options.positive_int, default=1024,
                   help="test windows per batch size > 1 (default 1024)")
    c.add_argument("--loop-windows", type=options.positive_int, default=128,
                   help="windows at batch 1 and in the per-window loop (default 128)")
    c.add_argument("--repeats", type=options.positive_int, default=3, help="timed runs per method (best is kept)")
    c.add_argument("--threads", type=options.positive_int,
                   help="torch intra-op threads (default: the worker's, OMP_NUM_THREADS or half the cores)")
    options.add_device(c, default="cpu")
    p_ = sub.add_parser("pipeline", help="full worker vs bare Faust pass-through on a private local stack")
    options.add_json(p_, "the result")
    p_.add_argument("--windows", type=options.positive_int, default=20_000, help="backlog for the throughput phase")
    p_.add_argument("--latency-seconds", type=options.positive_float, default=30.0,
                    help="paced phase at half the pipeline rate (default 30)")
    p_.add_argument("--batch-size", type=options.positive_int,
                    help="worker and pass-through batch (default: the setting)")
    p_.add_argument("--batch-timeout", type=options.positive_float, metavar="S",
                    help="worker and pass-through wait to fill a batch, s (default: the setting)")
    p_.add_argument("--fetch-wait", type=options.positive_float, metavar="S",
                    help="worker and pass-through Kafka fetch wait, s (default: the setting)")
    p_.add_argument("--workers", type=options.positive_int, default=1,
                    help="worker processes in the pipeline's consumer group (default 1; at most the input topic's "
                         "partitions)")


def run(a: argparse.Namespace) -> int:
    if a.bench == "controller":
        import torch

        from controller.bench import bench_controller
        from models.device import worker_threads

        torch.set_num_threads(a.threads or worker_threads())
        options.prepare_output(a.json)
        result = bench_controller(a.models, a.batch_sizes, a.windows, a.loop_windows, a.repeats,
                                  options.resolve_device(a.device), log=options.log)
    else:
        from streams.bench import bench_pipeline

        options.prepare_output(a.json)
        result = bench_pipeline(a.windows, a.latency_seconds, a.batch_size, a.workers, log=options.log,
                                batch_timeout_s=a.batch_timeout, fetch_wait_s=a.fetch_wait)
    options.emit(a, result, lambda: options.console().print_json(data=result))
    return 0
