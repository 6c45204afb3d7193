"""Trainer speed: rollout generation (new tokens/s) and LoRA training forward+backward (tokens/s, MFU).

CPU (default): the tiny Qwen2 built from maze text. GPU: any model directory, e.g. a random-init
Qwen2.5-1.5B-shaped model (``--qwen-1.5b-shape``), with LoRA r=64 in bf16. MFU counts 6 N FLOPs
per trained token (N = all parameters) against ``--peak-tflops`` (H100 SXM bf16 dense: 989).

    .venv/bin/python bench/train_speed.py                       # CPU, tiny model
    .venv/bin/python bench/train_speed.py --qwen-1.5b-shape --device cuda --batch 128 --tokens 32768
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from agentrl.agents import StepPrompt
from agentrl.envs.maze import MazeEnv
from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.policies.logprobs import pack_samples
from agentrl.policies.tiny import build_tiny_model, env_corpus


def build_model(args: argparse.Namespace, tmp: str) -> str:
    if args.model:
        return args.model
    env = MazeEnv(size=args.maze_size, num_tasks=200)
    corpus = env_corpus(env, [f"maze-{i}" for i in range(50)], steps_per_task=10)
    if args.qwen_1_5b_shape:
        return str(
            build_tiny_model(
                tmp, corpus, vocab_size=4096, layers=28, hidden=1536, heads=12, kv_heads=2, intermediate=8960
            )
        )
    return str(build_tiny_model(tmp, corpus, vocab_size=args.vocab, layers=args.layers, hidden=args.hidden))


def maze_prompts(n: int, size: int) -> list:
    env, builder = MazeEnv(size=size, num_tasks=max(n, 1)), StepPrompt(history_k=1)
    out = []
    for i in range(n):
        obs, info = env.reset(options={"task_id": f"maze-{i}"})
        out.append(builder.build("", obs, [], info["admissible_actions"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a model directory (default: build a tiny one)")
    p.add_argument(
        "--qwen-1.5b-shape",
        dest="qwen_1_5b_shape",
        action="store_true",
        help="random-init Qwen2.5-1.5B-shaped model",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32, help="prompts per generation call")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--tokens", type=int, default=8192, help="tokens per training micro-batch")
    p.add_argument("--seq", type=int, default=512, help="tokens per training sequence")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--maze-size", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--no-merge",
        dest="merge",
        action="store_false",
        help="sample through the peft model, not a LoRA-merged copy",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(args, tmp)
        policy = HFPolicy.from_pretrained(
            path,
            lora=LoraSettings(r=args.lora_r, alpha=2 * args.lora_r),
            device=args.device,
            max_batch_size=args.batch,
            merge_for_sampling=args.merge,
        )
        n_params = sum(p.numel() for p in policy.model.parameters())
        prompts = maze_prompts(args.batch, args.maze_size)
        params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens, seed=0)
        policy.generate(prompts[:2], params)  # warm-up
        gen_rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = policy.generate(prompts, params)
            gen_rates.append(sum(len(g.response_ids) for g in out) / (time.perf_counter() - t0))
        rows = max(1, args.tokens // args.seq)
        ids = torch.randint(0, len(policy.tokenizer), (rows, args.seq)).tolist()
        packed = pack_samples(
            [r[: args.seq // 2] for r in ids],
            [r[args.seq // 2 :] for r in ids],
            policy.pad_token_id,
            policy.device,
        )
        params_train = policy.trainable_parameters()
        train_rates = []
        for k in range(args.repeats + 1):
            if policy.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            lp = policy.logprobs(packed.input_ids, packed.attention_mask, packed.response_mask)
            (-lp.logprobs.sum()).backward()
            if policy.device.type == "cuda":
                torch.cuda.synchronize()
            if k:  # the first is a warm-up
                train_rates.append(rows * args.seq / (time.perf_counter() - t0))
            for q in params_train:
                q.grad = None
        train_rate = max(train_rates)
        report = {
            "device": str(policy.device),
            "parameters": n_params,
            "lora_r": args.lora_r,
            "generation_batch": args.batch,
            "merged_lora_sampling": args.merge,
            "generation_new_tokens_per_s": round(max(gen_rates), 1),
            "train_tokens_per_micro_batch": rows * args.seq,
            "train_tokens_per_s": round(train_rate, 1),
        }
        if policy.device.type == "cuda":
            report["mfu"] = round(6 * n_params * train_rate / (args.peak_tflops * 1e12), 4)
            report["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
