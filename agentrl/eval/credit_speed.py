"""Speed of every registered credit estimator on synthetic ALFWorld-like batches.

    agentrl bench credit --part speed [--sizes 16,128,1024]
    python -m agentrl.eval.credit_speed [--sizes 16,128,1024] [--repeats 5]   (also bench/credit_speed.py)

Prints, per batch size (P task groups x 8 trajectories x up to 50 steps), the median time and
rows/s of ``estimate(name, batch)`` for each estimator in ``available_estimators()`` (plus the
GiGPO similarity-anchor and SALT state_action variants), the time of
``StepBatch.from_trajectories``, and the plain-Python GiGPO yardstick with the speed-up.
Targets are printed, not asserted: gigpo/hgpo/salt < 0.1 s at ~42k rows (P=128) and < 1 s at
~330k rows (P=1024); from_trajectories < 0.3 s at ~42k rows.

Estimators that need caller inputs get synthetic ones: a per-row array for each declared
input, or for ``values`` a dict of per-row arrays by the estimator's declared value heads when it
refuses an array (HiPER, SPA-RL). Estimators that read response token ids (KTAE) get random ones,
30 per row on average (``synthetic_response_ids``), and those that read the learner's token
statistics (UCAS) random ones aligned with them (the learner's scoring pass is not timed). An
estimator that still fails is listed with its error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agentrl.credit import available_estimators, estimate, estimator_info
from agentrl.eval.naive_gigpo import naive_gigpo
from agentrl.eval.synthetic_rollouts import synthetic_response_ids, synthetic_trajectories
from agentrl.types import StepBatch

HEADS = ("high", "low", "switch")
TARGET_S = {128: 0.1, 1024: 1.0}
TARGETED = ("gigpo", "hgpo", "salt")
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "gigpo": [{"anchors": "similarity"}],
    "salt": [{"merge": "state_action"}],
}
TIME_BUDGET_S = 10.0


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, int]:
    """Median wall time of up to ``repeats`` calls (fewer once TIME_BUDGET_S is spent), and the count."""
    times: list[float] = []
    while len(times) < repeats and sum(times) < TIME_BUDGET_S:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def input_candidates(
    name: str, n_rows: int, rng: np.random.Generator, heads: Sequence[str] = HEADS
) -> list[Any]:
    """Synthetic values to try for a required caller input, in order of preference (``values``: one
    array, then a dict over ``heads``, the estimator's declared value heads)."""
    row = rng.normal(0.0, 0.5, n_rows)
    if name == "values":
        return [row, {head: rng.normal(0.0, 0.5, n_rows) for head in heads}]
    return [row]


def estimator_kwargs(name: str, batch: StepBatch, seed: int) -> dict[str, Any]:
    """Keyword inputs that make ``estimate(name, batch, ...)`` run, found by trying candidates."""
    info = estimator_info(name)
    rng = np.random.default_rng(seed)
    kwargs: dict[str, Any] = {}
    probe = batch.take(np.arange(min(len(batch), 200)))
    for key in info.inputs:
        errors: list[Exception] = []
        candidates = (
            [synthetic_token_stats(batch, info.token_stats, rng)]
            if key == "token_stats"
            else input_candidates(key, len(batch), rng, tuple(info.value_heads) or HEADS)
        )
        for candidate in candidates:
            try:
                estimate(name, probe, **{**kwargs, key: _head(candidate, len(probe))})
            except (TypeError, ValueError) as err:
                errors.append(err)
                continue
            kwargs[key] = candidate
            break
        else:
            raise errors[-1]
    return kwargs


def synthetic_token_stats(
    batch: StepBatch, names: Sequence[str], rng: np.random.Generator
) -> dict[str, list[np.ndarray]]:
    """Random per-token statistics aligned with ``batch.response_ids``, one array per row and name."""
    lengths = [len(t) for t in batch.column("response_ids")]
    out = {}
    for name in names:
        flat = rng.normal(0.0, 1.0, int(sum(lengths)))
        ends = np.cumsum(lengths).tolist()
        out[name] = [flat[e - k : e] for e, k in zip(ends, lengths)]
    return out


def _head(value: Any, n: int) -> Any:
    """The first n rows of a per-row input (array or dict of arrays)."""
    if isinstance(value, dict):
        return {k: v[:n] for k, v in value.items()}
    return value[:n]


def label(name: str, options: dict[str, Any]) -> str:
    """Row name of an estimator run with non-default options, e.g. ``salt[merge=state_action]``."""
    return name + "".join(f"[{k}={v}]" for k, v in options.items())


def bench_size(P: int, repeats: int, seed: int, echo: Callable[[str], Any] = print) -> None:
    """Time every estimator on P synthetic task groups and write one table through ``echo``."""
    trajectories = synthetic_trajectories(P, seed=seed)
    build_s, build_runs = timed(lambda: StepBatch.from_trajectories(trajectories), max(1, repeats // 2))
    batch = StepBatch.from_trajectories(trajectories)
    # token ids for the estimators that read them (KTAE), and chain marks without continuations
    # (spo_chain: every row a trained root's), added after the build is timed
    batch = dataclasses.replace(
        batch,
        response_ids=synthetic_response_ids(batch, seed=seed),
        value_only=np.zeros(len(batch), dtype=bool),
    )
    rows = len(batch)
    target = TARGET_S.get(P)
    echo(
        f"\nP={P}: {rows} rows, {batch.num_trajectories} trajectories, success {batch.summary()['success_rate']:.2f}, "
        f"invalid {batch.summary()['invalid_rate']:.2f}, {np.unique(batch.column('state_key')).size} distinct states"
    )
    echo(f"{'estimator':<34}{'median s':>10}{'rows/s':>14}{'runs':>6}  target")
    echo(
        f"{'StepBatch.from_trajectories':<34}{build_s:>10.4f}{rows / build_s:>14,.0f}{build_runs:>6}  "
        + (f"< 0.3 s {'ok' if build_s < 0.3 else 'MISSED'}" if P == 128 else "")
    )

    gigpo_s = None
    for name in available_estimators():
        for options in [{}, *VARIANTS.get(name, [])]:
            try:
                kwargs = {**estimator_kwargs(name, batch, seed), **options}
                estimate(name, batch, **kwargs)
            except Exception as err:  # a broken estimator is reported, the others still run
                echo(f"{label(name, options):<34}  failed: {type(err).__name__}: {err}")
                continue
            seconds, runs = timed(functools.partial(estimate, name, batch, **kwargs), repeats)
            verdict = ""
            if name in TARGETED and not options and target is not None:
                verdict = f"< {target} s {'ok' if seconds < target else 'MISSED'}"
            echo(f"{label(name, options):<34}{seconds:>10.4f}{rows / seconds:>14,.0f}{runs:>6}  {verdict}")
            if name == "gigpo" and not options:
                gigpo_s = seconds

    naive_s, naive_runs = timed(lambda: naive_gigpo(trajectories), max(1, repeats // 2))
    ratio = f"  gigpo is {naive_s / gigpo_s:.1f}x faster" if gigpo_s else ""
    echo(
        f"{'naive per-row GiGPO (Python)':<34}{naive_s:>10.4f}{rows / naive_s:>14,.0f}{naive_runs:>6}{ratio}"
    )


def parse_sizes(text: str) -> list[int]:
    """Task-group counts from "16,128,1024"; a ValueError names the bad text."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"sizes must be comma-separated positive integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes must be comma-separated positive integers, got {text!r}")
    return sizes


def credit_speed(
    sizes: Sequence[int], repeats: int = 5, seed: int = 0, echo: Callable[[str], Any] = print
) -> None:
    """One table per batch size, written as each finishes (the largest take minutes)."""
    for P in sizes:
        bench_size(P, repeats, seed, echo)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of ``python -m agentrl.eval.credit_speed`` and ``bench/credit_speed.py``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16,128,1024", help="comma-separated numbers of task groups P")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as err:
        parser.error(str(err))
    credit_speed(sizes, args.repeats, args.seed)


if __name__ == "__main__":
    main()
