"""The seed notebook, Hugging Face's "GRPO with TRL" course notebook (SmolLM-135M-Instruct on mlabonne/smoltldr),
ported to reasonrl: the same cells, names and option values, with `from trl import ...` changed to
`from reasonrl import GRPOConfig, GRPOTrainer`.

    python examples/seed_notebook.py                 # offline (default): runs on a CPU in about a minute
    python examples/seed_notebook.py --steps 1       # the smallest run
    python examples/seed_notebook.py --online        # the real hub model and dataset, a full epoch (needs internet)
    python examples/seed_notebook.py --online --push # ... and push the merged model to the Hub, as the seed does

Offline (the default) it needs no network and no downloads:
  - the model is the SmolLM-135M architecture built locally with random weights (`reasonrl.tiny.smollm_135m_config`),
    with a character tokenizer (260 tokens; the model's 49,152-row vocabulary is larger, which is harmless: ids the
    tokenizer does not know decode to nothing). The LoRA parameter count is the seed's: 2,442,240 / 136,957,248;
  - the dataset is a few rows written below in smoltldr's schema (`prompt`, `completion`);
  - the options the seed sets that need a GPU or an account are replaced, each with a comment: optim, bf16,
    report_to, and push_to_hub (the merged model is saved to a local folder instead);
  - training stops after --steps optimizer steps (default 2).
The output is as meaningful as random weights allow: this shows the code path, not a trained summariser (and
the generated text is mostly empty: almost every id the random model samples is beyond the character tokenizer's
260 tokens).

Offline it takes about a minute on 2 CPU cores (--steps 1: about 40 s), and up to twice that when other programs
keep the cores busy (see OMP_WAIT_POLICY below).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

if "--online" not in sys.argv:  # set before torch and the HF libraries are imported, which read them once
    # never touch the network, even when it is there
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    # On a CPU whose cores other programs also use, OpenMP threads that spin-wait for a descheduled peer make every
    # one of the rollout's ~60,000 small matmuls slow: 2 steps took 434 s instead of 45 s on a shared 2-core
    # machine. Passive waiting costs about 30% on an idle machine and avoids that. Set OMP_WAIT_POLICY to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from datasets import Dataset, DatasetDict
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from reasonrl import GRPOConfig, GRPOTrainer  # the seed: from trl import GRPOConfig, GRPOTrainer

# smoltldr's schema: `prompt` is a Reddit-style post, `completion` a short summary of it. Hand-written stand-ins.
OFFLINE_ROWS = [
    {"prompt": "My roommate keeps eating my food. I label everything and asked him twice, but last night he finished "
               "the lasagne I made for my lunches. Mini fridge, or talk to the landlord?",
     "completion": "Roommate keeps eating my labelled food; mini fridge or landlord?"},
    {"prompt": "I started running three months ago and can now run 5k without stopping. I signed up for a 10k in six "
               "weeks, but my shins hurt after long runs. Is six weeks enough?",
     "completion": "New runner, 10k in six weeks, sore shins: enough time?"},
    {"prompt": "Our team lead holds an hour-long meeting at 5pm every Friday. We start at 8am and nothing in it "
               "needs a meeting. Two people asked for transfers. How do I bring it up?",
     "completion": "Boss holds pointless 5pm Friday meetings; how do I raise it?"},
    {"prompt": "I found a tiny stray kitten under my car this morning. I waited two hours and no mother came back. "
               "I have never had a cat. What do I feed it, and who checks its health?",
     "completion": "Found an abandoned kitten; what to feed it and who checks it?"},
    {"prompt": "My grandmother gave me her metal sewing machine from the seventies. It runs, but the thread bunches "
               "under the fabric even after cleaning. Repair it or buy a new one?",
     "completion": "Grandma's old sewing machine bunches thread; repair or replace?"},
    {"prompt": "I moved to a new city for a remote job and know nobody. One meetup went badly. I like board games, "
               "climbing and cooking. How did you make friends as an adult?",
     "completion": "Remote worker new in town; how do adults make friends?"},
    {"prompt": "The dog next door barks from 6am to 7pm. I work nights and sleep by day. Two polite notes got no "
               "answer and the building manager shrugs. What are my options?",
     "completion": "Neighbour's dog barks all day while I sleep after night shifts; options?"},
    {"prompt": "I can pay cash for a reliable used car, leaving three months of savings, or take a 6% loan for a "
               "new one with a warranty. I drive 40 km a day. Which would you do?",
     "completion": "Cash for a used car or a 6% loan for a new one?"},
]

# The seed's inference document ("# A long document about the Cat", a few paragraphs).
CAT_DOCUMENT = """# A long document about the Cat

The cat (Felis catus), also called the domestic cat or house cat, is a small carnivorous mammal and the only
domesticated species of the family Felidae. People have kept cats for at least nine thousand years, first, it
seems, because they kept mice and rats away from stores of grain, and later as companions.

Cats are agile hunters with strong flexible bodies, quick reflexes, sharp teeth and retractable claws. Their night
vision and sense of smell are far better than ours, and they hear sounds too high for human ears, such as the calls
of mice. They communicate by meowing, purring, trilling, hissing and growling, and by body language and scent.

A cat sleeps twelve to sixteen hours a day. Kittens are born blind and deaf, open their eyes after about a week, and
are weaned at around two months. A well-cared-for indoor cat often lives fifteen years or more.
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--online", action="store_true",
                        help="use the hub model and dataset (needs internet) instead of the offline stand-ins")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (max_steps); default 2 offline, a full epoch (-1) online")
    parser.add_argument("--output-dir", default="GRPO", help="training output (the seed's output_dir='GRPO'); "
                        "the merged model goes to OUTPUT_DIR/SmolGRPO-135M")
    parser.add_argument("--push", action="store_true", help="push the merged model to the Hub as the seed does "
                        "(needs a token; online only)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens generated at the end; default 256 (the seed's) online, 24 offline")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    if args.push and not args.online:
        raise SystemExit("--push needs --online: an offline model has random weights and nothing to share")

    # ---- cell: the dataset
    if args.online:
        from datasets import load_dataset

        dataset = load_dataset("mlabonne/smoltldr")
    else:
        dataset = DatasetDict({"train": Dataset.from_list(OFFLINE_ROWS)})
    print(dataset)

    # ---- cell: the model
    model_id = "HuggingFaceTB/SmolLM-135M-Instruct"
    if args.online:
        # transformers 5 renamed torch_dtype to dtype (torch_dtype still works, with a deprecation warning)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto", device_map="auto")
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    else:
        from reasonrl.tiny import build_char_tokenizer, smollm_135m_config

        tokenizer = build_char_tokenizer()
        # SmolLM-135M's architecture with random weights; special-token ids set to the character tokenizer's
        config = smollm_135m_config(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                    bos_token_id=None)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)

    # ---- cell: LoRA
    lora_config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, target_modules="all-linear")
    model = get_peft_model(model, lora_config)
    # the seed wraps this in print(), which also prints the method's return value, None
    model.print_trainable_parameters()  # trainable params: 2,442,240 || all params: 136,957,248 || trainable%: 1.78

    # ---- cell: the reward
    ideal_length = 50

    def reward_len(completions, **kwargs):
        return [-abs(ideal_length - len(completion)) for completion in completions]

    # ---- cell: the training arguments
    on_gpu = torch.cuda.is_available()
    if args.online and on_gpu and importlib.util.find_spec("bitsandbytes"):
        optim = "adamw_8bit"  # the seed's choice
    else:
        # adamw_8bit needs bitsandbytes and a GPU; without bitsandbytes reasonrl refuses it with a one-line
        # ConfigError ("optim='adamw_8bit' needs bitsandbytes ...; use optim=adamw_torch"). Plain AdamW instead.
        optim = "adamw_torch"
    # The seed sets bf16=True for its GPU. "Where supported": on a CUDA GPU with bf16, else float32. reasonrl would
    # also accept bf16=True on a CPU (autocast), but float32 is the safe default there and what GRPOConfig's
    # bf16=None picks on a CPU anyway.
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    # The seed logs to Weights & Biases; offline (or without wandb installed) metrics go to the console and
    # OUTPUT_DIR/metrics.jsonl only.
    report_to = ["wandb"] if args.online and importlib.util.find_spec("wandb") else ["none"]
    max_steps = args.steps if args.steps is not None else (-1 if args.online else 2)  # not in the seed: -1 = epoch

    training_args = GRPOConfig(
        output_dir=args.output_dir,
        learning_rate=2e-5,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_prompt_length=512,
        max_completion_length=96,
        num_generations=4,
        optim=optim,
        num_train_epochs=1,
        bf16=bf16,
        report_to=report_to,
        remove_unused_columns=False,
        logging_steps=1,
        max_steps=max_steps,
    )

    # ---- cell: train
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward_len],
        args=training_args,
        train_dataset=dataset["train"],
        processing_class=tokenizer,  # the seed lets TRL load it from the model id; the offline model has no id
    )
    trainer.train()

    # ---- cell: merge and share
    merged_model = trainer.model.merge_and_unload()
    save_dir = os.path.join(args.output_dir, "SmolGRPO-135M")
    merged_model.save_pretrained(save_dir)  # instead of the seed's push_to_hub, a local folder
    tokenizer.save_pretrained(save_dir)  # so that the folder is a complete model for pipeline() below
    print(f"merged model saved to {save_dir}")
    if args.push:
        merged_model.push_to_hub("SmolGRPO-135M", private=False)  # the seed's line
        tokenizer.push_to_hub("SmolGRPO-135M", private=False)

    # ---- cell: generate with the trained model
    prompt = CAT_DOCUMENT
    messages = [{"role": "user", "content": prompt}]
    generator = pipeline("text-generation", model=save_dir)  # the seed: model="SmolGRPO-135M" (its hub repo)
    max_new_tokens = args.max_new_tokens or (256 if args.online else 24)  # the seed: 256
    generate_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": True, "temperature": 0.5, "min_p": 0.1}
    # The seed calls generator(messages, generate_kwargs=generate_kwargs). transformers 5 takes generation options
    # as keyword arguments and rejects that form ("ValueError: The following `model_kwargs` are not used by the
    # model: ['generate_kwargs']"), so they are unpacked here; the options are the seed's.
    generated_text = generator(messages, **generate_kwargs)
    print(generated_text[0]["generated_text"][-1])  # the assistant's message
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
