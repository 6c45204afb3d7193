"""The GPU path's fixes, checked on CPU: stop strings, batched sampling width, reduced-precision
forward, old log-probs in the update's batching, the merged sampler's refresh, checkpoint loading,
vLLM settings and padding-free scoring."""

from __future__ import annotations

import random

import pytest
import torch

from agentrl.policies import SamplingParams
from agentrl.policies.hf import HFPolicy, _StopOnText, stop_candidates


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
