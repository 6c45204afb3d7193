"""MatchTIR's BFCL turn rewards against BFCL's own checker, on ground-truth and perturbed calls.

    .venv/bin/python bench/matchtir_bfcl.py [--category multi_turn_base|all] [--limit N] [--seed S]

For each BFCL entry, ``BFCLMultiTurnEnv(turn_rewards="matchtir")`` replays the ground truth (every
user turn's calls in one response, then "Done."). Ground truth: every user turn with calls is one
sample. Perturbations: one user turn with calls (seeded choice) has one of its calls changed —
``wrong_name`` (another function of the entry), ``wrong_value`` (one argument changed),
``missing_arg`` (one argument dropped), ``extra_call`` (the call sent twice) — and the replay
stops when that turn closes. The MatchTIR reward of a turn is the reward of its call response;
BFCL's verdict is the env's turn check (state and response checkers). Prints one row per case:
how often BFCL fails the turn, how often MatchTIR's reward is < 1 where BFCL fails, and = 1 where
BFCL passes, and the mean MatchTIR reward.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from typing import Any

from agentrl.envs.tools.bfcl import CATEGORIES, BFCLMultiTurnEnv, ground_truth_calls

KINDS = ("ground_truth", "wrong_name", "wrong_value", "missing_arg", "extra_call")
Call = tuple[str, dict[str, Any]]


def changed_value(value: Any) -> Any:
    """A value of the same JSON type that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return [*value, value[0] if value else "x"]
    if isinstance(value, dict):
        return {**value, "_x": 1}
    return "_x"


def perturb(calls: list[Call], kind: str, names: list[str], rng: random.Random) -> list[Call] | None:
    """``calls`` with one call changed as ``kind`` says; None when no call of the turn allows it."""
    eligible = [i for i, (_, a) in enumerate(calls) if a or kind in ("wrong_name", "extra_call")]
    if not eligible:
        return None
    i = rng.choice(eligible)
    name, args = calls[i]
    out = list(calls)
    if kind == "wrong_name":
        others = sorted({n for n in names if n.lower() != name.lower()})
        out[i] = (rng.choice(others), args)
    elif kind == "wrong_value":
        key = rng.choice(sorted(args))
        out[i] = (name, {**args, key: changed_value(args[key])})
    elif kind == "missing_arg":
        key = rng.choice(sorted(args))
        out[i] = (name, {k: v for k, v in args.items() if k != key})
    elif kind == "extra_call":
        out.insert(i + 1, (name, args))
    else:
        raise ValueError(f"unknown perturbation {kind!r}")
    return out


def action(calls: list[Call]) -> str:
    return "\n".join(
        "<tool_call>" + json.dumps({"name": n, "arguments": a}) + "</tool_call>" for n, a in calls
    )


def play(env: BFCLMultiTurnEnv, task_id: str, turns: list[list[Call]], stop: int | None = None) -> list[dict]:
    """Replay ``turns`` (one response with a turn's calls, then "Done."); one record per user turn
    up to ``stop``: its MatchTIR reward (None without calls), its call rewards and BFCL's verdict."""
    env.reset(seed=0, options={"task_id": task_id})
    records = []
    for k, calls in enumerate(turns):
        rec: dict[str, Any] = {"turn": k, "matchtir": None, "call_rewards": []}
        if calls:
            _, _, term, trunc, info = env.step(action(calls))
            rec.update(matchtir=info["turn_reward"], call_rewards=info["call_rewards"])
            if term or trunc:
                break
        _, _, term, trunc, info = env.step("Done.")
        rec.update(bfcl_pass=info["turn_check"] == "ok", closing=info["turn_reward"])
        records.append(rec)
        if term or trunc or k == stop:
            break
    return records


def samples(category: str, limit: int | None = None, seed: int = 0, **env_options: Any) -> Iterator[dict]:
    """One dict per measured user turn: kind, task, turn, matchtir, bfcl_pass, call_rewards."""
    env = BFCLMultiTurnEnv(category, turn_rewards="matchtir", **env_options)
    for task_id in list(env.task_ids())[:limit]:
        entry = env.entries[task_id]
        gold = ground_truth_calls(entry)
        for rec in play(env, task_id, gold):
            if rec["matchtir"] is not None:
                yield {"kind": "ground_truth", "task": task_id, **rec}
        names = [d["name"] for d in entry["function"]] + [
            d["name"] for docs in entry["missed_function"].values() for d in docs
        ]
        rng = random.Random(f"{seed}:{task_id}")
        for kind in KINDS[1:]:
            options = [(k, perturb(c, kind, names, rng)) for k, c in enumerate(gold) if c]
            options = [(k, p) for k, p in options if p is not None]
            if not options:
                continue
            k, changed = rng.choice(options)
            rec = play(env, task_id, [*gold[:k], changed], stop=k)[-1]
            if rec["turn"] == k:
                yield {"kind": kind, "task": task_id, **rec}


def table(rows: list[dict]) -> list[dict]:
    """Per kind: turns, BFCL fail rate, P(MatchTIR < 1 | BFCL fails), P(MatchTIR = 1 | BFCL passes), mean."""
    out = []
    for kind in KINDS:
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        fail = [r for r in sel if not r["bfcl_pass"]]
        ok = [r for r in sel if r["bfcl_pass"]]
        out.append(
            {
                "kind": kind,
                "turns": len(sel),
                "bfcl_fail": len(fail) / len(sel),
                "below_1_when_fail": sum(r["matchtir"] < 1 for r in fail) / len(fail) if fail else None,
                "equal_1_when_pass": sum(r["matchtir"] == 1 for r in ok) / len(ok) if ok else None,
                "mean_matchtir": sum(r["matchtir"] for r in sel) / len(sel),
            }
        )
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--category", default="multi_turn_base", help=f"one of {CATEGORIES} or 'all'")
    ap.add_argument("--limit", type=int, default=None, help="entries per category (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matching", default="greedy", help="greedy, hungarian or sinkhorn")
    ap.add_argument("--soft-normalise", action="store_true", help="sinkhorn: divide by each call's mass")
    args = ap.parse_args()
    cats = CATEGORIES if args.category == "all" else (args.category,)
    opts = {"matching": args.matching, "soft_normalise": args.soft_normalise}
    rows = [r for c in cats for r in samples(c, args.limit, args.seed, **opts)]
    norm = ", soft_normalise" if args.soft_normalise else ""
    print(f"MatchTIR ({args.matching}{norm}) vs BFCL's checker, {', '.join(cats)}")
    print(
        "| case | turns | BFCL fails | MatchTIR < 1 where BFCL fails | MatchTIR = 1 where BFCL passes "
        "| mean MatchTIR |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for t in table(rows):
        print(
            f"| {t['kind']} | {t['turns']} | {_pct(t['bfcl_fail'])} | {_pct(t['below_1_when_fail'])} "
            f"| {_pct(t['equal_1_when_pass'])} | {t['mean_matchtir']:.3f} |"
        )


if __name__ == "__main__":
    main()
