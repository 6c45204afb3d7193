"""The training config: pydantic models for every section, YAML loading and dotted overrides.

``load_config("configs/quickstart.yaml", ["algorithm.estimator=gigpo", "optim.lr=1e-4"])`` returns
a validated ``TrainConfig``. An unknown key or a value of the wrong type fails with a
``ConfigError`` naming the key and what is allowed there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from agentrl.agents import PromptSettings
    from agentrl.evaluation import EvalSpec
    from agentrl.rollout import Branching
from agentrl.policies.lora import LoraSettings

__all__ = ["ConfigError", "TrainConfig", "apply_overrides", "config_from_dict", "dump_config", "load_config"]


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class TinyModelConfig(Section):
    """A random-init Qwen2 with a tokenizer trained on the env's text (used when model.path is null)."""

    vocab_size: int = Field(512, ge=280)
    layers: int = Field(2, ge=1)
    hidden: int = Field(64, ge=8)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    max_positions: int = Field(2048, ge=64)  # the context: BFCL's prompts (every API's schema) need ~8k
    corpus_tasks: int = Field(50, ge=1)
    seed: int = 0
    # strings the tokenizer keeps as one token each, like the format tags (e.g. [KEEP, SWITCH] for
    # hiper: spelt in bytes, they stop the maze model learning which way to go)
    whole_words: list[str] = []
    # qwen2: Qwen2's pre-split (a word takes the space or bracket before it); words: every word is
    # one token wherever it stands, so a word read in the observation can be copied into an action
    # like click[black] (agentrl.policies.tiny.train_tokenizer)
    pretokenize: Literal["qwen2", "words"] = "qwen2"
    # lower-case text before tokenising: a product id read as B01MW7S2YN is written click[b01mw7s2yn];
    # decoded text comes out lower-case, so only for envs whose actions ignore case (WebShop)
    lowercase: bool = False

    @field_validator("whole_words")
    @classmethod
    def _words(cls, v: list[str]) -> list[str]:
        from agentrl.agents.formats import check_whole_words

        check_whole_words(v)
        return v


class ModelConfig(Section):
    path: str | None = None
    tiny: TinyModelConfig = TinyModelConfig()
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int = Field(64, ge=1)
    logprob_chunk_size: int = Field(512, ge=1)
    torch_threads: int | None = Field(None, ge=1)
    gradient_checkpointing: bool = False  # recompute activations in backward (long sequences on GPU)
    merge_lora_for_sampling: bool = (
        True  # sample on a LoRA-merged copy: faster decoding, one more copy of the weights
    )
    # score and train on the real tokens only, rows packed into one sequence (no compute on padding);
    # worth it with attn_implementation: flash_attention_2 (varlen), not with SDPA's dense mask
    packed_scoring: bool = False
    attn_implementation: str | None = None  # transformers' (None: its default, SDPA)


class TaskRange(Section):
    """Tasks ``env.task_ids()[start : start + count]``."""

    start: int = Field(0, ge=0)
    count: int = Field(100, ge=1)


class EnvConfig(Section):
    name: str = "maze"
    kwargs: dict[str, Any] = {}
    train_tasks: TaskRange = TaskRange()
    # envs stepped in lockstep; each turn one generate call answers all running episodes, so this is
    # the sampling batch. None: one env per episode of an iteration (rollout.groups x group_size)
    num_envs: int | None = Field(8, ge=1)

    @field_validator("name")
    @classmethod
    def _known_env(cls, v: str) -> str:
        from agentrl.envs import list_envs

        if v not in list_envs():
            raise ValueError(f"unknown env {v!r}; allowed: {', '.join(list_envs())}")
        return v


class RolloutServerConfig(Section):
    """Sample through an OpenAI-compatible server (``vllm serve --enable-lora``, ``agentrl serve``)
    instead of in-process. The server must serve the trainer's base model (after any SFT);
    the trainer saves its LoRA adapter to ``sync_dir`` (a path the server can read) and loads it
    there under ``adapter_name`` before every rollout.

    Several servers (``url`` a list, or a text file with one URL per line) share the requests by
    load, at most ``concurrency`` in flight per server; a server that stops answering is taken out
    for ``cooldown_s`` and its requests go to the others (``agentrl.policies.pool``)."""

    # None: sample in-process with the hf policy; a URL; a list of URLs; or a file of URLs
    url: str | list[str] | None = None
    model: str | None = None  # the served base model; default: the first the server lists
    concurrency: int = Field(16, ge=1)  # requests in flight per server
    sync_dir: str | None = None  # default: RUNDIR/served-adapter
    adapter_name: str = "agentrl-policy"
    cooldown_s: float = Field(30.0, gt=0)  # several servers: how long a failed server stays out
    timeout_s: float = Field(600.0, gt=0)  # a request taking longer fails (several servers: goes elsewhere)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is not None:
            from agentrl.policies.pool import read_urls

            read_urls(v)
        return v

    def urls(self) -> list[str]:
        """The servers ``url`` names (a file of URLs is read now)."""
        from agentrl.policies.pool import read_urls

        return read_urls(self.url) if self.url is not None else []


class BranchingConfig(Section):
    """Tree rollouts (``agentrl.rollout.Branching``): off unless ``enabled``."""

    enabled: bool = False
    width: int = Field(2, ge=1)  # branches per branch point
    points: int = Field(1, ge=1)  # branch points per root episode
    at: Literal["random", "fixed", "entropy", "chain"] = "random"
    turns: list[int] = []  # with at: fixed
    budget: int | None = Field(None, ge=1)  # env steps per task, roots included
    resume: Literal["auto", "restore", "replay"] = "auto"
    # with at: entropy (ARPO / AEPO, ``agentrl.rollout.entropy_tree``)
    rule: Literal["arpo", "aepo"] = "arpo"
    trajectories: int | None = Field(None, ge=1)  # episodes per task, roots included (ARPO's n)
    entropy_weight: float = Field(0.2, ge=0.0)  # the ARPO scripts' entropy_weight
    threshold: float = Field(0.5, ge=0.0, le=1.0)  # their branch_probability
    penalty: float = Field(0.05, ge=0.0)  # AEPO's damping per consecutive branching round
    vocab_size: int | None = Field(None, ge=2)  # the entropy's normaliser; default: the policy's
    dynamic_roots: bool = False  # AEPO's roots per task from two probe episodes, not group_size
    # with at: chain (SPO-chain values): a boundary every interval turns, width continuations each
    interval: int | None = Field(None, ge=1)
    train_branches: bool = False  # train the value continuations too (default: value-only)

    @model_validator(mode="after")
    def _valid(self) -> BranchingConfig:
        self.build()  # the rollout's own checks, at load time
        return self

    def build(self) -> Branching | None:
        from agentrl.rollout import Branching

        if not self.enabled:
            return None
        return Branching(
            width=self.width,
            points=self.points,
            at=self.at,
            turns=tuple(self.turns),
            budget=self.budget,
            resume=self.resume,
            rule=self.rule,
            trajectories=self.trajectories,
            entropy_weight=self.entropy_weight,
            threshold=self.threshold,
            penalty=self.penalty,
            vocab_size=self.vocab_size,
            dynamic_roots=self.dynamic_roots,
            interval=self.interval,
            train_branches=self.train_branches,
        )


class ResetsConfig(Section):
    """Expert-prefix starts (DR-PO / RLGF; ``agentrl.trainers.starts``): off unless ``enabled``."""

    enabled: bool = False
    share: float = Field(0.5, gt=0, lt=1)  # of each group's episodes (rounded half up)
    positions: Literal["uniform", "fixed"] = "uniform"  # k ~ U{1..L-1} per group, or drawn from turns
    turns: list[int] = []  # with positions: fixed
    group: Literal["own", "shared"] = "own"  # the reset episodes' own group, or the task's group
    resume: Literal["replay", "auto"] = "replay"  # auto: restore the expert env's snapshot where it can

    @model_validator(mode="after")
    def _valid(self) -> ResetsConfig:
        if self.positions == "fixed" and (not self.turns or min(self.turns) < 1):
            raise ValueError(f"resets at fixed positions need turns >= 1, got {self.turns!r}")
        return self


class HintsConfig(Section):
    """Scaf-GRPO hints for tasks stuck at zero success (``agentrl.trainers.starts``): off unless ``enabled``."""

    enabled: bool = False
    after_failures: int = Field(2, ge=1)  # the task's iterations in a row with every episode failed
    tiers: list[Literal["goal", "plan", "actions"]] = ["goal", "plan", "actions"]  # least concrete first
    episodes: int = Field(1, ge=1)  # hinted episodes in a stuck task's group
    actions: int = Field(2, ge=1)  # expert actions the "actions" tier shows

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("need at least one tier, each named once")
        return v


class RolloutConfig(Section):
    groups: int = Field(4, ge=1)
    group_size: int = Field(4, ge=1)
    max_turns: int = Field(10, ge=1)
    prompt: Literal["step", "chat"] = "step"
    history_k: int = Field(2, ge=0)
    response_format: str = "think_action"
    system_prompt: str | None = None
    # list the env's admissible actions in the prompt (with action_choice: admissible the policy
    # scores them anyway, and leaving them out shortens ALFWorld's prompts by ~40%)
    show_admissible: bool = True
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(32, ge=1)
    turn_reward: Literal["env", "valid"] = "valid"
    server: RolloutServerConfig = RolloutServerConfig()
    branching: BranchingConfig = BranchingConfig()
    resets: ResetsConfig = ResetsConfig()
    hints: HintsConfig = HintsConfig()
    # what samples rollouts in-process: the trained hf model itself, or a vLLM engine on the same
    # GPU (continuous batching; the adapter is pushed to it before every rollout). ``vllm``: keyword
    # arguments of VLLMPolicy.from_pretrained / vllm.LLM (gpu_memory_utilization, enforce_eager, ...)
    engine: Literal["hf", "vllm"] = "hf"
    vllm: dict[str, Any] = {}
    # generate: the policy writes each response. admissible: where the env lists admissible actions,
    # the policy picks one by its probability under the model (policies/choice.py; in-process hf only)
    action_choice: Literal["generate", "admissible"] = "generate"
    # one-step off-policy: iteration k+1's rollout runs on the server(s), in a thread, while
    # iteration k updates, sampling with the adapter from before that update (needs server.url)
    overlap: bool = False

    @model_validator(mode="after")
    def _one_sampler(self) -> RolloutConfig:
        if self.engine == "vllm" and self.server.url is not None:
            raise ValueError("rollout.engine: vllm samples in-process; it cannot go with rollout.server.url")
        if self.action_choice == "admissible":
            from agentrl.rollout import check_action_choice

            if self.engine != "hf" or self.server.url is not None:
                raise ValueError(
                    "rollout.action_choice: admissible scores candidates with the in-process hf policy; "
                    "it cannot go with rollout.engine: vllm or rollout.server.url"
                )
            check_action_choice(self.action_choice, None, self.response_format)
        if self.overlap and self.server.url is None:
            raise ValueError(
                "rollout.overlap needs rollout.server.url: the in-process model cannot sample while it trains"
            )
        if self.overlap and (self.resets.enabled or self.hints.enabled):
            raise ValueError(
                "rollout.overlap does not go with rollout.resets or rollout.hints: the next rollout's starts "
                "and hints depend on the episodes of the update that is still running"
            )
        return self

    @model_validator(mode="after")
    def _starts_fit(self) -> RolloutConfig:
        from agentrl.trainers.starts import reset_episode_count

        n_reset = reset_episode_count(self.resets.share, self.group_size) if self.resets.enabled else 0
        if self.resets.enabled and n_reset < 1:
            raise ValueError(
                f"resets.share {self.resets.share} of group_size {self.group_size} gives no reset episode "
                "(one normal start is always kept); raise the share or the group size"
            )
        if self.resets.enabled and self.resets.group == "own" and n_reset < 2:
            raise ValueError(
                f"resets.share {self.resets.share} of group_size {self.group_size} gives {n_reset} reset episode "
                "per group, and a group of one has no baseline; raise the share or the group size, or use "
                "resets.group: shared"
            )
        if self.hints.enabled and self.hints.episodes > self.group_size - n_reset:
            raise ValueError(
                f"hints.episodes {self.hints.episodes} exceeds the group's {self.group_size - n_reset} normal starts"
            )
        if (
            self.resets.enabled
            and self.resets.positions == "fixed"
            and min(self.resets.turns) >= self.max_turns
        ):
            raise ValueError(
                f"resets.turns {self.resets.turns} leave the policy no turn within max_turns {self.max_turns}"
            )
        return self

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from agentrl.agents.formats import RESPONSE_FORMATS

        if v not in RESPONSE_FORMATS:
            raise ValueError(f"unknown response format {v!r}; allowed: {', '.join(RESPONSE_FORMATS.names())}")
        return v

    def prompt_settings(self) -> PromptSettings:
        """The prompt settings rollouts (and the run's evaluations) build their prompts from."""
        from agentrl.agents import PromptSettings

        return PromptSettings(
            kind=self.prompt,
            history_k=self.history_k,
            response_format=self.response_format,
            system_prompt=self.system_prompt,
            show_admissible=self.show_admissible,
        )


def _plain(value: Any) -> Any:
    """A default as YAML gives it back (tuples as lists), so a saved config reads back equal."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


class AlgorithmConfig(Section):
    estimator: str = "grpo"
    options: dict[str, Any] = {}
    loss: str | None = None  # default: the estimator's (gspo for seeupo, else ppo_token_mean)
    # default: the estimator's authors' band where it declares one (EstimatorInfo.clip), else the loss's
    # own (losses.LOSS_CLIP: 0.2 / 0.2 for the PPO losses, 3e-4 / 4e-4 for gspo), filled in when the
    # config is read, so a saved config.yaml holds the values the run used
    clip_low: float | None = Field(None, ge=0)
    clip_high: float | None = Field(None, ge=0)
    kl_coef: float = Field(0.0, ge=0)
    entropy_coef: float = 0.0
    value_coef: float = Field(0.5, ge=0)
    epochs: int = Field(1, ge=1)
    minibatch_size: int = Field(64, ge=1)
    micro_batch_size: int = Field(16, ge=1)
    seeupo_order: Literal["reverse", "forward", "random"] = "reverse"
    # old log-probs scored in the update's own micro-batches (identical first forward: the ratio at
    # unchanged weights is exactly 1), in consecutive chunks, or auto: the former in bf16/fp16
    old_logprobs: Literal["auto", "update_batches", "sequential"] = "auto"

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        from agentrl.credit import available_estimators

        if v not in available_estimators():
            raise ValueError(f"unknown estimator {v!r}; allowed: {', '.join(available_estimators())}")
        return v

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str | None) -> str | None:
        from agentrl.trainers.losses import LOSSES

        if v is not None and v not in LOSSES:
            raise ValueError(f"unknown loss {v!r}; allowed: {', '.join(LOSSES.names())}")
        return v

    @model_validator(mode="after")
    def _known_options(self) -> AlgorithmConfig:
        from agentrl.credit import estimator_info

        info = estimator_info(self.estimator)
        allowed = sorted(set(info.options) - {"values", "correction"} - set(info.row_inputs))
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for estimator {self.estimator!r}; allowed: {', '.join(allowed)} "
                "(a saved config.yaml writes out every option of its estimator: to switch estimator on "
                "one, also pass algorithm.options={})"
            )
        # every option at its value, defaults written out: config.yaml says what ran, and a run saved
        # before an estimator's default changed no longer reads as the same config (resume, reuse)
        defaults = {k: _plain(info.options[k]) for k in allowed if k not in info.inputs}
        self.options = {**defaults, **self.options}
        from agentrl.trainers.losses import CHANNEL_LOSSES

        if self.resolved_loss in CHANNEL_LOSSES and not info.channels:
            raise ValueError(
                f"loss {self.resolved_loss!r} clips each advantage channel on its own, and estimator "
                f"{self.estimator!r} declares none"
            )
        self.clip_low, self.clip_high = self.clip_band
        return self

    @property
    def resolved_loss(self) -> str:
        from agentrl.credit import estimator_info

        return self.loss or estimator_info(self.estimator).loss

    @property
    def clip_band(self) -> tuple[float, float]:
        """(clip_low, clip_high) as the update uses them: the config's, else the band the estimator's
        authors trained with when it declares one (``EstimatorInfo.clip``) and the config keeps its
        loss, else the loss's own band."""
        from agentrl.credit import estimator_info
        from agentrl.trainers.losses import LOSS_CLIP

        info = estimator_info(self.estimator)
        own = info.clip if info.clip is not None and self.resolved_loss == info.loss else None
        low, high = own or LOSS_CLIP.get(self.resolved_loss)
        return (
            low if self.clip_low is None else self.clip_low,
            high if self.clip_high is None else self.clip_high,
        )


class OptimConfig(Section):
    iterations: int = Field(10, ge=0)
    lr: float = Field(1e-4, gt=0)
    critic_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = Field(1.0, gt=0)
    # per RL iteration: constant, or cosine from lr down to 0 over the iterations (after a linear
    # warm-up over the first warmup_ratio of them); critic_lr follows the same factor
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)


class SFTConfig(Section):
    """Warm start on expert trajectories (maze: ``maze.solve`` plans) before RL."""

    enabled: bool = False
    tasks: TaskRange = TaskRange(start=0, count=200)
    # expert episodes per task, each reset with its own seed: more (and different) demonstrations
    # where the expert is random (ALFWorld's handcoded expert searches in a seeded random order)
    episodes_per_task: int = Field(1, ge=1)
    epochs: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = (
        "constant"  # cosine: decay to 0 over the run (after the warm-up)
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1)  # fraction of the steps with a linear warm-up
    batch_size: int = Field(16, ge=1)
    full_finetune: bool = True  # False: train a LoRA adapter and merge it
    # weight of each prompt token in the loss against a response token's 1 (0: responses only);
    # next-token prediction on the observations for a random-init model (trainers.sft.sft_train)
    prompt_loss_weight: float = Field(0.0, ge=0)
    # weight of the expert's cross-entropy among the admissible actions (scored as
    # rollout.action_choice: admissible scores them) added to the token loss; needs that setting
    choice_weight: float = Field(0.0, ge=0)


class EvalConfig(Section):
    """Before/after evaluation on held-out tasks (summary.json). What it plays is
    ``TrainConfig.eval_spec()``: these settings with the rollout's prompts and ``max_new_tokens``."""

    enabled: bool = False
    tasks: TaskRange = TaskRange(start=900, count=100)
    episodes_per_task: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)
    max_turns: int | None = Field(None, ge=1)
    # the evaluation's draws as a run seeded this would make them (None: this run's seed): runs that
    # differ only in their training seed are then read on the same draws
    seed: int | None = None
    env_kwargs: dict[
        str, Any
    ] = {}  # merged over env.kwargs for the evaluation envs, e.g. {split: valid_unseen}
    # more held-out sets, evaluated before and after like the first (same tasks, episodes and seeds):
    # name -> env kwargs over the evaluation envs', e.g. {valid_unseen: {split: valid_unseen}}
    also: dict[str, dict[str, Any]] = {}

    @field_validator("also")
    @classmethod
    def _set_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        bad = [n for n in v if not n or not all(c.isalnum() or c in "-_" for c in n)]
        if bad:
            raise ValueError(f"eval.also names become file names: use letters, digits, - and _; got {bad}")
        return v


class LoggingConfig(Section):
    """Where metrics go besides ``metrics.jsonl`` (TensorBoard when installed; W&B and MLflow when enabled)."""

    class Wandb(Section):
        """A Weights & Biases run: the resolved config as its config, each iteration's scalars at step=iteration."""

        enabled: bool = False
        project: str = "agentrl"
        entity: str | None = None
        mode: Literal["online", "offline", "disabled"] | None = None  # None: $WANDB_MODE, else online
        name: str | None = None  # None: the run directory's name
        tags: list[str] = []

    class Mlflow(Section):
        """An MLflow run: the resolved config as params, each iteration's scalars at step=iteration."""

        enabled: bool = False
        tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else MLflow's default
        experiment: str = "agentrl"
        run_name: str | None = None  # None: the run directory's name

    tensorboard: bool = True
    checkpoint_every: int = Field(1, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    save_trajectories: bool = False
    wandb: Wandb = Wandb()
    mlflow: Mlflow = Mlflow()


class DistributedConfig(Section):
    """How several processes (``accelerate launch``/``torchrun``) train; one process ignores it.

    ``ddp``: DistributedDataParallel over replicated models; ``allreduce``: one flat all-reduce of
    the adapter's gradients per optimiser step; ``fsdp``: FSDP2 shards the frozen base model
    (``trainers.parallel``). All take the single-process steps and write the same checkpoints, so
    a run may resume under another strategy.

    ``shard`` (fsdp only): ``update`` shards the base while the learner trains and keeps it whole
    on every process between updates (sampling and scoring without collectives); ``always`` never
    holds it whole on a process (each forward gathers one layer at a time), for a base that does
    not fit one device: the model is loaded on the CPU and sharded onto the devices, and the SFT
    stage, which loads the whole model, is refused (run it as its own run)."""

    strategy: Literal["ddp", "allreduce", "fsdp"] = "ddp"
    shard: Literal["update", "always"] = "update"


class TrainConfig(Section):
    seed: int = 0
    out_dir: str = "runs/run"
    model: ModelConfig = ModelConfig()
    lora: LoraSettings = LoraSettings()  # the hf policy's own type: its fields are declared once, there
    env: EnvConfig = EnvConfig()
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optim: OptimConfig = OptimConfig()
    sft: SFTConfig = SFTConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        from agentrl.credit import estimator_info

        needed = estimator_info(self.algorithm.estimator).response_format
        if needed is not None and self.rollout.response_format != needed:
            raise ValueError(
                f"estimator {self.algorithm.estimator!r} needs rollout.response_format: {needed}"
            )
        if self.rollout.resets.enabled or self.rollout.hints.enabled:
            from agentrl.trainers.experts import EXPERTS

            if self.env.name not in EXPERTS:
                raise ValueError(
                    f"rollout.resets and rollout.hints play the env's expert, and env {self.env.name!r} has "
                    f"none; envs with an expert: {', '.join(EXPERTS.names())}"
                )
        info = estimator_info(self.algorithm.estimator)
        if self.rollout.overlap and (info.schedule != "standard" or info.task_weights is not None):
            raise ValueError(
                f"rollout.overlap does not go with estimator {self.algorithm.estimator!r}: it rescores between "
                "turn slots or draws the next tasks from the last update, which an overlapped rollout cannot wait for"
            )
        b = self.rollout.branching
        if "value_only" in info.fields and not (b.enabled and b.at == "chain"):
            raise ValueError(
                f"estimator {self.algorithm.estimator!r} reads Monte-Carlo values from chain rollouts: set "
                "rollout.branching.enabled: true, rollout.branching.at: chain and rollout.branching.interval"
            )
        if b.enabled and b.at == "chain" and not b.train_branches and info.schedule != "standard":
            raise ValueError(
                f"rollout.branching at: chain leaves its value continuations out of the loss through the "
                f"'standard' update schedule, and estimator {self.algorithm.estimator!r} uses "
                f"{info.schedule!r}; set rollout.branching.train_branches: true or choose another estimator"
            )
        if self.sft.choice_weight > 0:
            if self.rollout.action_choice != "admissible":
                raise ValueError(
                    "sft.choice_weight trains the choice among the admissible actions, which the policy makes "
                    "only with rollout.action_choice: admissible"
                )
            if self.sft.prompt_loss_weight > 0:
                raise ValueError("sft.choice_weight and sft.prompt_loss_weight cannot both be > 0")
        if self.distributed.shard == "always":
            if self.distributed.strategy != "fsdp":
                raise ValueError("distributed.shard: always needs distributed.strategy: fsdp")
            if self.sft.enabled:
                raise ValueError(
                    "distributed.shard: always keeps the base model off any single device, and the SFT stage "
                    "loads it whole on every process: run SFT as its own run (agentrl sft) and point "
                    "model.path at its output, or use distributed.shard: update"
                )
        return self

    def env_count(self, groups: int | None = None) -> int:
        """Envs to build: ``env.num_envs``, or when None one per episode of ``groups`` groups
        (default all: the whole iteration samples in one batch per turn)."""
        if self.env.num_envs is not None:
            return self.env.num_envs
        return max(1, (self.rollout.groups if groups is None else groups) * self.rollout.group_size)

    def eval_spec(self) -> EvalSpec:
        """What this run's before/after evaluation plays (``agentrl eval`` on the run's checkpoints
        starts from it too): the eval tasks, one round seeded ``eval_seed(eval.seed)`` (default the
        run's seed), the eval
        temperature and turns (default: the rollout's), the rollout's prompts and ``max_new_tokens``."""
        from agentrl.evaluation import EvalSpec
        from agentrl.seeding import eval_seed

        e, r = self.eval, self.rollout
        return EvalSpec(
            task_start=e.tasks.start,
            task_count=e.tasks.count,
            episodes_per_task=e.episodes_per_task,
            seed=eval_seed(self.seed if e.seed is None else e.seed),
            seeds=1,
            max_turns=e.max_turns or r.max_turns,
            temperature=e.temperature,
            max_new_tokens=r.max_new_tokens,
            prompt=r.prompt_settings(),
            action_choice=r.action_choice,
        )

    def eval_env_kwargs(self, also: str | None = None) -> dict[str, Any]:
        """Constructor arguments of the evaluation envs: ``env.kwargs`` with ``eval.env_kwargs`` over
        them (and, for the extra set ``also``, ``eval.also[also]`` over those)."""
        extra = self.eval.also[also] if also is not None else {}
        return {**self.env.kwargs, **self.eval.env_kwargs, **extra}


# ----------------------------------------------------------------------------- errors


def _fields_of(model: type[BaseModel], path: tuple[str | int, ...]) -> list[str] | None:
    """Allowed keys at ``path`` (None when the path goes through a free-form dict)."""
    cls: Any = model
    for key in path:
        field = getattr(cls, "model_fields", {}).get(key) if isinstance(key, str) else None
        if field is None:
            return None
        cls = field.annotation
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
    return sorted(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _format_errors(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _fields_of(TrainConfig, loc[:-1]) or []
            lines.append(f"unknown key {key!r}; allowed: {', '.join(allowed)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            lines.append(f"{key}: {msg}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
    return f"invalid config{where}: " + "; ".join(lines)


# ----------------------------------------------------------------------------- loading


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` set nested keys (values parsed as YAML); an unknown key is refused."""
    out = yaml.safe_load(yaml.safe_dump(data)) if data else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        allowed = _fields_of(TrainConfig, tuple(parts[:-1]))
        if allowed is not None and parts[-1] not in allowed:
            raise ConfigError(
                f"unknown key {key.strip()!r} in override {item!r}; allowed: {', '.join(allowed)}"
            )
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(raw)
    return out


def config_from_dict(data: dict[str, Any], where: str = "") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, where)) from None


def load_config(path: str | os.PathLike[str] | None, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a YAML config (None: all defaults), apply ``key=value`` overrides, validate."""
    data: Any = {}
    where = ""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        where = f" {p}"
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a mapping of sections, got {type(data).__name__}")
    return config_from_dict(apply_overrides(data, overrides), where)


def dump_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML (loads back to an equal config)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
