"""Data-parallel training over several processes: GPUs (NCCL) or CPU processes (gloo).

Launch ``agentrl train`` with ``accelerate launch --num_processes N -m agentrl.cli train CONFIG``
(or ``torchrun --nproc_per_node N -m agentrl.cli train CONFIG``): accelerate's ``PartialState``
sets up the process group and gives each process its device. Each process rolls out its share of
the iteration's groups; the groups are gathered so every process holds the whole batch and
computes the same credit. The update's minibatches are the same on every process; each process
runs its share of a minibatch's rows and the gradients are summed across processes before
clipping and the optimiser step. Losses are already divided by the whole minibatch's token (or
sequence) count, so the summed gradient is the one a single process would compute on the whole
minibatch: N processes take the same steps as one, with N times the rollout and update throughput.

How the gradients are summed is the config's ``distributed.strategy`` (``trainers.parallel``):
``ddp`` (default) wraps the learner's forward in ``DistributedDataParallel``, whose bucketed
all-reduces overlap the backward; ``allreduce`` is one flat all-reduce per optimiser step
(``Dist.sum_grads``, also SFT's); ``fsdp`` shards the frozen base model with FSDP2 while the
learner trains (``distributed.shard: always``: at all times, for a base that does not fit one
device), keeping the small LoRA adapter replicated. DDP and FSDP need every process to
run the same number of forward and backward passes, so a process whose share of a minibatch holds
fewer micro-batches (or none) runs a zero-weight padding pass; ``allreduce`` needs no such lockstep.
This module holds what every strategy shares: ranks, shares, gathers, broadcasts, the flat sum.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch is imported when a collective runs, so a single-process user of Dist (the
    import torch  # evaluation of scripted policies) does not need the training extra

__all__ = ["SINGLE", "Dist", "before_collectives", "init_distributed", "launched_processes"]

T = TypeVar("T")

_SETTLE: list[Callable[[], None]] = []


def before_collectives(settle: Callable[[], None]) -> Callable[[], None]:
    """Run ``settle()`` before each of ``Dist``'s collectives; returns the function that stops it.

    A collective pairs calls by order, so every process must reach it with the same collectives
    behind it. An engine whose forward passes are themselves collectives (FSDP that keeps the base
    sharded between updates) lets the processes that ran fewer passes catch up here. The reference
    is strong on purpose: when a settle function stops is then the same on every process, never
    up to each one's garbage collector."""
    _SETTLE.append(settle)
    return lambda: _SETTLE.remove(settle) if settle in _SETTLE else None


def _settle() -> None:
    for settle in list(_SETTLE):
        settle()


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; with ``world == 1`` every collective is a no-op."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @property
    def main(self) -> bool:
        """Rank 0 writes the run directory (metrics, checkpoints, summaries) and prints progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's items: every ``world``-th one from ``rank`` (balanced to within one)."""
        return list(items[self.rank :: self.world])

    def gather(self, mine: Sequence[T]) -> list[T]:
        """Every process's ``share`` put back in the original order (inverse of ``share``)."""
        if not self.active:
            return list(mine)
        import torch

        _settle()

        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, list(mine))
        total = sum(len(p) for p in parts)
        return [parts[i % self.world][i // self.world] for i in range(total)]

    def gather_all(self, mine: Sequence[T]) -> list[T]:
        """Every process's items, rank after rank (any number from each)."""
        if not self.active:
            return list(mine)
        import torch

        _settle()

        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, list(mine))
        return [x for p in parts for x in p]

    def sum_grads(self, params: Sequence[torch.nn.Parameter], bucket_elements: int = 1 << 25) -> None:
        """Sum the gradients of ``params`` over processes (a process without one counts zeros), one
        all-reduce per bucket of up to ``bucket_elements`` values (a LoRA adapter is one bucket).
        The ``allreduce`` and ``fsdp`` strategies' gradient sum, and SFT's."""
        if not self.active:
            return
        import torch

        _settle()

        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            bucket.append(p)
            size += p.numel()
            if size >= bucket_elements:
                _all_reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _all_reduce_bucket(bucket)

    def sum_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Per-key sums over processes (a key missing on a process counts 0)."""
        if not self.active:
            return dict(stats)
        import torch

        _settle()

        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, dict(stats))
        keys = sorted({k for p in parts for k in p})
        return {k: float(sum(p.get(k, 0.0) for p in parts)) for k in keys}

    def broadcast_params(self, params: Sequence[torch.Tensor]) -> None:
        """Make every process's ``params`` equal rank 0's (a tensor off the process's device, such
        as the CPU value head under NCCL, travels through it)."""
        if not self.active:
            return
        import torch

        _settle()

        with torch.no_grad():
            for p in params:
                on_device = (
                    p.data if self.device is None or p.device == self.device else p.data.to(self.device)
                )
                torch.distributed.broadcast(on_device, src=0)
                if on_device is not p.data:
                    p.data.copy_(on_device)

    def barrier(self) -> None:
        if self.active:
            import torch

            _settle()
            torch.distributed.barrier()


def _all_reduce_bucket(params: list[torch.nn.Parameter]) -> None:
    import torch

    grads = [p.grad for p in params]
    if any(g is None for g in grads):
        raise ValueError("every parameter in a gradient bucket needs a gradient before the all-reduce")
    flat = torch.cat([g.reshape(-1) for g in grads if g is not None])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        assert g is not None
        g.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def _destroy_process_group() -> None:
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


SINGLE = Dist()


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str | None = None) -> Dist:
    """The process group a launcher (``accelerate launch``, ``torchrun``) asked for through
    ``WORLD_SIZE``/``RANK``, or ``SINGLE``. ``device: cpu`` (or no GPU) trains on CPU processes."""
    if launched_processes() <= 1:
        return SINGLE
    import torch
    from accelerate import PartialState

    cpu = (device is not None and str(device).startswith("cpu")) or not torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not cpu and local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"process {local_rank} on this machine has no GPU of its own ({torch.cuda.device_count()} visible): "
            "launch one process per GPU, or train on CPU processes with model.device=cpu"
        )
    state = PartialState(cpu=cpu)  # a singleton: later calls in this process reuse the group
    if state.num_processes <= 1:
        return SINGLE
    atexit.register(_destroy_process_group)
    return Dist(
        rank=state.process_index,
        world=state.num_processes,
        device=torch.device("cpu") if cpu else state.device,
    )
