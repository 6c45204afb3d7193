"""MatchTIR's turn rewards: call similarity, greedy / Hungarian / Sinkhorn matching, answer F1, and the
BFCL env's ``turn_rewards="matchtir"`` against BFCL's own checker (bench/matchtir_bfcl.py)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agentrl.envs import check_env, make
from agentrl.envs.tools.bfcl import BFCLMultiTurnEnv, ground_truth_actions
from agentrl.envs.tools.matchtir import (
    MatchReward,
    call_similarity,
    greedy_assignment,
    hungarian_assignment,
    multiset_jaccard,
    similarity_matrix,
    sinkhorn_plan,
    token_f1,
)

BENCH = Path(__file__).resolve().parents[1] / "bench" / "matchtir_bfcl.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("matchtir_bfcl", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_similarity_by_hand():
    # names {a, b} vs {a, b, c}: Jaccard 2/3 ; equal values: a only -> (1 + 2/3 + 1)/(2 + 2) = 2/3
    assert call_similarity(("f", {"a": 1, "b": 2, "c": 3}), ("f", {"a": 1, "b": 5})) == pytest.approx(2 / 3)
    assert call_similarity(("F", {"a": 1}), ("f", {"a": 1})) == 1.0  # names compare lower-cased
    assert call_similarity(("g", {"a": 1}), ("f", {"a": 1})) == 0.0
    assert call_similarity(("f", {}), ("f", {})) == 1.0  # (1 + 1 + 0)/2
    assert call_similarity(("f", {"x": 1}), ("f", {})) == 0.5  # (1 + 0 + 0)/2
    assert call_similarity(("f", {}), ("f", {"x": 1})) == pytest.approx(1 / 3)  # (1 + 0 + 0)/3
    assert multiset_jaccard(["a", "a", "b"], ["a", "b", "b"]) == pytest.approx(2 / 4)  # {a, b} / {a, a, b, b}
    assert multiset_jaccard([], []) == 1.0 and multiset_jaccard(["a"], []) == 0.0


def test_greedy_and_hungarian_differ():
    preds = [("f", {"x": 2}), ("f", {"x": 1, "y": 1})]
    golds = [("f", {"x": 1}), ("f", {"y": 1})]
    S = similarity_matrix(preds, golds)
    # p1-g1: (1 + 1 + 0)/3 = 2/3 ; p1-g2: (1 + 0 + 0)/3 = 1/3 ; p2-g1 = p2-g2: (1 + 1/2 + 1)/3 = 5/6
    np.testing.assert_allclose(S, [[2 / 3, 1 / 3], [5 / 6, 5 / 6]])
    # greedy takes the best pair first (p2-g1, the earlier of two ties), leaving p1 the 1/3 pair: total 7/6
    np.testing.assert_array_equal(greedy_assignment(S), [1, 0])
    # the optimum pairs p1-g1 and p2-g2: total 2/3 + 5/6 = 3/2
    np.testing.assert_array_equal(hungarian_assignment(S), [0, 1])
    assert MatchReward("greedy").turn_reward(preds, golds) == pytest.approx((1 / 3 + 5 / 6) / 2)
    assert MatchReward("hungarian").turn_reward(preds, golds) == pytest.approx((2 / 3 + 5 / 6) / 2)


def test_unmatched_calls_and_penalty():
    preds = [("f", {}), ("f", {}), ("g", {})]
    golds = [("f", {})]
    # the first f takes the gold call (ties keep order), the second f and g stay unmatched
    np.testing.assert_array_equal(MatchReward().call_rewards(preds, golds), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(
        MatchReward(unmatched_penalty=-0.5).call_rewards(preds, golds), [1, -0.5, -0.5]
    )
    np.testing.assert_array_equal(MatchReward("hungarian", -0.5).call_rewards(preds, []), [-0.5] * 3)
    assert MatchReward().turn_reward([], golds) == 0.0
    with pytest.raises(ValueError, match="matching"):
        MatchReward("km")
    with pytest.raises(ValueError, match="reg"):
        MatchReward("sinkhorn", reg=0.0)


def test_sinkhorn_two_by_two():
    preds = [("f", {"x": 1}), ("f", {"x": 2})]
    golds = [("f", {"x": 1}), ("f", {"x": 2, "y": 1})]
    S = similarity_matrix(preds, golds)
    # S = [[1, (1 + 1/2)/4], [(1 + 1)/3, (1 + 1/2 + 1)/4]] = [[1, 3/8], [2/3, 5/8]]
    np.testing.assert_allclose(S, [[1, 3 / 8], [2 / 3, 5 / 8]])
    # uniform marginals 1/2 force T = [[t, 1/2 - t], [1/2 - t, t]]; a diagonal scaling of K = exp(S/reg)
    # keeps the cross ratio, t^2/(1/2 - t)^2 = exp((S11 + S22 - S12 - S21)/reg), so with d = 7/12:
    t = 0.5 / (1 + math.exp(-(7 / 12) / (2 * 0.1)))
    np.testing.assert_allclose(sinkhorn_plan(S, reg=0.1), [[t, 0.5 - t], [0.5 - t, t]], atol=1e-9)
    want = [t * 1 + (0.5 - t) * 3 / 8, (0.5 - t) * 2 / 3 + t * 5 / 8]
    np.testing.assert_allclose(MatchReward("sinkhorn").call_rewards(preds, golds), want, atol=1e-9)
    # rows carry mass 1/2 each: soft_normalise divides it out
    normed = MatchReward("sinkhorn", soft_normalise=True).call_rewards(preds, golds)
    np.testing.assert_allclose(normed, np.array(want) * 2, atol=1e-8)
    assert MatchReward("sinkhorn").call_rewards(preds, []).tolist() == [0.0, 0.0]


def test_token_f1():
    # {the, cat, sat} vs {the, cat, is, here}: 2 common, P = 2/3, R = 1/2 -> F1 = 4/7
    assert token_f1("The cat, sat!", "the cat is here") == pytest.approx(4 / 7)
    assert token_f1("a-b", "A B") == 1.0  # punctuation splits words
    assert token_f1("", "x") == 0.0 and token_f1("x y", "z") == 0.0


def test_bfcl_default_rewards_are_unchanged():
    env = BFCLMultiTurnEnv()
    env.reset(seed=0, options={"task_id": "multi_turn_base_0"})
    first = ground_truth_actions(env.entries["multi_turn_base_0"])[0]
    _, _, _, _, info = env.step(first[0])
    assert info["turn_reward"] == 0.0 and "call_rewards" not in info
    with pytest.raises(ValueError, match="turn_rewards"):
        BFCLMultiTurnEnv(turn_rewards="dense")
    with pytest.raises(ValueError, match="matching"):
        BFCLMultiTurnEnv(turn_rewards="matchtir", matching="km")


def call(name, **args):
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


def test_bfcl_matchtir_rewards_every_response_against_its_user_turn():
    env = BFCLMultiTurnEnv(turn_rewards="matchtir")
    env.reset(seed=0, options={"task_id": "multi_turn_base_0"})
    # turn 0's gold: cd(folder='document'), mkdir(dir_name='temp'), mv(source='final_report.pdf', destination='temp')
    _, _, _, _, info = env.step(call("cd", folder="document"))
    assert info["turn_reward"] == 1.0 and info["call_rewards"] == [1.0]
    # matched with the turn's earlier call: the repeated cd loses the tie to it (0), mkdir matches (1)
    _, _, _, _, info = env.step(call("cd", folder="document") + call("mkdir", dir_name="temp"))
    assert info["call_rewards"] == [0.0, 1.0] and info["turn_reward"] == 0.5
    _, _, _, _, info = env.step('<tool_call>{"name": </tool_call>')  # unreadable: 0
    assert info["turn_reward"] == 0.0 and info["valid"] is False and "call_rewards" not in info
    # mv with a wrong destination: names {source, destination} equal, one value equal -> (1 + 1 + 1)/4
    _, _, _, _, info = env.step(call("mv", source="final_report.pdf", destination="tmp"))
    assert info["turn_reward"] == 0.75
    _, _, _, _, info = env.step("Done.")  # closing: BFCL's check fails (the file is not in temp)
    assert info["turn_check"] != "ok" and info["turn_reward"] == 0.0
    # the next user turn starts a new match: turn 1's gold begins with cd(folder='temp')
    _, _, _, _, info = env.step(call("cd", folder="temp"))
    assert info["turn"] == 1 and info["turn_reward"] == 1.0


def test_bfcl_closing_reward_zero():
    env = BFCLMultiTurnEnv(turn_rewards="matchtir", closing_reward="zero")
    entry = env.entries["multi_turn_base_0"]
    env.reset(seed=0, options={"task_id": entry["id"]})
    rewards = [env.step(a)[4]["turn_reward"] for turn in ground_truth_actions(entry) for a in turn]
    calls_then_done = [a for turn in ground_truth_actions(entry) for a in turn]
    assert rewards == [0.0 if a == "Done." else 1.0 for a in calls_then_done]


def test_bfcl_matchtir_agrees_with_bfcls_checker_on_truth_and_perturbations():
    bench = load_bench()
    rows = list(bench.samples("multi_turn_base", limit=25, seed=0))
    truth = [r for r in rows if r["kind"] == "ground_truth"]
    assert len(truth) > 60 and all(r["bfcl_pass"] and r["matchtir"] == 1.0 for r in truth)
    assert all(r["closing"] == 1.0 for r in truth)
    for kind in bench.KINDS[1:]:
        changed = [r for r in rows if r["kind"] == kind]
        assert len(changed) == 25, kind  # every entry has a turn the perturbation applies to
        assert all(r["matchtir"] < 1.0 for r in changed), kind
    rates = {t["kind"]: t for t in bench.table(rows)}
    assert rates["ground_truth"]["equal_1_when_pass"] == 1.0 and rates["ground_truth"]["bfcl_fail"] == 0.0
    assert rates["wrong_name"]["bfcl_fail"] > 0.9 and rates["wrong_name"]["below_1_when_fail"] == 1.0
    # Sinkhorn pays about 1/P to each of a turn's P correct calls (rows of the plan carry mass 1/P)
    soft = list(bench.samples("multi_turn_base", limit=5, seed=0, matching="sinkhorn"))
    for r in soft:
        if r["kind"] == "ground_truth":
            assert r["matchtir"] == pytest.approx(1 / len(r["call_rewards"]), rel=0.05)


def test_bfcl_matchtir_env_keeps_the_contract():
    env = make("bfcl", turn_rewards="matchtir", matching="hungarian")
    check_env(
        env,
        task_id="multi_turn_base_7",
        other=BFCLMultiTurnEnv(turn_rewards="matchtir", matching="hungarian"),
    )
