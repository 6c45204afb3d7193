"""The ``vllm`` policy without vLLM: vLLM cannot be installed or run here (no GPU).

Real: the tiny model directory and its tokenizer, prompt rendering, the peft adapter saved by
``push_adapter``, the error when vLLM is missing. Mocked, and named so: ``MockRequestOutput`` /
``MockCompletionOutput`` / ``MockLogprob`` stand for vLLM's ``RequestOutput``, ``CompletionOutput``
and ``Logprob``; ``mock_vllm`` puts a stand-in ``vllm`` package (``LLM``, ``SamplingParams``,
``vllm.lora.request.LoRARequest``) into ``sys.modules`` that records what the policy asks of it.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agentrl.agents.prompts import render_chat
from agentrl.policies import SamplingParams, make_policy
from agentrl.policies.vllm import (
    AdapterVersions,
    VLLMNotInstalledError,
    VLLMPolicy,
    sampling_kwargs,
    to_generation,
)

MESSAGES = [
    {"role": "system", "content": "Act in the maze."},
    {"role": "user", "content": "You are in the hall. go north?"},
]


@pytest.fixture(scope="module")
def model_dir(tiny_model: Callable[..., Path]) -> Path:
    return tiny_model(tasks=4, steps_per_task=4, layers=1, hidden=32)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


# ----------------------------------------------------------------------------- mocks of vLLM's objects


@dataclass
class MockLogprob:
    """Mock of ``vllm.logprobs.Logprob``."""

    logprob: float
    rank: int | None = None


@dataclass
class MockCompletionOutput:
    """Mock of ``vllm.outputs.CompletionOutput`` (the fields the policy reads)."""

    token_ids: list[int]
    logprobs: Any
    finish_reason: str | None = "stop"
    stop_reason: int | str | None = None
    index: int = 0
    text: str = ""


@dataclass
class MockRequestOutput:
    """Mock of ``vllm.outputs.RequestOutput``."""

    prompt_token_ids: list[int]
    outputs: list[MockCompletionOutput]
    request_id: str = "0"


class MockFlatLogprobs:
    """Mock of ``vllm.logprobs.FlatLogprobs``: flat lists, indexed by position to ``{token_id: Logprob}``."""

    def __init__(self, positions: list[dict[int, float]]) -> None:
        self.token_ids, self.logprobs, self.start, self.end = [], [], [], []
        for pos in positions:
            self.start.append(len(self.logprobs))
            for t, lp in pos.items():
                self.token_ids.append(t)
                self.logprobs.append(lp)
            self.end.append(len(self.logprobs))

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, i: int) -> dict[int, MockLogprob]:
        return {self.token_ids[k]: MockLogprob(self.logprobs[k]) for k in range(self.start[i], self.end[i])}


# ----------------------------------------------------------------------------- vLLM missing


def test_missing_vllm_is_a_clear_error_at_use(
    model_dir: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """None in sys.modules makes ``import vllm`` fail as on a machine without it (as here)."""
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(VLLMNotInstalledError) as e:
        make_policy("vllm", path=model_dir)
    assert "pip install 'agentrl[vllm]'" in str(e.value) and "CUDA GPU" in str(e.value)
    policy = VLLMPolicy(object(), tokenizer)  # building needs no vLLM; sampling does
    with pytest.raises(VLLMNotInstalledError, match="agentrl\\[vllm\\]"):
        policy.generate([MESSAGES], SamplingParams())
    assert isinstance(e.value, ImportError)


# ----------------------------------------------------------------------------- pure functions


def test_sampling_kwargs_per_prompt_seed_stop_strings_and_sampled_logprob_only() -> None:
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=12, seed=100, stop=("</action>",))
    assert sampling_kwargs(params, 3, [5, 7]) == {
        "n": 1,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 12,
        "logprobs": 0,
        "stop_token_ids": [5, 7],
        "seed": 103,
        "stop": ["</action>"],
        "include_stop_str_in_output": True,
    }
    plain = sampling_kwargs(SamplingParams(temperature=0.0), 0, [2])
    assert (
        "seed" not in plain
        and "stop" not in plain
        and plain["temperature"] == 0.0
        and plain["max_tokens"] == 256
    )


def test_request_output_becomes_a_generation_with_the_sampled_tokens_logprobs(tokenizer: Any) -> None:
    eos = tokenizer.eos_token_id
    ids = tokenizer("go north", add_special_tokens=False)["input_ids"]
    response = [*ids, eos]
    # the sampled token is not always the top-1 token: its entry sits beside the top token's
    positions = [{t: -0.25 * (k + 1), 999: -0.01} for k, t in enumerate(ids)] + [{eos: -0.125}]
    for logprobs in (
        [{t: MockLogprob(lp) for t, lp in p.items()} for p in positions],
        MockFlatLogprobs(positions),
    ):
        out = MockRequestOutput([1, 2, 3], [MockCompletionOutput(response, logprobs, "stop", eos)])
        gen = to_generation(out, tokenizer, 0, {"adapter": "agentrl-v1"})
        assert gen.prompt_ids == [1, 2, 3] and gen.response_ids == response
        assert gen.logprobs == [-0.25 * (k + 1) for k in range(len(ids))] + [-0.125]
        assert gen.text == "go north" and gen.finish_reason == "stop"
        assert gen.info == {"stop_reason": eos, "adapter": "agentrl-v1"}
    cut = to_generation(
        MockRequestOutput([1], [MockCompletionOutput(ids, [{t: MockLogprob(-1.0)} for t in ids], "length")]),
        tokenizer,
        0,
    )
    assert cut.finish_reason == "length" and cut.response_ids == ids


@pytest.mark.parametrize(
    "completion, message",
    [
        (
            MockCompletionOutput([4, 5], [{4: MockLogprob(-1.0)}, {5: MockLogprob(-1.0)}], "abort"),
            "finish_reason='abort'",
        ),
        (MockCompletionOutput([4, 5], None), "no log-probs"),
        (
            MockCompletionOutput([4, 5], [{4: MockLogprob(-1.0)}]),
            "2 response token ids but 1 log-prob positions",
        ),
        (
            MockCompletionOutput([4, 5], [{4: MockLogprob(-1.0)}, {6: MockLogprob(-1.0)}]),
            "sampled token 5 at position 1",
        ),
    ],
)
def test_a_malformed_request_output_is_refused(
    tokenizer: Any, completion: MockCompletionOutput, message: str
) -> None:
    with pytest.raises(RuntimeError, match=message.replace("(", "\\(").replace(")", "\\)")):
        to_generation(MockRequestOutput([1], [completion]), tokenizer, 2)


def test_adapter_versions_bump_the_id_even_for_the_same_directory(tmp_path: Path) -> None:
    versions = AdapterVersions("run7")
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        versions.bump(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    first, none = versions.bump(tmp_path)
    second, previous = versions.bump(tmp_path)
    third, before = versions.bump(tmp_path / ".")
    assert none is None and previous == first and before == second
    assert [v.int_id for v in (first, second, third)] == [1, 2, 3]
    assert [v.name for v in (first, second, third)] == ["run7-v1", "run7-v2", "run7-v3"]
    assert first.path == second.path == str(tmp_path.resolve()) and versions.current == third
    with pytest.raises(ValueError, match="prefix"):
        AdapterVersions("")


# ----------------------------------------------------------------------------- the policy over a mock vLLM


@dataclass
class MockEngine:
    """Mock of ``LLM.llm_engine``: records removed LoRA ids."""

    removed: list[int] = field(default_factory=list)

    def remove_lora(self, lora_id: int) -> bool:
        self.removed.append(lora_id)
        return True


class MockLLM:
    """Mock of ``vllm.LLM``: records its engine arguments and every ``generate`` call.

    Each prompt is answered with its last prompt token, then the end-of-turn token.
    """

    instances: ClassVar[list[MockLLM]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[dict[str, Any]] = []
        self.llm_engine = MockEngine()
        self.model_config = types.SimpleNamespace(max_model_len=kwargs.get("max_model_len", 2048))
        MockLLM.instances.append(self)

    def generate(
        self, prompts: list[dict[str, Any]], sampling_params: list[Any], *, use_tqdm: bool, lora_request: Any
    ) -> list[Any]:
        self.calls.append(
            {"prompts": prompts, "params": sampling_params, "use_tqdm": use_tqdm, "lora": lora_request}
        )
        out = []
        for p, sp in zip(prompts, sampling_params):
            tokens = [p["prompt_token_ids"][-1], sp.kwargs["stop_token_ids"][0]]
            out.append(
                MockRequestOutput(
                    p["prompt_token_ids"],
                    [MockCompletionOutput(tokens, [{t: MockLogprob(-0.5)} for t in tokens])],
                )
            )
        return out


@dataclass
class MockSamplingParams:
    """Mock of ``vllm.SamplingParams``: keeps its arguments."""

    kwargs: dict[str, Any]

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@dataclass
class MockLoRARequest:
    """Mock of ``vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)``."""

    lora_name: str
    lora_int_id: int
    lora_path: str


@pytest.fixture
def mock_vllm(monkeypatch: pytest.MonkeyPatch) -> type[MockLLM]:
    """A mock ``vllm`` package in sys.modules (vLLM itself cannot be installed here)."""
    root, lora, request = (
        types.ModuleType("vllm"),
        types.ModuleType("vllm.lora"),
        types.ModuleType("vllm.lora.request"),
    )
    root.LLM, root.SamplingParams, request.LoRARequest = MockLLM, MockSamplingParams, MockLoRARequest
    for name, module in (("vllm", root), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    MockLLM.instances = []
    return MockLLM


def test_from_pretrained_builds_a_lora_engine_and_reads_the_eos_ids(
    model_dir: Path, tokenizer: Any, mock_vllm: type[MockLLM]
) -> None:
    policy = make_policy("vllm", path=model_dir, max_lora_rank=32, enforce_eager=True)
    assert isinstance(policy, VLLMPolicy)
    kwargs = mock_vllm.instances[0].kwargs
    assert kwargs == {
        "model": str(model_dir),
        "enable_lora": True,
        "max_loras": 1,
        "max_lora_rank": 32,
        "gpu_memory_utilization": 0.5,
        "dtype": "auto",
        "seed": 0,
        "logprobs_mode": "processed_logprobs",
        "enforce_eager": True,
    }
    # generation_config.json names <|im_end|> and <|endoftext|>; both end a response
    assert policy.eos_token_ids == sorted(tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    old = VLLMPolicy.from_pretrained(model_dir, logprobs_mode=None, max_model_len=512)
    assert (
        "logprobs_mode" not in mock_vllm.instances[1].kwargs
        and mock_vllm.instances[1].kwargs["max_model_len"] == 512
    )
    assert old.lora_request is None


def test_generate_sends_token_ids_per_prompt_seeds_and_the_current_adapter(
    model_dir: Path, tokenizer: Any, mock_vllm: type[MockLLM], tmp_path: Path
) -> None:
    from agentrl.policies.hf import HFPolicy, LoraSettings

    policy = VLLMPolicy.from_pretrained(model_dir)
    llm = mock_vllm.instances[0]
    want = tokenizer(render_chat(tokenizer, MESSAGES, add_generation_prompt=True), add_special_tokens=False)[
        "input_ids"
    ]
    assert policy.prompt_ids(MESSAGES) == want

    gens = policy.generate([MESSAGES, MESSAGES], SamplingParams(temperature=1.0, max_new_tokens=8, seed=40))
    call = llm.calls[-1]
    assert (
        call["prompts"] == [{"prompt_token_ids": want}] * 2
        and call["use_tqdm"] is False
        and call["lora"] is None
    )
    assert [p.kwargs["seed"] for p in call["params"]] == [
        40,
        41,
    ]  # identical prompts still get different samples
    assert [g.prompt_ids for g in gens] == [want, want]
    assert gens[0].response_ids == [want[-1], policy.eos_token_ids[0]] and gens[0].logprobs == [-0.5, -0.5]
    assert gens[0].info["adapter"] is None

    trained = HFPolicy.from_pretrained(model_dir, lora=LoraSettings(r=4, alpha=8), device="cpu")
    first = policy.push_adapter(trained, tmp_path / "adapter")  # an HFPolicy: save_adapter, then sync
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and (
        tmp_path / "adapter" / "adapter_model.safetensors"
    ).is_file()
    policy.generate([MESSAGES], SamplingParams(seed=0))
    assert llm.calls[-1]["lora"] == MockLoRARequest("agentrl-v1", 1, str((tmp_path / "adapter").resolve()))
    second = policy.push_adapter(
        trained.model, tmp_path / "adapter"
    )  # a peft model: save_pretrained, then sync
    gens = policy.generate([MESSAGES], SamplingParams(seed=0))
    assert (first.int_id, second.int_id) == (1, 2) and llm.llm_engine.removed == [1]
    assert llm.calls[-1]["lora"].lora_int_id == 2 and gens[0].info["adapter"] == "agentrl-v2"
    policy.use_base_model()
    policy.generate([MESSAGES], SamplingParams(seed=0))
    assert llm.calls[-1]["lora"] is None

    resumed = VLLMPolicy.from_pretrained(
        model_dir, adapter=tmp_path / "adapter"
    )  # a saved adapter from the start
    assert resumed.lora_request == MockLoRARequest("agentrl-v1", 1, str((tmp_path / "adapter").resolve()))


def test_generate_refuses_prompts_past_the_engines_length(model_dir: Path, mock_vllm: type[MockLLM]) -> None:
    policy = VLLMPolicy.from_pretrained(model_dir, max_model_len=64)
    n = len(policy.prompt_ids(MESSAGES))
    with pytest.raises(
        ValueError,
        match=f"prompt 0 has {n} tokens; with max_new_tokens=64 it exceeds the engine's max_model_len=64",
    ):
        policy.generate([MESSAGES], SamplingParams(max_new_tokens=64))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        policy.generate_from_ids([[1, 2], []], SamplingParams(max_new_tokens=4))
    assert policy.generate([], SamplingParams()) == [] and not mock_vllm.instances[0].calls


# ----------------------------------------------------------------------------- LoRA rank, training


def test_max_lora_rank_fits_the_adapter(model_dir: Path, tmp_path: Path, mock_vllm: type[MockLLM]) -> None:
    from agentrl.policies.hf import HFPolicy, LoraSettings
    from agentrl.policies.vllm import lora_rank_for

    assert [lora_rank_for(r) for r in (1, 8, 9, 64, 65, 300, 600)] == [8, 8, 16, 64, 128, 320, 600]
    adapter = HFPolicy.from_pretrained(
        model_dir, lora=LoraSettings(r=24, alpha=8), device="cpu"
    ).save_adapter(tmp_path / "a")
    VLLMPolicy.from_pretrained(model_dir, adapter=adapter)
    VLLMPolicy.from_pretrained(model_dir)
    assert [llm.kwargs["max_lora_rank"] for llm in mock_vllm.instances] == [32, 64]


def test_training_samples_with_an_in_process_vllm_engine_when_asked(
    small_maze_model_dir: Path, tmp_path: Path, mock_vllm: type[MockLLM]
) -> None:
    from agentrl.trainers import train

    overrides = {
        "model.path": str(small_maze_model_dir),
        "model.device": "cpu",
        "lora.r": 12,
        "lora.alpha": 8,
        "env.kwargs": "{size: 2, n_doors: 1, max_steps: 4, num_tasks: 50}",
        "env.train_tasks.count": 20,
        "env.num_envs": 4,
        "rollout.groups": 2,
        "rollout.group_size": 2,
        "rollout.max_turns": 2,
        "rollout.max_new_tokens": 6,
        "rollout.engine": "vllm",
        "rollout.vllm": "{gpu_memory_utilization: 0.3}",
        "optim.iterations": 2,
        "logging.tensorboard": "false",
        "eval.enabled": "false",
        "sft.enabled": "false",
        "algorithm.minibatch_size": 4,
        "algorithm.micro_batch_size": 2,
    }
    run = train(None, tmp_path / "run", [f"{k}={v}" for k, v in overrides.items()])
    (llm,) = mock_vllm.instances
    assert llm.kwargs["max_lora_rank"] == 16 and llm.kwargs["gpu_memory_utilization"] == 0.3
    assert llm.kwargs["model"] == str(small_maze_model_dir)
    assert llm.calls, "rollouts sampled from the engine"
    names = [c["lora"].lora_name for c in llm.calls]
    assert names[0] == "agentrl-v1" and names[-1] == "agentrl-v2"  # the adapter pushed each iteration
    assert llm.llm_engine.removed == [1, 2]  # v3 (after the last update) replaced v2
    assert (run / "vllm-adapter" / "rank0" / "adapter_config.json").is_file()
    assert sum(1 for _ in (run / "metrics.jsonl").open()) == 2


def test_vllm_engine_and_server_url_are_exclusive() -> None:
    from agentrl.config import ConfigError, load_config

    with pytest.raises((ConfigError, ValueError), match="cannot go with rollout.server.url"):
        load_config(None, ["rollout.engine=vllm", "rollout.server.url=http://127.0.0.1:8000/v1"])
