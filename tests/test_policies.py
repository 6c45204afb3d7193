"""Tiny tokenizer and model (no hub), the hf policy (sampling, LoRA, reference, adapters), chunked log-probs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from agentrl.agents import StepPrompt
from agentrl.config import TinyModelConfig
from agentrl.envs.maze import MazeEnv
from agentrl.policies import POLICIES, Generation, Policy, SamplingParams, make_policy
from agentrl.policies.hf import HFPolicy, LoraSettings
from agentrl.policies.logprobs import TOKEN_STATS, pack_samples, token_logprobs
from agentrl.policies.tiny import FORMAT_TOKENS, build_tiny_model, env_corpus, format_corpus, train_tokenizer


def maze_corpus(n_tasks: int = 8) -> list[str]:
    """Observations and actions of a few maze tasks: the env text the tokenizer learns from."""
    return env_corpus(MazeEnv(), [f"maze-{i}" for i in range(n_tasks)], steps_per_task=6, seed=0)


@pytest.fixture(scope="module")
def model_dir(served_model_dir):
    return served_model_dir  # maze_corpus(), vocabulary 384, 2 layers, hidden 64


@pytest.fixture(scope="module")
def policy(model_dir):
    return HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")


@pytest.fixture(scope="module")
def prompts():
    env = MazeEnv()
    builder = StepPrompt(history_k=2)
    out = []
    for i in range(3):
        obs, info = env.reset(options={"task_id": f"maze-{i}"})
        out.append(
            builder.build("", obs, [("You are in the hall.", "go north")] * i, info["admissible_actions"])
        )
    return out


def perturb_lora(policy: HFPolicy, seed: int, scale: float = 0.5) -> None:
    """Give the (zero-initialised) LoRA B matrices random values, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def reset_lora(policy: HFPolicy) -> None:
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.zero_()


def batch_of(policy: HFPolicy, prompts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A left-padded batch of prompt + fixed 'response' ids with the response marked."""
    responses = [
        policy.tokenizer("<action>go north</action>", add_special_tokens=False)["input_ids"],
        [5, 6, 7],
        [9],
    ]
    packed = pack_samples([policy.prompt_ids(p) for p in prompts], responses, policy.pad_token_id)
    return packed.input_ids, packed.attention_mask, packed.response_mask


def test_pack_samples_by_hand():
    packed = pack_samples([[1, 2], [3]], [[7], [8, 9, 4]], pad_token_id=0)
    assert packed.input_ids.tolist() == [[0, 1, 2, 7], [3, 8, 9, 4]]
    assert packed.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert packed.response_mask.tolist() == [[False, False, False, True], [False, True, True, True]]
    assert [r.tolist() for r in packed.responses(packed.input_ids)] == [[7], [8, 9, 4]]
    assert pack_samples([[1]], [[]], 0).response_mask.sum() == 0
    with pytest.raises(ValueError, match="empty prompt"):
        pack_samples([[]], [[1]], 0)
    with pytest.raises(ValueError, match="same non-zero number"):
        pack_samples([[1]], [], 0)


def naive_logprobs(model, ids, mask, resp, temperature=1.0):
    """The full-logits reference: log_softmax over the vocabulary at every position."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float() / temperature
    lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = torch.zeros(ids.shape, dtype=torch.float32)
    out[:, 1:] = torch.where(resp[:, 1:], lp, torch.zeros_like(lp))
    return out


# ----------------------------------------------------------------------------- tiny tokenizer and model


def test_tiny_tokenizer_round_trip(model_dir):
    from transformers import AutoTokenizer

    trained = train_tokenizer(maze_corpus() + format_corpus(), vocab_size=384)
    loaded = AutoTokenizer.from_pretrained(model_dir)
    for text in [
        "You are in the hall.\nExits: north, east (red door).",
        "<think>hm</think><action>take red key</action>",
        "naïve ünïcode 中文 🙂 1234   \n\n tabs\t",
        "<|im_start|>user\nhi<|im_end|>",
    ]:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == trained(text, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == text
    for tag in FORMAT_TOKENS:
        assert len(loaded(tag, add_special_tokens=False)["input_ids"]) == 1
    assert loaded.eos_token == "<|im_end|>" and loaded.pad_token == "<|endoftext|>"
    words = loaded.convert_ids_to_tokens(loaded("You carry: nothing.", add_special_tokens=False)["input_ids"])
    assert words == [
        "You",
        "Ġcarry",
        ":",
        "Ġnothing",
        ".",
    ]  # in every maze observation: whole words were learnt
    chat = loaded.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_env_corpus_walks_the_env_deterministically():
    texts = maze_corpus(3)
    assert texts == maze_corpus(3)
    assert sum(t.startswith("Your task is to reach") for t in texts) == 3  # one reset per task
    assert any(t.startswith(("go ", "take ")) for t in texts) and any(
        "You go" in t or "locked" in t for t in texts
    )


def test_tiny_tokenizer_rejects_bad_input():
    with pytest.raises(ValueError, match="corpus_texts is empty"):
        train_tokenizer([])
    with pytest.raises(ValueError, match="vocab_size must be >="):
        train_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="whole_words must be non-empty"):
        train_tokenizer(["abc"], whole_words=["KEEP", " SWITCH"])
    with pytest.raises(ValueError, match="whole_words must be non-empty"):
        TinyModelConfig(whole_words=[""])


def test_tiny_tokenizer_whole_words_are_one_token_and_cost_merges_not_size():
    corpus = maze_corpus() + format_corpus()
    plain = train_tokenizer(corpus, vocab_size=384)
    words = train_tokenizer(corpus, vocab_size=384, whole_words=["KEEP", "SWITCH", "<action>"])
    text = "<switch>KEEP</switch><subgoal>x</subgoal><action>go east</action><switch>SWITCH</switch>"
    assert plain.tokenize("KEEP") == ["K", "E", "E", "P"]  # once in the corpus: spelt in bytes
    assert words.tokenize(text)[:3] == ["<switch>", "KEEP", "</switch>"]
    assert words.tokenize(text)[-2] == "SWITCH"
    assert words.decode(words(text, add_special_tokens=False)["input_ids"]) == text
    # the same size: each added word (a format tag already is one) takes the place of the last merge
    assert len(words) == len(plain) == 384
    assert train_tokenizer(corpus, vocab_size=384, whole_words=[]).backend_tokenizer.to_str() == (
        plain.backend_tokenizer.to_str()
    )


def test_words_pretokenizer_makes_a_copied_word_the_token_it_was_read_as():
    """Qwen2's pre-split glues a word to the space or bracket before it, so ``black`` read in a
    WebShop page and written in ``click[black]`` are different tokens; ``words`` keeps them one."""
    corpus = ["[SEP] black [SEP] navy [SEP] 28 inch [SEP] Buy Now"] * 20 + [
        "<action>click[black]</action> <action>click[navy]</action> click[buy now]"
    ] * 20
    text = "[SEP] black [SEP] <action>click[black]</action>"
    qwen2 = train_tokenizer(corpus, vocab_size=384).tokenize(text)
    assert "Ġblack" in qwen2 and "black" not in qwen2  # read and written as different tokens
    words = train_tokenizer(corpus, vocab_size=384, pretokenize="words")
    toks = words.tokenize(text)
    assert toks.count("black") == 2 and "Ġblack" not in toks and "[b" not in toks
    for t in [text, "naïve  ünïcode\n\t 中文 🙂 B095JJXRTV", "<|im_start|>user\nhi<|im_end|>"]:
        assert words.decode(words(t, add_special_tokens=False)["input_ids"]) == t
    with pytest.raises(ValueError, match="pretokenize must be one of"):
        train_tokenizer(corpus, pretokenize="bytes")
    with pytest.raises(ValueError, match="pretokenize"):
        TinyModelConfig(pretokenize="bytes")


def test_lowercase_tokenizer_spells_a_product_id_alike_and_survives_loading(tmp_path):
    """WebShop shows B01MW7S2YN and takes click[b01mw7s2yn]; lower-cased, both are one spelling.
    transformers' Qwen2Tokenizer resets the normaliser on load; load_tokenizer keeps the file's."""
    from transformers import AutoTokenizer

    from agentrl.policies.tokenizer import load_tokenizer

    corpus = ["[SEP] B01MW7S2YN [SEP] Black [SEP] Buy Now"] * 20 + ["<action>click[b01mw7s2yn]</action>"] * 20
    built = build_tiny_model(tmp_path / "low", corpus, vocab_size=384, pretokenize="words", lowercase=True)
    loaded = load_tokenizer(built)
    asin = loaded.tokenize("b01mw7s2yn")
    assert loaded.tokenize(" B01MW7S2YN") == ["Ġ", *asin]  # read on the page
    assert loaded.tokenize("click[b01mw7s2yn]")[-len(asin) - 1 :] == [*asin, "]"]  # written in the action
    assert loaded.tokenize("<action>X</action><|im_end|>") == ["<action>", "x", "</action>", "<|im_end|>"]
    assert AutoTokenizer.from_pretrained(built).tokenize("B01") != loaded.tokenize(
        "B01"
    )  # why load_tokenizer
    # without lowercase nothing changes, and a tokenizer of another class loads as transformers loads it
    plain = build_tiny_model(tmp_path / "plain", corpus, vocab_size=384)
    assert load_tokenizer(plain).tokenize("Black B01") == AutoTokenizer.from_pretrained(plain).tokenize(
        "Black B01"
    )
    assert TinyModelConfig(lowercase=True).lowercase


def test_tiny_model_builds_saves_loads_deterministically(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = model.config
    assert cfg.model_type == "qwen2" and cfg.num_hidden_layers == 2 and cfg.hidden_size == 64
    assert cfg.vocab_size == len(train_tokenizer(maze_corpus() + format_corpus(), vocab_size=384))
    again = AutoModelForCausalLM.from_pretrained(
        build_tiny_model(tmp_path / "again", maze_corpus(), vocab_size=384, seed=0)
    )
    other = AutoModelForCausalLM.from_pretrained(
        build_tiny_model(tmp_path / "other", maze_corpus(), vocab_size=384, seed=1)
    )
    ref = dict(model.named_parameters())
    assert all(torch.equal(p, ref[n]) for n, p in again.named_parameters())
    assert not all(torch.equal(p, ref[n]) for n, p in other.named_parameters())
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_model(tmp_path / "bad", ["abc"] * 3, vocab_size=300, hidden=30, heads=4)


# ----------------------------------------------------------------------------- hf policy: sampling


def test_policy_registry_and_protocol(model_dir):
    assert "hf" in POLICIES
    pol = make_policy("hf", path=model_dir, device="cpu")
    assert isinstance(pol, Policy) and not pol.has_adapter
    with pytest.raises(KeyError, match="unknown policy 'gpt'.*hf"):
        make_policy("gpt")
    with pytest.raises(ValueError, match="needs a LoRA adapter"), pol.adapter_disabled():
        pass
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFPolicy.from_pretrained(model_dir.parent)
    with pytest.raises(ValueError, match="max_batch_size"):
        HFPolicy(pol.model, pol.tokenizer, max_batch_size=0)
    with pytest.raises(ValueError, match="either lora= .* or adapter="):
        HFPolicy.from_pretrained(model_dir, lora={"r": 2}, adapter=model_dir)


def test_sampling_params_validation():
    for bad, match in [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"stop": "x"}, "stop"),
    ]:
        with pytest.raises(ValueError, match=match):
            SamplingParams(**bad)


def test_generate_is_deterministic_with_a_seed(policy, prompts):
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = policy.generate(prompts, params)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    b = policy.generate(prompts, params)
    c = policy.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=12, seed=8))
    assert [g.response_ids for g in a] == [g.response_ids for g in b]
    assert [g.response_ids for g in a] != [g.response_ids for g in c]
    for g, p in zip(a, prompts):
        assert isinstance(g, Generation) and g.prompt_ids == policy.prompt_ids(p)
        assert 1 <= len(g.response_ids) <= 12 and len(g.logprobs) == len(g.response_ids)
        assert all(lp <= 0 for lp in g.logprobs)
        assert g.finish_reason == ("stop" if g.response_ids[-1] in policy.eos_token_ids else "length")


def test_prompts_ids_batches_the_same_ids(policy, prompts):
    assert policy.prompts_ids(prompts) == [policy.prompt_ids(p) for p in prompts]
    assert policy.prompts_ids([]) == []


def test_batched_left_padding_matches_one_at_a_time(policy, prompts):
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    batched = policy.generate(prompts, greedy)
    assert len({len(g.prompt_ids) for g in batched}) > 1  # the batch really was padded
    for g, p in zip(batched, prompts):
        alone = policy.generate([p], greedy)[0]
        assert g.response_ids == alone.response_ids
        assert g.logprobs == pytest.approx(alone.logprobs, abs=1e-4)


def test_sampling_logprobs_equal_rescoring(policy, prompts):
    for temperature in (1.0, 0.7):
        gens = policy.generate(prompts, SamplingParams(temperature=temperature, max_new_tokens=8, seed=1))
        for g in gens:
            seq = torch.tensor([g.prompt_ids + g.response_ids])
            mask = torch.ones_like(seq)
            resp = torch.zeros_like(seq, dtype=torch.bool)
            resp[0, len(g.prompt_ids) :] = True
            with torch.no_grad():
                ref = naive_logprobs(policy.model, seq, mask, resp, temperature)[0, len(g.prompt_ids) :]
            assert g.logprobs == pytest.approx(ref.tolist(), abs=1e-4)


def test_generation_refuses_prompts_longer_than_the_model(policy):
    limit = policy.model.config.max_position_embeddings
    with pytest.raises(
        ValueError, match=f"prompt 1 has {limit - 2} tokens.*exceeds the model's {limit} positions"
    ):
        policy.generate_from_ids([[5], [5] * (limit - 2)], SamplingParams(max_new_tokens=4))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        policy.generate_from_ids([[]], SamplingParams())
    assert policy.generate_from_ids([], SamplingParams()) == []


def test_sampling_runs_without_dropout_and_keeps_the_train_mode(model_dir, prompts):
    pol = HFPolicy.from_pretrained(model_dir, lora={"r": 4, "dropout": 0.5}, device="cpu")
    perturb_lora(pol, seed=2)
    pol.model.train()
    a = pol.generate(prompts, SamplingParams(temperature=0, max_new_tokens=6))
    b = pol.generate(prompts, SamplingParams(temperature=0, max_new_tokens=6))
    assert [g.logprobs for g in a] == [g.logprobs for g in b] and pol.model.training


def test_stop_strings_end_the_response(model_dir):
    pol = HFPolicy.from_pretrained(model_dir, device="cpu")
    free = pol.generate_from_ids([[10, 11, 12]], SamplingParams(temperature=0, max_new_tokens=30))[0]
    assert len(free.response_ids) >= 4
    stop = pol.tokenizer.decode(free.response_ids[2:4], skip_special_tokens=True)
    assert stop.strip(), "pick a stop string that is visible text"
    cut = pol.generate_from_ids(
        [[10, 11, 12]], SamplingParams(temperature=0, max_new_tokens=30, stop=(stop,))
    )[0]
    assert cut.finish_reason == "stop" and stop in cut.text and len(cut.response_ids) <= 4
    assert cut.response_ids == free.response_ids[: len(cut.response_ids)]


# ----------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_chunked_logprobs_equal_naive(policy, prompts, chunk_size):
    ids, mask, resp = batch_of(policy, prompts)
    with torch.no_grad():
        naive = naive_logprobs(policy.model, ids, mask, resp)
        chunked = token_logprobs(policy.model, ids, mask, resp, chunk_size=chunk_size, with_entropy=True)
    assert torch.allclose(chunked.logprobs, naive, atol=1e-5)
    assert (chunked.logprobs[~resp] == 0).all() and (chunked.logprobs[resp] < 0).all()
    with torch.no_grad():
        hidden = token_logprobs(policy.model, ids, mask, resp, return_hidden=True).hidden
    assert hidden.shape == (*ids.shape, policy.model.config.hidden_size) and chunked.hidden is None
    with torch.no_grad():
        logits = policy.model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    probs = torch.softmax(logits[:, :-1].float(), -1)
    naive_ent = -(probs * torch.log(probs)).sum(-1)
    assert torch.allclose(chunked.entropy[:, 1:][resp[:, 1:]], naive_ent[resp[:, 1:]], atol=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 1024])
def test_token_stats_equal_the_full_logits_computation_and_cost_nothing_unasked(policy, prompts, chunk_size):
    ids, mask, resp = batch_of(policy, prompts)
    temperature = 0.7
    with torch.no_grad():
        got = token_logprobs(
            policy.model,
            ids,
            mask,
            resp,
            chunk_size=chunk_size,
            temperature=temperature,
            token_stats=TOKEN_STATS,
        )
        plain = token_logprobs(policy.model, ids, mask, resp, chunk_size=chunk_size, temperature=temperature)
        logits = (
            policy.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
            .logits[:, :-1]
            .float()
        )
    assert plain.stats == {} and torch.equal(got.logprobs, plain.logprobs)
    at = resp[:, 1:]
    z = logits / temperature
    chosen = logits.gather(-1, ids[:, 1:, None]).squeeze(-1)  # before temperature
    certainty = torch.logsumexp(z, -1) - z.mean(-1)  # KL(U || p) + log V
    probs = torch.softmax(z, -1)
    entropy = -(probs * torch.log(probs)).sum(-1)
    for name, want in (("chosen_logit", chosen), ("self_certainty", certainty), ("entropy", entropy)):
        assert torch.allclose(got.stats[name][:, 1:][at], want[at], atol=1e-4), name
        assert (got.stats[name][~resp] == 0).all()
    v = logits.shape[-1]
    kl_uniform = (-math.log(v) - torch.log_softmax(z, -1).mean(-1))[at]
    assert torch.allclose(got.stats["self_certainty"][:, 1:][at] - math.log(v), kl_uniform, atol=1e-4)
    with pytest.raises(ValueError, match="unknown token statistics"):
        token_logprobs(policy.model, ids, mask, resp, token_stats=("perplexity",))


def test_token_stats_names_match_what_estimators_may_declare():
    from agentrl.credit import TOKEN_STATS as DECLARABLE

    assert set(TOKEN_STATS) == set(DECLARABLE)


def test_output_layer_sees_at_most_chunk_size_tokens(policy, prompts):
    ids, mask, resp = batch_of(policy, prompts)
    shapes: list[tuple[int, ...]] = []
    head = policy.model.get_base_model().get_output_embeddings()
    handle = head.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(output.shape)))
    try:
        token_logprobs(policy.model, ids, mask, resp, chunk_size=4).logprobs.sum().backward()
    finally:
        handle.remove()
        policy.model.zero_grad()
    n_scored, vocab = int(resp.sum()), len(policy.tokenizer)
    assert n_scored > 4 and all(
        len(s) == 2 and 0 < s[0] <= 4 and s[1] == vocab for s in shapes
    )  # never [B, T, V]
    assert (
        sum(s[0] for s in shapes) == 2 * n_scored
    )  # forward, then recomputed once in backward (checkpointed chunks)


def test_chunked_logprob_gradients_equal_naive(policy, prompts):
    ids, mask, resp = batch_of(policy, prompts)
    perturb_lora(policy, seed=5, scale=0.1)
    params = policy.trainable_parameters()
    try:
        policy.model.zero_grad()
        token_logprobs(policy.model, ids, mask, resp, chunk_size=2).logprobs.sum().backward()
        chunked = [p.grad.clone() for p in params]
        policy.model.zero_grad()
        naive_logprobs(policy.model, ids, mask, resp).sum().backward()
        for g_chunk, p in zip(chunked, params):
            assert torch.allclose(g_chunk, p.grad, atol=1e-5)
        assert any(g.abs().sum() > 0 for g in chunked)
    finally:
        policy.model.zero_grad()
        reset_lora(policy)


def test_logprobs_reject_bad_masks(policy, prompts):
    ids, mask, resp = batch_of(policy, prompts)
    first = resp.clone()
    first[:, 0] = True
    with pytest.raises(ValueError, match="position 0"):
        token_logprobs(policy.model, ids, mask, first)
    hidden = mask.clone()
    hidden[resp] = 0
    with pytest.raises(ValueError, match="padding"):
        token_logprobs(policy.model, ids, hidden, resp)
    with pytest.raises(ValueError, match="one \\[B, T\\] shape"):
        token_logprobs(policy.model, ids, mask[:, 1:], resp)


# ----------------------------------------------------------------------------- LoRA


def test_lora_is_applied_and_adapter_disabled_restores_base(policy, prompts, model_dir):
    from transformers import AutoModelForCausalLM

    ids, mask, resp = batch_of(policy, prompts)
    base_model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        plain = naive_logprobs(base_model, ids, mask, resp)
        fresh = policy.logprobs(ids, mask, resp).logprobs
        assert torch.allclose(fresh, plain, atol=1e-5)  # LoRA B starts at zero: no change yet
        perturb_lora(policy, seed=3)
        try:
            tuned = policy.logprobs(ids, mask, resp).logprobs
            with policy.adapter_disabled():
                reference = policy.logprobs(ids, mask, resp).logprobs
            after = policy.logprobs(ids, mask, resp).logprobs
        finally:
            reset_lora(policy)
    assert (tuned - plain).abs().max() > 1e-2
    assert torch.allclose(reference, plain, atol=1e-5)
    assert torch.equal(after, tuned)  # leaving the block turns the adapter back on
    assert all("lora_" in n for n, p in policy.model.named_parameters() if p.requires_grad)
    assert policy.describe()["trainable_parameters"] == sum(p.numel() for p in policy.trainable_parameters())


def test_sampling_runs_on_a_merged_copy_that_follows_the_adapter(model_dir, prompts):
    """Generation uses a LoRA-merged copy: the trained model's logits and greedy tokens, refreshed
    after every in-place change of the adapter, the base weights untouched; off with the adapter off."""
    from transformers import AutoModelForCausalLM

    policy = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    base_model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids, mask, _ = batch_of(policy, prompts)
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    for seed in (3, 4):
        perturb_lora(policy, seed=seed)
        merged = policy._sampling_model()
        assert merged is not policy.model and not hasattr(merged, "peft_config")
        with torch.no_grad():
            want = policy.model(input_ids=ids, attention_mask=mask).logits
            got = merged(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        fast = [g.response_ids for g in policy.generate(prompts, greedy)]
        policy.merge_for_sampling = False
        slow = [g.response_ids for g in policy.generate(prompts, greedy)]
        policy.merge_for_sampling = True
        assert fast == slow
    with policy.adapter_disabled(), torch.no_grad():  # sampling inside the block samples the base model
        got = policy._sampling_model()(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(
            got, base_model(input_ids=ids, attention_mask=mask).logits, atol=1e-4, rtol=0
        )
    trained = policy.model.get_base_model().state_dict()
    for name, weight in base_model.state_dict().items():  # merging never wrote into the base weights
        module, _, param = name.rpartition(".")
        torch.testing.assert_close(
            trained.get(f"{module}.base_layer.{param}", trained.get(name)), weight, atol=0, rtol=0
        )


def test_save_load_adapter_round_trip(policy, prompts, model_dir, tmp_path):
    ids, mask, resp = batch_of(policy, prompts)
    perturb_lora(policy, seed=11)
    try:
        with torch.no_grad():
            tuned = policy.logprobs(ids, mask, resp).logprobs
        saved = policy.save_adapter(tmp_path / "adapter")
    finally:
        reset_lora(policy)
    assert json.loads((saved / "adapter_config.json").read_text())["r"] == 4
    fresh = HFPolicy.from_pretrained(model_dir, lora={"r": 4, "alpha": 8}, device="cpu")
    fresh.load_adapter(saved)
    reopened = HFPolicy.from_pretrained(model_dir, adapter=saved, device="cpu")
    with torch.no_grad():
        assert torch.allclose(fresh.logprobs(ids, mask, resp).logprobs, tuned, atol=1e-6)
        assert torch.allclose(reopened.logprobs(ids, mask, resp).logprobs, tuned, atol=1e-6)
    assert reopened.trainable_parameters(), "a reopened adapter stays trainable (resume)"
    wrong_rank = HFPolicy.from_pretrained(model_dir, lora={"r": 2}, device="cpu")
    with pytest.raises(ValueError, match="r=4"):
        wrong_rank.load_adapter(saved)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        fresh.load_adapter(tmp_path)


def test_lora_settings_validation():
    assert LoraSettings.coerce({"r": 16, "alpha": 32, "target_modules": ["q_proj"]}).target_modules == (
        "q_proj",
    )
    with pytest.raises(ValueError, match="unknown LoRA setting.*rank"):
        LoraSettings.coerce({"rank": 8})
    with pytest.raises(ValueError, match="r must be"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraSettings(dropout=1.0)
