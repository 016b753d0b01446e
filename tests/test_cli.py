"""The `sci-monitor` CLI as a user runs it: one-line errors, evaluation from committed checkpoints, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from models.checkpoint import available_checkpoints

REQUIRED_METHOD_KEYS = {"error", "auroc_delta_sp", "mean_passes", "passes_correct", "passes_wrong",
                        "abstain_rate", "aurc", "ece", "auroc_misclassification", "escalation_rate", "risk_answered",
                        "coverage"}


def cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sci_monitor", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, needle", [
    (("evaluate", "--dataset", "nope"), "invalid choice"),
    (("evaluate", "--dataset", "cwru", "--checkpoint", "missing-model"), "no checkpoint 'missing-model'"),
    (("config", "show"), None),
])
def test_misuse_gives_one_line_errors(args, needle):
    r = cli(*args, env={"SCI_BATCH_SIZE": "lots"} if needle is None else None)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("sci-monitor") and (needle is None or needle in last)
    if needle is None:
        assert "batch_size" in last or "BATCH_SIZE" in last


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
