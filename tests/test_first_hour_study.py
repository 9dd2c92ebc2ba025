"""Study run ids: short readable labels for mapping-valued grid points, the full overrides in run.json and
result.json, and study folders made with the ids of earlier versions still found (resumed and summarised)."""

from __future__ import annotations

import csv
import json

import yaml

from mrlearn.engine.runfolder import RunFolder
from mrlearn.study import RunOutcome, load_study, register_runner, run_study
from mrlearn.study.spec import axis_labels, value_label

CALLS: list[str] = []
MASKS = [{"name": "random", "accelerations": [4], "center_fractions": [0.08], "fixed_per_slice": True},
         {"name": "poisson", "accelerations": [4], "calib": [16, 16]}]


def recording_runner(cfg) -> RunOutcome:
    """A stand-in run that keeps the engine's run record (run.json) and scores by its mask."""
    CALLS.append(cfg.name)
    with RunFolder(cfg.out_dir, None, cfg.seed) as run:
        run.finished()
    psnr = 30.0 + (1.0 if cfg.mask["name"] == "poisson" else 0.0)
    return RunOutcome(groups={"all": {"psnr": psnr, "ssim": 0.9, "nmse": 0.01}})


register_runner("first_hour_recording", recording_runner)


def _study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "ids", "base": "unet_demo", "runner": "first_hour_recording",
                                    "seeds": [0], "grid": {"mask": MASKS, "model.chans": [4]},
                                    "arms": {"supervised": {}}}, sort_keys=False))
    return path


def test_ids_are_short_and_readable(tmp_path):
    runs = load_study(_study(tmp_path)).runs()
    assert [r.run_id for r in runs] == ["supervised__mask-random_4_0.08_fixed_per_slice__chans-4__seed0",
                                        "supervised__mask-poisson_4_16_16__chans-4__seed0"]
    # the id the user met before (keys and values of the mapping, sorted) is kept as the legacy id
    assert runs[0].legacy_id == ("supervised__mask-accelerations_4_center_fractions_0.08_fixed_per_slice_true_"
                                 "name_random__chans-4__seed0")
    assert value_label(0.25) == "0.25" and value_label(["PDFS"]) == "PDFS" and value_label({"name": "dwa"}) == "dwa"
    long = value_label({"name": "x", "a": list(range(40))})
    assert len(long) <= 32 and long != value_label({"name": "x", "a": list(range(41))})
    # values whose short labels coincide keep distinct (earlier-style) labels
    same = axis_labels([{"name": "random", "fixed": True}, {"name": "random", "fixed": False}, {"name": "poisson"}])
    assert len(set(same)) == 3 and same[2] == "poisson"


def test_run_json_and_result_json_hold_the_full_overrides(tmp_path):
    out = tmp_path / "out"
    run_study(load_study(_study(tmp_path)), out, log=lambda s: None)
    run_dir = out / "runs" / "supervised__mask-random_4_0.08_fixed_per_slice__chans-4__seed0"
    for record in (json.loads((run_dir / "run.json").read_text())["study_run"],
                   json.loads((run_dir / "result.json").read_text())):
        assert record["overrides"] == {"mask": MASKS[0], "model.chans": 4, "seed": 0}
        assert record["run_id"] == run_dir.name and record["arm"] == "supervised"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"  # the engine's record is kept


def test_a_study_folder_with_the_earlier_ids_is_resumed_and_summarised(tmp_path):
    spec = load_study(_study(tmp_path))
    out = tmp_path / "out"
    run_study(spec, out, log=lambda s: None)
    for run in spec.runs():  # the folder as an earlier version wrote it
        (out / "runs" / run.run_id).rename(out / "runs" / run.legacy_id)
        result = out / "runs" / run.legacy_id / "result.json"
        old = json.loads(result.read_text())  # its id was in the record and in the config's name and out_dir
        old["config"] = old["config"].replace(run.run_id, run.legacy_id)
        result.write_text(json.dumps({**old, "run_id": run.legacy_id}))
    (out / "study.csv").unlink()
    CALLS.clear()
    lines: list[str] = []
    run_study(load_study(_study(tmp_path)), out, log=lines.append)
    assert CALLS == []  # both finished runs were found under their old ids, nothing ran again
    assert sum("finished before, skipped" in line for line in lines) == 2
    rows = list(csv.DictReader((out / "study.csv").open()))
    legacy = {r.legacy_id for r in spec.runs()}
    assert {r["run_id"] for r in rows} == legacy and sorted(float(r["psnr"]) for r in rows) == [30.0, 31.0]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(legacy)  # no new folders beside them
    run_study(load_study(_study(tmp_path)), out, log=lambda s: None, only_summary=True)
    assert CALLS == []
