"""Trainer speed on the recipes' settings: sampling (new tokens/s) and one whole update step
(old log-probs + reference log-probs + the PPO update: forward, backward, optimiser), with the
FLOPs counted for what runs, MFU and peak memory.

The model is random-init (no download). ``--qwen-1.5b-shape`` gives Qwen2.5-1.5B's shape: 28
layers, hidden 1536, 12 heads / 2 KV heads, MLP 8960, tied embeddings, and a tokenizer grown
locally to Qwen's 151,936 entries (``tiny.widen_tokenizer``), so the output layer and the
log-softmax cost what they cost in a real run. Settings default to the recipes': LoRA r=64 on all
projections, bf16 on a GPU (float32 on the CPU), gradient checkpointing, micro-batches of 16.

FLOPs (``flops_note`` in the output says the same): model FLOPs of a frozen base + LoRA.
A forward pass costs 2 N_lin per token (N_lin: the body's linear weights), 2 N_lora per token,
causal attention 2 L T^2 d per sequence, and the output layer 2 V d per *response* token only
(the scorer sends only those through it). The update's backward computes activation gradients
only for the frozen base (about the forward again) and weight gradients for LoRA (2 N_lora per
token): about 4 N per token in all, not the 6 N of full fine-tuning. Recomputation by gradient
checkpointing is not counted in MFU; ``hfu`` counts it (one more body forward, and the output
layer chunks are always recomputed).

    .venv/bin/python bench/train_speed.py                        # CPU, tiny shapes, seconds
    .venv/bin/python bench/train_speed.py --qwen-1.5b-shape --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl.agents import StepPrompt
from agentrl.envs.maze import MazeEnv
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.policies.tiny import build_tiny_model, env_corpus
from agentrl.trainers.learner import Learner, UpdateSettings
from agentrl.trainers.samples import TokenSamples

QWEN_1_5B = {"layers": 28, "hidden": 1536, "heads": 12, "kv_heads": 2, "intermediate": 8960}
QWEN_VOCAB = 151_936

FLOPS_NOTE = (
    "model FLOPs of a frozen base + LoRA: forward 2*N_lin + 2*N_lora per token + causal attention "
    "2*L*T^2*d per sequence + output layer 2*V*d per response token; a step = scoring (a forward, and "
    "a reference forward without LoRA) + update = forward + activation "
    "backward (same again) + LoRA weight gradients (2*N_lora per token), ~4N per token; "
    "gradient-checkpoint recomputation counted only in hfu"
)


def build_model(args: argparse.Namespace, tmp: str | Path) -> str:
    """A random-init model directory: ``--model``, the 1.5B shape, or a tiny one."""
    if args.model:
        return args.model
    env = MazeEnv(size=3, num_tasks=200)
    corpus = env_corpus(env, [f"maze-{i}" for i in range(50)], steps_per_task=10)
    shape = (
        dict(QWEN_1_5B)
        if args.qwen_1_5b_shape
        else {"layers": args.layers, "hidden": args.hidden, "heads": 4, "kv_heads": 2}
    )
    return str(
        build_tiny_model(
            tmp,
            corpus,
            vocab_size=512,
            full_vocab=args.vocab,
            max_positions=max(
                32768 if args.qwen_1_5b_shape else 4096, args.prompt_len + args.response_len + 512
            ),
            dtype="bfloat16" if args.qwen_1_5b_shape else None,
            **shape,
        )
    )


def maze_prompts(n: int) -> list:
    env, builder = MazeEnv(size=3, num_tasks=max(n, 1)), StepPrompt(history_k=1)
    out = []
    for i in range(n):
        obs, info = env.reset(options={"task_id": f"maze-{i}"})
        out.append(builder.build("", obs, [], info["admissible_actions"]))
    return out


def model_shape(policy: HFPolicy) -> dict[str, int]:
    """Parameter counts the FLOPs are computed from."""
    base = policy.model.get_base_model() if policy.has_adapter else policy.model
    cfg = base.config
    lora = sum(p.numel() for n, p in policy.model.named_parameters() if "lora_" in n)
    linear = sum(
        m.weight.numel()
        for n, m in base.get_decoder().named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in n
    )
    return {
        "parameters": sum(p.numel() for p in policy.model.parameters()),
        "body_linear": linear,
        "lora": lora,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "vocab": cfg.vocab_size,
    }


def forward_flops(shape: dict[str, int], seq: int, response: int) -> float:
    """Model FLOPs of one forward pass over one sequence of ``seq`` tokens (``response`` scored)."""
    per_token = 2 * shape["body_linear"] + 2 * shape["lora"]
    attention = 2 * shape["layers"] * seq * seq * shape["hidden"]  # QK^T and AV, causal half
    head = 2 * shape["vocab"] * shape["hidden"] * response
    return per_token * seq + attention + head


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "torch.cuda.max_memory_allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kib / 2**20, "process max RSS (CPU)"


def measure_sampling(policy: HFPolicy, batch: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    """New tokens per second generating ``batch`` responses of up to ``new_tokens`` in one call."""
    prompts = maze_prompts(batch)
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0, stop=("</action>",))
    policy.generate(prompts[:2], SamplingParams(temperature=1.0, max_new_tokens=4, seed=0))  # warm-up
    rates, seconds = [], []
    for _ in range(repeats):
        sync(policy.device)
        t0 = time.perf_counter()
        out = policy.generate(prompts, params)
        sync(policy.device)
        dt = time.perf_counter() - t0
        seconds.append(dt)
        rates.append(sum(len(g.response_ids) for g in out) / dt)
    return {
        "sampling_batch": batch,
        "sampling_max_new_tokens": new_tokens,
        "sampling_new_tokens_per_s": round(max(rates), 1),
        "sampling_seconds": round(min(seconds), 3),
    }


def measure_update(
    policy: HFPolicy,
    *,
    rows: int,
    micro: int,
    prompt_len: int,
    response_len: int,
    repeats: int,
    peak_tflops: float,
    checkpointing: bool,
) -> dict[str, Any]:
    """One update step as training runs it: score (old + reference log-probs, entropy), then one
    PPO minibatch of all ``rows`` in micro-batches of ``micro`` (forward, backward, AdamW)."""
    device = policy.device
    settings = UpdateSettings(minibatch_size=rows, micro_batch_size=micro, kl_coef=0.01)
    learner = Learner(policy, settings, lr=1e-6)
    gen = torch.Generator().manual_seed(0)
    vocab = len(policy.tokenizer)
    ids = torch.randint(5, vocab, (rows, prompt_len + response_len), generator=gen).tolist()
    samples = TokenSamples([r[:prompt_len] for r in ids], [r[prompt_len:] for r in ids])
    adv = [np.full(response_len, 1.0 if i % 2 else -1.0, dtype=np.float32) for i in range(rows)]
    mask = [np.ones(response_len, dtype=bool) for _ in range(rows)]
    best: dict[str, float] = {}
    for k in range(repeats + 1):  # the first is a warm-up
        rng = np.random.default_rng(k)
        sync(device)
        t0 = time.perf_counter()
        scores = learner.score(samples, reference=True, entropy=True, layout=learner.update_layout(rows, rng))
        sync(device)
        t1 = time.perf_counter()
        learner.update(samples, scores, adv, mask, rng=rng)
        sync(device)
        t2 = time.perf_counter()
        if k and (not best or t2 - t0 < best["step"]):
            best = {"score": t1 - t0, "update": t2 - t1, "step": t2 - t0}
    shape = model_shape(policy)
    seq = prompt_len + response_len
    fwd = rows * forward_flops(shape, seq, response_len)
    lora_grads = rows * 2 * shape["lora"] * seq
    score_flops = 2 * fwd - rows * 2 * shape["lora"] * seq  # policy + reference (adapter off: no LoRA)
    update_flops = 2 * fwd + lora_grads
    recompute = (
        rows * (forward_flops(shape, seq, 0) + 2 * shape["vocab"] * shape["hidden"] * response_len)
        if checkpointing
        else rows * 2 * shape["vocab"] * shape["hidden"] * response_len
    )
    tokens = rows * seq
    out: dict[str, Any] = {
        "update_rows": rows,
        "update_micro_batch": micro,
        "update_tokens_per_micro_batch": micro * seq,
        "sequence": f"{prompt_len} prompt + {response_len} response tokens",
        "score_seconds": round(best["score"], 3),
        "update_seconds": round(best["update"], 3),
        "step_seconds": round(best["step"], 3),
        "step_tokens_per_s": round(tokens / best["step"], 1),
        "step_tflops": round((score_flops + update_flops) / best["step"] / 1e12, 2),
        "flops_per_token_over_N": round((update_flops / tokens) / shape["parameters"], 2),
    }
    if device.type == "cuda":
        out["mfu"] = round((score_flops + update_flops) / best["step"] / (peak_tflops * 1e12), 4)
        out["hfu"] = round((score_flops + update_flops + recompute) / best["step"] / (peak_tflops * 1e12), 4)
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a model directory (default: build a random-init one)")
    p.add_argument("--qwen-1.5b-shape", dest="qwen_1_5b_shape", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--vocab", type=int, default=None, help=f"tokenizer size (1.5B shape: {QWEN_VOCAB})")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lora-r", type=int, default=64, help="the recipes' rank")
    p.add_argument(
        "--no-gradient-checkpointing", dest="checkpointing", action="store_false", help="the recipes use it"
    )
    p.add_argument("--no-merge", dest="merge", action="store_false", help="sample through the peft model")
    p.add_argument("--batch", type=int, default=128, help="prompts per generate call (recipes: 16 x 8)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rows", type=int, default=64, help="sequences in the timed update step")
    p.add_argument("--micro-batch", type=int, default=16, help="the recipes' micro_batch_size")
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--response-len", type=int, default=256)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    p.add_argument("--repeats", type=int, default=2)
    return p


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run both measurements and return the report (``main`` prints it)."""
    args = parser().parse_args(argv)
    if args.vocab is None:
        args.vocab = QWEN_VOCAB if args.qwen_1_5b_shape else None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = build_model(args, tmp)
        built = time.perf_counter() - t0
        policy = HFPolicy.from_pretrained(
            path,
            lora=LoraSettings(r=args.lora_r, alpha=args.lora_r),
            device=args.device,
            dtype=args.dtype,
            max_batch_size=args.batch,
            merge_for_sampling=args.merge,
        )
        if args.checkpointing:
            policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        device = policy.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        shape = model_shape(policy)
        report: dict[str, Any] = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "dtype": str(next(policy.model.get_base_model().parameters()).dtype).removeprefix("torch."),
            "parameters": shape["parameters"],
            "lora_r": args.lora_r,
            "lora_parameters": shape["lora"],
            "vocab": shape["vocab"],
            "tokenizer_entries": len(policy.tokenizer),
            "gradient_checkpointing": args.checkpointing,
            "model_build_seconds": round(built, 1),
        }
        report.update(measure_sampling(policy, args.batch, args.new_tokens, args.repeats))
        report.update(
            measure_update(
                policy,
                rows=args.rows,
                micro=args.micro_batch,
                prompt_len=args.prompt_len,
                response_len=args.response_len,
                repeats=args.repeats,
                peak_tflops=args.peak_tflops,
                checkpointing=args.checkpointing,
            )
        )
        peak, what = peak_memory_gib(device)
        report["peak_memory_gib"] = round(peak, 2)
        report["peak_memory_source"] = what
        report["flops_note"] = FLOPS_NOTE
    return report


def main(argv: list[str] | None = None) -> None:
    print(json.dumps(run(argv), indent=1))


if __name__ == "__main__":
    main()
