"""`sci-monitor replay`: publish recordings as live sensor streams."""

from __future__ import annotations

import argparse
import dataclasses

from sci_monitor import options

NAME = "replay"
HELP = "publish real recordings as live sensor streams"


def _datasets() -> list[str]:
    from streams.modalities import replay_datasets

    return list(replay_datasets())


def _file_modalities() -> list[str]:
    from streams.modalities import file_modalities

    return list(file_modalities())


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_settings(p, influx=False)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=options.LazyChoices(_datasets), metavar="NAME",
                        help="a replay dataset of the modality registry (mitdb, cwru)")
    source.add_argument("--files", nargs="+", metavar="PATH",
                        help="your own recordings (WFDB record, EDF, .mat, .npy, .csv; any rate), resampled to the "
                        "model's rate; needs --modality")
    p.add_argument("--records", nargs="+", help="MIT-BIH record names or CWRU file ids (default: a few test ones)")
    p.add_argument("--modality", choices=options.LazyChoices(_file_modalities), metavar="NAME",
                   help="what --files hold (ecg, vibration)")
    p.add_argument("--fs", type=options.positive_float, metavar="HZ",
                   help="sampling rate of --files that do not state it (.mat, .npy, .csv); WFDB and EDF headers "
                   "state theirs")
    p.add_argument("--channel", metavar="NAME", help="lead, variable or column of --files to stream (default: ECG "
                   "MLII, else II; vibration *DE_time; else the file's only channel)")
    p.add_argument("--lead", metavar="NAME", help="the lead --files announce (default: the channel's name; name it "
                   "for arrays, whose columns are numbered: a lead no model serves is escalated as unsupported_lead)")
    p.add_argument("--unit", metavar="UNIT", help="unit of --files that do not state it (.mat, .npy, .csv): ECG mV "
                   "(default), uV or V; vibration g (default), m/s^2 or mg; WFDB and EDF headers state theirs")
    p.add_argument("--speed", type=options.non_negative_float, default=1.0,
                   help="× real time; 0 = as fast as possible (default 1)")
    p.add_argument("--max-windows", type=options.positive_int, help="stop after this many windows")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--replay-id", help="repeat an earlier replay with the same time stamps (its points are "
                   "overwritten, not added); printed at the end of every replay")
    options.add_json(p, "the summary")


def render(summary) -> None:
    from rich.table import Table

    t = Table(title=f"replay to {summary.topic}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("windows sent / acknowledged", f"{summary.sent} / {summary.produced}")
    t.add_row("failed sends", str(summary.failed))
    if summary.new_sessions:
        t.add_row("new producer sessions", str(summary.new_sessions))
    t.add_row("replay id", str(summary.replay_id))
    t.add_row("time", f"{summary.elapsed_s:.1f} s ({summary.windows_per_s:.0f} windows/s)")
    labels = ", ".join(f"{k} {v}" for k, v in sorted(summary.labels.items()))
    t.add_row("with ground truth", f"{summary.labelled} ({labels or 'none'})")
    for stream, n in sorted(summary.per_stream.items()):
        t.add_row(f"  {stream}", str(n))
    for e in summary.errors:
        t.add_row("error", e)
    options.console().print(t)


def run(a: argparse.Namespace) -> int:
    from streams.replay import replay_command

    if a.files and a.modality is None:
        raise ValueError("--files needs --modality (what the files hold)")
    if a.files and a.records:
        raise ValueError("--records names recordings of a --dataset; with --files, list the files")
    if a.dataset and (a.modality or a.fs or a.channel or a.lead or a.unit):
        raise ValueError("--modality, --fs, --channel, --lead and --unit describe --files; a --dataset knows its own")
    summary = replay_command(options.settings(a), dataset=a.dataset, records=a.records, speed=a.speed,
                             max_windows=a.max_windows, progress=not a.no_progress and a.json != "-",
                             replay=a.replay_id, files=a.files or (), modality=a.modality, fs=a.fs,
                             channel=a.channel, lead=a.lead, unit=a.unit)
    options.emit(a, {**dataclasses.asdict(summary), "windows_per_s": summary.windows_per_s, "ok": summary.ok},
                 lambda: render(summary))
    if not summary.ok:  # a window the broker never acknowledged is a lost window: say so in the exit code
        options.console(stderr=True).print(f"sci-monitor: error: {summary.sent - summary.produced} of "
                                           f"{summary.sent} windows were not acknowledged by the broker")
        return 1
    return 0
