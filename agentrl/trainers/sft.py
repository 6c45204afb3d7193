"""SFT warm start: imitate expert trajectories rendered exactly as rollout will prompt the model.

Every env with an oracle has an expert (``agentrl.trainers.experts``: maze, alfworld, webshop,
search, tools, bfcl). Each expert turn becomes one sample: the prompt the builder gives at that
point of the episode and the response in the rollout's response format (followed by the
end-of-turn token in training). The episode state and the prompt come from rollout's own
``Episode`` (``start``/``prompt``/``add_step``/``observe``), and the response is parsed back with
the format's parser, so the env receives and the history shows what rollout would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agentrl.agents import (
    RESPONSE_FORMATS,
    ChatPrompt,
    ExpertAnswer,
    StepPrompt,
    candidate_responses,
    parse_response,
)
from agentrl.distributed import SINGLE, Dist
from agentrl.policies.choice import candidate_logprobs
from agentrl.policies.logprobs import pack_samples, token_logprobs
from agentrl.rollout import Episode
from agentrl.trainers.experts import EXPERTS, ExpertTurn, expert_env, get_expert
from agentrl.types import Step

__all__ = ["EXPERTS", "Demonstration", "expert_demonstrations", "expert_env", "render_response", "sft_train"]


def render_response(
    action: str, response_format: str, turn: int, goal_hint: str = "reach the goal", think: str | None = None
) -> str:
    """The expert's answer written by the response format's ``render`` (HiPER: one subgoal,
    ``goal_hint``, for the whole episode; ``tool_call``: the action as it is)."""
    render = RESPONSE_FORMATS.get(response_format).render if response_format in RESPONSE_FORMATS else None
    if render is None:
        raise ValueError(f"no expert rendering for response format {response_format!r}")
    return render(ExpertAnswer(action, turn=turn, subgoal=goal_hint, think=think))


@dataclass
class Demonstration:
    """One expert step: chat messages and the response text; ``success``: the episode was won.

    ``candidates``: the env's admissible actions at that step, rendered as rollout renders them for
    ``rollout.action_choice: admissible`` (what SFT's choice loss normalises over; empty where the
    env lists none or the format cannot render them)."""

    messages: list[dict[str, Any]]
    response: str
    task_id: str = ""
    turn: int = 0
    success: bool = False
    candidates: list[str] = field(default_factory=list)


def expert_demonstrations(
    env_name: str, env: Any, task_ids: Sequence[str], builder: StepPrompt | ChatPrompt, *, seed: int = 0
) -> list[Demonstration]:
    """Play the env's expert on each task (reset seed ``seed + n``) and record (prompt, response) per step.

    ``env`` must be able to play the expert (``expert_env`` makes one). A rendered response that
    the format's parser rejects is a ValueError (the expert's action cannot be written in it).
    """
    expert = get_expert(env_name)
    demos: list[Demonstration] = []
    fmt = builder.response_format
    for n, task_id in enumerate(task_ids):
        # the rollout's own episode state and prompt builder, so each prompt is the one rollout shows
        ep = Episode(str(task_id), "", "", seed + n)
        ep.start(*env.reset(seed=seed + n, options={"task_id": task_id}))
        policy = expert.start(env, task_id)
        episode: list[Demonstration] = []
        done = False
        while not done:
            turn = policy(ep.obs, ep.info)
            if turn is None:
                break
            turn = turn if isinstance(turn, ExpertTurn) else ExpertTurn(str(turn))
            messages = ep.prompt(builder)
            response = render_response(turn.action, fmt, len(episode), expert.subgoal, think=turn.think)
            parsed = parse_response(response, fmt)
            if not parsed.valid:
                raise ValueError(
                    f"{env_name} expert's turn {len(episode)} on task {task_id!r} does not parse in format "
                    f"{fmt!r} ({parsed.reason}): {response!r}"
                )
            candidates = candidate_responses(fmt, ep.info.get("admissible_actions") or [], len(episode))
            episode.append(
                Demonstration(
                    messages, response, task_id=str(task_id), turn=len(episode), candidates=candidates
                )
            )
            ep.add_step(
                Step(obs=ep.obs, response=response, action=parsed.action, info=parsed.step_info(ep.subgoal))
            )
            obs, _, terminated, truncated, info = env.step(parsed.action)
            ep.observe(obs, dict(info or {}))
            done = terminated or truncated
        won = bool(ep.info.get("success", False))
        for d in episode:
            d.success = won
        demos.extend(episode)
    return demos


def sft_train(
    model: Any,
    tokenizer: Any,
    demos: Sequence[Demonstration],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    chat_template: str | None = None,
    chunk_size: int = 512,
    log: Callable[[dict[str, float]], None] | None = None,
    dist: Dist = SINGLE,
    lr_schedule: str = "constant",
    warmup_ratio: float = 0.0,
    pack_rows: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    prompt_loss_weight: float = 0.0,
    choice_weight: float = 0.0,
) -> dict[str, float]:
    """Minimise the mean negative log-likelihood of the response tokens (+ end-of-turn) over ``epochs``.

    ``lr_schedule``: ``"constant"``, or ``"cosine"`` (decay to 0 over all steps, after a linear warm-up
    over the first ``warmup_ratio`` of them). A constant rate stops at a random point of a noisy
    trajectory; a decay ends near a minimum, which matters when a small model's SFT must end in
    the same place whatever the data order.

    Trains every parameter that requires grad (the whole model, or only a LoRA adapter). With
    several processes each runs its share of every batch and the gradients are summed (the loss is
    divided by the whole batch's token count), so the steps are the single-process ones.
    ``pack_rows``: rows packed without padding (``token_logprobs(packed=True)``). ``progress(step,
    steps, loss)``: called about every tenth of the whole run (long epochs say how far they are).

    ``prompt_loss_weight`` w: the prompt's tokens count in the loss too, each with weight w against a
    response token's 1 (the mean is over the weights: OpenAI's fine-tuning ``prompt_loss_weight``,
    Axolotl's ``train_on_inputs`` at w = 1). Next-token prediction on the observations teaches a
    random-init model the env's text, including words that recur between an instruction and a
    page, which is what copying one into an action needs. The logged ``loss`` stays the response
    tokens' mean, comparable across w.

    ``choice_weight`` c: add c times the mean cross-entropy of the expert's action among the
    admissible ones (``Demonstration.candidates``), each scored by its summed token log-probs as
    ``rollout.action_choice: admissible`` scores them: ``-log softmax_j(log q(cand_j | s))[expert]``.
    That is the likelihood of the expert under the policy RL then trains (behaviour cloning of the
    action-scoring policy of ``policies.choice``: SayCan's and GLAM's set-normalised sequence
    probability, Carta et al. 2023, section 3; an agentrl option, not a paper's SFT recipe), and its gradient says which
    of the actions on the page to prefer, where the token loss only says what kind of text comes
    next: on WebShop's product page a random-init model learns from the token loss that an option
    follows, spreads that mass over every option value it has seen, and leaves ``buy now``, one
    fixed string, the most probable admissible action (docs/training.md, "Real envs on a CPU").
    Rows with fewer than two candidates, or whose expert response is not one of them (a thought
    before the action, a search the env does not list), keep the token loss alone. Each prompt then
    runs once for all its candidates (``policies.choice.candidate_logprobs``); the token loss is read
    off the expert's candidate. The logged ``loss`` stays the token mean; ``choice_loss`` is logged too.
    """
    if not (math.isfinite(prompt_loss_weight) and prompt_loss_weight >= 0):
        raise ValueError(f"prompt_loss_weight must be a finite number >= 0, got {prompt_loss_weight}")
    if not (math.isfinite(choice_weight) and choice_weight >= 0):
        raise ValueError(f"choice_weight must be a finite number >= 0, got {choice_weight}")
    if choice_weight > 0 and prompt_loss_weight > 0:
        raise ValueError(
            "choice_weight and prompt_loss_weight cannot both be > 0 (the choice pass scores no prompt)"
        )
    from agentrl.agents import render_chat

    if not demos:
        raise ValueError("no expert demonstrations to train on")
    eos = tokenizer.eos_token_id
    # one batched tokenizer call each for prompts and responses (the same ids as one call per text)
    prompts = tokenizer(
        [
            render_chat(tokenizer, d.messages, add_generation_prompt=True, chat_template=chat_template)
            for d in demos
        ],
        add_special_tokens=False,
    )["input_ids"]
    responses = [
        list(ids) + ([eos] if eos is not None else [])
        for ids in tokenizer([d.response for d in demos], add_special_tokens=False)["input_ids"]
    ]
    choice_rows, choice_target = _choice_rows(tokenizer, demos, responses) if choice_weight > 0 else ([], [])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(lr_schedule, epochs * math.ceil(len(demos) / batch_size), warmup_ratio)
    )
    dist.broadcast_params(params)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rng = np.random.default_rng(seed)
    model.train()
    losses: list[float] = []
    choice_losses: list[float] = []
    total = epochs * math.ceil(len(demos) / batch_size)
    every = max(1, total // 10)
    for epoch in range(epochs):
        order = rng.permutation(len(demos))
        for start in range(0, len(demos), batch_size):
            rows = order[start : start + batch_size]
            n_tokens = max(sum(len(responses[r]) for r in rows), 1)
            # the weight of every scored token in the batch (a prompt's first token has no context)
            n_weight = n_tokens + prompt_loss_weight * sum(len(prompts[r]) - 1 for r in rows)
            optimizer.zero_grad(set_to_none=True)
            loss, choice_loss = 0.0, 0.0
            mine: list[int] = dist.share(rows.tolist())
            if mine and choice_weight > 0:
                n_choice = max(sum(choice_target[r] is not None for r in rows), 1)
                for i in range(0, len(mine), CHOICE_PROMPTS_PER_PASS):
                    part = mine[i : i + CHOICE_PROMPTS_PER_PASS]
                    nll, ce = _choice_losses(
                        model,
                        [prompts[r] for r in part],
                        part,
                        choice_rows,
                        choice_target,
                        pad,
                        eos is not None,
                    )
                    (nll / n_tokens + choice_weight * ce / n_choice).backward()
                    loss += float(nll.detach()) / n_tokens
                    choice_loss += float(ce.detach()) / n_choice
            elif mine:
                packed = pack_samples([prompts[r] for r in mine], [responses[r] for r in mine], pad, device)
                weight_BT = packed.response_mask.float()
                scored_BT = packed.response_mask
                if prompt_loss_weight > 0:
                    scored_BT = packed.attention_mask.bool()
                    first_B = scored_BT.int().argmax(dim=1)  # left padding: each row's first real token
                    scored_BT[torch.arange(len(mine), device=device), first_B] = False
                    weight_BT = weight_BT + prompt_loss_weight * (scored_BT & ~packed.response_mask).float()
                lp = token_logprobs(
                    model,
                    packed.input_ids,
                    packed.attention_mask,
                    scored_BT,
                    chunk_size=chunk_size,
                    packed=pack_rows,
                )
                (-(lp.logprobs * weight_BT).sum() / n_weight).backward()
                loss = float(-(lp.logprobs.detach() * packed.response_mask).sum() / n_tokens)
            dist.sum_grads(params)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(dist.sum_stats({"loss": loss})["loss"])
            if choice_weight > 0:
                choice_losses.append(dist.sum_stats({"c": choice_loss})["c"])
            if progress is not None and len(losses) % every == 0 and len(losses) < total:
                progress(len(losses), total, float(np.mean(losses[-every:])))
        if log is not None:
            last = max(1, len(demos) // batch_size)
            record = {"sft_epoch": float(epoch), "sft_loss": float(np.mean(losses[-last:]))}
            if choice_losses:
                record["sft_choice_loss"] = float(np.mean(choice_losses[-last:]))
            log(record)
    model.eval()
    stats = {
        "sft_loss_first": losses[0],
        "sft_loss_last": losses[-1],
        "sft_samples": float(len(demos)),
        "sft_steps": float(len(losses)),
    }
    if choice_losses:
        stats.update(sft_choice_loss_first=choice_losses[0], sft_choice_loss_last=choice_losses[-1])
    return stats


# prompts scored together in one pass of the choice loss (each with all its candidates: WebShop's
# product page has ~14); bounds the memory of the repeated KV cache
CHOICE_PROMPTS_PER_PASS = 8


def _choice_rows(
    tokenizer: Any, demos: Sequence[Demonstration], responses: list[list[int]]
) -> tuple[list[list[list[int]]], list[int | None]]:
    """Per demonstration, the token rows scored in the choice pass and the expert's index among them.

    Rows are the candidates, the expert's with its end-of-turn token (for the token loss); a
    demonstration without a choice (fewer than two candidates, or the expert's response not among
    them) has the expert's response alone and index None."""
    flat = [c for d in demos for c in d.candidates]
    ids = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
    rows: list[list[list[int]]] = []
    target: list[int | None] = []
    for d, response in zip(demos, responses):
        cands = [list(next(ids)) for _ in d.candidates]
        k = d.candidates.index(d.response) if d.response in d.candidates else None
        if k is None or len(cands) < 2:
            rows.append([response])
            target.append(None)
        else:
            rows.append([response if j == k else c for j, c in enumerate(cands)])
            target.append(k)
    return rows, target


def _choice_losses(
    model: Any,
    prompts: list[list[int]],
    part: list[int],
    rows: list[list[list[int]]],
    target: list[int | None],
    pad: int,
    ends_with_eos: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed token NLL of the expert responses, summed choice cross-entropy) for demonstrations ``part``.

    The expert's row ends with the end-of-turn token (``ends_with_eos``), which the candidates, as
    rollout scores them, do not have: its log-prob counts in the token loss, not in the choice."""
    lp_RL = candidate_logprobs(model, prompts, [rows[r] for r in part], pad_token_id=pad)
    nll = lp_RL.new_zeros(())
    ce = lp_RL.new_zeros(())
    at = 0
    for r in part:
        block_CL = lp_RL[at : at + len(rows[r])]
        at += len(rows[r])
        k = target[r]
        nll = nll - block_CL[k or 0].sum()
        if k is not None:
            seq_C = block_CL.sum(1)
            if ends_with_eos:
                eos_at = len(rows[r][k]) - 1
                seq_C = torch.cat([seq_C[:k], (seq_C[k] - block_CL[k, eos_at])[None], seq_C[k + 1 :]])
            ce = ce - torch.log_softmax(seq_C, dim=0)[k]
    return nll, ce


def lr_factor(schedule: str, total_steps: int, warmup_ratio: float = 0.0) -> Callable[[int], float]:
    """The multiplier of the base learning rate at each optimiser step (``LambdaLR``'s function)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr schedule {schedule!r}; allowed: constant, cosine")
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
