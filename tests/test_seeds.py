"""Seeds: each seed's run gets its own train.seed and workdir, finished seeds are reused, the
summary is mean +- std (ddof=1), and paired bootstrap intervals behave as they must."""

import json

import ml_collections
import numpy as np
import pytest

from flaxdistil import seeds


def _fake_job(calls, shift=0.0):
    def job(cfg, workdir):
        calls.append(cfg.train.seed)
        workdir.mkdir(parents=True)
        acc = 0.5 + 0.1 * cfg.train.seed + shift
        res = {"test": {"accuracy": acc, "mcc": 0.2 * cfg.train.seed}}
        (workdir / "results.json").write_text(json.dumps(res))
        return res

    return job


def test_run_seeds_summarises_and_reuses(tmp_path):
    cfg = ml_collections.ConfigDict({"train": {"seed": 99}})
    calls = []
    out = seeds.run_seeds(_fake_job(calls), cfg, tmp_path / "a", [0, 1, 2])
    assert calls == [0, 1, 2] and cfg.train.seed == 99  # the caller's config is untouched
    acc = np.array([0.5, 0.6, 0.7])
    assert out["test"]["accuracy"] == pytest.approx((acc.mean(), acc.std(ddof=1)))
    again = seeds.run_seeds(_fake_job(calls), cfg, tmp_path / "a", [0, 1, 2, 3])
    assert calls == [0, 1, 2, 3]  # seeds 0-2 were read back, only seed 3 ran
    assert json.loads((tmp_path / "a" / "seeds.json").read_text())["seeds"] == [0, 1, 2, 3]
    assert len(again["runs"]) == 4


def test_paired_bootstrap():
    assert seeds.paired_bootstrap([1, 2, 3], [2, 3, 4]) == (1.0, 1.0, 1.0)  # a constant shift
    mean, lo, hi = seeds.paired_bootstrap([0, 0, 0], [0.1, 0.3, 0.2])
    assert mean == pytest.approx(0.2) and 0.1 <= lo < mean < hi <= 0.3  # within the pairs' range
    mean, lo, hi = seeds.paired_bootstrap([0, 0, 0, 0], [0.3, -0.3, 0.2, -0.2])
    assert lo < 0 < hi  # differences of both signs: not significant
    with pytest.raises(ValueError, match="equal-length"):
        seeds.paired_bootstrap([], [])


def test_arms_table_marks_significant_differences(tmp_path):
    cfg = ml_collections.ConfigDict({"train": {"seed": 0}})
    seeds.run_seeds(_fake_job([]), cfg, tmp_path / "base", [0, 1, 2])
    seeds.run_seeds(_fake_job([]), cfg, tmp_path / "same", [0, 1, 2])
    seeds.run_seeds(_fake_job([], shift=0.05), cfg, tmp_path / "better", [0, 1, 2])
    arms = {k: tmp_path / k for k in ("base", "same", "better")}
    lines = seeds.arms_table(arms, ["accuracy"]).splitlines()
    assert lines[2].startswith("| base | 3 | 0.6000 ± 0.1000 |")
    assert lines[3].endswith("| +0.0000 [+0.0000, +0.0000] |")  # no star: not significant
    assert lines[4].endswith("| +0.0500 [+0.0500, +0.0500]* |")


def test_seed_placeholder_reads_the_same_seeds_first_stage(tmp_path):
    cfg = ml_collections.ConfigDict(
        {"train": {"seed": 0}, "student": {"path": "gd/seed_{seed}/student_hf", "layers": ""}}
    )
    paths = []

    def job(c, workdir):
        paths.append(c.student.path)
        return _fake_job([])(c, workdir)

    seeds.run_seeds(job, cfg, tmp_path / "ft", [3, 5])
    assert paths == ["gd/seed_3/student_hf", "gd/seed_5/student_hf"]
    assert cfg.student.path == "gd/seed_{seed}/student_hf"
