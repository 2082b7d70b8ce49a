"""Which of TRL's GRPO trainer tests are out of scope for reasonrl, and why (the issue: tests that need a GPU, vLLM,
liger, deepspeed or a vision model; tests of TRL internals where no public behaviour is at stake).

Each entry is a test id prefix (class::test, parameters included or not) and its reason. The conftest skips them in
both runs with the reason, so the results of run.py list them.
"""

from __future__ import annotations

_GPU = "needs a GPU (require_torch_accelerator / bf16 kernels)"
_VISION = "vision-language models"
_LIGER = "liger-kernel"
_VLLM = "vLLM"
_PRIVATE = "asserts TRL's private methods or attributes, no public behaviour beyond what other tests cover"
_TRAINER_MACHINERY = ("asserts transformers.Trainer machinery (DataLoader workers, accelerate's dispatch_batches, "
                      "training_step), which reasonrl's own loop does not have")
_MOCKED_GENERATE = ("replaces transformers' model.generate() with canned token ids; reasonrl samples with its own "
                    "decode loop and never calls generate(), so the canned completions never reach it")
_ENVIRONMENTS = ("environment_factory (TRL experimental) or tool calls given as token ids of the real Qwen vocabulary "
                 "through a mocked generate(); needs jmespath (not installed: skipped for TRL too)")

OUT_OF_SCOPE = {
    "TestGRPOTrainerVLM::": _VISION,
    "TestGRPOTrainerSlow::": _GPU,
    "TestTransformersContinuousBatchingContract::": "tests transformers' continuous-batching API, not the trainer",
    "TestGRPORolloutDispatch::": _PRIVATE + " (_generate on an object.__new__ trainer with private fields set by hand)",
    "TestGRPOTrainer::test_entropy_bonus_flows_gradients": _PRIVATE
    + " (_get_per_token_logps_and_entropies, _entropy_bonus_enabled)",
    "TestGRPOTrainer::test_prepare_input_called_with_correct_data": _TRAINER_MACHINERY,
    "TestGRPOTrainer::test_iterable_dataset_requires_dispatch_batches_false": _TRAINER_MACHINERY,
    "TestGRPOTrainer::test_iterable_dataset_forces_num_workers_zero": _TRAINER_MACHINERY,
    "TestGRPOTrainer::test_iterable_eval_keeps_map_style_train_workers": _TRAINER_MACHINERY,
    "TestGRPOTrainer::test_liger_kernel_with_peft": _LIGER,
    "TestGRPOTrainer::test_train_with_off_policy_mask_with_liger": _LIGER,
    "TestGRPOTrainer::test_compute_liger_loss_passes_vllm_is_ratio": _LIGER,
    "TestGRPOTrainer::test_train_vllm": _VLLM,
    "TestGRPOTrainer::test_train_with_tools": _ENVIRONMENTS,
    "TestGRPOTrainer::test_train_with_malformed_tool_calls": _ENVIRONMENTS,
    "TestGRPOTrainer::test_train_with_multiple_environments": _ENVIRONMENTS,
    "TestGRPOTrainer::test_train_with_unknown_environment_raises": _ENVIRONMENTS,
    "TestGRPOTrainer::test_train_with_environment_factory": _ENVIRONMENTS,
    "TestGRPOTrainer::test_train_with_environment_owned_reward": _ENVIRONMENTS,
    "TestGRPOTrainer::test_environment_owned_reward": _ENVIRONMENTS,
    "TestGRPOTrainer::test_environment_owned_data_requires_max_steps": _ENVIRONMENTS,
    "TestGRPOTrainer::test_multiple_environments_without_dataset_raises": _ENVIRONMENTS,
    "TestGRPOTrainer::test_train_with_environment_owned_data": _ENVIRONMENTS,
}
# matched exactly: test_train_with_mask_truncated_completions mocks generate(), its "_all_masked" variant does not
_EXACT = {
    "TestGRPOTrainer::test_train_with_mask_truncated_completions": _MOCKED_GENERATE,
    # log_extra itself is public: its columns reach the completions table; reasonrl's tests check that they reach
    # completions.jsonl and the trackers' table (tests/test_reward_models.py), TRL's only reads its private buffer
    "TestGRPOTrainer::test_train_reward_func_with_log_extra": _PRIVATE + " (trainer._logs['extra'])",
}


def out_of_scope_reason(nodeid: str) -> str | None:
    """The reason a test (a pytest node id) is out of scope, or None when it is in scope."""
    path, _, rest = nodeid.partition("::")
    test = rest if path.endswith(".py") else nodeid  # a pytest node id (file.py::Class::test) or Class::test
    if test in _EXACT:
        return _EXACT[test]
    name, _, params = test.rpartition("::")[2].partition("[")
    if name in _LIGER_PARAMETRIZED and params.endswith("True]"):  # their use_liger_kernel=True parametrizations
        return _LIGER
    for prefix, reason in OUT_OF_SCOPE.items():
        if test.startswith(prefix):
            return reason
    return None


_LIGER_PARAMETRIZED = {"test_train_loss_types", "test_train_with_bias_correction_kl", "test_train_delta_clipping"}
