"""mrlearn.study: grids of experiment runs (arms x dotted-key overrides x seeds), resumable, summarised in a report.

``load_study(path)`` parses a study YAML (``study.spec``), ``run_study(spec, out)`` runs what is not finished and
writes ``study.csv`` and ``report.html`` (``study.runner``, ``study.summary``). Used by ``mrlearn study``.
"""

from mrlearn.study.runner import RUNNERS, RunOutcome, register_runner, run_study
from mrlearn.study.spec import RunSpec, StudySpec, apply_override, load_study, run_config, study_from_dict

__all__ = ["RUNNERS", "RunOutcome", "RunSpec", "StudySpec", "apply_override", "load_study", "register_runner",
           "run_config", "run_study", "study_from_dict"]
