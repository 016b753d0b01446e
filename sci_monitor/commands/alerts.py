"""`sci-monitor alerts subscribe`: follow escalations and ΔSP alerts, filtered, to a terminal, webhook or command."""

from __future__ import annotations

import argparse
import sys

from sci_monitor import options

NAME = "alerts"
HELP = "subscribe to escalations and ΔSP alerts (terminal, webhook or command)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["subscribe"])
    options.add_settings(p, influx=False)
    p.add_argument("--name", required=True, help="subscription name = its own consumer group (resumes there)")
    p.add_argument("--stream", nargs="+", help="stream glob patterns, e.g. 'mitdb-1*' (default: all)")
    p.add_argument("--modality", nargs="+", help="modalities to keep, e.g. ecg vibration (default: all)")
    p.add_argument("--reason", nargs="+", help="reasons to keep, e.g. budget unfamiliar (default: all)")
    p.add_argument("--kind", nargs="+", choices=["escalation", "alert"], default=["escalation", "alert"])
    p.add_argument("--min-severity", choices=["warning", "critical"], default="warning")
    p.add_argument("--cooldown", type=options.non_negative_float, default=60.0,
                   help="seconds: at most one notification per stream per cool-down, with the count held back")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout instead of readable lines")
    p.add_argument("--webhook", help="POST each notification to this http(s) URL")
    p.add_argument("--secret-env", help="environment variable holding the webhook signing secret (HMAC-SHA256)")
    p.add_argument("--command", help="run this command per notification, the JSON on its stdin")
    p.add_argument("--max-attempts", type=options.positive_int, default=5,
                   help="delivery tries before giving up (default 5)")
    p.add_argument("--backoff", type=options.non_negative_float, default=0.5,
                   help="first retry delay in s, doubling (default 0.5)")
    p.add_argument("--from-beginning", action="store_true",
                   help="a new subscription starts at the oldest event (default: new events only)")


def run(a: argparse.Namespace) -> int:
    import logging
    import shlex

    from streams.alerts import (
        CommandDestination,
        EventFilter,
        Subscriber,
        TerminalDestination,
        WebhookDestination,
        run_subscription,
        secret_from_env,
    )

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    retry = {"max_attempts": a.max_attempts, "backoff_s": a.backoff}
    dests = []
    if a.webhook:
        dests.append(WebhookDestination(a.webhook, secret_from_env(a.secret_env), **retry))
    if a.command:
        dests.append(CommandDestination(shlex.split(a.command), **retry))
    if a.json or not dests:
        dests.append(TerminalDestination(sys.stdout, as_json=a.json))
    flt = EventFilter(streams=tuple(a.stream or ()), modalities=tuple(a.modality or ()),
                      reasons=tuple(a.reason or ()), kinds=tuple(a.kind), min_severity=a.min_severity)
    sub = Subscriber(options.settings(a), a.name, flt, dests, cooldown_s=a.cooldown, from_beginning=a.from_beginning)
    stats = run_subscription(sub)
    options.log(f"subscription {a.name}: read {stats.read}, matched {stats.matched}, "
                f"notifications {stats.delivered}, invalid {stats.invalid}")
    return 0
