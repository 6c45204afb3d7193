"""Per-token advantages in the credit module: the response_ids column, registration rules, the checks
``estimate`` makes and the mapping back to the caller's row order."""

from __future__ import annotations

import numpy as np
import pytest

from agentrl.credit import Advantages, MissingInputError, estimate, estimator_info, register_estimator
from agentrl.types import Step, StepBatch, Trajectory


def batch_with_ids(ids_by_traj: list[list[list[int] | None]]) -> StepBatch:
    trajs = [
        Trajectory("t", "g", f"g/{i}", [Step(obs="o", response_ids=ids) for ids in rows], terminated=True)
        for i, rows in enumerate(ids_by_traj)
    ]
    return StepBatch.from_trajectories(trajs)


def test_response_ids_column_keeps_each_rows_ids_even_when_lengths_are_equal():
    b = batch_with_ids([[[1, 2], [3, 4]], [[5, 6], None]])
    assert b.response_ids is not None and b.response_ids.dtype == object
    assert [a.tolist() for a in b.response_ids] == [[1, 2], [3, 4], [5, 6], []]
    assert all(a.dtype == np.int64 for a in b.response_ids)
    assert [a.tolist() for a in b.take([3, 0]).response_ids] == [[], [1, 2]]
    assert StepBatch.from_trajectories([Trajectory("t", "g", "x", [Step(obs="o")])]).response_ids is None


def register_position_estimator(name: str = "test_positions", bad_row: int | None = None) -> None:
    @register_estimator(name, fields=("response_ids",), per_token=True)
    def positions(batch, *, scale: float = 1.0):
        """Token t of a row whose trajectory is i gets 100 * i + t (distinct values per token)."""
        token = []
        for r, ids in enumerate(batch.response_ids):
            n = len(ids) + (1 if r == bad_row else 0)
            token.append(scale * (100.0 * batch.traj_idx[r] + np.arange(n)))
        return Advantages(step=batch.traj_idx.astype(np.float64), token=token)


def test_per_token_output_follows_row_ids_through_a_shuffled_batch():
    register_position_estimator()
    assert estimator_info("test_positions").per_token
    b = batch_with_ids([[[1, 2, 3], [4]], [[5, 6], []]])
    perm = np.array([3, 1, 0, 2])
    adv = estimate("test_positions", b.take(perm))
    # rows of the shuffled batch: (traj 1, turn 1), (traj 0, turn 1), (traj 0, turn 0), (traj 1, turn 0)
    assert [a.tolist() for a in adv.token] == [[], [0.0], [0.0, 1.0, 2.0], [100.0, 101.0]]
    assert adv.step.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_per_token_estimator_needs_the_ids_and_its_output_is_checked():
    register_position_estimator()
    with pytest.raises(MissingInputError, match="response_ids"):
        estimate("test_positions", StepBatch.from_trajectories([Trajectory("t", "g", "x", [Step(obs="o")])]))
    register_position_estimator("test_positions_bad", bad_row=1)
    with pytest.raises(RuntimeError, match="row 1 has 1 response tokens but per-token advantages of shape"):
        estimate("test_positions_bad", batch_with_ids([[[1, 2, 3], [4]]]))

    @register_estimator("test_not_declared")
    def undeclared(batch):
        return Advantages(step=np.zeros(len(batch)), token=[np.zeros(0)] * len(batch))

    with pytest.raises(RuntimeError, match="not registered per_token"):
        estimate("test_not_declared", batch_with_ids([[[1]]]))

    @register_estimator("test_forgot", fields=("response_ids",), per_token=True)
    def forgot(batch):
        return Advantages(step=np.zeros(len(batch)))

    with pytest.raises(RuntimeError, match="returned no Advantages.token"):
        estimate("test_forgot", batch_with_ids([[[1]]]))


def test_per_token_registration_rules():
    def fn(batch):
        return Advantages(step=np.zeros(len(batch)))

    with pytest.raises(ValueError, match="per_token and spans"):
        register_estimator("test_both", fields=("response_ids",), per_token=True, spans=("action",))(fn)
    with pytest.raises(ValueError, match="list it in fields"):
        register_estimator("test_no_ids", per_token=True)(fn)
    with pytest.raises(ValueError, match="'standard' schedule"):
        register_estimator("test_slots", fields=("response_ids",), per_token=True, schedule="turn_slots")(fn)
