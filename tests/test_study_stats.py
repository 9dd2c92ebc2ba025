"""Study statistics: crossed seeds x subjects interval (closed forms, coverage by simulation), Holm, verdict rules,
subjects from patient_id, cells.csv and a summary recomputed from it."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from mrlearn.study import RunOutcome, load_study, register_runner, run_study
from mrlearn.study.stats import (MIN_SEEDS, MIN_SUBJECTS, cell_matrix, complete, counts, crossed_interval, holm,
                                 interval_arrays, mean_squares, paired_ci, verdict)

# ------------------------------------------------------------------------------------------ interval: closed forms


def test_constant_cells_and_missing_cells():
    ci = crossed_interval(np.full((3, 4), 0.7))
    assert (ci.mean, ci.low, ci.high) == pytest.approx((0.7, 0.7, 0.7)) and (ci.subjects, ci.seeds) == (4, 3)
    D = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, 5.0], [5.0, 6.0, 7.0]])  # one missing cell: its subject is dropped
    C, rows, cols = complete(D)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [0, 1] and counts(D) == (2, 3)
    assert crossed_interval(D).mean == pytest.approx(np.mean(D[:, :2]))
    D2 = np.array([[1.0, np.nan, np.nan], [3.0, 4.0, 5.0], [5.0, 6.0, 7.0]])  # a seed with most cells missing goes
    assert complete(D2)[1].tolist() == [1, 2] and counts(D2) == (3, 2)
    assert all(math.isnan(x) for x in (crossed_interval(np.full((1, 1), 1.0)).low, crossed_interval(np.empty((0, 0))).mean))


def test_mean_squares_and_variance_match_a_hand_computed_anova():
    D = np.array([[1.0, 2.0, 4.0, 3.0], [2.0, 2.5, 5.0, 4.5], [0.5, 2.0, 3.5, 2.0]])  # S = 3 seeds, V = 4 subjects
    S, V = D.shape
    m, r, c = D.mean(), D.mean(axis=1), D.mean(axis=0)
    ms_a, ms_b, ms_e = mean_squares(D)
    assert ms_a == pytest.approx(V * np.sum((r - m) ** 2) / 2)
    assert ms_b == pytest.approx(S * np.sum((c - m) ** 2) / 3)
    assert ms_e == pytest.approx(np.sum((D - r[:, None] - c[None, :] + m) ** 2) / 6)
    assert ms_a > ms_e and ms_b > ms_e  # both components positive: Var = (MS_A + MS_B - MS_E) / (S V)
    var = (ms_a + ms_b - ms_e) / (S * V)
    df = (ms_a + ms_b - ms_e) ** 2 / (ms_a ** 2 / 2 + ms_b ** 2 / 3 + ms_e ** 2 / 6)
    ci = crossed_interval(D)
    assert ci.se == pytest.approx(math.sqrt(var)) and ci.df == pytest.approx(df)
    assert ci.high - ci.mean == pytest.approx(sps.t.ppf(0.975, df) * math.sqrt(var))
    assert ci.p_value() == pytest.approx(2 * sps.t.sf(m / math.sqrt(var), df))


def test_one_seed_is_the_t_interval_over_subjects():
    x = np.array([0.1, 0.3, 0.2, 0.4])
    ci = crossed_interval(x[None, :])
    mean, low, high, n = paired_ci(x)
    assert (ci.mean, ci.low, ci.high, ci.df) == pytest.approx((mean, low, high, n - 1))


def test_seeds_are_units_of_replication():
    # a large seed effect widens the interval far beyond what the subjects alone give
    rng = np.random.default_rng(2)
    D = np.array([1.0, -1.0, 0.5])[:, None] + rng.normal(0, 0.1, size=20)[None, :]
    ci, one = crossed_interval(D), crossed_interval(D[:1])
    assert (ci.high - ci.low) > 5 * (one.high - one.low)


def test_slices_are_not_units_of_replication():
    # 50 slices per subject instead of one, same per-subject means: the same interval (a t-interval over slices shrinks)
    rng = np.random.default_rng(3)
    per_subject = rng.normal(0.2, 1.0, size=5)
    few = {(0, f"v{v}"): [per_subject[v]] for v in range(5)}
    noise = [rng.normal(0, 0.01, 50) for _ in range(5)]
    many = {(0, f"v{v}"): list(per_subject[v] + noise[v] - noise[v].mean()) for v in range(5)}
    a, b = crossed_interval(cell_matrix(few)[0]), crossed_interval(cell_matrix(many)[0])
    assert (a.low, a.high) == pytest.approx((b.low, b.high))
    _, lo_t, hi_t, _ = paired_ci([x for v in many.values() for x in v])
    assert (hi_t - lo_t) < 0.5 * (a.high - a.low)  # pseudo-replication would claim far more certainty


# ------------------------------------------------------------------------------------ interval: coverage by simulation

SCENARIOS = {  # (sd seed, sd subject, sd interaction)
    "seed dominates": (1.0, 0.2, 0.2),
    "subject dominates": (0.2, 1.0, 0.2),
    "interaction dominates": (0.2, 0.2, 1.0),
}
SIZES = ((3, 8), (3, 10), (5, 12))  # seeds x subjects: the presets' test splits, and a larger study


def simulate(S: int, V: int, sa: float, sb: float, se: float, n: int = 2000, seed: int = 0) -> np.ndarray:
    """``n`` studies ``D[s, v] = mu + a_s + b_v + e_sv`` with mu = 0.3: ``[n, S, V]``."""
    rng = np.random.default_rng(seed)
    return (0.3 + rng.normal(0, sa, (n, S, 1)) + rng.normal(0, sb, (n, 1, V)) + rng.normal(0, se, (n, S, V)))


def coverage(S: int, V: int, sa: float, sb: float, se: float, n: int = 4000) -> tuple[float, float, float]:
    """(coverage of mu, mean width, width of the oracle z interval with the true variance) at nominal 0.95."""
    D = simulate(S, V, sa, sb, se, n)
    mean, half, _, _ = interval_arrays(D)
    oracle = 2 * 1.959964 * math.sqrt(sa ** 2 / S + sb ** 2 / V + se ** 2 / (S * V))
    return float((np.abs(mean - 0.3) <= half).mean()), float((2 * half).mean()), oracle


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mix", list(SCENARIOS), ids=lambda m: m.replace(" ", "_"))
def test_interval_coverage_at_the_presets_sizes(size, mix):
    cov, width, oracle = coverage(*size, *SCENARIOS[mix])
    assert cov >= 0.93, f"coverage {cov:.3f} at {size} with {mix}"
    assert width < 2.0 * oracle, f"mean width {width:.3f} vs oracle {oracle:.3f}"  # not absurdly conservative


def test_the_vectorised_interval_is_the_one_the_report_uses():
    D = simulate(3, 8, 0.5, 0.5, 0.5, n=5, seed=7)
    mean, half, se, df = interval_arrays(D)
    for i in range(5):
        ci = crossed_interval(D[i])
        assert (ci.mean, ci.high - ci.mean, ci.se, ci.df) == pytest.approx((mean[i], half[i], se[i], df[i]))


def percentile_bootstrap(D: np.ndarray, n_boot: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The former interval, vectorised over studies ``D[n, S, V]``: resample seeds and subjects independently with
    replacement, mean of the picked cells, 2.5 and 97.5 percentiles of the replicates."""
    rng = np.random.default_rng(seed)
    n, S, V = D.shape
    si = rng.integers(0, S, size=(n, n_boot, S))
    vi = rng.integers(0, V, size=(n, n_boot, V))
    picked = D[np.arange(n)[:, None, None, None], si[:, :, :, None], vi[:, :, None, :]]
    reps = picked.mean(axis=(-2, -1))
    return np.percentile(reps, 2.5, axis=1), np.percentile(reps, 97.5, axis=1)


def test_the_former_percentile_bootstrap_under_covers_at_3_x_3():
    # why it was replaced: with 3 seeds x 3 subjects the two-way percentile bootstrap misses far more than 5 %
    for sa, sb, se in (SCENARIOS["seed dominates"], SCENARIOS["subject dominates"]):  # old: 0.77 in both
        D = simulate(3, 3, sa, sb, se, n=1000, seed=1)
        low, high = percentile_bootstrap(D)
        old = float(((low <= 0.3) & (0.3 <= high)).mean())
        mean, half, _, _ = interval_arrays(D)
        new = float((np.abs(mean - 0.3) <= half).mean())
        assert old < 0.85 and new >= 0.93, (old, new)


# ------------------------------------------------------------------------------------------------- Holm and verdicts


def test_holm_against_a_hand_computed_example():
    # sorted p: 0.01, 0.02, 0.03, 0.04 with m = 4 -> 0.04, 0.06, 0.06 (running max of 0.06), 0.06 (0.04 x 1)
    adj = holm([0.03, 0.01, float("nan"), 0.04, 0.02])
    assert adj[:2] == pytest.approx([0.06, 0.04]) and math.isnan(adj[2])
    assert adj[3:] == pytest.approx([0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []


def test_holm_matches_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    p = np.random.default_rng(0).uniform(0, 0.1, 12)
    assert holm(p) == pytest.approx(multipletests(p, alpha=0.05, method="holm")[1].tolist())


def test_verdict_rules():
    n, s = MIN_SUBJECTS, MIN_SEEDS
    assert (n, s) == (8, 3)
    assert verdict(0.1, 0.5, n, s) == "better" and verdict(-0.5, -0.1, 10, 5) == "worse"
    assert verdict(-0.1, 0.5, n, s) == "no clear difference"
    assert verdict(0.1, 0.5, 7, s) == "no verdict: 7 subject(s) < 8"
    assert verdict(0.1, 0.5, n, 2) == "no verdict: 2 seed(s) < 3"
    assert verdict(0.1, 0.5, n, s, not_converged=["stl"]) == "no verdict: not converged: stl"
    assert verdict(0.1, 0.5, n, s, unknown=["mtl"]) == "no verdict: convergence not recorded: mtl"
    assert verdict(0.1, 0.5, n, s, stopping_sensitive=["mtl"]) == "no verdict: stopping-sensitive: mtl"
    # Holm: an interval excluding zero is not enough when the adjusted p is above alpha
    assert verdict(0.1, 0.5, n, s, p_adjusted=0.2) == "no clear difference"
    assert verdict(-0.5, -0.1, n, s, p_adjusted=0.01) == "worse"


# ------------------------------------------------------------------------------------------ end to end: a tiny study


def conv_runner(cfg) -> RunOutcome:
    """Arm 'capped' stops at its cap while improving; PSNR = 30 + 10 lr + subject offset + seed x subject noise;
    9 subjects of 2 slices each (the runner names the subject)."""
    lr = float(cfg.optim["lr"])
    capped = lr == 0.3
    rng = np.random.default_rng([cfg.seed, int(round(lr * 10000))])
    noise = rng.normal(0, 0.05, 9)
    slices = [{"group": "g", "fname": f"v{v}.h5", "subject": f"sub-{v}", "slice": s,
               "psnr": 30 + 10 * lr + v + noise[v] + 0.01 * cfg.seed + 0.001 * s, "ssim": 0.9, "nmse": 0.01}
              for v in range(9) for s in range(2)]
    record = {"steps": 100, "best_step": 100 if capped else 60, "stopped_by": "max_steps" if capped else "early_stopping",
              "converged": not capped}
    (cfg.run_dir()).mkdir(parents=True, exist_ok=True)
    (cfg.run_dir() / "metrics.json").write_text(json.dumps(record))  # as the engine writes it
    return RunOutcome(groups={"g": {"psnr": 30 + 10 * lr, "ssim": 0.9, "nmse": 0.01}}, slices=slices)


register_runner("conv_test", conv_runner)


def _conv_study(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "base": "unet_demo", "runner": "conv_test", "seeds": [0, 1, 2],
                                    "arms": {"base": {"optim.lr": 0.1}, "good": {"optim.lr": 0.2},
                                             "same": {"optim.lr": 0.1001}, "capped": {"optim.lr": 0.3}},
                                    "budget": "to_convergence", "summary": {"baseline": "base"}}))
    return path


def test_report_flags_not_converged_and_gives_holm_verdicts_only_when_allowed(tmp_path):
    out = run_study(load_study(_conv_study(tmp_path)), tmp_path / "o", log=lambda s: None)
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert {"steps", "best_step", "stopped_by", "converged"} <= set(rows[0])
    capped = [r for r in rows if r["arm"] == "capped"]
    assert {(r["stopped_by"], r["converged"]) for r in capped} == {("max_steps", "False")}
    diffs = {d["arm"]: d for d in csv.DictReader(open(out / "paired_differences.csv"))}
    assert diffs["good"]["verdict"] == "better" and float(diffs["good"]["dpsnr_mean"]) == pytest.approx(1.0, abs=0.05)
    assert (diffs["good"]["subjects"], diffs["good"]["seeds"], diffs["good"]["slices"]) == ("9", "3", "54")
    assert diffs["capped"]["verdict"] == "no verdict: not converged: capped" and diffs["capped"]["p_holm"] == "nan"
    assert "capped: not converged (3/3 runs)" in diffs["capped"]["convergence"]
    # the family: the two comparisons that may have a verdict; Holm's p is at least the raw p
    assert {d["family"] for d in diffs.values()} == {"2"}
    p = sorted((float(diffs[a]["p"]), a) for a in ("good", "same"))
    assert float(diffs[p[0][1]]["p_holm"]) == pytest.approx(min(1, 2 * p[0][0]))
    assert float(diffs[p[1][1]]["p_holm"]) == pytest.approx(max(min(1, 2 * p[0][0]), p[1][0]))
    html = (out / "report.html").read_text()
    assert "Holm-adjusted over 2 comparisons" in html
    assert "<strong>capped: not converged (3/3 runs)</strong>" in html
    assert "<strong>not converged (3/3 runs)</strong>" in html and "Budget policy: to_convergence" in html
    assert yaml.safe_load((out / "study.yaml").read_text())["budget"] == "to_convergence"
    cells = list(csv.DictReader(open(out / "cells.csv")))
    assert len(cells) == 4 * 3 * 9 * 3  # arms x seeds x subjects x metrics
    one = [c for c in cells if c["run_id"] == "good__seed1" and c["metric"] == "psnr" and c["subject"] == "sub-4"]
    assert len(one) == 1 and one[0]["slices"] == "2" and one[0]["group"] == "g"


def test_stopping_sensitive_arms_get_no_verdict(tmp_path):
    from mrlearn.study.cells import cell_index, study_cells
    from mrlearn.study.compare import paired_differences
    from mrlearn.study.summary import collect

    spec = load_study(_conv_study(tmp_path))
    out = run_study(spec, tmp_path / "o", log=lambda s: None)
    runs = spec.runs()
    rows = collect(out, runs)
    index = cell_index(study_cells(out, runs, {r["run_id"] for r in rows}))
    diffs = {d["arm"]: d for d in paired_differences(index, runs, "base", rows, stopping_sensitive=["good"])}
    assert diffs["good"]["verdict"] == "no verdict: stopping-sensitive: good" and diffs["same"]["family"] == 1
    for r in rows:  # the same from a study.csv column
        r["stopping_sensitive"] = r["arm"] == "same"
    diffs = {d["arm"]: d for d in paired_differences(index, runs, "base", rows)}
    assert diffs["same"]["verdict"] == "no verdict: stopping-sensitive: same" and diffs["good"]["verdict"] == "better"


def test_summary_only_recomputes_everything_from_cells_csv(tmp_path):
    spec = load_study(_conv_study(tmp_path))
    out = run_study(spec, tmp_path / "o", log=lambda s: None)
    files = ("study.csv", "cells.csv", "paired_differences.csv")
    before = {f: (out / f).read_text() for f in files}
    for p in (out / "runs").glob("*/slices.csv"):
        p.unlink()
    run_study(spec, out, log=lambda s: None, only_summary=True)
    assert {f: (out / f).read_text() for f in files} == before
    shutil.rmtree(out / "runs")  # a committed study: study.yaml, study.csv and cells.csv only
    run_study(spec, out, log=lambda s: None, only_summary=True)
    assert {f: (out / f).read_text() for f in files} == before
    assert "Holm-adjusted over 2 comparisons" in (out / "report.html").read_text()


def file_runner(cfg) -> RunOutcome:
    """Scores every file of data.root/test (PSNR from the file name's number), as a runner that reads files does."""
    from pathlib import Path

    names = sorted(p.name for p in (Path(cfg.data.root) / "test").glob("*.h5"))
    slices = [{"group": "all", "fname": n, "slice": 0, "psnr": 30.0 + 0.1 * cfg.seed + i, "ssim": 0.9, "nmse": 0.01}
              for i, n in enumerate(names)]
    return RunOutcome(groups={"all": {"psnr": 30.0, "ssim": 0.9, "nmse": 0.01}}, slices=slices)


register_runner("file_test", file_runner)


def test_subjects_are_the_files_patient_id(tmp_path):
    from tests.helpers_data import make_kspace, rss_target
    from mrlearn.data.fastmri import write_volume

    (tmp_path / "d" / "test").mkdir(parents=True)
    for i, (contrast, pid) in enumerate([("PD", "sub-1"), ("T2", "sub-1"), ("PD", "sub-2"), ("T2", "")]):
        k = make_kspace(1, 2, 8, 8, seed=i)
        write_volume(tmp_path / "d" / "test" / f"{contrast}_{i}.h5", k, target=rss_target(k), patient_id=pid,
                     acquisition="CORPD_FBK" if contrast == "PD" else "AXT2")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "f", "base": "unet_demo", "runner": "file_test", "seeds": [0],
                                    "set": [f"data.root={tmp_path / 'd'}"], "arms": {"a": {}}}))
    out = run_study(load_study(path), tmp_path / "o", log=lambda s: None)
    slices = {r["fname"]: r["subject"] for r in csv.DictReader(open(out / "runs" / "a__seed0" / "slices.csv"))}
    assert slices == {"PD_0.h5": "sub-1", "T2_1.h5": "sub-1", "PD_2.h5": "sub-2", "T2_3.h5": ""}
    cells = {c["subject"]: c for c in csv.DictReader(open(out / "cells.csv")) if c["metric"] == "psnr"}
    assert set(cells) == {"sub-1", "sub-2", "T2_3.h5"}  # two contrasts of sub-1: one subject; no id: the file
    assert (cells["sub-1"]["slices"], float(cells["sub-1"]["value"])) == ("2", pytest.approx(31.0))  # PD_0 (30) and T2_1 (32)
