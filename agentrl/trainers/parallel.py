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

__all__ = ["SHARD_MODES", "STRATEGIES", "Join", "Parallel", "ReplicatedDDP", "ShardedBase", "make_parallel"]

STRATEGIES = ("ddp", "allreduce", "fsdp")
SHARD_MODES = ("update", "always")


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
    The LoRA-merged sampling copy (``model.merge_lora_for_sampling``) is turned off: it would hold a
    second full copy; generation runs through the peft model.

    ``shard`` says when the base is sharded:

    - ``update``: only while training (``training``). Between updates every unit is unsharded (full
      weights, no collectives in forward), so sampling, scoring and evaluation run as on one
      process; at the start of an update all processes drop the full weights, at its end they
      gather them together. This saves the base's memory where activations peak; the model must
      still fit whole on one device between updates.
    - ``always``: the base is never whole on a process: each forward all-gathers one layer at a
      time and frees it after. Sampling, scoring and evaluation run a different number of forward
      passes on each process, which the layer all-gathers cannot allow (they pair by order), so
      ``Join`` keeps them in step: each forward is announced, and a process that has run out of
      passes runs one-token passes (results dropped) until every process is done, which they
      all find out at the next ``Dist`` collective. A base that does not fit one device trains
      this way; each forward then costs a round of all-gathers, so sampling on rollout servers
      (``rollout.server``) is the fast path, in-process generation the slow one.
    """

    lockstep = True

    def __init__(
        self, policy: Any, params: Sequence[torch.nn.Parameter], dist: Dist, shard: str = "update"
    ) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if shard not in SHARD_MODES:
            raise ValueError(f"fsdp shard mode must be one of {', '.join(SHARD_MODES)}, got {shard!r}")
        super().__init__(policy, params, dist)
        body, head, _ = split_causal_lm(policy.model)
        layers = getattr(body, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
            raise TypeError(f"fsdp needs a decoder body with a `layers` list; {type(body).__name__} has none")
        device = dist.device if dist.device is not None else torch.device("cpu")
        mesh = init_device_mesh(device.type, (dist.world,))
        ignored = {*self.params, *head.parameters()}
        self.always = shard == "always"
        self.units: list[Any] = []
        for layer in layers:
            fully_shard(layer, mesh=mesh, reshard_after_forward=True, ignored_params=ignored)
            self.units.append(layer)
        # the root keeps its weights from forward to backward while training ("update"); "always"
        # frees them after every forward: a pass without backward must not leave them gathered
        fully_shard(body, mesh=mesh, reshard_after_forward=self.always, ignored_params=ignored)
        self.units.append(body)
        self.train_reshard = [True] * len(layers) + [self.always]
        with torch.no_grad():  # FSDP moved what it shards to ``device``; the replicated rest follows
            for p in ignored:
                if p.device != device:
                    p.data = p.data.to(device)
        policy.merge_for_sampling = False
        self._unshard()  # FSDP's lazy initialisation runs here, registering its state-dict hooks
        self._drop_state_dict_hooks()
        self.join: Join | None = None
        if self.always:
            self._reshard()
            self.join = Join(body, dist)

    def _drop_state_dict_hooks(self) -> None:
        """Remove FSDP's state-dict hooks: they switch a module to its shards and free the gathered
        weights on the process that takes a state dict (peft's adapter save runs on rank 0 only),
        whose next forward would then all-gather alone. A state dict now holds what the module
        holds: full tensors between updates under ``update``, shards under ``always`` (the
        adapter, replicated, is full either way)."""
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
        if self.always:  # sharded already; the update's lockstep padding matches the passes
            yield
            return
        self._reshard()
        try:
            yield
        finally:
            self._unshard()


class Join:
    """Keeps processes whose sharded forwards are collectives in step when they run different
    numbers of passes (``ShardedBase`` with ``shard: always``).

    Before each forward through ``body`` a process adds ``[1, grad]`` to a two-number all-reduce
    (``grad``: the pass records a graph for a backward). A process that has no passes left settles
    before its next ``Dist`` collective: it adds ``[0, 0]`` and, while the sum says others are
    still passing, runs a pass of its own over one token (output dropped), so every process issues
    the same layer all-gathers in the same order. When every process settles, the sum is zero and
    all go on together. Passes in step (the update's lockstep passes, each with its backward)
    announce together and never wait. Uneven passes with a backward cannot be matched this way
    (the backward's all-gathers would pair with a filler's forward ones), so they raise.
    """

    def __init__(self, body: torch.nn.Module, dist: Dist) -> None:
        from agentrl.distributed import before_collectives

        self.body, self.dist = body, dist
        self.device = dist.device if dist.device is not None else torch.device("cpu")
        self._filling = False
        self.filler_passes = 0  # one-token passes this process ran for others (a statistic)
        self._hook = body.register_forward_pre_hook(self._announce, prepend=True)
        self._stop_settling = before_collectives(self.settle)

    def _reduce(self, passing: int, grad: int) -> tuple[int, int]:
        flags = torch.tensor([passing, grad], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.SUM)
        return int(flags[0]), int(flags[1])

    def _announce(self, module: torch.nn.Module, args: Any) -> None:
        if self._filling:
            return
        passing, grads = self._reduce(1, int(torch.is_grad_enabled()))
        if 0 < grads < passing:
            raise RuntimeError(
                "processes ran sharded forward passes with and without backward at the same time; "
                "the base's all-gathers cannot be matched"
            )

    def settle(self) -> None:
        """Run one-token passes while another process is still passing; return when none is."""
        while True:
            passing, grads = self._reduce(0, 0)
            if not passing:
                return
            if grads:
                raise RuntimeError(
                    "a process ran a sharded forward pass with backward that the others did not; "
                    "training passes must run in lockstep (trainers.parallel)"
                )
            ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
            self._filling = True
            try:
                with torch.no_grad():
                    self.body(input_ids=ids, use_cache=False)
            finally:
                self._filling = False
            self.filler_passes += 1

    def take_filler_passes(self) -> int:
        """The one-token passes run since the last call (a metric of what keeping step costs)."""
        n, self.filler_passes = self.filler_passes, 0
        return n

    def close(self) -> None:
        """Stop announcing and settling (the engine is no longer used)."""
        self._hook.remove()
        self._stop_settling()


def make_parallel(
    strategy: str, policy: Any, params: Sequence[torch.nn.Parameter], dist: Dist, shard: str = "update"
) -> Parallel:
    """The engine for ``strategy`` (one process: plain forward, no collectives); ``shard``: when
    ``fsdp`` shards the base (``ShardedBase``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"distributed strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not dist.active or strategy == "allreduce":
        return Parallel(policy, params, dist)
    if strategy == "ddp":
        return ReplicatedDDP(policy, params, dist)
    return ShardedBase(policy, params, dist, shard)
