"""Pure tensor maths of GRPO: tensors in, tensors out. No model, tokenizer, file or network."""

from reasonrl.core.advantages import group_advantages, nanstd
from reasonrl.core.logprobs import token_entropy, token_logprobs
from reasonrl.core.losses import LOSS_TYPES, grpo_loss, k3_kl

__all__ = ["group_advantages", "nanstd", "token_logprobs", "token_entropy", "grpo_loss", "k3_kl", "LOSS_TYPES"]
