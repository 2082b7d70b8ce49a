"""reasonrl: turn a causal language model into a reasoning model with GRPO.

The public API. Heavy modules are imported on first use, so `import reasonrl` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "GRPOConfig": "reasonrl.config",
    "ConfigError": "reasonrl.config",
    "GRPOTrainer": "reasonrl.trainer",
    "train": "reasonrl.trainer",
    "rewards": "reasonrl.rewards",
    "core": "reasonrl.core",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reasonrl' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if module.__name__.endswith(name) else getattr(module, name)
