"""The GPU path's fixes, checked on CPU: stop strings, batched sampling width, reduced-precision
forward, old log-probs in the update's batching, the merged sampler's refresh, checkpoint loading,
vLLM settings and padding-free scoring."""

from __future__ import annotations

import random

import pytest
import torch

from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, LoraSettings, _StopOnText, stop_candidates


@pytest.fixture(scope="module")
def model_dir(served_model_dir):
    return served_model_dir


@pytest.fixture(scope="module")
def policy(model_dir):
    return HFPolicy.from_pretrained(model_dir, device="cpu")


# ----------------------------------------------------------------------------- stop strings


def old_cut(pol: HFPolicy, generated: list[int], params: SamplingParams):
    """The prefix-by-prefix cut (quadratic): what ``_cut`` must keep returning."""
    eos = set(pol.eos_token_ids)
    end = next((i + 1 for i, t in enumerate(generated) if t in eos), None)
    upto = generated if end is None else generated[: end - 1]
    if params.stop and any(s in pol.tokenizer.decode(upto, skip_special_tokens=True) for s in params.stop):
        for i in range(len(upto)):
            text = pol.tokenizer.decode(upto[: i + 1], skip_special_tokens=True)
            if any(s in text for s in params.stop):
                return upto[: i + 1], "stop"
    if end is not None:
        return generated[:end], "stop"
    return generated, "length"


STOPS = [("</action>",), ("north",), ("</think>", "</action>"), ("a",), ("\n",), ("go south",)]


def test_cut_equals_the_prefix_scan(policy):
    rng = random.Random(0)
    vocab = len(policy.tokenizer)
    text_ids = policy.tokenizer("<think>go</think><action>go north</action>", add_special_tokens=False)[
        "input_ids"
    ]
    for trial in range(300):
        n = rng.randint(0, 40)
        ids = [rng.randrange(vocab) for _ in range(n)]
        if trial % 2:  # plant real stop strings
            k = rng.randint(0, n)
            ids = ids[:k] + text_ids + ids[k:]
        params = SamplingParams(max_new_tokens=64, stop=STOPS[trial % len(STOPS)])
        assert policy._cut(ids, params) == old_cut(policy, ids, params), (ids, params.stop)


def test_stop_candidates_mark_the_tokens_holding_the_last_character(policy):
    tok = policy.tokenizer
    mask = stop_candidates(tok, ("</action>",), 400)
    assert mask is not None and mask.shape == (400,)
    for i in range(len(tok)):
        assert bool(mask[i]) == (">" in tok.decode([i], skip_special_tokens=True))
    assert mask[len(tok) :].all()  # ids the tokenizer does not know are always checked
    assert stop_candidates(tok, ("a\n",), 400) is None  # whitespace: every row is checked
    assert stop_candidates(tok, ("é",), 400) is None


def test_stop_criterion_decodes_only_candidate_rows(policy):
    tok = policy.tokenizer
    enc = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    prompt = enc("You are in the hall.")
    responses = [enc("go north</action>"), enc("go north"), enc("go <think>")]
    filler = enc("hall")[:1]
    n = max(len(r) for r in responses)
    ids = torch.tensor([prompt + filler * (n - len(r)) + r for r in responses])
    stop = ("</action>",)
    calls = []
    decode = tok.batch_decode

    def spy(seqs, **kw):
        calls.append(len(seqs))
        return decode(seqs, **kw)

    slow = _StopOnText(tok, stop, len(prompt), None)
    fast = _StopOnText(tok, stop, len(prompt), policy._stop_candidates(stop))
    tok.batch_decode = spy
    try:
        want = slow(ids, None)
        got = fast(ids, None)
    finally:
        del tok.batch_decode
    assert want.tolist() == got.tolist() == [True, False, False]
    assert calls == [3, 2]  # the filter decodes the rows whose newest token holds '>' only


def test_generation_with_stop_strings_is_unchanged_by_the_candidate_filter(policy):
    prompts = [[10, 11, 12], [13, 14], [15, 16, 17, 18]]
    free = policy.generate_from_ids(prompts, SamplingParams(temperature=1.0, max_new_tokens=20, seed=3))
    texts = [policy.tokenizer.decode(g.response_ids[2:4], skip_special_tokens=True) for g in free]
    stop = tuple(t for t in texts if t.strip() and not t[-1].isspace())[:2]
    assert stop
    params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=3, stop=stop)
    fast = policy.generate_from_ids(prompts, params)
    policy._stop_masks[stop] = None  # every row decoded every step: the former behaviour
    try:
        slow = policy.generate_from_ids(prompts, params)
    finally:
        policy._stop_masks.pop(stop)
    assert [(g.response_ids, g.logprobs, g.finish_reason) for g in fast] == [
        (g.response_ids, g.logprobs, g.finish_reason) for g in slow
    ]
    assert any(g.finish_reason == "stop" for g in fast)


def test_recipes_sample_the_whole_iteration_in_one_batch():
    from agentrl.config import load_config

    cfg = load_config("configs/recipes/alfworld/grpo.yaml")
    assert cfg.env.num_envs is None
    assert cfg.env_count() == cfg.rollout.groups * cfg.rollout.group_size == 128
    assert cfg.model.max_batch_size >= cfg.env_count()
    assert cfg.env_count(groups=8) == 64  # a process's share of the groups
    assert load_config("configs/quickstart.yaml").env_count() == 32  # an explicit count is kept


def test_rollout_asks_for_every_running_episode_at_once(policy):
    from agentrl.envs.maze import MazeEnv
    from agentrl.rollout import rollout

    widths = []
    generate = policy.generate

    def counting(prompts, params):
        widths.append(len(prompts))
        return generate(prompts, params)

    policy.generate = counting
    try:
        rollout(
            policy,
            [MazeEnv() for _ in range(3 * 2)],
            ["maze-0", "maze-1", "maze-2"],
            2,
            max_turns=2,
            params=SamplingParams(max_new_tokens=4, seed=0),
        )
    finally:
        del policy.generate
    assert widths[0] == 6


# ----------------------------------------------------------------------------- merged sampler refresh


def tiny_samples(pol: HFPolicy, n: int = 4):
    from agentrl.trainers.samples import TokenSamples

    prompts = [[10 + i, 11, 12, 13 + i][: 2 + i % 3] for i in range(n)]
    responses = [[20 + i, 21, 22][: 1 + i % 3] for i in range(n)]
    return TokenSamples(prompts, responses)


def merged_matches_adapter(pol: HFPolicy) -> bool:
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    with torch.no_grad():
        want = pol.model(input_ids=ids).logits
        got = pol._sampling_model()(input_ids=ids).logits
    return torch.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_merged_sampler_follows_an_optimiser_step_that_keeps_version_counters(model_dir, fused):
    import numpy as np

    from agentrl.trainers.learner import Learner, UpdateSettings

    pol = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    learner = Learner(pol, UpdateSettings(minibatch_size=4, micro_batch_size=2), lr=0.05)
    params = learner.params
    if fused:  # fused AdamW writes the weights without bumping their version counters
        learner.optimizer = torch.optim.AdamW(params, lr=0.05, fused=True)
    else:  # an optimiser that writes through .data, which no version counter sees either

        class DataSGD(torch.optim.SGD):
            @torch.no_grad()
            def step(self, closure=None):
                for p in params:
                    if p.grad is not None:
                        p.data.add_(p.grad.sign(), alpha=-0.05)

        learner.optimizer = DataSGD(params, lr=0.05)
    pol._sampling_model()  # the merged copy exists, built from the zero-initialised adapter
    assert merged_matches_adapter(pol)
    samples = tiny_samples(pol)
    scores = learner.score(samples)
    versions = [p._version for p in params]
    before = [p.detach().clone() for p in params]
    adv = [
        np.full(len(r), 1.0 if i % 2 else -1.0, dtype=np.float32) for i, r in enumerate(samples.response_ids)
    ]
    mask = [np.ones(len(r), dtype=bool) for r in samples.response_ids]
    learner.update(samples, scores, adv, mask, rng=np.random.default_rng(0))
    assert any(not torch.equal(a, b) for a, b in zip(before, params))  # the step changed the adapter
    assert [p._version for p in params] == versions  # ... unseen by the version counters
    assert merged_matches_adapter(pol)  # the sampler follows it all the same
    pol._merged.stale = False  # a counter-only check would have kept the first adapter:
    with torch.no_grad():
        for p in params:
            p.data.mul_(0.5)
    assert not merged_matches_adapter(pol)
    pol.weights_changed()
    assert merged_matches_adapter(pol)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_load_onto_the_cpu_whatever_wrote_them(model_dir, tmp_path, monkeypatch):
    from agentrl.trainers.checkpoint import load_checkpoint, save_checkpoint
    from agentrl.trainers.learner import Learner, UpdateSettings

    pol = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    learner = Learner(pol, UpdateSettings(), lr=0.01)
    path = save_checkpoint(tmp_path, 1, learner, {})
    seen = []
    load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert load_checkpoint(path, learner)["iteration"] == 1
    assert seen and all(m == "cpu" for m in seen)


# ----------------------------------------------------------------------------- precision


def lora_matmul_dtypes(pol: HFPolicy) -> list[torch.dtype]:
    """Run the scorer once (with gradients) and return the output dtypes of the LoRA A matmuls."""
    from agentrl.policies.logprobs import pack_samples

    seen: list[torch.dtype] = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
        for name, m in pol.model.named_modules()
        if name.endswith("lora_A.default")
    ]
    packed = pack_samples([[10, 11, 12], [13]], [[20, 21], [22, 23, 24]], pol.pad_token_id)
    try:
        lp = pol.logprobs(packed.input_ids, packed.attention_mask, packed.response_mask)
        (-lp.logprobs.sum()).backward()
    finally:
        for h in hooks:
            h.remove()
    assert lp.logprobs.dtype == torch.float32  # log-softmax in float32 whatever the body ran in
    grads = [p.grad for p in pol.trainable_parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)  # float32 master weights
    assert any(bool(g.abs().sum() > 0) for g in grads)
    return seen


def test_a_bf16_base_runs_its_lora_matmuls_in_bf16(model_dir):
    pol = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in pol.trainable_parameters()} == {torch.float32}  # peft keeps LoRA in float32
    seen = lora_matmul_dtypes(pol)
    assert seen and set(seen) == {torch.bfloat16}  # float32 without autocast


def test_a_float32_model_gets_no_autocast(model_dir):
    from agentrl.policies.precision import autocast_for, enable_tf32

    pol = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    assert set(lora_matmul_dtypes(pol)) == {torch.float32}
    assert not torch.is_autocast_enabled("cpu")
    with autocast_for(pol.model):
        assert not torch.is_autocast_enabled("cpu")
    precision = torch.get_float32_matmul_precision()
    assert enable_tf32(torch.device("cpu")) is False and torch.get_float32_matmul_precision() == precision


@pytest.mark.slow  # ~10 s: builds a tiny model, runs the SFT warm start in bf16
def test_sft_honours_model_dtype(tmp_path):
    import json

    import yaml
    from safetensors import safe_open

    from agentrl.trainers.loop import run_sft

    cfg = {
        "seed": 0,
        "model": {
            "path": None,
            "device": "cpu",
            "dtype": "bfloat16",
            "torch_threads": 1,
            "tiny": {
                "vocab_size": 320,
                "layers": 1,
                "hidden": 32,
                "heads": 2,
                "kv_heads": 1,
                "corpus_tasks": 6,
            },
        },
        "env": {
            "name": "maze",
            "kwargs": {"size": 2, "n_doors": 1, "max_steps": 6, "num_tasks": 40},
            "num_envs": 1,
        },
        "rollout": {"history_k": 1},
        "sft": {"tasks": {"start": 0, "count": 4}, "epochs": 1, "batch_size": 4},
        "logging": {"tensorboard": False},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    threads = torch.get_num_threads()
    try:
        out = run_sft(path, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((out / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert names and {f.get_tensor(k).dtype for k in names} == {torch.bfloat16}


# ----------------------------------------------------------------------------- old log-probs


def ragged_samples(n: int = 12, seed: int = 0):
    """Samples of varied prompt and response lengths, so micro-batches pad to different widths."""
    from agentrl.trainers.samples import TokenSamples

    rng = random.Random(seed)
    prompts = [[rng.randrange(5, 300) for _ in range(rng.randint(2, 14))] for _ in range(n)]
    responses = [[rng.randrange(5, 300) for _ in range(rng.randint(1, 9))] for _ in range(n)]
    return TokenSamples(prompts, responses)


def gspo_ratios_at_unchanged_weights(pol: HFPolicy, old_logprobs: str) -> list[float]:
    """Every GSPO sequence ratio of one update epoch (lr 0: the weights never move), as the loss sees it."""
    import numpy as np

    from agentrl.trainers.learner import Learner, UpdateSettings
    from agentrl.trainers.losses import LOSSES, gspo, sequence_means

    seen: list[float] = []

    def recording(x):
        seen.extend(torch.exp(sequence_means(x.logp - x.old_logp, x.mask)).detach().tolist())
        return gspo(x)

    LOSSES.register("test_recording_gspo", recording, overwrite=True)

    settings = UpdateSettings(
        loss="test_recording_gspo",
        clip_low=3e-4,
        clip_high=4e-4,
        minibatch_size=6,
        micro_batch_size=4,
        old_logprobs=old_logprobs,
    )
    learner = Learner(pol, settings, lr=1e-30)
    samples = ragged_samples()
    rng = np.random.default_rng(7)
    scores = learner.score(samples, layout=learner.update_layout(len(samples), rng))
    adv = [np.full(len(r), 1.0 - 2 * (i % 2), dtype=np.float32) for i, r in enumerate(samples.response_ids)]
    mask = [np.ones(len(r), dtype=bool) for r in samples.response_ids]
    stats = learner.update(samples, scores, adv, mask, rng=rng)
    assert len(seen) == len(samples)
    if old_logprobs == "update_batches":
        assert stats["clip_frac"] == 0.0
    return seen


def test_gspo_ratio_is_one_at_unchanged_weights_in_float32(model_dir):
    pol = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    ratios = gspo_ratios_at_unchanged_weights(pol, "update_batches")
    assert max(abs(r - 1.0) for r in ratios) <= 1e-6
    assert ratios == [1.0] * len(ratios)  # the same forward, bit for bit


def test_gspo_ratio_is_one_at_unchanged_weights_in_bf16(model_dir):
    pol = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu", dtype="bfloat16")
    assert gspo_ratios_at_unchanged_weights(pol, "auto") == [1.0] * 12  # auto: update batches in bf16
    sequential = gspo_ratios_at_unchanged_weights(pol, "sequential")
    assert max(abs(r - 1.0) for r in sequential) > 1e-6  # what scoring in other batches did


def test_float32_scoring_keeps_consecutive_chunks_by_default(model_dir):
    import numpy as np

    from agentrl.trainers.learner import Learner, UpdateSettings

    pol = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    learner = Learner(pol, UpdateSettings(micro_batch_size=4), lr=0.01)
    assert learner.update_layout(12, np.random.default_rng(0)) is None  # float32 results unchanged
    samples = ragged_samples()
    plain = learner.score(samples, reference=True, entropy=True)
    layout = Learner(
        pol, UpdateSettings(micro_batch_size=4, old_logprobs="update_batches"), lr=0.01
    ).update_layout(12, np.random.default_rng(0))
    assert sorted(int(i) for b in layout for i in b) == list(range(12))
    other = learner.score(samples, reference=True, entropy=True, layout=layout)
    for a, b in zip(plain.logp + plain.ref_logp + plain.entropy, other.logp + other.ref_logp + other.entropy):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # the same rows, in order


# ----------------------------------------------------------------------------- padding-free scoring


def test_packed_scoring_equals_padded_scoring(model_dir):
    from agentrl.policies.logprobs import pack_samples, token_logprobs

    pol = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    with torch.no_grad():
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    samples = ragged_samples(6, seed=2)
    packed = pack_samples(samples.prompt_ids, samples.response_ids, pol.pad_token_id)
    args = (pol.model, packed.input_ids, packed.attention_mask, packed.response_mask)
    out, grads = {}, {}
    seen_widths = []
    body = pol.model.get_base_model().get_decoder()
    hook = body.register_forward_pre_hook(
        lambda mod, args, kw: seen_widths.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        for packed_mode in (False, True):
            pol.model.zero_grad(set_to_none=True)
            lp = token_logprobs(
                *args, chunk_size=5, with_entropy=True, return_hidden=True, packed=packed_mode
            )
            (-(lp.logprobs * torch.arange(lp.logprobs.shape[1])).sum()).backward()
            out[packed_mode] = lp
            grads[packed_mode] = [p.grad.clone() for p in pol.trainable_parameters()]
    finally:
        hook.remove()
    real = int(packed.attention_mask.sum())
    assert seen_widths == [tuple(packed.input_ids.shape), (1, real)]  # no padding token went through
    assert real < packed.input_ids.numel()
    a, b = out[False], out[True]
    torch.testing.assert_close(b.logprobs, a.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.entropy, a.entropy, atol=1e-5, rtol=0)
    keep = packed.attention_mask.bool()
    torch.testing.assert_close(b.hidden[keep], a.hidden[keep], atol=1e-4, rtol=0)
    for ga, gb in zip(grads[False], grads[True]):
        torch.testing.assert_close(gb, ga, atol=1e-4, rtol=1e-4)


def test_the_policy_scores_packed_when_configured(model_dir):
    from agentrl.policies.logprobs import pack_samples

    pol = HFPolicy.from_pretrained(
        model_dir,
        lora=LoraSettings(r=4, alpha=8),
        device="cpu",
        packed_scoring=True,
        attn_implementation="sdpa",
    )
    samples = ragged_samples(3, seed=4)
    packed = pack_samples(samples.prompt_ids, samples.response_ids, pol.pad_token_id)
    widths = []
    body = pol.model.get_base_model().get_decoder()
    hook = body.register_forward_pre_hook(
        lambda mod, args, kw: widths.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        pol.logprobs(packed.input_ids, packed.attention_mask, packed.response_mask)
    finally:
        hook.remove()
    assert widths == [1]


@pytest.mark.parametrize("pack_rows", [False, True])
def test_sft_packs_rows_only_when_asked(model_dir, pack_rows):
    from transformers import AutoModelForCausalLM

    from agentrl.trainers.sft import Demonstration, sft_train

    pol = HFPolicy.from_pretrained(model_dir, device="cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    demos = [
        Demonstration(
            [{"role": "user", "content": "You are in the hall." * (1 + i)}], "<action>go north</action>"
        )
        for i in range(3)
    ]
    widths = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda mod, args, kw: widths.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        sft_train(model, pol.tokenizer, demos, epochs=1, lr=1e-3, batch_size=3, seed=0, pack_rows=pack_rows)
    finally:
        hook.remove()
    assert widths == ([1] if pack_rows else [3])
