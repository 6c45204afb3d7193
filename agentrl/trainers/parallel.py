"""How a learner's update runs over several processes (config ``distributed.strategy``).

``ddp`` (default): the adapter's gradients go through PyTorch's ``DistributedDataParallel``: bucketed
all-reduces launched from its autograd hooks, overlapping the last micro-batch's backward.
``allreduce``: one flat all-reduce of the adapter's gradients after the micro-batches
(``Dist.sum_grads``); kept because it needs no lockstep (each process runs only its own rows) and
as the baseline the bench compares against.
``fsdp``: FSDP2 (``fully_shard``) shards the frozen base model's decoder layers and body over the
processes; the LoRA adapter (and a tied output layer) stays replicated and its gradients are summed
with one flat all-reduce, as under ``allreduce``. See ``ShardedBase`` for when the model is sharded.

Each process trains its share of every minibatch and the gradients are summed, never averaged: the
losses are already divided by the whole minibatch's token count, so the summed gradient is the one
a single process computes. DDP (and FSDP's layer all-gathers) need every process to run the same
number of forward and backward passes, while a process's share of a minibatch may be a
micro-batch shorter, or empty. ``lockstep`` engines therefore run ``micro_batch_count`` passes on
every process: a process with fewer rows adds one pass over a zero-weight row (its loss times 0,
so its gradient is exactly 0). All passes but the last run under ``no_sync``, so DDP reduces once
per optimiser step. The extra pass runs on a process that would otherwise wait for the others.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from agentrl.distributed import Dist
from agentrl.policies.logprobs import split_causal_lm

__all__ = ["STRATEGIES", "Parallel", "ReplicatedDDP", "ShardedBase", "make_parallel"]

STRATEGIES = ("ddp", "allreduce", "fsdp")


class Parallel:
    """One process, or ``allreduce``: forward through the policy, sum the gradients at the end."""

    lockstep = False

    def __init__(self, policy: Any, params: Sequence[torch.nn.Parameter], dist: Dist) -> None:
        self.policy, self.params, self.dist = policy, list(params), dist

    def micro_batch_count(self, rows: int, micro_batch_size: int, mine: int) -> int:
        """Passes this process runs for a minibatch of ``rows`` rows, ``mine`` of them its own: its
        own micro-batches, or in lockstep those of the process with the most rows."""
        if self.lockstep and self.dist.active:
            return math.ceil(math.ceil(rows / self.dist.world) / micro_batch_size)
        return math.ceil(mine / micro_batch_size)

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """The context a micro-batch's forward and backward run in (``last``: the step's last one)."""
        return contextlib.nullcontext()

    def logprobs(self, *args: Any, **kwargs: Any) -> Any:
        return self.policy.logprobs(*args, **kwargs)

    def reduce(self) -> None:
        """Sum the step's gradients over processes (after its last backward)."""
        self.dist.sum_grads(self.params)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Around an update's optimiser steps."""
        yield


class _Scorer(torch.nn.Module):
    """The policy's differentiable log-probs as a module, so DDP sees each forward."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.model = policy.model
        self._logprobs = policy.logprobs

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._logprobs(*args, **kwargs)


def _sum_hook(state, bucket):  # no annotations: DDP checks them against its own types, unresolved here
    """DDP comm hook: the gradient sum (DDP's default averages; the losses are already normalised)."""
    work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
    assert work is not None
    return work.get_future().then(lambda fut: fut.value()[0])


class ReplicatedDDP(Parallel):
    """Every process holds the whole model; ``DistributedDataParallel`` sums the adapter's gradients."""

    lockstep = True

    def __init__(self, policy: Any, params: Sequence[torch.nn.Parameter], dist: Dist) -> None:
        from torch.nn.parallel import DistributedDataParallel

        super().__init__(policy, params, dist)
        device = dist.device
        self.ddp = DistributedDataParallel(
            _Scorer(policy),
            device_ids=[device] if device is not None and device.type == "cuda" else None,
            forward_sync_buffers=False,  # the base model's buffers are the same everywhere
            init_sync=False,  # the learner broadcast the trained parameters; the base is loaded alike
        )
        self.ddp.register_comm_hook(None, _sum_hook)

    def no_sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if last else self.ddp.no_sync()

    def logprobs(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp(*args, **kwargs)

    def reduce(self) -> None:
        pass  # done by DDP's hooks in the last backward


class ShardedBase(Parallel):
    """FSDP2 over the frozen base model; the adapter (``params``) is replicated and all-reduced.

    Each decoder layer is one ``fully_shard`` unit and the decoder body (embeddings, final norm)
    the root; the output layer, which may share its weight with the embeddings, and the adapter
    are ``ignored_params``. A LoRA adapter is small, so replicating it keeps the optimiser, the
    checkpoints (rank 0 writes the full adapter) and the sampler's view of it as without sharding.

    Sharded only while training (``training``): sampling, scoring and evaluation run the model
    forward a different number of times on each process, which FSDP's per-layer all-gathers cannot
    allow, so outside an update every unit stays unsharded (full weights, no collectives in
    forward). At the end of an update all processes unshard together; at the start they drop the
    full weights. The LoRA-merged sampling copy (``model.merge_lora_for_sampling``) is turned off:
    it would hold a second full copy; generation runs through the unsharded peft model. So the
    saving is the base's memory during the update's passes, where activations peak; the model
    must still fit whole on one device between updates (sharded scoring would need the update's
    lockstep padding, sharded sampling a rollout server).
    """

    lockstep = True

    def __init__(self, policy: Any, params: Sequence[torch.nn.Parameter], dist: Dist) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        super().__init__(policy, params, dist)
        body, head, _ = split_causal_lm(policy.model)
        layers = getattr(body, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
            raise TypeError(f"fsdp needs a decoder body with a `layers` list; {type(body).__name__} has none")
        device = dist.device if dist.device is not None else torch.device("cpu")
        mesh = init_device_mesh(device.type, (dist.world,))
        ignored = {*self.params, *head.parameters()}
        self.units: list[Any] = []
        for layer in layers:
            fully_shard(layer, mesh=mesh, reshard_after_forward=True, ignored_params=ignored)
            self.units.append(layer)
        fully_shard(body, mesh=mesh, reshard_after_forward=False, ignored_params=ignored)
        self.units.append(body)
        self.train_reshard = [True] * len(layers) + [False]
        policy.merge_for_sampling = False
        self._unshard()  # FSDP's lazy initialisation runs here, registering its state-dict hooks
        self._drop_state_dict_hooks()

    def _drop_state_dict_hooks(self) -> None:
        """Remove FSDP's state-dict hooks: they switch a module to its shards and free the gathered
        weights on the process that takes a state dict (peft's adapter save runs on rank 0 only),
        whose next forward would then all-gather alone. Outside training the units are unsharded,
        so a state dict now holds full tensors (the adapter, replicated, is unaffected either way)."""
        for unit in self.units:
            for group in unit._get_fsdp_state()._fsdp_param_groups:
                names = (
                    "_module_to_pre_save_state_dict_hook_handle",
                    "_module_to_pre_load_state_dict_hook_handle",
                )
                if not all(isinstance(getattr(group, n, None), dict) for n in names):
                    raise RuntimeError(
                        "this torch's FSDP keeps its state-dict hooks elsewhere; distributed.strategy=fsdp "
                        "was written against torch 2.13"
                    )
                for name in names:
                    for handle in getattr(group, name).values():
                        handle.remove()  # the entries stay, so FSDP does not register them again

    def _unshard(self) -> None:
        """Full weights on every process (one all-gather per unit; every process calls it together)."""
        for unit in self.units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()

    def _reshard(self) -> None:
        for unit, reshard in zip(self.units, self.train_reshard):
            unit.reshard()
            unit.set_reshard_after_forward(reshard, recurse=False)

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        self._reshard()
        try:
            yield
        finally:
            self._unshard()


def make_parallel(strategy: str, policy: Any, params: Sequence[torch.nn.Parameter], dist: Dist) -> Parallel:
    """The engine for ``strategy`` (one process: plain forward, no collectives)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not dist.active or strategy == "allreduce":
        return Parallel(policy, params, dist)
    if strategy == "ddp":
        return ReplicatedDDP(policy, params, dist)
    return ShardedBase(policy, params, dist)
