"""Run reports: numbers against Wilson intervals computed by hand, plots, escaping, missing pieces."""

import json
import math
import sys

import pytest

from agentrl.eval.report import write_report
from agentrl.types import Step, Trajectory, write_trajectories

Z = 1.959963984540054
EVIL_TYPE = "<b>heat</b> & cool"


def wilson_by_hand(s, n):
    p = s / n
    denom = 1 + Z * Z / n
    centre = (p + Z * Z / (2 * n)) / denom
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def episode(k, task_type, success, n_steps, invalid=0):
    steps = [
        Step(obs=f"o{j}", action=f"a{j}", valid=j >= invalid, reward=float(success and j == n_steps - 1))
        for j in range(n_steps)
    ]
    return Trajectory(
        f"{task_type}-{k}",
        f"g{k // 2}",
        f"t{k}",
        steps,
        terminated=True,
        success=success,
        info={"task_type": task_type},
    )


def episodes():
    """10 'pick' episodes (7 succeed) and 6 of EVIL_TYPE (2 succeed): 9 of 16 overall."""
    out = [episode(k, "pick", k < 7, 3, invalid=1 if k == 0 else 0) for k in range(10)]
    out += [episode(10 + k, EVIL_TYPE, k < 2, 5, invalid=2 if k == 5 else 0) for k in range(6)]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    write_trajectories(root / "trajectories.jsonl", episodes())
    with open(root / "metrics.jsonl", "w") as f:
        f.writelines(
            json.dumps(
                {
                    "iteration": i,
                    "success_rate": 0.1 + 0.05 * i,
                    "reward_mean": 0.2 * i,
                    "kl": 0.01 * i,
                    "entropy": 1.5 - 0.1 * i,
                }
            )
            + "\n"
            for i in range(12)
        )
        f.write("{not json\n")
    (root / "summary.json").write_text(
        json.dumps(
            {
                "before": {"success_rate": 0.25, "episodes": 40, "mean_steps": 9.0},
                "after": {
                    "success_rate": 0.6,
                    "ci_low": 0.45,
                    "ci_high": 0.74,
                    "episodes": 40,
                    "mean_steps": 6.5,
                },
            }
        )
    )
    (root / "config.yaml").write_text("env: maze  # <tiny>\nseed: 3\n")
    return root, write_report(root)


def test_files_are_written(run):
    root, paths = run
    assert paths["markdown"] == root / "report.md" and paths["html"] == root / "report.html"
    for key in ("plot_per_type", "plot_learning_curves", "plot_before_after"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[key].stat().st_size > 5000
    assert all(p.exists() for p in paths.values())


def test_success_rate_and_per_type_match_wilson_by_hand(run):
    md = (run[0] / "report.md").read_text()
    lo, hi = wilson_by_hand(9, 16)
    assert f"Success rate 0.562 (95% Wilson CI {lo:.3f} – {hi:.3f}) over 16 episodes." in md
    assert f"| success rate | 0.562 | {lo:.3f} – {hi:.3f} (Wilson) | 16 episodes |" in md
    lo, hi = wilson_by_hand(7, 10)
    assert f"| pick | 10 | 0.700 | {lo:.3f} | {hi:.3f} |" in md
    lo, hi = wilson_by_hand(2, 6)
    assert f"| \\<b\\>heat\\</b\\> & cool | 6 | 0.333 | {lo:.3f} | {hi:.3f} |" in md


def test_mean_steps_and_invalid_rate(run):
    md = (run[0] / "report.md").read_text()
    # steps: 10 x 3 + 6 x 5 = 60 over 16 episodes; invalid: 1 (episode 0) + 2 (episode 15) = 3 of 60
    assert "| mean steps | 3.75 |" in md
    assert "| invalid-action rate | 0.050 | — | 3 of 60 steps |" in md


def test_training_curves_and_before_after(run):
    md = (run[0] / "report.md").read_text()
    assert "12 iterations in metrics.jsonl (iteration 0 to 11)." in md
    assert "| success_rate | 0.100 | 0.650 | 0.100 | 0.650 |" in md
    assert "| kl | 0 | 0.110 | 0 | 0.110 |" in md
    assert (
        "![learning curves: success_rate, reward_mean, kl, entropy against iteration](plots/learning_curves.png)"
        in md
    )
    # before: Wilson(10, 40) = 0.142 - 0.402 by hand, after 0.450 - 0.740: apart
    lo, hi = wilson_by_hand(10, 40)  # 'before' has no CI: Wilson from 0.25 x 40 episodes
    assert (
        f"Before training: success rate 0.250 (95% CI {lo:.3f} – {hi:.3f}) over 40 episodes. "
        "After training: success rate 0.600 (95% CI 0.450 – 0.740) over 40 episodes."
    ) in md
    assert (
        f"Difference (after − before) +0.350: a gain beyond both 95% intervals (the after interval starts at 0.450, "
        f"the before interval ends at {hi:.3f})."
    ) in md
    assert f"0.250 (95% CI {lo:.3f} – {hi:.3f}, n=40) | 0.600 (95% CI 0.450 – 0.740, n=40) |" in md
    assert "| mean_steps | 9 | 6.500 | -2.500 |" in md


def test_problems_and_config_are_reported(run):
    md = (run[0] / "report.md").read_text()
    assert "metrics.jsonl line 13: not JSON" in md
    assert "```yaml\nenv: maze  # <tiny>\nseed: 3\n```" in md


def test_html_is_self_contained_and_escaped(run):
    page = (run[0] / "report.html").read_text()
    assert "&lt;b&gt;heat&lt;/b&gt; &amp; cool" in page and "<b>heat" not in page
    assert "<script" not in page and "&lt;tiny&gt;" in page
    assert page.count("src='data:image/png;base64,iVBORw0KGgo") == 3
    lo, hi = wilson_by_hand(9, 16)
    assert f"<td>{lo:.3f} – {hi:.3f} (Wilson)</td>" in page


def test_without_matplotlib_the_report_still_renders(tmp_path, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, mod, None)
    write_trajectories(tmp_path / "trajectories.jsonl", episodes())
    paths = write_report(tmp_path)
    assert set(paths) == {"markdown", "html"} and not (tmp_path / "plots").exists()
    md = paths["markdown"].read_text()
    assert "Plots were not drawn: matplotlib is not installed (pip install matplotlib)." in md
    lo, hi = wilson_by_hand(9, 16)
    assert f"{lo:.3f} – {hi:.3f}" in md and "data:image/png" not in paths["html"].read_text()


def test_report_json_figures_win_and_eval_files_are_preferred(tmp_path):
    (tmp_path / "eval").mkdir()
    write_trajectories(tmp_path / "eval" / "valid_unseen.jsonl", episodes()[:4])  # 4 of 4 succeed
    write_trajectories(tmp_path / "trajectories.jsonl", episodes())  # training rollouts: ignored
    (tmp_path / "report.json").write_text(
        json.dumps(
            {
                "success_rate": 0.5,
                "ci_low": 0.3,
                "ci_high": 0.7,
                "episodes": 20,
                "invalid_rate": 0.125,
                "per_type": {"look": {"success_rate": 0.25, "episodes": 8}},
            }
        )
    )
    md = write_report(tmp_path)["markdown"].read_text()
    assert "Source: 4 episodes in eval/valid_unseen.jsonl, report.json." in md
    assert "Success rate 0.500 (95% Wilson CI 0.300 – 0.700) over 20 episodes." in md
    lo, hi = wilson_by_hand(2, 8)
    assert f"| look | 8 | 0.250 | {lo:.3f} | {hi:.3f} |" in md and "| pick |" not in md
    assert "| invalid-action rate | 0.125 | — | from report.json |" in md
    assert "| mean steps | 3.00 |" in md  # from the 4 eval episodes, 3 steps each


def test_missing_pieces(tmp_path):
    md = write_report(tmp_path)["markdown"].read_text()
    assert "No evaluation figures: no episodes and no report.json in this run." in md
    assert "## Training" not in md and "## Before / after" not in md
    (tmp_path / "summary.json").write_text("[1, 2]")
    assert (
        "summary.json should hold a JSON object, got list" in write_report(tmp_path)["markdown"].read_text()
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "absent")


def test_task_types_that_look_like_tex_are_drawn_literally(tmp_path):
    odd = "cost $\\notacommand{$ x"
    write_trajectories(
        tmp_path / "trajectories.jsonl", [episode(0, odd, True, 2), episode(1, "pick", False, 2)]
    )
    paths = write_report(tmp_path)
    assert paths["plot_per_type"].stat().st_size > 5000
    assert "| cost \\$\\\\notacommand{\\$ x | 1 | 1.000 |" in paths["markdown"].read_text()


def test_report_json_without_interval_gets_wilson_from_the_episode_count(tmp_path):
    write_trajectories(tmp_path / "trajectories.jsonl", episodes())  # 16 episodes, 60 steps
    (tmp_path / "report.json").write_text(json.dumps({"success_rate": 0.5, "mean_steps": 3.75}))
    md = write_report(tmp_path, plots=False)["markdown"].read_text()
    lo, hi = wilson_by_hand(8, 16)
    assert f"Success rate 0.500 (95% Wilson CI {lo:.3f} – {hi:.3f}) over 16 episodes." in md
    assert "| mean steps | 3.75 | —" not in md and "(bootstrap) | 16 |" in md  # same mean: interval kept
    assert "Plots were not drawn: plots were turned off." in md


def test_training_run_layout(tmp_path):
    """The trainer's layout: rollouts per iteration in trajectories/, summary.json, no report.json."""
    (tmp_path / "trajectories").mkdir()
    write_trajectories(tmp_path / "trajectories" / "iter-000000.jsonl", episodes()[:4])
    write_trajectories(tmp_path / "trajectories" / "iter-000001.jsonl", episodes()[4:8])
    (tmp_path / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"iteration": i, "success_rate": 0.5, "episodes": 4, "time_update": 1.5}) + "\n"
            for i in range(2)
        )
    )
    before = {"success_rate": 0.2, "ci_low": 0.1, "ci_high": 0.5, "episodes": 10}
    after = {"success_rate": 0.4, "ci_low": 0.3, "ci_high": 0.6, "episodes": 10}
    summary = {"before": before, "after": after, "estimator": "gigpo", "iterations": 2, "significant": False}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    md = write_report(tmp_path, plots=False)["markdown"].read_text()
    assert "## Evaluation" not in md  # training rollouts are not an evaluation
    assert "Rollouts of 2 iterations are saved in trajectories/ (agentrl view shows them)." in md
    assert (
        "Difference (after − before) +0.200: not a gain beyond both 95% intervals (the after interval starts at 0.300, "
        "the before interval ends at 0.500)."
    ) in md
    assert "Also in summary.json: estimator gigpo, iterations 2, significant no." in md
    assert (
        "| episodes | 4 | 4 | 4 | 4 |" in md
        and "| time\\_update |" not in md
        and "| time_update | 1.500 |" in md
    )


def trainer_run(root, before_wins, after_wins):
    """A run directory as the trainer leaves it with evaluation on: eval/before.jsonl and
    eval/after.jsonl, eval_before.json, summary.json (figures as ``agentrl.evaluation.evaluate``
    computes them) and metrics.jsonl. Each side plays 6 'pick' and 4 'heat' episodes of 3 steps;
    ``*_wins`` = (pick successes, heat successes); one 'before' episode has an invalid step."""
    (root / "eval").mkdir()
    results = {}
    for side, (pick, heat) in (("before", before_wins), ("after", after_wins)):
        eps = [episode(k, "pick", k < pick, 3) for k in range(6)]
        eps += [
            episode(6 + k, "heat", k < heat, 3, invalid=1 if side == "before" and k == 3 else 0)
            for k in range(4)
        ]
        write_trajectories(root / "eval" / f"{side}.jsonl", eps)
        won, n = pick + heat, len(eps)
        lo, hi = wilson_by_hand(won, n)
        results[side] = {
            "success_rate": won / n,
            "ci_low": lo,
            "ci_high": hi,
            "episodes": n,
            "reward_mean": won / n,
            "turns_mean": 3.0,
            "errors": 0,
            "seconds": 1.25,
        }
    before, after = results["before"], results["after"]
    (root / "eval_before.json").write_text(json.dumps(before))
    (root / "summary.json").write_text(
        json.dumps(
            {
                "before": before,
                "after": after,
                "estimator": "gigpo",
                "iterations": 3,
                "improvement": after["success_rate"] - before["success_rate"],
                "significant": after["ci_low"] > before["ci_high"],
            }
        )
    )
    metrics = [{"iteration": i, "success_rate": 0.2 * (i + 1)} for i in range(3)]
    (root / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return root


def test_a_training_run_is_headlined_before_against_after_never_pooled(tmp_path):
    # before: pick 1/6, heat 2/4 = 3/10; after: pick 6/6, heat 2/4 = 8/10. Pooled, which describes
    # no policy: 11/20 = 0.550 overall (Wilson 0.342 - 0.742), pick 7/12 = 0.583, heat 4/8.
    trainer_run(tmp_path, before_wins=(1, 2), after_wins=(6, 2))
    paths = write_report(tmp_path)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    b_lo, b_hi = wilson_by_hand(3, 10)
    a_lo, a_hi = wilson_by_hand(8, 10)
    headline = (
        f"Before training: success rate 0.300 (95% CI {b_lo:.3f} – {b_hi:.3f}) over 10 episodes. "
        f"After training: success rate 0.800 (95% CI {a_lo:.3f} – {a_hi:.3f}) over 10 episodes."
    )
    verdict = (
        f"Difference (after − before) +0.500: not a gain beyond both 95% intervals (the after interval starts at "
        f"{a_lo:.3f}, the before interval ends at {b_hi:.3f})."
    )
    for text, training in ((md, "## Training"), (page, "<h2>Training</h2>")):
        assert headline in text and verdict in text
        assert text.index(headline) < text.index(training)  # the headline comes first
    assert f"<p>{headline}</p>" in page
    # every figure of the episodes is per side; the pooled ones appear nowhere
    p_lo, p_hi = wilson_by_hand(11, 20)
    for pooled in (
        "0.550",
        f"{p_lo:.3f}",
        f"{p_hi:.3f}",
        "0.583",
        "20 episodes",
        "over 20",
        "| 12 |",
        "## Evaluation",
    ):
        assert pooled not in md and pooled not in page, pooled
    lo, hi = wilson_by_hand(1, 6)
    assert (
        f"| pick | 6 | 0.167 | {lo:.3f} – {hi:.3f} | 6 | 1.000 | {wilson_by_hand(6, 6)[0]:.3f} – 1.000 | +0.833 |"
        in md
    )
    lo, hi = wilson_by_hand(2, 4)
    assert f"| heat | 4 | 0.500 | {lo:.3f} – {hi:.3f} | 4 | 0.500 | {lo:.3f} – {hi:.3f} | +0 |" in md
    assert "| invalid-action rate | 0.033 (1 of 30 steps) | 0.000 (0 of 30 steps) | -0.033 |" in md
    assert (
        "Sources: before from summary.json, 10 episodes in eval/before.jsonl; "
        "after from summary.json, 10 episodes in eval/after.jsonl."
    ) in md
    assert "significant no" in md
    assert "plot_per_type" not in paths and {"plot_before_after", "plot_per_type_before_after"} <= set(paths)


def test_a_gain_beyond_both_intervals_and_a_run_still_training(tmp_path):
    trainer_run(
        tmp_path, before_wins=(1, 0), after_wins=(6, 3)
    )  # Wilson(1, 10) ends at 0.404, (9, 10) starts at 0.596
    md = write_report(tmp_path, plots=False)["markdown"].read_text()
    b_hi, a_lo = wilson_by_hand(1, 10)[1], wilson_by_hand(9, 10)[0]
    assert (
        f"+0.800: a gain beyond both 95% intervals (the after interval starts at {a_lo:.3f}, "
        f"the before interval ends at {b_hi:.3f})."
    ) in md and "significant yes" in md
    # killed mid-training: eval_before.json and eval/before.jsonl only; the headline says so
    (tmp_path / "summary.json").unlink()
    (tmp_path / "eval" / "after.jsonl").unlink()
    md = write_report(tmp_path, plots=False)["markdown"].read_text()
    lo, hi = wilson_by_hand(1, 10)
    headline = f"Before training: success rate 0.100 (95% CI {lo:.3f} – {hi:.3f}) over 10 episodes."
    assert f"{headline} After training: not evaluated yet." in md
    assert "Sources: before from eval_before.json, 10 episodes in eval/before.jsonl; after: none yet." in md
    assert "Difference" not in md and "## Evaluation" not in md


@pytest.mark.parametrize(
    "names",
    [
        ("reward_mean", "reward_mean_ci", "turns_mean", "turns_mean_ci"),  # today's report.json
        ("outcome_mean", "outcome_ci", "mean_steps", "mean_steps_ci"),  # agentrl eval's before one evaluator
    ],
)
def test_report_json_means_are_read_under_either_name(tmp_path, names):
    reward, reward_ci, turns, turns_ci = names
    (tmp_path / "report.json").write_text(
        json.dumps(
            {
                "success_rate": 0.5,
                "episodes": 16,
                reward: 0.4,
                reward_ci: {"value": 0.4, "ci_low": 0.2, "ci_high": 0.6},
                turns: 4.5,
                turns_ci: {"value": 4.5, "ci_low": 4.0, "ci_high": 5.0},
            }
        )
    )
    md = write_report(tmp_path, plots=False)["markdown"].read_text()
    assert "| mean steps | 4.50 | 4.000 – 5.000 (bootstrap) | 16 |" in md
    assert "| mean outcome | 0.400 | 0.200 – 0.600 (bootstrap) | 16 |" in md


def test_read_eval_report_gives_todays_names(tmp_path):
    from agentrl.eval.rundir import read_eval_report

    (tmp_path / "report.json").write_text(json.dumps({"outcome_mean": 0.25, "mean_steps": 3.0, "errors": 1}))
    assert read_eval_report(tmp_path / "report.json") == (
        {"reward_mean": 0.25, "turns_mean": 3.0, "errors": 1},
        None,
    )
    both = {"reward_mean": 0.5, "outcome_mean": 0.25}  # today's name wins when a file has both
    (tmp_path / "both.json").write_text(json.dumps(both))
    assert read_eval_report(tmp_path / "both.json")[0]["reward_mean"] == 0.5
    assert read_eval_report(tmp_path / "absent.json") == (None, None)


def test_before_after_rows_of_episode_figures_are_not_repeated(tmp_path):
    """summary.json's reward_mean / turns_mean / invalid_rate are drawn once, from the episodes, with
    intervals; a one-round evaluation has no seed spread to show."""
    trainer_run(tmp_path, before_wins=(1, 2), after_wins=(6, 2))
    summary = json.loads((tmp_path / "summary.json").read_text())
    for side in ("before", "after"):
        summary[side].update(invalid_rate=0.0, per_seed={"0": summary[side]["success_rate"]}, seed_std=0.0)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    md = write_report(tmp_path, plots=False)["markdown"].read_text()
    for key in ("reward_mean", "turns_mean", "invalid_rate", "seed_std"):
        assert f"| {key} |" not in md and f"| {key.replace('_', chr(92) + '_')} |" not in md, key
    assert "| mean steps | 3.00" in md and "| mean outcome | 0.300" in md and "| errors | 0 | 0 | +0 |" in md
