"""The `sci-monitor` command line.

Offline: train, evaluate, reproduce-paper, data. Online: stack, worker, replay, config, demo.
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

err = Console(stderr=True, highlight=False)
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
        err.print(f"[{name}] test ({card.split.split('/')[-1].strip()}): error {m['error']:.4f}, "
                  f"AUROC(1−SP) {m['auroc_1_minus_sp']}, mean passes {m['mean_passes']}")
    return 0


def _methods_table(title: str, methods: dict[str, dict]) -> Table:
    t = Table(title=title)
    cols = ("error", "macro_f1", "auroc_delta_sp", "auroc_1_minus_sp", "mean_passes", "passes_correct",
            "passes_wrong", "abstain_rate", "accuracy_non_abstained", "aurc", "ece")
    t.add_column("method")
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


def cmd_reproduce(a: argparse.Namespace) -> int:
    from controller.paper import PAPER_TABLE4, SEEDS, reproduce

    seeds = tuple(a.seeds) if a.seeds else SEEDS
    result = reproduce(seeds, _device(a.device), log=err.print)
    t = Table(title=f"Paper Table 4 vs this run (seeds {', '.join(map(str, seeds))}, test sets pooled)")
    for c in ("row", "source", "error", "AUROC ΔSP [95% CI]", "passes correct", "passes wrong", "abstain"):
        t.add_column(c, justify="right" if c not in ("row", "source") else "left")
    for row, r in result["rows"].items():
        q = PAPER_TABLE4[row]
        t.add_row(row, "paper (quoted)", f"{q['error']:.2%}", f"{q['auroc_delta_sp']:.2f}",
                  f"{q['passes_correct']:.2f}", f"{q['passes_wrong']:.2f}", "—")
        lo, hi = r["auroc_delta_sp_ci95"]
        fmt = (lambda v: "—" if v is None else f"{v:.2f}")
        t.add_row("", "ours (run)", f"{r['error']:.2%} ({r['n_errors']}/{r['n']})",
                  f"{fmt(r['auroc_delta_sp'])} [{fmt(lo)}, {fmt(hi)}]", fmt(r["passes_correct"]),
                  fmt(r["passes_wrong"]), f"{r['abstain_rate']:.1%}")
    out.print(t)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
        err.print(f"wrote {a.json}")
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from models.data.fetch import fetch
    from models.data.paths import data_dir

    dest = Path(a.dir) if a.dir else data_dir(must_exist=False)
    fetch(a.dataset, dest)
    return 0


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
