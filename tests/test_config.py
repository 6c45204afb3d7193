"""Training config: YAML + dotted overrides, clear errors naming the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentrl.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_quickstart_loads_and_round_trips():
    cfg = load_config(CONFIGS / "quickstart.yaml")
    assert cfg.algorithm.estimator == "gigpo" and cfg.sft.enabled and cfg.eval.enabled
    assert cfg.model.path is None and cfg.model.device == "cpu"
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_is_valid(path):
    load_config(path)


def test_overrides_set_nested_keys_with_yaml_values():
    cfg = load_config(
        None,
        [
            "algorithm.estimator=seeupo",
            "optim.lr=3e-4",
            "env.kwargs.size=4",
            "eval.enabled=true",
            "lora.target_modules=[q_proj, v_proj]",
            "rollout.system_prompt=go now",
        ],
    )
    assert cfg.algorithm.estimator == "seeupo" and cfg.algorithm.resolved_loss == "gspo"
    assert cfg.optim.lr == 3e-4 and cfg.env.kwargs == {"size": 4} and cfg.eval.enabled is True
    assert cfg.lora.target_modules == ("q_proj", "v_proj") and cfg.rollout.system_prompt == "go now"
    assert load_config(None).algorithm.resolved_loss == "ppo_token_mean"


def test_clip_band_defaults_to_the_losss_own_and_is_saved():
    """Left out, clip_low/clip_high take the loss's band (GSPO's length-normalised ratio needs a band
    ~600x narrower than PPO's), filled in so config.yaml says what ran; a value given wins."""
    from agentrl.trainers.losses import LOSS_CLIP, LOSSES

    assert set(LOSS_CLIP.names()) == set(LOSSES.names())
    seeupo = load_config(None, ["algorithm.estimator=seeupo"])
    assert (seeupo.algorithm.clip_low, seeupo.algorithm.clip_high) == (3e-4, 4e-4)
    saved = yaml.safe_load(dump_config(seeupo))["algorithm"]
    assert (saved["clip_low"], saved["clip_high"]) == (3e-4, 4e-4)
    assert load_config(None).algorithm.clip_band == (0.2, 0.2)
    on_ppo = load_config(None, ["algorithm.estimator=seeupo", "algorithm.loss=ppo_token_mean"])
    assert on_ppo.algorithm.clip_band == (0.2, 0.2)
    given = load_config(None, ["algorithm.estimator=seeupo", "algorithm.clip_high=0.01"])
    assert given.algorithm.clip_band == (3e-4, 0.01)
    # an estimator that declares its authors' band (a3: 0.1 with GSPO) gets it on its own loss only
    assert load_config(None, ["algorithm.estimator=a3"]).algorithm.clip_band == (0.1, 0.1)
    a3_on_ppo = load_config(None, ["algorithm.estimator=a3", "algorithm.loss=ppo_token_mean"])
    assert a3_on_ppo.algorithm.clip_band == (0.2, 0.2)
    # a run saved with the values written out reads back equal to one that leaves them to the loss
    again = config_from_dict(yaml.safe_load(dump_config(seeupo)))
    assert again == seeupo


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path):
    with pytest.raises(
        ConfigError, match=r"unknown key 'optim.learning_rate'.*allowed: betas, critic_lr, iterations, lr"
    ):
        load_config(None, ["optim.learning_rate=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  groups: 2\n  grups: 3\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml.*unknown key 'rollout.grups'; allowed: .*group_size, groups"
    ):
        load_config(bad)
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'nosection' in override 'nosection=1'; allowed: algorithm, distributed, env, eval",
    ):
        load_config(None, ["nosection=1"])


def test_wrong_types_and_values_name_the_key():
    with pytest.raises(ConfigError, match=r"optim.lr: Input should be a valid number.*'fast'"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"rollout.prompt: Input should be 'step' or 'chat'"):
        load_config(None, ["rollout.prompt=tree"])
    with pytest.raises(
        ConfigError, match=r"algorithm.estimator: unknown estimator 'ppo'; allowed: (\w+, )*gae, gigpo, grpo"
    ):
        load_config(None, ["algorithm.estimator=ppo"])
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['omega'\] for estimator 'grpo'; allowed: "):
        load_config(None, ["algorithm.options.omega=2"])
    with pytest.raises(ConfigError, match=r"algorithm.loss: unknown loss 'l2'; allowed: .*gspo"):
        load_config(None, ["algorithm.loss=l2"])
    with pytest.raises(ConfigError, match=r"env.name: unknown env 'mars'; allowed: .*maze"):
        load_config(None, ["env.name=mars"])
    with pytest.raises(ConfigError, match=r"rollout.groups: Input should be greater than or equal to 1"):
        load_config(None, ["rollout.groups=0"])
    with pytest.raises(ConfigError, match=r"estimator 'hiper' needs rollout.response_format: hiper"):
        load_config(None, ["algorithm.estimator=hiper"])
    options = load_config(None, ["algorithm.estimator=gigpo", "algorithm.options.omega=2"]).algorithm.options
    assert options["omega"] == 2 and options["gamma"] == 0.95  # given, and the defaults written out


def test_estimator_options_are_written_out_so_a_changed_default_is_a_changed_config(tmp_path):
    """config.yaml holds every option at its value: a run saved before an estimator's default changed
    reads back with the old value, so resume and benchmark reuse see a different config."""
    cfg = load_config(None, ["algorithm.estimator=mt_ppo"])
    assert cfg.algorithm.options["whiten"] is True and cfg.algorithm.options["gamma"] == 1.0
    saved = yaml.safe_load(dump_config(cfg))
    assert saved["algorithm"]["options"]["whiten"] is True
    assert config_from_dict(saved) == cfg
    saved["algorithm"]["options"]["whiten"] = False  # as if written when the default was False
    assert config_from_dict(saved) != cfg
    a3 = load_config(None, ["algorithm.estimator=a3"])
    assert a3.algorithm.options["scopes"] == [1, 2, 3, -1]  # tuples as YAML gives them back
    assert config_from_dict(yaml.safe_load(dump_config(a3))) == a3
    # switching estimator on a saved config: its written-out options are refused, with the way out
    with pytest.raises(ConfigError, match=r"also pass algorithm.options=\{\}"):
        config_from_dict({**saved, "algorithm": {**saved["algorithm"], "estimator": "grpo"}})
    switched = {**saved["algorithm"], "estimator": "grpo", "options": {}}
    assert config_from_dict({**saved, "algorithm": switched}).algorithm.options["mode"] == "mean_std"
    # the trainer's inputs are not options
    assert "token_stats" not in load_config(None, ["algorithm.estimator=ucas"]).algorithm.options


def test_lora_section_is_the_policys_settings_type(tmp_path):
    """The config's lora section is the hf policy's LoraSettings: same fields, defaults and checks."""
    from agentrl.policies.hf import LoraSettings

    cfg = load_config(None, ["lora.r=4", "lora.alpha=8"])
    assert isinstance(cfg.lora, LoraSettings) and cfg.lora == LoraSettings(r=4, alpha=8)
    assert load_config(None).lora == LoraSettings()
    with pytest.raises(ConfigError, match=r"lora.r: LoRA r must be an int >= 1 \(got 0\)"):
        load_config(None, ["lora.r=0"])
    with pytest.raises(ConfigError, match=r"lora.dropout: LoRA dropout must be in \[0, 1\)"):
        load_config(None, ["lora.dropout=1.0"])
    with pytest.raises(ConfigError, match=r"lora.target_modules: LoRA target_modules must be a non-empty"):
        load_config(None, ["lora.target_modules=[]"])
    with pytest.raises(
        ConfigError, match=r"unknown key 'lora.rank'.*allowed: alpha, dropout, r, target_modules"
    ):
        load_config(None, ["lora.rank=4"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  r: 4\n  rank: 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'lora.rank'; allowed: alpha, dropout, r, target_modules"
    ):
        load_config(bad)


def test_bad_files_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_sft_schedule_settings_are_checked():
    assert load_config(None, ["sft.lr_schedule=cosine", "sft.warmup_ratio=0.05"]).sft.lr_schedule == "cosine"
    with pytest.raises(
        ConfigError, match=r"sft.lr_schedule: Input should be 'constant' or 'cosine' \(got 'linear'\)"
    ):
        load_config(None, ["sft.lr_schedule=linear"])
    with pytest.raises(ConfigError, match="sft.warmup_ratio: Input should be less than 1"):
        load_config(None, ["sft.warmup_ratio=1.5"])


def test_shard_always_needs_fsdp_and_no_sft_stage():
    """``distributed.shard: always`` keeps the base off any single device: it needs the fsdp
    strategy, and the SFT stage (which loads the whole model on every process) is refused."""
    with pytest.raises(ConfigError, match="distributed.shard: always needs distributed.strategy: fsdp"):
        load_config(None, ["distributed.shard=always", "sft.enabled=false"])
    with pytest.raises(ConfigError, match="the SFT stage loads it whole on every process"):
        load_config(None, ["distributed.strategy=fsdp", "distributed.shard=always", "sft.enabled=true"])
    with pytest.raises(ConfigError, match="distributed.shard"):
        load_config(None, ["distributed.shard=sometimes"])
    cfg = load_config(None, ["distributed.strategy=fsdp", "distributed.shard=always", "sft.enabled=false"])
    assert (cfg.distributed.strategy, cfg.distributed.shard) == ("fsdp", "always")


def test_tiny_model_options_refuse_bad_values_with_the_key_named():
    with pytest.raises(ConfigError, match="prompt_loss_weight"):
        load_config(None, ["sft.prompt_loss_weight=-1"])
    with pytest.raises(ConfigError, match="pretokenize"):
        load_config(None, ["model.tiny.pretokenize=bytes"])
    cfg = load_config(None, ["sft.prompt_loss_weight=0.5", "model.tiny.pretokenize=words"])
    assert cfg.sft.prompt_loss_weight == 0.5 and cfg.model.tiny.pretokenize == "words"


def test_sft_choice_weight_needs_the_choosing_policy():
    with pytest.raises(ConfigError, match="choice_weight"):
        load_config(None, ["sft.choice_weight=-1"])
    with pytest.raises(ConfigError, match=r"rollout.action_choice: admissible"):
        load_config(None, ["sft.choice_weight=1"])
    with pytest.raises(ConfigError, match="cannot both be > 0"):
        load_config(
            None, ["sft.choice_weight=1", "rollout.action_choice=admissible", "sft.prompt_loss_weight=1"]
        )
    cfg = load_config(
        None, ["sft.choice_weight=0.5", "rollout.action_choice=admissible", "model.tiny.lowercase=true"]
    )
    assert cfg.sft.choice_weight == 0.5 and cfg.model.tiny.lowercase
