"""SFT warm start: imitate expert trajectories rendered exactly as rollout will prompt the model.

An expert is registered per env (``EXPERTS``): given the env and a task id it returns the actions
to play. The maze's expert is ``maze.solve`` (a shortest plan). Each expert step becomes one
sample: the prompt the step-wise builder gives at that point of the episode, and the response in
the rollout's response format followed by the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agentrl.agents import ChatPrompt, StepPrompt
from agentrl.policies.logprobs import pack_samples, token_logprobs
from agentrl.registry import Registry

__all__ = ["EXPERTS", "Demonstration", "expert_demonstrations", "render_response", "sft_train"]

Expert = Callable[[Any, str], list[str]]
EXPERTS: Registry[Expert] = Registry("expert")


def _maze_expert(env: Any, task_id: str) -> list[str]:
    from agentrl.envs.maze import solve

    plan = solve(env.layout_for(task_id))
    if plan is None:
        raise ValueError(f"maze task {task_id!r} has no solution")
    return plan


EXPERTS.register("maze", _maze_expert)


def render_response(action: str, response_format: str, turn: int, goal_hint: str = "reach the goal") -> str:
    """The expert's answer in a response format (HiPER: one subgoal for the whole episode)."""
    if response_format == "think_action":
        return f"<action>{action}</action>"
    if response_format == "hiper":
        switch = "SWITCH" if turn == 0 else "KEEP"
        return f"<switch>{switch}</switch><subgoal>{goal_hint}</subgoal><action>{action}</action>"
    if response_format == "tool_call":
        return action
    raise ValueError(f"no expert rendering for response format {response_format!r}")


@dataclass
class Demonstration:
    """One expert step: chat messages and the response text."""

    messages: list[dict[str, Any]]
    response: str


def expert_demonstrations(env_name: str, env: Any, task_ids: Sequence[str], builder: StepPrompt | ChatPrompt,
                          *, seed: int = 0) -> list[Demonstration]:  # fmt: skip
    """Play the expert's actions on each task and record (prompt, response) for every step."""
    expert = EXPERTS.get(env_name)
    demos: list[Demonstration] = []
    fmt = builder.response_format
    for n, task_id in enumerate(task_ids):
        obs, info = env.reset(seed=seed + n, options={"task_id": task_id})
        task = str(info.get("task", ""))
        history: list[tuple[str, str]] = []
        observations, responses = [obs], []
        subgoal = None
        for t, action in enumerate(expert(env, task_id)):
            actions = info.get("admissible_actions")
            if isinstance(builder, ChatPrompt):
                messages = builder.build(task, observations, responses, actions)
            else:
                messages = builder.build(task, obs, history, actions, subgoal=subgoal)
            response = render_response(action, fmt, t)
            demos.append(Demonstration(messages, response))
            if fmt == "hiper":
                subgoal = "reach the goal"
            history.append((obs, action))
            responses.append(response)
            obs, _, terminated, truncated, info = env.step(action)
            observations.append(obs)
            if terminated or truncated:
                break
    return demos


def sft_train(model: Any, tokenizer: Any, demos: Sequence[Demonstration], *, epochs: int, lr: float, batch_size: int,
              seed: int, chat_template: str | None = None, chunk_size: int = 512,
              log: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:  # fmt: skip
    """Minimise the mean negative log-likelihood of the response tokens (+ end-of-turn) over ``epochs``.

    Trains every parameter that requires grad (the whole model, or only a LoRA adapter).
    """
    from agentrl.agents import render_chat

    if not demos:
        raise ValueError("no expert demonstrations to train on")
    eos = tokenizer.eos_token_id
    prompts = [tokenizer(render_chat(tokenizer, d.messages, add_generation_prompt=True, chat_template=chat_template),
                         add_special_tokens=False)["input_ids"] for d in demos]  # fmt: skip
    responses = [tokenizer(d.response, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else []) for d in demos]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rng = np.random.default_rng(seed)
    model.train()
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(demos))
        for start in range(0, len(demos), batch_size):
            rows = order[start : start + batch_size]
            packed = pack_samples([prompts[r] for r in rows], [responses[r] for r in rows], pad, device)
            lp = token_logprobs(model, packed.input_ids, packed.attention_mask, packed.response_mask, chunk_size=chunk_size)
            loss = -(lp.logprobs * packed.response_mask).sum() / packed.response_mask.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
        if log is not None:
            log({"sft_epoch": float(epoch), "sft_loss": float(np.mean(losses[-max(1, len(demos) // batch_size) :]))})
    model.eval()
    return {"sft_loss_first": losses[0], "sft_loss_last": losses[-1], "sft_samples": float(len(demos)), "sft_steps": float(len(losses))}
