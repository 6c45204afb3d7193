"""The seed of every random stream, derived in one place from the run seed and what names the stream.

Generators come from numpy's ``SeedSequence`` over integer parts (``derive_rng(seed, iteration)``),
so streams never overlap however the parts are chosen. The integer seeds handed to samplers and to
env resets keep the formulas earlier runs were recorded with, so a resumed or repeated run draws
exactly what it drew before: a stream index strided by primes, so (seed, index, rank) never collide.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EVAL_OFFSET",
    "RANK_STRIDE",
    "STRIDE",
    "call_seed",
    "derive_rng",
    "eval_seed",
    "rank_seed",
    "stream_seed",
]

STRIDE = 100_003  # seed * STRIDE + k: stream k of a seed (an iteration's sampling, an episode)
RANK_STRIDE = (
    1_000_003  # + rank * RANK_STRIDE: one stream per process; seed * RANK_STRIDE + call: one per policy call
)
EVAL_OFFSET = 7_777_777  # evaluation draws apart from training


def derive_rng(*parts: int) -> np.random.Generator:
    """A generator seeded by ``SeedSequence(parts)``, e.g. ``(seed, iteration)`` or ``(seed, iteration, 1)``."""
    return np.random.default_rng([int(p) for p in parts])


def stream_seed(seed: int, k: int = 0, *, rank: int = 0) -> int:
    """Stream ``k`` of ``seed`` on process ``rank``."""
    return seed * STRIDE + k + RANK_STRIDE * rank


def rank_seed(seed: int, rank: int) -> int:
    """``seed`` moved to process ``rank``'s own stream."""
    return seed + RANK_STRIDE * rank


def call_seed(seed: int, call: int) -> int:
    """The sampling seed of the ``call``-th policy call of a rollout seeded ``seed``."""
    return seed * RANK_STRIDE + call


def eval_seed(seed: int) -> int:
    """The evaluation's seed for a run seeded ``seed``."""
    return seed + EVAL_OFFSET
