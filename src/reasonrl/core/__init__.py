"""Pure tensor maths of GRPO: tensors in, tensors out. No model, tokenizer, file or network."""

from reasonrl.core.advantages import group_advantages, nanstd
from reasonrl.core.dropout import dropout
from reasonrl.core.logprobs import token_entropy, token_logprobs
from reasonrl.core.losses import LOSS_TYPES, chunk_weight, grpo_loss, k3_kl, masked_mean

__all__ = ["LOSS_TYPES", "chunk_weight", "dropout", "group_advantages", "grpo_loss", "k3_kl", "masked_mean", "nanstd",
           "token_entropy", "token_logprobs"]
