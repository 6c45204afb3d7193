"""Response parsers (good and malformed output, every format), span mapping, prompt builders, chat loss mask."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from agentrl.agents import (
    RESPONSE_FORMATS,
    ChatPrompt,
    ExpertAnswer,
    ResponseFormat,
    StepPrompt,
    get_format,
    parse_hiper,
    parse_openai_message,
    parse_response,
    parse_think_action,
    parse_tool_calls,
    response_token_masks,
    span_masks,
    token_offsets,
    token_spans,
    tokenize_chat,
)
from agentrl.policies.tiny import CHATML_TEMPLATE, FORMAT_TOKENS, train_tokenizer

CORPUS = [
    "You are in the hall.\nExits: north, east (red door).\nYou see: red key.\nYou carry: nothing.",
    "go north",
    "go east",
    "take red key",
    "You take the red key.",
    "The red door is locked.",
] * 3


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=320)


# ----------------------------------------------------------------------------- think / action


def test_think_action_good():
    text = "<think>the key is here</think>\n<action> take red key </action>"
    p = parse_think_action(text)
    assert p.valid and p.reason is None
    assert p.action == "take red key" and p.think == "the key is here"
    assert text[slice(*p.spans["action"])] == "<action> take red key </action>"
    assert text[slice(*p.content_spans["action"])] == "take red key"
    assert text[slice(*p.spans["think"])] == "<think>the key is here</think>"
    assert text[slice(*p.content_spans["think"])] == "the key is here"


def test_think_is_optional_unless_required():
    assert parse_think_action("<action>go north</action>").valid
    p = parse_think_action("<action>go north</action>", require_think=True)
    assert not p.valid and "think" in p.reason


@pytest.mark.parametrize(
    "text, reason",
    [
        ("go north", "no <action>"),
        ("<action>go north", "unbalanced <action>"),
        ("<action>a</action><action>b</action>", "2 <action> elements"),
        ("<action>   </action>", "empty <action>"),
        ("<think>x<action>go</action>", "unbalanced <think>"),
        ("<action>go</action><think>late</think>", "before <action>"),
        ("", "no <action>"),
    ],
)
def test_think_action_malformed_never_raises(text, reason):
    p = parse_think_action(text)
    assert not p.valid and reason in p.reason
    assert p.action == ("go" if "late" in text else "")  # best effort: the action when one was found


def test_think_action_strict_rejects_outside_text():
    assert parse_think_action("sure! <action>go</action>").valid
    p = parse_think_action("sure! <action>go</action>", strict=True)
    assert not p.valid and "outside" in p.reason


def test_non_text_input_is_invalid_not_an_exception():
    for parse in (parse_think_action, parse_hiper, parse_tool_calls):
        p = parse(None)  # type: ignore[arg-type]
        assert not p.valid and "text" in p.reason


# ----------------------------------------------------------------------------- HiPER


def test_hiper_full():
    text = "<switch>SWITCH</switch><subgoal>get the red key</subgoal><action>take red key</action>"
    p = parse_hiper(text)
    assert p.valid and (p.switch, p.subgoal, p.action) == ("SWITCH", "get the red key", "take red key")
    assert p.spans["switch"] == (0, 23) and p.spans["subgoal"] == (23, 57) and p.spans["action"] == (57, 86)
    assert p.content_spans["switch"] == (8, 14)
    assert p.step_info() == {"switch": "SWITCH", "subgoal": "get the red key"}


def test_hiper_missing_switch_is_keep_and_keep_inherits_subgoal():
    p = parse_hiper("<action>go east</action>")
    assert p.valid and p.switch == "KEEP" and p.subgoal is None and "switch" not in p.spans
    assert p.step_info(current_subgoal="open the door") == {"switch": "KEEP", "subgoal": "open the door"}
    assert parse_hiper("<switch> keep </switch><action>go</action>").switch == "KEEP"


def test_hiper_missing_action_tag_uses_the_rest_of_the_response():
    text = "<switch>KEEP</switch><subgoal>reach the attic</subgoal>  go north "
    p = parse_hiper(text)
    assert p.valid and p.action == "go north"
    assert text[slice(*p.spans["action"])] == "go north"
    bare = parse_hiper("  go north\n")
    assert bare.valid and bare.action == "go north" and bare.spans["action"] == (2, 10)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<switch>MAYBE</switch><action>go</action>", "KEEP or SWITCH"),
        ("<switch>SWITCH</switch><action>go</action>", "SWITCH without"),
        ("<switch>KEEP</switch><subgoal>x</subgoal>", "empty action"),
        ("<switch>KEEP<action>go</action>", "unbalanced <switch>"),
        ("blah <switch>KEEP</switch> go", "text before"),
        ("<action>a</action><action>b</action>", "2 <action>"),
    ],
)
def test_hiper_malformed(text, reason):
    p = parse_hiper(text)
    assert not p.valid and reason in p.reason


# ----------------------------------------------------------------------------- tool calls


def test_tool_call_tags_several_calls():
    text = 'ok <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n<tool_call>{"name": "now", "arguments": "{}"}</tool_call>'
    p = parse_tool_calls(text)
    assert p.valid and [c.name for c in p.tool_calls] == ["add", "now"]
    assert p.tool_calls[0].arguments == {"a": 1, "b": 2} and p.tool_calls[1].arguments == {}
    assert json.loads(p.action) == [
        {"name": "add", "arguments": {"a": 1, "b": 2}},
        {"name": "now", "arguments": {}},
    ]
    assert text[slice(*p.spans["tool_call.1"])].startswith("<tool_call>") and p.spans["action"] == (
        3,
        len(text),
    )
    assert (
        p.step_info() == {}
    )  # whether it is a tool turn is the env's answer (info["tool_call"]), not the parse


def test_tool_call_openai_json_text_and_message():
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "paris"}'}}
    for text in (
        json.dumps({"tool_calls": [call]}),
        json.dumps([call]),
        json.dumps({"name": "search", "arguments": {"q": "paris"}}),
    ):
        p = parse_tool_calls(text)
        assert p.valid and p.tool_calls[0].name == "search" and p.tool_calls[0].arguments == {"q": "paris"}
    m = parse_openai_message({"role": "assistant", "content": None, "tool_calls": [call]})
    assert m.valid and m.tool_calls[0].id == "c1" and m.tool_calls[0].to_openai() == call


def test_tool_call_plain_text_is_a_final_answer():
    p = parse_tool_calls("  The capital is Paris. ")
    assert p.valid and p.action == "The capital is Paris." and p.tool_calls == ()
    assert parse_openai_message({"content": "Paris"}).action == "Paris"


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ('<tool_call>{"arguments": {}}</tool_call>', "missing tool 'name'"),
        ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "f", "arguments": "{bad"}</tool_call>', "'arguments' is not valid JSON"),
        ('<tool_call>{"name": "f"}', "unbalanced <tool_call>"),
        ('{"name": "f", "arguments": {}', "does not parse"),
        ("[]", "empty list"),
        ("   ", "empty response"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_tool_call_malformed(text, reason):
    p = parse_tool_calls(text)
    assert not p.valid and reason in p.reason


def test_openai_message_malformed():
    assert "must be a list" in parse_openai_message({"content": "", "tool_calls": {"x": 1}}).reason
    bad = parse_openai_message(
        {"content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{"}}]}
    )
    assert not bad.valid and "not valid JSON" in bad.reason
    assert not parse_openai_message("nope").valid  # type: ignore[arg-type]


def test_format_registry():
    assert set(RESPONSE_FORMATS.names()) >= {"think_action", "tool_call", "hiper"}
    assert parse_response("<action>go</action>", "hiper").action == "go"
    assert "<action>" in get_format("think_action").instructions
    with pytest.raises(KeyError, match="unknown response format 'xml'.*hiper"):
        parse_response("x", "xml")
    # what a tiny model needs to learn the format, read by the credit benchmark's warm start
    assert get_format("hiper").whole_words == ("KEEP", "SWITCH") and get_format("hiper").min_sft_epochs == 2
    assert get_format("think_action").whole_words == () and get_format("think_action").min_sft_epochs == 1
    with pytest.raises(ValueError, match="min_sft_epochs"):
        ResponseFormat("x", "", parse_think_action, min_sft_epochs=0)
    with pytest.raises(ValueError, match="whole_words.*' KEEP'"):
        ResponseFormat("x", "", parse_think_action, whole_words=(" KEEP",))


def test_every_format_tag_is_one_tiny_token_and_its_whole_words_occur():
    """A tag the tiny tokenizer spells in bytes is learnt slowly or not at all (HiPER's ``K E E P``:
    docs/benchmarks.md); a new format's tags must join ``FORMAT_TOKENS``."""
    for name in RESPONSE_FORMATS.names():
        fmt = get_format(name)
        if fmt.render is None:
            continue
        texts = [fmt.render(ExpertAnswer("go north", turn=t, think="north")) for t in (0, 1)]
        tags = {tag for text in texts for tag in re.findall(r"</?[a-z_]+>", text)}
        assert tags <= set(FORMAT_TOKENS), (name, sorted(tags - set(FORMAT_TOKENS)))
        for word in fmt.whole_words:
            assert any(word in text for text in texts), (name, word)


# ----------------------------------------------------------------------------- spans


def test_span_masks_by_hand():
    offsets = [(0, 3), (3, 5), (5, 5), (5, 9), (9, 12)]
    masks = span_masks({"a": (4, 6), "b": (9, 12), "none": (12, 12)}, offsets)
    assert masks["a"].tolist() == [False, True, False, True, False]  # the empty token never counts
    assert masks["b"].tolist() == [False, False, False, False, True]
    assert not masks["none"].any()
    assert token_spans({"a": (4, 6), "b": (9, 12), "none": (12, 12)}, offsets) == {
        "a": (1, 4),
        "b": (4, 5),
        "none": (0, 0),
    }
    with pytest.raises(ValueError, match="ends before it starts"):
        span_masks({"x": (5, 2)}, offsets)
    with pytest.raises(ValueError, match="start <= end"):
        span_masks({"x": (0, 1)}, [(3, 1)])


def test_token_offsets_and_hiper_routing(tokenizer):
    text = "<switch>SWITCH</switch><subgoal>get the red key</subgoal><action>take red key</action>"
    parsed = parse_hiper(text)
    ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    offsets = token_offsets(tokenizer, ids)
    assert offsets[-1] == (len(text), len(text))  # the end-of-turn token is skipped: empty range
    pieces = "".join(text[s:e] for s, e in offsets)
    assert pieces == text
    spans = token_spans(parsed.spans, offsets)
    for part in ("switch", "subgoal", "action"):
        a, b = spans[part]
        assert tokenizer.decode(ids[a:b]) == text[slice(*parsed.spans[part])]
    masks = span_masks(parsed.spans, offsets)
    assert not (masks["switch"] & masks["action"]).any() and not masks["switch"][-1]


def test_response_token_masks_from_ids(tokenizer):
    text = "<switch>KEEP</switch><subgoal>open the door</subgoal><action>go east</action>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    masks = response_token_masks(tokenizer, ids, parse_hiper(decoded))
    assert set(masks) == {"switch", "subgoal", "action"} and all(
        m.shape == (len(ids),) for m in masks.values()
    )
    assert (
        tokenizer.decode([i for i, m in zip(ids, masks["subgoal"]) if m])
        == "<subgoal>open the door</subgoal>"
    )
    assert (
        sum(m.sum() for m in masks.values()) == len(ids) - 1
    )  # every token but the end-of-turn one is routed
    assert response_token_masks(tokenizer, ids, parse_hiper("<switch>??</switch>")) == {}


def test_token_offsets_multibyte_characters(tokenizer):
    text = "go é 中文 🙂 north"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    offsets = token_offsets(tokenizer, ids)
    assert len(ids) > len(text.split())  # unseen characters are several byte tokens
    assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
    starts, ends = np.array(offsets).T
    assert (starts <= ends).all() and (np.diff(starts) >= 0).all() and (np.diff(ends) >= 0).all()
    covered = np.zeros(len(text), dtype=bool)
    for s, e in offsets:
        covered[s:e] = True
    assert covered.all()
    smile = text.index("🙂")
    owners = np.flatnonzero(span_masks({"s": (smile, smile + 1)}, offsets)["s"])
    assert owners.size == 4  # four UTF-8 bytes, four byte tokens, all routed with the character
    assert tokenizer.decode([ids[i] for i in owners]) == "🙂"
    assert token_offsets(tokenizer, []) == []


# ----------------------------------------------------------------------------- prompts


HISTORY = [(f"obs-{i}", f"act-{i}") for i in range(1, 6)]


def test_step_prompt_window_k():
    msgs = StepPrompt(history_k=2).build("reach the attic", "obs-now", HISTORY, ["go north", "take red key"])
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "obs-4" in user and "act-5" in user and "[Observation 4]" in user and "[Action 5]" in user
    assert not any(f"obs-{i}" in user or f"act-{i}" in user for i in (1, 2, 3))
    assert "taken 5 step(s)" in user and "Task: reach the attic" in user
    assert (
        user.index("obs-5")
        < user.index("obs-now")
        < user.index("Admissible actions: [go north], [take red key].")
    )
    assert "<action>" in msgs[0]["content"]


def test_step_prompt_k_zero_large_k_and_hiper():
    none = StepPrompt(history_k=0).build("t", "obs-now", HISTORY)[1]["content"]
    assert "obs-" not in none.replace("obs-now", "") and "Admissible" not in none
    everything = StepPrompt(history_k=10).build("t", "obs-now", HISTORY)[1]["content"]
    assert all(f"obs-{i}" in everything for i in range(1, 6)) and "last 5 observation(s)" in everything
    first = StepPrompt(response_format="hiper").build("t", "o", [])[1]["content"]
    assert "Current subgoal: None" in first and "step(s)" not in first
    later = StepPrompt(response_format="hiper").build("t", "o", HISTORY[:1], subgoal="find key")[1]["content"]
    assert "Current subgoal: find key" in later


def test_prompts_list_tool_schemas_and_tool_role():
    schema = {
        "type": "function",
        "function": {"name": "add", "parameters": {"type": "object", "properties": {}}},
    }
    system = StepPrompt(response_format="tool_call").build("add", "2+2?", tools=[schema])[0]["content"]
    assert "<tool_call>" in system and system.endswith(
        "Available tools:\n" + json.dumps(schema, sort_keys=True)
    )
    chat = ChatPrompt(response_format="tool_call", observation_role="tool").build(
        "t", ["q", "result: 4"], ["<tool_call>..."]
    )
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "tool"]
    with pytest.raises(ValueError, match=r"tools\[0\]"):
        StepPrompt().build("t", "o", tools=["add"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="observation_role"):
        ChatPrompt(observation_role="system")


def test_step_prompt_rejects_bad_settings():
    with pytest.raises(ValueError, match="history_k"):
        StepPrompt(history_k=-1)
    with pytest.raises(KeyError, match="unknown response format"):
        StepPrompt(response_format="yaml")
    with pytest.raises(ValueError, match=r"history\[0\]"):
        StepPrompt().build("t", "o", ["not a pair"])  # type: ignore[list-item]


def test_chat_prompt_structure():
    cp = ChatPrompt()
    prompt = cp.build("reach the attic", ["o1", "o2"], ["r1"], admissible_actions=["go north"])
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert (
        prompt[1]["content"].startswith("Task: reach the attic\no1")
        and "Admissible" not in prompt[1]["content"]
    )
    assert prompt[3]["content"] == "o2\nAdmissible actions: [go north]."
    assert cp.build("t", ["o1"], ["r1"])[-1] == {"role": "assistant", "content": "r1"}
    with pytest.raises(ValueError, match="len\\(observations\\)"):
        cp.build("t", ["o1"], ["r1", "r2"])


def test_full_chat_loss_mask_trains_assistant_tokens_only(tokenizer):
    responses = ["<think>key first</think><action>take red key</action>", "<action>go north</action>"]
    msgs = ChatPrompt().build("reach the attic", ["You are in the hall.", "You take the red key."], responses)
    ct = tokenize_chat(tokenizer, msgs)
    assert ct.input_ids.shape == ct.loss_mask.shape and len(ct.assistant_spans) == 2
    assert tokenizer.decode(ct.input_ids.tolist()) == ct.text
    for (a, b), response in zip(ct.assistant_spans, responses):
        assert ct.loss_mask[a:b].all()
        assert tokenizer.decode(ct.input_ids[a:b].tolist()) == response + "<|im_end|>"
    trained = np.flatnonzero(ct.loss_mask)
    expected = np.concatenate([np.arange(a, b) for a, b in ct.assistant_spans])
    assert trained.tolist() == expected.tolist()
    masked_text = tokenizer.decode(ct.input_ids[~ct.loss_mask].tolist())
    assert (
        "You take the red key." in masked_text
        and "<|im_start|>assistant" in masked_text
        and "take red key</action>" not in masked_text
    )


def test_full_chat_rejects_templates_that_rewrite_history(tokenizer):
    rewriting = (
        "{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% else %}X{% endif %}{% endfor %}"
    )
    msgs = ChatPrompt().build("t", ["o1", "o2"], ["r1", "r2"])
    with pytest.raises(ValueError, match="rewrites history"):
        tokenize_chat(tokenizer, msgs, chat_template=rewriting)
    assert tokenize_chat(tokenizer, msgs, chat_template=CHATML_TEMPLATE).loss_mask.any()
