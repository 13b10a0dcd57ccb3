"""Metrics out of the loop: a CSV of every term, TensorBoard, and a progress bar."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from tqdm import tqdm


class NonFiniteLoss(RuntimeError):
    pass


class MetricsLogger:
    """Appends rows to ``<workdir>/<name>.csv`` (resume keeps earlier rows) and TensorBoard;
    ``active=False`` (every process but the first of a multi-host run) writes nothing."""

    def __init__(self, workdir, name: str = "train", tensorboard: bool = True, active=True):
        self.path = Path(workdir) / f"{name}.csv"
        self.fields: list[str] | None = None
        self.active = active
        self.tb = None
        if not active:
            return
        if self.path.exists():
            with self.path.open() as f:
                self.fields = next(csv.reader(f), None)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(Path(workdir) / "tb" / name))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        row = {"step": step, **metrics}
        if self.fields is None:
            self.fields = list(row)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        elif any(k not in self.fields for k in row):
            self._widen([k for k in row if k not in self.fields])
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def _widen(self, new: list[str]) -> None:
        """Rewrite the CSV with columns ``new`` added (empty in the rows before): a term that
        first appears late, such as a task's loss in a multi-task run (flaxdistil/multitask.py)."""
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        self.fields = self.fields + new
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint (they will be produced again)."""
        if not self.active or not self.path.exists():
            return
        with self.path.open() as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
        with self.path.open("w", newline="") as f:
            csv.writer(f).writerows(keep)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def check_finite(step: int, metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLoss(
            f"non-finite metrics at step {step}: {bad}; training stopped, the last good "
            "checkpoint is kept (lower the learning rate or check the data)"
        )


class Progress:
    """tqdm bar with steps/s, tokens/s, the loss terms and ETA."""

    def __init__(self, total: int, initial: int, desc: str, disable: bool = False):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=disable,
            dynamic_ncols=True,
            mininterval=1.0,
            smoothing=0.1,
        )
        self.t0, self.tokens = time.perf_counter(), 0
        self.per_task: dict[str, str] = {}  # '<task>/loss': the last one, between its steps

    def update(self, n: int, tokens: int, metrics: dict[str, float]) -> None:
        self.tokens += tokens
        dt = max(time.perf_counter() - self.t0, 1e-9)
        shown = {
            k.removeprefix("loss_"): f"{v:.3g}" for k, v in metrics.items() if k.startswith("loss")
        }
        self.per_task.update({k: f"{v:.3g}" for k, v in metrics.items() if "/" in k})
        shown.update(self.per_task)
        self.bar.set_postfix(tok_s=f"{self.tokens / dt:,.0f}", **shown, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
