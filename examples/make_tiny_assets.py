"""Build the offline assets that configs/tiny_offline.yaml trains on: a tiny random model and a small dataset.

    python examples/make_tiny_assets.py                    # writes runs/tiny_assets/ (the config's default paths)
    python examples/make_tiny_assets.py OUTDIR             # anywhere else; then point the config at it:
    reasonrl train --config configs/tiny_offline.yaml model_name_or_path=OUTDIR/model dataset_name=OUTDIR/train.jsonl

Writes, with no network:
  OUTDIR/model/        a randomly initialised tiny Qwen2 (2 layers, hidden size 64, 91k parameters) with a
                       character tokenizer (reasonrl.tiny), saved with save_pretrained (safetensors);
  OUTDIR/train.jsonl   short prompts in mlabonne/smoltldr's schema: {"prompt": a post, "completion": a summary}.
The model's weights are random: training on it checks that everything runs, not that anything is learned.
"""

from __future__ import annotations

import argparse
import json
import os

TOPICS = ["my cat", "the bus", "our garden", "a new job", "the rain", "my bike", "a lost key", "the library",
          "a loud neighbour", "my first race", "a burnt cake", "the night shift"]


def make_rows(count: int) -> list[dict[str, str]]:
    """`count` short smoltldr-style rows (prompt, completion), deterministic."""
    rows = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({"prompt": f"Post {i}: a short story about {topic}. It went well in the end. TL;DR:",
                     "completion": f"{topic} went well"})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", nargs="?", default=os.path.join("runs", "tiny_assets"),
                        help="folder to write model/ and train.jsonl to (default runs/tiny_assets)")
    parser.add_argument("--rows", type=int, default=16, help="dataset rows (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    args = parser.parse_args(argv)

    from reasonrl.tiny import build_char_tokenizer, build_tiny_model

    model_dir = os.path.join(args.outdir, "model")
    os.makedirs(model_dir, exist_ok=True)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, seed=args.seed)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    data_path = os.path.join(args.outdir, "train.jsonl")
    with open(data_path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in make_rows(args.rows))
    print(f"model: {model_dir}\ndataset: {data_path} ({args.rows} rows)")


if __name__ == "__main__":
    main()
