"""Neural reward models as reward functions: a sequence-classification model scores prompt + completion (TRL's
`reward_funcs=<model id or PreTrainedModel>`, with `reward_processing_classes`).

As TRL 1.16 does it: the texts are the prompt and completion joined (conversational rows: the whole conversation
through the reward tokenizer's chat template, with `chat_template_kwargs`, no generation prompt), tokenized in
one right-padded batch without special tokens, and each completion's reward is the model's first logit
(`logits[:, 0]`), read by the model at the last non-pad token (so the model's pad_token_id is set to the
tokenizer's). The wrapper has TRL's reward signature, so scoring.py calls it like any reward function (its
timeout and failure handling included).
"""

from __future__ import annotations

import os
import re

import torch

from reasonrl.data import is_conversational
from reasonrl.errors import RewardSpecError, reason_of

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_reward_model(spec: str) -> bool:
    """A reward_funcs string that names a model rather than a function: a local folder holding config.json, or a
    hub id 'org/name' (a reward spec 'module:function' or 'path/file.py:function' always has a colon)."""
    spec = spec.strip()
    if ":" in spec or spec.endswith(".py"):
        return False
    if os.path.isdir(spec):
        return os.path.isfile(os.path.join(spec, "config.json"))
    return bool(_HUB_ID.match(spec)) and not os.path.exists(spec)


def is_model(reward) -> bool:
    return isinstance(reward, torch.nn.Module)


class RewardModel:
    """`reward(prompts, completions, **kwargs) -> [float]`: the first logit of a sequence-classification model on
    each prompt + completion."""

    def __init__(self, model, tokenizer, chat_template_kwargs: dict | None = None, device=None):
        kind = type(model).__name__
        if "SequenceClassification" not in kind and "RewardModel" not in kind:
            raise RewardSpecError(f"the reward model is a {kind}; a reward model must give one score per text, as an "
                                  f"AutoModelForSequenceClassification with num_labels=1 does")
        if tokenizer is None:
            raise RewardSpecError(f"the reward model {kind} came without a tokenizer; pass "
                                  f"reward_processing_classes=[tokenizer] (one per reward function, None for "
                                  f"functions)")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # the model reads its score at the last token that is not its pad_token_id: the tokenizer's padding
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.tokenizer = tokenizer
        self.chat_template_kwargs = chat_template_kwargs or {}
        # TRL's name: the last part of the model's id (a model built in memory has none: its class name)
        model_id = getattr(model.config, "_name_or_path", "") or kind
        self.__name__ = model_id.rstrip("/").split("/")[-1]

    def texts(self, prompts: list, completions: list) -> list[str]:
        if is_conversational(prompts[0]):
            return [self.tokenizer.apply_chat_template(prompt + completion, tokenize=False,
                                                       **self.chat_template_kwargs)
                    for prompt, completion in zip(prompts, completions)]
        return [prompt + completion for prompt, completion in zip(prompts, completions)]

    @torch.inference_mode()
    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        inputs = self.tokenizer(text=self.texts(prompts, completions), return_tensors="pt", padding=True,
                                padding_side="right", add_special_tokens=False)
        device = next(self.model.parameters()).device
        logits = self.model(**{key: value.to(device) for key, value in inputs.items()}).logits  # [B, num_labels]
        return logits[:, 0].float().tolist()


def reward_model(model, tokenizer, args, device=None) -> RewardModel:
    """A RewardModel from a model object, or from a hub id or local folder (loaded as TRL does: num_labels=1,
    model_init_kwargs and trust_remote_code from the config). Without `tokenizer`, the one saved with the model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    options = dict(args.model_init_kwargs or {})
    options.setdefault("trust_remote_code", args.trust_remote_code)
    source = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "")
    try:
        if isinstance(model, str):
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, **options)
        if tokenizer is None and source:
            tokenizer = AutoTokenizer.from_pretrained(source, revision=options.get("revision"),
                                                      trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as error:
        raise RewardSpecError(f"reward model '{source}' could not be loaded ({reason_of(error, 200)}); give a "
                              f"sequence-classification model id or folder (and its tokenizer in "
                              f"reward_processing_classes), or a reward function as module:function") from None
    return RewardModel(model, tokenizer, args.chat_template_kwargs, device)
