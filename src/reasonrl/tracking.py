"""Experiment trackers named by `report_to`: TensorBoard (runs under output_dir/runs) and Weights & Biases."""

from __future__ import annotations

import os


class Trackers:
    """Sends each metrics row to every tracker the config names; metrics.jsonl is always written regardless."""

    def __init__(self, cfg):
        self.writers = []
        for name in cfg.loggers:
            if name == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=os.path.join(cfg.output_dir, "runs"))
                self.writers.append(("tensorboard", writer))
            elif name == "wandb":
                import wandb

                run = wandb.init(project=os.environ.get("WANDB_PROJECT", "reasonrl"), config=cfg.to_dict(),
                                 dir=cfg.output_dir)
                self.writers.append(("wandb", run))

    def log(self, row: dict, step: int) -> None:
        scalars = {key: value for key, value in row.items() if isinstance(value, (int, float)) and key != "step"}
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for key, value in scalars.items():
                    writer.add_scalar(f"train/{key}", value, step)
            else:
                writer.log({f"train/{key}": value for key, value in scalars.items()}, step=step)

    def close(self) -> None:
        for kind, writer in self.writers:
            if kind == "tensorboard":
                writer.close()
            else:
                writer.finish()
