"""scripts/demo_full.py (make demo) end to end with --smoke (4 steps per phase, 128 training
snippets): the real MiniLM teacher and four 3-layer students in two pairs from the same weights,
the table, the checks, and the exports checked in transformers."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_distill_job import ENV

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("teacher", "distill", "baseline_ft", "distill_pre", "baseline")


def _loss_kd(run_dir: Path) -> list[float]:
    with (run_dir / "train.csv").open() as f:
        return [float(r.get("loss_kd") or 0.0) for r in csv.DictReader(f)]


def test_demo_smoke_runs_both_protocols(tmp_path):
    pytest.importorskip("torch")
    r = subprocess.run(
        [sys.executable, "scripts/demo_full.py", "--smoke", "--workdir", str(tmp_path)],
        cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=1200,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "movie_snippets"
    summary = json.loads((work / "results.json").read_text())
    assert list(summary["models"]) == list(ARMS)
    layers = {k: m["layers"] for k, m in summary["models"].items()}
    assert layers == {"teacher": 6, **{k: 3 for k in ARMS[1:]}}
    for kd, twin in (("distill", "baseline_ft"), ("distill_pre", "baseline")):
        c = summary["checks"][kd]
        assert c["twin"] == twin and c["export_checked_in_transformers"] is True
        assert max(c["export_max_abs_diff"].values()) < 1e-4
        acc = (summary["models"][k]["test"]["accuracy"] for k in (kd, twin))
        assert c["beats_twin_without_teacher"] == (next(acc) > next(acc))
        assert all(x > 0 for x in _loss_kd(work / kd)), kd  # KD on in the distilled arm ...
        assert not any(_loss_kd(work / twin)), twin  # ... and off in its twin
    rows = (work / "results.md").read_text().splitlines()
    assert len(rows) == 2 + len(ARMS) and "teacher's L3 slice, no teacher" in rows[4]
    for kd, label in (
        ("distill", "teacher's L3 slice + KD"),
        ("distill_pre", "pretrained L3 slice + KD"),
    ):
        verdict = (
            "beats" if summary["checks"][kd]["beats_twin_without_teacher"] else "does NOT beat"
        )
        (line,) = [x for x in r.stdout.splitlines() if x.startswith(f"{label}: ")]
        assert f"; {verdict} its twin without the teacher" in line, line
