"""The `sci-monitor` command line.

Offline: train, evaluate, reproduce-paper, rpeaks, data. Online: stack, worker, replay, config, demo.
Misuse and known failures print one line (``sci-monitor: error: ...``) and exit 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

err = Console(stderr=True, highlight=False, markup=False)
out = Console(highlight=False)


class CliError(Exception):
    """A user-facing error: printed as one line."""


def _device(pref: str) -> str:
    from models.device import resolve_device

    return str(resolve_device(pref))


# ---------------------------------------------------------------- offline commands
def cmd_train(a: argparse.Namespace) -> int:
    from controller.evaluation import train_command
    from models.recipes import RECIPES

    names = list(RECIPES) if a.dataset == "all" else [a.dataset]
    for name in names:
        card = train_command(name, seed=a.seed, device=_device(a.device), log=err.print,
                             **({"checkpoint_dir": Path(a.out)} if a.out else {}))
        m = card.metrics[card.metrics["method"]]
        err.print(f"[{name}] test split, policy {card.metrics['method']}: error {m['error']:.4f}, "
                  f"AUROC(1−SP) {m['auroc_1_minus_sp']}, mean passes {m['mean_passes']}")
    return 0


def _methods_table(title: str, methods: dict[str, dict]) -> Table:
    t = Table(title=title)
    cols = ("error", "macro_f1", "auroc_delta_sp", "auroc_1_minus_sp", "mean_passes", "passes_correct",
            "passes_wrong", "abstain_rate", "accuracy_non_abstained", "aurc", "ece")
    t.add_column("method", no_wrap=True, min_width=13)
    for c in cols:
        t.add_column(c.replace("_", " "), justify="right")
    for name, m in methods.items():
        t.add_row(name, *("—" if m.get(c) is None else f"{m[c]:.4g}" for c in cols))
    return t


def cmd_evaluate(a: argparse.Namespace) -> int:
    from controller.evaluation import evaluate

    report = evaluate(a.dataset, a.checkpoint, Path(a.json) if a.json else None,
                      Path(a.plots) if a.plots else None, _device(a.device), n_boot=a.bootstrap, log=err.print)
    out.print(_methods_table(f"{report['dataset']}: {report['split']}", report["methods"]))
    return 0


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def cmd_reproduce(a: argparse.Namespace) -> int:
    from controller.paper import PAPER_TABLE4, SEEDS, reproduce

    seeds = tuple(a.seeds) if a.seeds else SEEDS
    result = reproduce(seeds, _device(a.device), log=err.print)
    t = Table(title=f"Paper Table 4 vs this run (seeds {', '.join(map(str, seeds))}, test sets pooled)")
    for c in ("row", "source", "error", "AUROC ΔSP [95% CI]", "passes correct", "passes wrong", "abstain"):
        t.add_column(c, justify="right" if c not in ("row", "source") else "left", no_wrap=c == "row")
    for row, r in result["rows"].items():
        q = PAPER_TABLE4[row]
        t.add_row(row, "paper (quoted)", f"{q['error']:.2%}", f"{q['auroc_delta_sp']:.2f}",
                  f"{q['passes_correct']:.2f}", f"{q['passes_wrong']:.2f}", "—")
        lo, hi = r["auroc_delta_sp_ci95"]
        t.add_row("", "ours (run)", f"{r['error']:.2%} ({r['n_errors']}/{r['n']})",
                  f"{_fmt(r['auroc_delta_sp'])} [{_fmt(lo)}, {_fmt(hi)}]", _fmt(r["passes_correct"]),
                  _fmt(r["passes_wrong"]), f"{r['abstain_rate']:.1%}")
    out.print(t)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
        err.print(f"wrote {a.json}")
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from models.data.fetch import fetch

    report = fetch(a.dataset, Path(a.dir) if a.dir else None)
    out.print(report.summary)
    return 0


# ---------------------------------------------------------------- online commands
SETTING_FLAGS = {  # CLI flag -> Settings field
    "bootstrap": "kafka_bootstrap", "influx_url": "influx_url", "influx_version": "influx_version",
    "influx_db": "influx_db", "influx_org": "influx_org", "influx_bucket": "influx_bucket",
    "batch_size": "batch_size", "batch_timeout": "batch_timeout_s", "device": "device", "state_dir": "state_dir",
    "app_id": "app_id",
}


def _settings(a: argparse.Namespace):
    from streams.settings import load_settings

    overrides = {field: getattr(a, flag) for flag, field in SETTING_FLAGS.items() if getattr(a, flag, None) is not None}
    return load_settings(a.config, overrides)


def cmd_stack(a: argparse.Namespace) -> int:
    from streams.stack import LocalStack

    stack = LocalStack(_settings(a))
    if a.action == "up":
        out.print(str(stack.up()))
    elif a.action == "down":
        stack.down()
        out.print("local stack stopped")
    else:
        status = stack.status()
        out.print(str(status))
        return 0 if status.healthy else 1
    return 0


def cmd_worker(a: argparse.Namespace) -> int:
    from streams.app import run_worker

    run_worker(_settings(a), loglevel=a.loglevel)
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from streams.replay import replay_command

    summary = replay_command(_settings(a), dataset=a.dataset, records=a.records, speed=a.speed,
                             max_windows=a.max_windows, progress=not a.no_progress)
    out.print(summary)
    return 0


def cmd_rpeaks(a: argparse.Namespace) -> int:
    from streams.rpeak_check import rpeaks_command

    return rpeaks_command(a.records, a.checkpoint, a.data_dir, Path(a.json) if a.json else None, _device(a.device),
                          out)


def cmd_config(a: argparse.Namespace) -> int:
    s = _settings(a)
    t = Table(title="effective settings (flags > SCI_* env > TOML > defaults)")
    t.add_column("setting")
    t.add_column("value")
    for k, v in s.masked().items():
        t.add_row(k, str(v))
    out.print(t)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(_settings(a), duration_s=a.duration, speed=a.speed, console=out)


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from models.recipes import RECIPES

    p = argparse.ArgumentParser(prog="sci-monitor", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    datasets = list(RECIPES)
    t = add("train", cmd_train, "train a model, calibrate it on validation and save a checkpoint")
    t.add_argument("--dataset", choices=[*datasets, "all"], required=True)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    t.add_argument("--out", help="checkpoint directory (default: the package's models/checkpoints)")

    e = add("evaluate", cmd_evaluate, "compare SCI policies with baselines on a checkpoint's test split")
    e.add_argument("--dataset", choices=datasets, required=True)
    e.add_argument("--checkpoint", help="checkpoint name or .json path (default: the dataset's committed one)")
    e.add_argument("--json", help="write the report to this JSON file")
    e.add_argument("--plots", help="write PNG plots into this directory")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the AUROC CIs")
    e.add_argument("--device", default="auto")

    r = add("reproduce-paper", cmd_reproduce, "run the paper's protocol and print it beside its Table 4")
    r.add_argument("--json", help="write the rows to this JSON file")
    r.add_argument("--seeds", type=int, nargs="+", help="seeds (default 42 100 2024)")
    r.add_argument("--device", default="auto")

    def online(sp: argparse.ArgumentParser, kafka: bool = True, influx: bool = True, worker: bool = False) -> None:
        sp.add_argument("--config", help="TOML settings file (see `sci-monitor config show`)")
        sp.add_argument("--state-dir", help="local stack state directory (default .state)")
        if kafka:
            sp.add_argument("--bootstrap", help="Kafka bootstrap servers host:port[,host:port]")
        if influx:
            sp.add_argument("--influx-url")
            sp.add_argument("--influx-version", choices=["auto", "1", "2"])
            sp.add_argument("--influx-db", help="1.x database")
            sp.add_argument("--influx-org", help="2.x organisation (token from SCI_INFLUX_TOKEN)")
            sp.add_argument("--influx-bucket", help="2.x bucket")
        if worker:
            sp.add_argument("--batch-size", type=int)
            sp.add_argument("--batch-timeout", type=float, help="seconds to wait to fill a batch")
            sp.add_argument("--device", choices=["auto", "cpu", "cuda"])
            sp.add_argument("--app-id", help="Faust app id = consumer group")

    st = add("stack", cmd_stack, "start, stop or check the local broker and InfluxDB")
    st.add_argument("action", choices=["up", "down", "status"])
    online(st, kafka=False, influx=False)

    w = add("worker", cmd_worker, "run a streaming worker (Faust) until interrupted")
    online(w, worker=True)
    w.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])

    rp = add("replay", cmd_replay, "publish real recordings as live sensor streams")
    online(rp, influx=False)
    rp.add_argument("--dataset", choices=["mitdb", "cwru"], required=True)
    rp.add_argument("--records", nargs="+", help="MIT-BIH record names or CWRU file ids (default: a few test ones)")
    rp.add_argument("--speed", type=float, default=1.0, help="× real time; 0 = as fast as possible")
    rp.add_argument("--max-windows", type=int, help="stop after this many windows")
    rp.add_argument("--no-progress", action="store_true")

    rk = add("rpeaks", cmd_rpeaks, "streaming R-peak detector vs the reference annotations; live vs offline labels")
    rk.add_argument("--records", nargs="+", help="MIT-BIH records (default: all 44)")
    rk.add_argument("--checkpoint", default="mitdb", help="model for the label agreement ('none' to skip)")
    rk.add_argument("--data-dir", help="data directory (default: SCI_DATA_DIR or ../shared/data)")
    rk.add_argument("--json", help="write the per-record numbers to this JSON file")
    rk.add_argument("--device", default="auto")

    c = add("config", cmd_config, "print the effective settings (secrets masked)")
    c.add_argument("action", choices=["show"])
    online(c, worker=True)

    dm = add("demo", cmd_demo, "start the local stack and a worker, replay ECG and vibration streams, summarise")
    online(dm, kafka=False, influx=False)
    dm.add_argument("--duration", type=float, default=60.0, help="seconds of replay (default 60)")
    dm.add_argument("--speed", type=float, default=10.0, help="× real time (default 10)")

    d = add("data", cmd_data, "download a dataset from its publisher (skips files already present)")
    d.add_argument("action", choices=["fetch"])
    d.add_argument("dataset", choices=["mitdb", "cwru"])
    d.add_argument("--dir", help="data directory (default: SCI_DATA_DIR or ../shared/data)")
    return p


KNOWN_ERRORS: tuple[type[BaseException], ...] = (CliError, FileNotFoundError, ValueError, RuntimeError,
                                                 ConnectionError, TimeoutError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except KNOWN_ERRORS as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"sci-monitor: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
