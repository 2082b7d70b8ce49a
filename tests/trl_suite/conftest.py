"""Run TRL's own GRPO trainer tests (upstream/test_grpo_trainer.py, unmodified) against TRL or against reasonrl.

TRL_SUITE_IMPL=trl runs them as TRL's CI would on a CPU; TRL_SUITE_IMPL=reasonrl swaps the test module's
`GRPOTrainer` and `GRPOConfig` for reasonrl's before each test. Either way the test module's `load_dataset` is the
local zen dataset, and the hub ids resolve to the local stand-ins (local_hub.py), which run.py builds and points
HF_HUB_CACHE at. Without TRL_SUITE_IMPL (a plain `pytest tests`), the upstream file is not collected:
tests/test_trl_suite.py runs it through run.py instead.
"""

from __future__ import annotations

import os

import pytest

IMPL = os.environ.get("TRL_SUITE_IMPL")
if IMPL is None:
    collect_ignore = ["upstream"]
elif IMPL not in ("trl", "reasonrl"):
    raise pytest.UsageError(f"TRL_SUITE_IMPL={IMPL!r}: expected 'trl' or 'reasonrl'")


def pytest_runtest_logreport(report):
    """Each test's outcome as a line of JSON in $TRL_SUITE_RESULTS as soon as it is known, so that a run stopped
    part way (hours on 2 cores) still leaves what it measured (run.py --resume reads it)."""
    path = os.environ.get("TRL_SUITE_RESULTS")
    if not path or not (report.when == "call" or report.outcome != "passed"):
        return
    import json

    test = report.nodeid.split("::", 1)[1]
    message = ""
    if report.outcome != "passed":
        message = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr).splitlines()[-1]
    status = {"passed": "passed", "failed": "failed", "skipped": "skipped"}[report.outcome]
    with open(path, "a") as handle:
        handle.write(json.dumps({"test": test, "status": status, "message": " ".join(message.split())[:300],
                                 "seconds": round(report.duration, 1)}) + "\n")


def pytest_collection_modifyitems(config, items):
    from trl_suite.scope import out_of_scope_reason

    for item in items:
        reason = out_of_scope_reason(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"out of scope: {reason}"))


@pytest.fixture(autouse=True)
def _implementation_under_test(request, monkeypatch):
    if IMPL is None:
        return
    from trl_suite import local_hub

    module = request.module
    monkeypatch.setattr(module, "load_dataset", local_hub.load_dataset)
    if IMPL == "reasonrl":
        import reasonrl

        trainer = reasonrl.GRPOTrainer
        if os.environ.get("TRL_SUITE_REWARD_MODELS_AS_FUNCTIONS") == "1":
            trainer = _with_reward_models_as_functions(trainer)
        monkeypatch.setattr(module, "GRPOTrainer", trainer)
        monkeypatch.setattr(module, "GRPOConfig", reasonrl.GRPOConfig)
    else:
        # what TRL's own conftest does on a machine without an accelerator (its configs turn bf16 on, which
        # transformers refuses on a CPU unless use_cpu=True), and bf16 off unless a test asks for it: fp32 on the CPU,
        # as reasonrl trains there (local_hub.py)
        from trl.trainer.base_config import _BaseConfig

        post_init = _BaseConfig.__post_init__

        def post_init_on_cpu(self):
            self.use_cpu = True
            if self.bf16 is None:
                self.bf16 = False
            post_init(self)

        monkeypatch.setattr(_BaseConfig, "__post_init__", post_init_on_cpu)


def _with_reward_models_as_functions(trainer_class):
    """A diagnostic, never counted: TRL_SUITE_REWARD_MODELS_AS_FUNCTIONS=1 hands reasonrl each reward model (an id
    or a model object) as a plain function that scores prompt + completion with it, so that the tests' other
    assertions can be seen while reasonrl does not take reward models itself."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

    def as_function(spec, tokenizer=None):
        if not isinstance(spec, (str, PreTrainedModel)) or (isinstance(spec, str) and "/" not in spec):
            return spec
        model = AutoModelForSequenceClassification.from_pretrained(spec) if isinstance(spec, str) else spec
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model.config._name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

        def reward(prompts, completions, **kwargs):
            texts = [(p if isinstance(p, str) else p[-1]["content"]) + (c if isinstance(c, str) else c[-1]["content"])
                     for p, c in zip(prompts, completions)]
            batch = tokenizer(texts, return_tensors="pt", padding=True)
            with torch.no_grad():
                return model(**batch).logits[:, 0].float().tolist()

        reward.__name__ = model.config._name_or_path.split("/")[-1]
        return reward

    class Trainer(trainer_class):
        def __init__(self, *args, reward_funcs=None, reward_processing_classes=None, **kwargs):
            specs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
            tokenizers = reward_processing_classes if isinstance(reward_processing_classes, list) else (
                [reward_processing_classes] * len(specs))
            functions = [as_function(spec, tokenizer) for spec, tokenizer in zip(specs, tokenizers)]
            super().__init__(*args, reward_funcs=functions if isinstance(reward_funcs, list) else functions[0],
                             **kwargs)

    return Trainer
