"""A CSV training log that survives a resume: ``<run>/csv/metrics.csv`` keeps the rows of earlier attempts.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so resuming a run (or re-evaluating a
finished one) lost every earlier row. :class:`ResumableCSVLogger` reads the existing rows instead and, at its first
write, keeps those logged before the first step this process logs (later rows are being replayed from the resumed
checkpoint and would otherwise appear twice); then it appends as Lightning's writer does.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _ResumableWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # Lightning's removes metrics.csv here
        self._previous: list[dict[str, Any]] = []
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self._previous = [row for row in csv.DictReader(fh)]
            self._fs.rm_file(self.metrics_file_path)

    def save(self) -> None:
        previous, self._previous = getattr(self, "_previous", []), []
        if previous and self.metrics:
            first = min(int(m["step"]) for m in self.metrics)
            kept = [{k: v for k, v in row.items() if v not in ("", None)} for row in previous
                    if row.get("step") not in (None, "") and int(float(row["step"])) < first]
            self.metrics = kept + self.metrics
        elif previous:  # nothing new to write yet: keep the old rows for the next save
            self._previous = previous
            return
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/<name>/metrics.csv`` across resumes (see the module docstring)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment
