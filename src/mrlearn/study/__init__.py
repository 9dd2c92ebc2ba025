"""mrlearn.study: grids of experiment runs (arms x dotted-key overrides x seeds), resumable, summarised in a report.

``load_study(path)`` parses a study YAML (``study.spec``), ``run_study(spec, out, executor=...)`` runs what is not
finished - one after another, in local worker processes or as Ray tasks (``study.executors``) - and writes
``study.csv`` and ``report.html`` (``study.runner``, ``study.summary``, ``study.stats``). Used by ``mrlearn study``.
"""

from mrlearn.study.results import RunOutcome
from mrlearn.study.runner import get_runner, register_runner, run_study
from mrlearn.study.spec import RunSpec, StudySpec, apply_override, load_study, run_config, study_from_dict

__all__ = ["RunOutcome", "RunSpec", "StudySpec", "apply_override", "get_runner", "load_study", "register_runner",
           "run_config", "run_study", "study_from_dict"]
