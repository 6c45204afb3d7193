"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node N``: the same rollout batch on
every process, then one update per schedule (GRPO, GAE with a value head, SeeUPO) through a
``Learner`` on ``init_distributed`` with the strategy named by the third argument (default ddp;
``fsdp:always`` keeps the base sharded between updates too); each process saves its trained
parameters and statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from agentrl.agents import StepPrompt
from agentrl.credit import estimator_info
from agentrl.distributed import init_distributed
from agentrl.envs.maze import MazeEnv
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.policies.logprobs import split_causal_lm
from agentrl.rollout import rollout
from agentrl.trainers.learner import Learner, UpdateSettings
from agentrl.trainers.samples import build_samples, steps_in_row_order
from agentrl.trainers.schedule import run_update
from agentrl.trainers.values import value_heads_for
from agentrl.types import StepBatch


def _weight_layout(policy: HFPolicy) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """(type, shape, this process's local shape) of the first layer's first LoRA-wrapped base weight."""
    body = split_causal_lm(policy.model)[0]
    w = next(p for n, p in body.layers[0].named_parameters() if n.endswith("base_layer.weight"))
    local = w.to_local() if hasattr(w, "to_local") else w
    return type(w).__name__, tuple(w.shape), tuple(local.shape)


def main(model_dir: str, out: str, engine: str = "ddp") -> None:
    strategy, _, shard = engine.partition(":")
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    torch.manual_seed(0)
    sampler = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0), device="cpu")
    envs = [MazeEnv(size=2, n_doors=1, num_tasks=50) for _ in range(6)]
    groups = rollout(
        sampler,
        envs,
        ["maze-1", "maze-2", "maze-3"],
        3,
        max_turns=3,
        params=SamplingParams(max_new_tokens=6, seed=5),
        builder=StepPrompt(history_k=1),
    )
    steps = steps_in_row_order(groups)
    batch = StepBatch.from_trajectories(groups)
    results = {}
    loose = [
        torch.nn.Parameter(torch.zeros(5)),
        torch.nn.Parameter(torch.zeros(3, 2)),
        torch.nn.Parameter(torch.zeros(4)),
    ]
    for i, p in enumerate(loose):
        if i != dist.rank:  # each process leaves one gradient unset
            p.grad = torch.full_like(p, float(dist.rank + 1))
    dist.sum_grads(loose, bucket_elements=7)  # two buckets
    results["loose_grads"] = [p.grad for p in loose]
    five = {"minibatch_size": 5, "micro_batch_size": 2, "epochs": 2}
    # minibatches of 13, 13 and 1 rows: on 2 processes the last leaves rank 1 no row at all
    runs = [(e, e, five) for e in ("grpo", "gae", "seeupo", "spa_rl", "ucas")]
    runs.append(("grpo_empty_share", "grpo", {"minibatch_size": 13, "micro_batch_size": 4, "epochs": 1}))
    for name, estimator, shape in runs:
        torch.manual_seed(1)
        policy = HFPolicy.from_pretrained(
            model_dir, lora=LoraSettings(r=4, alpha=8, dropout=0.0), device="cpu"
        )
        heads = value_heads_for(estimator)
        settings = UpdateSettings(kl_coef=0.1, entropy_coef=0.01, **shape)
        learner = Learner(
            policy,
            settings,
            lr=1e-2,
            value_heads=heads,
            dist=dist,
            strategy=strategy,
            shard=shard or "update",
        )
        results["engine"] = type(learner.parallel).__name__
        if "base_weight" not in results:  # a frozen base weight outside and inside an update
            dist.barrier()  # under shard: always the layout is read while the ranks are in step
            results["base_weight"] = [_weight_layout(policy)]
            with learner.parallel.training():
                results["base_weight"].append(_weight_layout(policy))
        initial = [p.detach().clone() for p in learner.params]
        samples = build_samples(steps, value_heads=estimator_info(estimator).value_heads)
        result = run_update(learner, batch, samples, estimator, {}, rng=np.random.default_rng(3))
        params = [p.detach().clone() for p in learner.params]
        if learner.value_head is not None:
            params += [p.detach().clone() for p in learner.value_head.parameters()]
        moved = max(float((p - q).abs().max()) for p, q in zip(learner.params, initial))
        results[name] = {"params": params, "stats": result.stats, "rows": len(samples), "moved": moved}
        join = getattr(learner.parallel, "join", None)
        if name == "grpo":  # 5 rows in micro-batches of 2: rank 0 scores 2 batches, rank 1 one
            dist.barrier()
            before = join.take_filler_passes() if join is not None else 0
            odd = learner.score(samples, np.arange(5), reference=True)
            results["odd_scores"] = [*odd.logp, *(odd.ref_logp or [])]
            if join is not None:
                dist.barrier()
                results["odd_filler_passes"] = join.take_filler_passes()
                join.filler_passes = before
        if join is not None:
            dist.barrier()  # the last scoring's passes settled before they are counted
            results.setdefault("filler_passes", 0)
            results["filler_passes"] += join.take_filler_passes()
            join.close()  # the next run builds its own learner; this one's settling ends on every rank
    torch.save(results, Path(out) / f"{engine.replace(':', '-')}-world{dist.world}-rank{dist.rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
