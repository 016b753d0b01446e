"""The `sci-monitor` CLI as a user runs it: one-line errors, evaluation from committed checkpoints, determinism."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from models.checkpoint import available_checkpoints
from streams.stack import free_ports

REQUIRED_METHOD_KEYS = {"error", "auroc_delta_sp", "mean_passes", "passes_correct", "passes_wrong",
                        "abstain_rate", "aurc", "ece", "auroc_misclassification", "escalation_rate", "risk_answered",
                        "coverage", "per_class", "per_label_answered"}


def cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sci_monitor", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, needle", [
    (("evaluate", "--dataset", "nope"), "invalid choice"),
    (("evaluate", "--dataset", "cwru", "--checkpoint", "missing-model"), "no checkpoint 'missing-model'"),
    (("evaluate", "--dataset", "cwru", "--bootstrap", "0"), "--bootstrap: must be >= 1"),
    (("evaluate", "--dataset", "cwru", "--device", "tpu"), "--device: expected auto, cpu, cuda or cuda:N"),
    (("train", "--dataset", "cwru", "--device", "tpu"), "--device: expected auto, cpu, cuda or cuda:N"),
    (("train", "--dataset", "cwru", "--cv"), "--cv needs a recipe with record folds: mitdb"),
    (("worker", "--device", "tpu"), "--device: invalid choice: 'tpu'"),
    (("replay", "--dataset", "mitdb", "--speed", "nan"), "--speed: expected a finite number >= 0"),
    (("replay", "--dataset", "mitdb", "--max-windows", "-3"), "--max-windows: must be >= 1"),
    (("replay", "--dataset", "eeg"), "invalid choice: 'eeg'"),
    (("replay", "--files", "a.npy"), "--files needs --modality"),
    (("replay", "--files", "a.npy", "--dataset", "mitdb"), "not allowed with argument"),
    (("replay", "--dataset", "mitdb", "--fs", "250"), "--modality, --fs, --channel, --lead and --unit describe"),
    (("replay", "--dataset", "mitdb", "--unit", "uV"), "--modality, --fs, --channel, --lead and --unit describe"),
    (("replay", "--files", "a.npy", "--modality", "ecg", "--records", "100"), "--records names recordings"),
    (("replay", "--files", "nowhere/a.npy", "--modality", "ecg", "--fs", "250"), "no such recording"),
    (("replay", "--files", "a.npy", "--modality", "ecg", "--fs", "0"), "--fs: must be > 0"),
    (("demo", "--duration", "inf"), "--duration: expected a finite number"),
    (("stack", "statu"), "invalid choice: 'statu'"),
    (("config", "show"), "batch_size"),
    (("nope",), "invalid choice: 'nope'"),
    ((), "the following arguments are required: COMMAND"),
])
def test_misuse_gives_one_line_errors(args, needle):
    r = cli(*args, env={"SCI_BATCH_SIZE": "lots"} if args == ("config", "show") else None)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("sci-monitor") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr and r.stdout == ""


def _startup_failure(r) -> str:
    """The worker exits 2 after its bounded wait: one warning line per missing dependency, then one error line."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert lines[-1].startswith("sci-monitor: error: ") and len(lines) <= 3, r.stderr
    return lines[-1]


def test_worker_start_up_without_broker_or_influxdb_is_one_line(tmp_path):
    (closed,) = free_ports(1)
    env = {"SCI_STARTUP_WAIT_S": "1"}
    last = _startup_failure(cli("worker", "--bootstrap", f"127.0.0.1:{closed}", env=env, timeout=60))
    assert f"Kafka at 127.0.0.1:{closed} not reachable after 1 s" in last and "sci-monitor stack up" in last
    with socket.socket() as broker:  # something listening where the broker should be; InfluxDB is not there
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        port = broker.getsockname()[1]
        last = _startup_failure(cli("worker", "--bootstrap", f"127.0.0.1:{port}", "--influx-url",
                                    f"http://127.0.0.1:{closed}", env=env, timeout=60))
    assert f"InfluxDB at http://127.0.0.1:{closed} not reachable after 1 s" in last and "Kafka" not in last


def test_debug_shows_the_traceback():
    r = cli("--debug", "evaluate", "--dataset", "cwru", "--checkpoint", "missing-model")
    assert r.returncode == 1 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr


def test_help_and_version_import_neither_torch_nor_faust():
    code = ("import sys; from sci_monitor.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'faust', 'streams.app', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("sci-monitor ")


def test_config_show_json_and_output_folders(tmp_path):
    r = cli("config", "show", "--json", env={"SCI_BATCH_SIZE": "7"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["batch_size"] == 7
    out = tmp_path / "deep" / "er" / "settings.json"
    r = cli("config", "show", "--json", str(out))
    assert r.returncode == 0 and "effective settings" in r.stdout and json.loads(out.read_text())["app_id"]


def test_config_show_masks_secrets():
    r = cli("config", "show", env={"SCI_INFLUX_TOKEN": "s3cr3t-token", "SCI_INFLUX_PASSWORD": "hunter2"})
    assert r.returncode == 0, r.stderr
    assert "s3cr3t-token" not in r.stdout and "hunter2" not in r.stdout and "***" in r.stdout


@pytest.mark.parametrize("dataset", ["cwru", "mitdb"])
def test_evaluate_runs_from_committed_checkpoints(dataset, tmp_path):
    assert dataset in available_checkpoints()
    out = tmp_path / "report.json"
    r = cli("evaluate", "--dataset", dataset, "--json", str(out), "--plots", str(tmp_path), "--bootstrap", "50",
            "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["dataset"] == dataset and "test" in report["split"]
    methods = report["methods"]
    assert {"deterministic", "fixed_t", "max_prob", "entropy", "sci_paper", "sci_threshold", "sci_bound",
            "controller"} <= set(methods)
    for name, m in methods.items():
        assert set(m) >= REQUIRED_METHOD_KEYS, name
        assert 0 <= m["error"] <= 1 and 0 <= m["mean_passes"] <= 25  # gated windows spend no pass
        assert m["coverage"] == pytest.approx(1 - m["escalation_rate"], abs=2e-5)
        assert sum(d["answered"] for d in m["per_label_answered"].values()) == round(m["coverage"] * m["n"])
    assert methods["fixed_t"]["mean_passes"] == 25 and methods["deterministic"]["mean_passes"] == 1
    # every method saw the same windows; the SCI policies spend fewer passes than fixed-T
    assert len({m["n"] for m in methods.values()}) == 1
    assert all(methods[f"sci_{p}"]["mean_passes"] < 25 for p in ("paper", "threshold", "bound"))
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(f"{dataset}_{k}.png" for k in ("risk_coverage", "passes_hist", "delta_sp"))


def test_evaluate_runs_any_registered_policy(tmp_path):
    out = tmp_path / "report.json"
    r = cli("evaluate", "--dataset", "cwru", "--json", str(out), "--bootstrap", "10", "--device", "cpu",
            "--policies", "bound")
    assert r.returncode == 0, r.stderr[-2000:]
    methods = json.loads(out.read_text())["methods"]
    assert {m for m in methods if m.startswith("sci_")} == {"sci_bound"} and "controller" in methods
    r = cli("evaluate", "--dataset", "cwru", "--policies", "nope", "--device", "cpu")
    assert r.returncode == 2 and "unknown SCI policy 'nope'" in r.stderr


def test_calibrate_rewrites_the_card_from_the_weights_alone(tmp_path):
    import shutil

    from models.checkpoint import CHECKPOINT_DIR

    for suffix in (".pt", ".json"):
        shutil.copy(CHECKPOINT_DIR / f"cwru{suffix}", tmp_path / f"cwru{suffix}")
    weights = (tmp_path / "cwru.pt").read_bytes()
    r = cli("calibrate", "--dataset", "cwru", "--out", str(tmp_path), "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "cwru.pt").read_bytes() == weights  # no retraining
    card = json.loads((tmp_path / "cwru.json").read_text())
    c = card["controller"]
    assert c["risk"]["alpha"] == 0.01 and c["novelty"]["false_novelty_rate"] == 0.01
    assert c["alerts"]["warning"] <= c["alerts"]["critical"] and c["quality"]["train_flag_rate"] < 0.01
    assert (tmp_path / "cwru.novelty.pt").is_file() and card["metrics"]["method"] == "controller"


def test_training_is_deterministic_for_a_seed(tmp_path):
    for run in ("a", "b"):
        r = cli("train", "--dataset", "paper-bearings", "--seed", "7", "--out", str(tmp_path / run),
                "--device", "cpu")
        assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(tmp_path / "a" / "paper-bearings.pt")
    b = torch.load(tmp_path / "b" / "paper-bearings.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = json.loads((tmp_path / "a" / "paper-bearings.json").read_text())
    assert card["seed"] == 7 and card["classes"] == ["normal", "fault"] and card["temperature"] == 1.0
    assert card["metrics"]["split"] == "test" and card["code_version"]
