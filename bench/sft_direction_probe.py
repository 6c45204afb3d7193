"""Why HiPER's warm start does not learn the maze: how well one SFT epoch teaches the tiny model the
direction of a move, per response-format variant.

The learning benchmark's HiPER warm start (``<switch>/<subgoal>/<action>``) ends at ~5% success with
two thirds of its actions invalid, where the same model, data and SFT in ``think_action`` reach ~70%.
This script trains the benchmark's maze model (2 layers, hidden 128, the maze family's tokenizer
corpus) for one SFT epoch on the expert's plans of 1,600 tasks, written in one variant, and prints the
mean negative log-likelihood of the direction token (the token after ``go``) on 600 expert steps of
held-out tasks (1,800-1,999). ln 4 = 1.386 nats is a uniform guess among the four directions: the
model then does not read the room's exits at all.

Variants (``think_action`` and ``hiper`` are the formats as the benchmark writes them):

| variant | prompt | response |
| --- | --- | --- |
| ``think_action`` | think_action's | ``<action>go east</action>`` |
| ``hiper`` | hiper's (its instruction, a ``Current subgoal:`` line) | ``<switch>KEEP</switch><subgoal>reach the goal</subgoal><action>go east</action>`` |
| ``hiper_actfirst`` | hiper's | the action element first, then switch and subgoal |
| ``hiper_nosub`` | hiper's | KEEP turns without the subgoal element |
| ``hiper_noinstr`` | hiper's without the format instruction | hiper's |
| ``hiper_nosubline`` | hiper's without the ``Current subgoal:`` line | hiper's |
| ``ta_longsys`` | think_action's plus hiper's instruction | think_action's |
| ``ta_tail`` | think_action's | think_action's followed by ``<switch>KEEP</switch><subgoal>reach the goal</subgoal>`` |

``--tail TEXT`` replaces ta_tail's suffix; ``--whole-words KEEP,SWITCH`` trains the tokenizer with
those words as single tokens (``model.tiny.whole_words``).

One process per variant, one torch thread, about 3 minutes each on a quiet core. Figures only:
nothing is asserted.

    .venv/bin/python bench/sft_direction_probe.py                       # every variant, seed 0
    .venv/bin/python bench/sft_direction_probe.py --variants hiper,ta_tail --seed 1
    .venv/bin/python bench/sft_direction_probe.py --variants ta_tail --tail '<switch>KEEP</switch>'
    .venv/bin/python bench/sft_direction_probe.py --variants hiper --whole-words KEEP,SWITCH --epochs 2
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path
from typing import Any

VARIANTS = (
    "think_action",
    "hiper",
    "hiper_actfirst",
    "hiper_nosub",
    "hiper_noinstr",
    "hiper_nosubline",
    "ta_longsys",
    "ta_tail",
)
MAZE = {"size": 2, "n_doors": 1, "max_steps": 6, "num_tasks": 2000, "colours": 1, "turn_rewards": True}
SYSTEM = "Reach the goal room."
HIPER_TAIL = "<switch>KEEP</switch><subgoal>reach the goal</subgoal>"


def _rewrite(response: str, variant: str, tail: str = HIPER_TAIL) -> str:
    """The expert's response as ``variant`` writes it."""
    if variant == "hiper_nosub" and "KEEP" in response:
        return re.sub(r"<subgoal>.*?</subgoal>", "", response)
    if variant == "hiper_actfirst":
        m = re.fullmatch(r"(<switch>.*</switch><subgoal>.*</subgoal>)(<action>.*</action>)", response)
        if m is None:
            raise ValueError(f"not a hiper response: {response!r}")
        return m.group(2) + m.group(1)
    if variant == "ta_tail":
        return response + tail
    return response


def _demos(env: Any, task_ids: list[str], variant: str, seed: int, tail: str = HIPER_TAIL) -> list[Any]:
    from agentrl.agents import get_format
    from agentrl.agents.prompts import StepPrompt
    from agentrl.trainers.sft import expert_demonstrations

    fmt = "think_action" if variant.startswith("ta_") or variant == "think_action" else "hiper"
    system = SYSTEM
    if variant == "ta_longsys":
        system = f"{SYSTEM}\n{get_format('hiper').instructions}"
    builder = StepPrompt(history_k=0, response_format=fmt, system_prompt=system)
    demos = expert_demonstrations("maze", env, task_ids, builder, seed=seed)
    for d in demos:
        d.response = _rewrite(d.response, variant, tail)
        if variant == "hiper_noinstr":  # the system message without the format's instruction
            for m in d.messages:
                if m["role"] == "system":
                    m["content"] = system
        if variant == "hiper_nosubline":
            for m in d.messages:
                m["content"] = "\n".join(
                    line for line in m["content"].split("\n") if not line.startswith("Current subgoal:")
                )
    return demos


def probe(
    variant: str,
    seed: int,
    epochs: int,
    work: Path,
    tail: str = HIPER_TAIL,
    whole_words: tuple[str, ...] = (),
) -> dict[str, float]:
    """Train one variant and return its SFT loss and held-out token / direction NLLs."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from agentrl.agents import render_chat
    from agentrl.envs import make
    from agentrl.policies.tiny import build_tiny_model, env_corpus
    from agentrl.policies.tokenizer import load_tokenizer
    from agentrl.trainers.sft import sft_train

    torch.set_num_threads(1)
    env = make("maze", **MAZE)
    ids = [str(t) for t in env.task_ids()]
    base = work / f"tiny-model-{'-'.join(whole_words)}"
    if not (base / "config.json").exists():
        corpus = env_corpus(env, ids[:50], steps_per_task=10, seed=0)
        build_tiny_model(
            base,
            corpus,
            vocab_size=512,
            layers=2,
            hidden=128,
            heads=4,
            kv_heads=2,
            seed=0,
            whole_words=whole_words,
        )
    train = _demos(env, ids[:1600], variant, seed, tail)
    held = _demos(env, ids[1800:2000], variant, seed + 10_000, tail)[:600]
    tokenizer = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)
    stats = sft_train(model, tokenizer, train, epochs=epochs, lr=0.002, batch_size=32, seed=seed)
    model.eval()
    (go,) = tokenizer("go", add_special_tokens=False)["input_ids"]
    direction, total, n_tokens = [], 0.0, 0
    with torch.no_grad():
        for d in held:
            text = render_chat(tokenizer, d.messages, add_generation_prompt=True)
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            response = tokenizer(d.response, add_special_tokens=False)["input_ids"]
            x = torch.tensor([prompt + response])
            logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
            nll = -logp[torch.arange(x.shape[1] - 1), x[0, 1:]][len(prompt) - 1 :]
            total += float(nll.sum())
            n_tokens += len(response)
            direction += [float(nll[i + 1]) for i, t in enumerate(response[:-1]) if t == go]
    return {
        "sft_loss_last": stats["sft_loss_last"],
        "token_nll": total / n_tokens,
        "direction_nll": float(np.mean(direction)),
        "direction_steps": float(len(direction)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; default: all")
    parser.add_argument("--seed", type=int, default=0, help="SFT data order and expert resets")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tail", default=HIPER_TAIL, help="ta_tail's suffix")
    parser.add_argument("--whole-words", default="", help="comma-separated words kept as one token each")
    args = parser.parse_args()
    words = tuple(w for w in args.whole_words.split(",") if w)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        for v in variants:
            r = probe(v, args.seed, args.epochs, Path(tmp), args.tail, words)
            extra = (f" tail {args.tail!r}" if v == "ta_tail" else "") + (
                f" whole words {words}" if words else ""
            )
            print(
                f"{v:16s} seed {args.seed} epochs {args.epochs}{extra}: SFT loss {r['sft_loss_last']:.3f}, held-out "
                f"NLL/token {r['token_nll']:.3f}, direction NLL {r['direction_nll']:.3f} "
                f"({int(r['direction_steps'])} moves)",
                flush=True,
            )


if __name__ == "__main__":
    main()
