"""What each of reasonrl's optimisations buys: every one measured A/B, side by side, in one invocation.

    python benchmarks/bench_components.py                                  # seed workload, bf16 + fp32, 3 repeats
    python benchmarks/bench_components.py --precision bf16 --groups train --repeats 5
    python benchmarks/bench_components.py --workload tiny --repeats 1 --tokens 16     # smoke test, about 90 s

The workload is bench_vs_trl.py's (imported, not copied): `seed` = the SmolLM-135M architecture with random weights,
`tiny` = a 2-layer Qwen2 (smoke tests only); the character tokenizer; LoRA r=8, alpha 32, dropout 0.05 on all
linear layers; prompts of exactly 64 tokens. Under bf16 the frozen base weights are loaded in bf16 and the work
runs under torch.autocast("cpu", bfloat16), as reasonrl's trainer does; fp32 is float32 weights and no autocast.

Groups (the first variant of each is the baseline its ratios refer to):

  rollout  2 prompts x num_generations 4, `--tokens` new tokens each (default 96), model in eval mode.
           model       reasonrl.rollout.generate(lean=False): the model's own forward with transformers' cache,
                       each prompt prefilled once for its 4 samples
           lean-plain  generate(lean=True) with plain weight tensors: merged LoRA, fused projections, static cache
                       (lean_decode.LeanDecoder(prepack=False))
           lean        the same with the weights reordered into oneDNN's blocked layout (reasonrl's default on CPU)
           hf.generate transformers' model.generate on the prompts repeated 4x (no prompt sharing), do_sample,
                       min_new_tokens = max_new_tokens, top_k 0, top_p 1: what TRL's GRPOTrainer runs
  train    one micro-batch: 4 completions of `--tokens` tokens sharing one 64-token prompt, model.train(),
           forward + backward of -(token log-probs * mask).sum() / tokens, plus the entropy metric, as the
           trainer computes them (core.token_logprobs with_entropy: one pass, its own backward), with the trainer's
           LoRA dropout (core.dropout) and, under bf16, LoRA inputs kept in bf16.
           unshared    rollout.sequence_logprobs(share_prompts=False): every row recomputes the prompt
           shared      sequence_logprobs(share_prompts=True): the prompt once, one backward
           prefix-k2   rollout.PromptPrefix, then forward + backward per chunk of 2 rows, then prefix.backward()
                       (backward_chunk_rows=2)
           prefix-k1   the same with chunks of 1 row
           prefix-k2/torch-dropout      prefix-k2 with peft's own LoRA dropout (torch's nn.Dropout)
           prefix-k2/peft-cast          prefix-k2 with peft casting the LoRA input to the fp32 adapter's dtype
                                        (bf16 only; the same as prefix-k2 in fp32)
           prefix-k2/autograd-logprobs  prefix-k2 with log-probs through autograd (fp32 upcast, log_softmax,
                                        gather) and a separate entropy pass, as before core.token_logprobs had
                                        its own backward
           Each non-baseline worker checks once, after its timing, that its LoRA gradients equal the baseline's:
           max |g - g_unshared| / max |g_unshared|, in fp32 with dropout off (the model in eval mode), so that
           neither the bf16 rounding of different matmul shapes nor different dropout masks blur the comparison.

Every variant runs in its own subprocess (the script calls itself with `--worker ...`): load, 1 warm-up, `--repeats`
timed calls. Peak RSS is the worker's VmHWM from /proc/self/status: `setup MB` right after loading the model and
adding LoRA, `peak MB` over warm-up + timed calls (the kernel's high-water mark is reset after setup by writing 5 to
/proc/self/clear_refs, so loading does not mask the variant's own peak; if the reset is refused, peak includes
setup and the table says so).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_vs_trl as vs  # the workload, the LoRA config, the prompts, peak_rss_kb

PROMPT_ROWS = 2  # rollout: prompts per generate call
NUM_GENERATIONS = 4
GROUPS = {
    "rollout": ("model", "lean-plain", "lean", "hf.generate"),
    "train": ("unshared", "shared", "prefix-k2", "prefix-k1", "prefix-k2/torch-dropout", "prefix-k2/peft-cast",
              "prefix-k2/autograd-logprobs"),
}
GRAD_TOLERANCE = 1e-4


# ------------------------------------------------------------------------------------------------ worker


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def load(cfg: dict):
    """The workload's model (bf16 or fp32 base weights) with the LoRA adapter, its tokenizer, and the autocast.

    As in reasonrl's trainer, the LoRA dropout is core.dropout's (variant option `/torch-dropout`: peft's
    nn.Dropout) and, under bf16, peft's LoRA layers keep their bf16 input (`/peft-cast`: peft casts it to fp32)."""
    import contextlib

    import torch

    from reasonrl.models import add_lora, load_model, load_tokenizer, lora_inputs_not_cast, lora_layers

    options = cfg["variant"].split("/")[1:]
    bf16 = cfg["precision"] == "bf16"
    model = add_lora(load_model(cfg["model"], dtype=torch.bfloat16 if bf16 else torch.float32), vs.lora_config())
    if "torch-dropout" in options:
        for module in model.modules():
            if hasattr(module, "lora_dropout"):
                for name, layer in list(module.lora_dropout.items()):
                    module.lora_dropout[name] = torch.nn.Dropout(layer.p)
    tokenizer = load_tokenizer(cfg["model"])
    layers = lora_layers(model)

    @contextlib.contextmanager
    def autocast():
        if not bf16:
            yield
            return
        with torch.autocast("cpu", dtype=torch.bfloat16), lora_inputs_not_cast(
                [] if "peft-cast" in options else layers):
            yield

    return model, tokenizer, autocast


def prompt_batch(tokenizer, rows: int):
    """The first `rows` bench_vs_trl prompts as token ids [rows, 64] and an all-ones mask."""
    import torch

    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in vs.make_prompts()[:rows]]
    if len({len(row) for row in ids}) != 1:
        raise SystemExit(f"prompts tokenize to different lengths {[len(r) for r in ids]}")
    prompt_ids = torch.tensor(ids, dtype=torch.long)
    return prompt_ids, torch.ones_like(prompt_ids)


def rollout_call(cfg: dict, model, tokenizer, autocast):
    """A function that runs one generate call of the variant and returns its completion tokens and columns."""
    import torch

    from reasonrl.rollout import generate

    model.eval()
    prompt_ids, prompt_mask = prompt_batch(tokenizer, PROMPT_ROWS)
    tokens, variant = cfg["tokens"], cfg["variant"]
    never = model.config.vocab_size  # an id outside the vocabulary: never sampled, so every row runs to `tokens`

    if variant in ("model", "lean", "lean-plain"):
        def call():
            with autocast():
                ids, mask, _, _ = generate(model, prompt_ids, prompt_mask, num_generations=NUM_GENERATIONS,
                                           max_new_tokens=tokens, eos_token_id=never, pad_token_id=0,
                                           temperature=1.0, seeds=[1, 2], lean=variant != "model")
            return int(mask.sum()), int(ids.size(1))
    elif variant == "hf.generate":
        input_ids = prompt_ids.repeat_interleave(NUM_GENERATIONS, dim=0)
        attention_mask = prompt_mask.repeat_interleave(NUM_GENERATIONS, dim=0)

        def call():
            torch.manual_seed(0)
            with torch.no_grad(), autocast():
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
                                     max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0, temperature=1.0,
                                     top_k=0, top_p=1.0)
            new = out.size(1) - input_ids.size(1)
            return int(out.size(0) * new), int(new)
    else:
        raise SystemExit(f"unknown rollout variant {variant!r}")
    return call


def lora_grads(model) -> dict:
    return {name: p.grad.detach().float().clone() for name, p in model.named_parameters()
            if p.requires_grad and p.grad is not None}


def train_step(variant: str, model, prompt_ids, prompt_mask, completion_ids, completion_mask, autocast) -> None:
    """Forward + backward of one micro-batch the variant's way, with the entropy metric the trainer logs; gradients
    accumulate in the LoRA parameters."""
    import torch

    from reasonrl.core import token_entropy
    from reasonrl.policy import PromptPrefix, completion_logits, sequence_logprobs

    base, *options = variant.split("/")
    autograd_logprobs = "autograd-logprobs" in options
    rows = completion_ids.size(0)
    total = completion_mask.sum().clamp(min=1)

    def logprobs(fused, plain, ids):
        """Log-probs and entropies the variant's way: `fused()` (core.token_logprobs with its own backward and the
        entropy from the same pass), or with `/autograd-logprobs` log_softmax + gather through autograd on the
        logits `plain()` returns, and a separate entropy pass."""
        if not autograd_logprobs:
            return fused()
        logits = plain()
        logps = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)
        with torch.no_grad():
            entropy = token_entropy(logits.detach())
        return logps, entropy

    if base in ("unshared", "shared"):
        inputs = (model, prompt_ids, prompt_mask, completion_ids, completion_mask)
        share = base == "shared"
        with autocast():
            logps, _ = logprobs(partial(sequence_logprobs, *inputs, share_prompts=share, with_entropy=True),
                                partial(completion_logits, *inputs, share_prompts=share), completion_ids)
        loss = -(logps.float() * completion_mask).sum() / total
        loss.backward()
        return
    if not base.startswith("prefix-k"):
        raise SystemExit(f"unknown train variant {variant!r}")
    k = int(base.removeprefix("prefix-k"))
    with autocast():
        prefix = PromptPrefix(model, prompt_ids, prompt_mask)
    for start in range(0, rows, k):
        chunk = slice(start, start + k)
        inputs = (chunk, completion_ids[chunk], completion_mask[chunk])
        with autocast():
            logps, _ = logprobs(partial(prefix.completion_logprobs, *inputs, with_entropy=True),
                                partial(prefix.completion_logits, *inputs), completion_ids[chunk])
        loss = -(logps.float() * completion_mask[chunk]).sum() / total  # chunks' losses sum to the whole's
        loss.backward()
        del logps, loss
    prefix.backward()


def train_call(cfg: dict, model, tokenizer, autocast):
    """A function that runs one micro-batch forward + backward of the variant; also the inputs for grad_check."""
    import torch

    model.train()
    prompt_ids, prompt_mask = prompt_batch(tokenizer, 1)
    prompt_ids = prompt_ids.repeat(NUM_GENERATIONS, 1)
    prompt_mask = prompt_mask.repeat(NUM_GENERATIONS, 1)
    # fixed completions: ordinary characters of the tokenizer (ids 1 .. 259; the tiny model's vocabulary is 260)
    generator = torch.Generator().manual_seed(0)
    high = min(len(tokenizer) - 1, model.config.vocab_size)
    completion_ids = torch.randint(1, high, (NUM_GENERATIONS, cfg["tokens"]), generator=generator)
    completion_mask = torch.ones_like(completion_ids)
    inputs = (prompt_ids, prompt_mask, completion_ids, completion_mask)

    def call():
        model.zero_grad(set_to_none=True)
        train_step(cfg["variant"], model, *inputs, autocast)
        return int(completion_mask.sum()), int(completion_ids.size(1))

    return call, inputs


def grad_check(variant: str, model, inputs) -> dict:
    """max |g_variant - g_unshared| / max |g_unshared| over the LoRA gradients, in fp32 with dropout off."""
    import contextlib

    model.float()  # the bf16 base weights too: the check is about the maths, not about bf16 rounding
    model.eval()  # dropout off: both computations see the same (no) masks
    grads = {}
    for name in ("unshared", variant):
        model.zero_grad(set_to_none=True)
        train_step(name, model, *inputs, contextlib.nullcontext)
        grads[name] = lora_grads(model)
    base, other = grads["unshared"], grads[variant]
    if base.keys() != other.keys():
        return {"grad_check": "different parameter sets got gradients", "grad_ok": False}
    scale = max(float(g.abs().max()) for g in base.values())
    diff = max(float((other[n] - base[n]).abs().max()) for n in base)
    relative = diff / scale if scale else float("inf")
    return {"grad_max_abs": scale, "grad_max_diff": diff, "grad_rel_diff": relative,
            "grad_ok": relative <= GRAD_TOLERANCE, "grad_params": len(base)}


def watch_lean_decoder(result: dict, prepack: bool | None) -> None:
    """Record in result["lean_used"] whether generate's LeanDecoder.build returned a decoder (False: generate fell
    back to the model's own forward), without building one more decoder; build it with `prepack` (None: auto)."""
    from reasonrl.lean_decode import LeanDecoder

    build = LeanDecoder.build

    def watched(model, dtype=None, prepack_=None):
        decoder = build(model, dtype, prepack)
        result["lean_used"] = result.get("lean_used", True) and decoder is not None
        result["prepacked"] = decoder is not None and decoder.lm_head.prepacked
        return decoder

    LeanDecoder.build = watched


def worker(pairs: list[str]) -> None:
    """`--worker key=value ...`: measure one variant, print one JSON line of results as the last line of stdout."""
    import torch

    cfg = dict(pair.split("=", 1) for pair in pairs)
    cfg.update(tokens=int(cfg["tokens"]), repeats=int(cfg["repeats"]))
    torch.manual_seed(0)
    model, tokenizer, autocast = load(cfg)
    result = {"group": cfg["group"], "variant": cfg["variant"], "precision": cfg["precision"]}
    inputs = None
    if cfg["group"] == "rollout":
        call = rollout_call(cfg, model, tokenizer, autocast)
        if cfg["variant"].startswith("lean"):
            watch_lean_decoder(result, prepack=False if cfg["variant"] == "lean-plain" else None)
    else:
        call, inputs = train_call(cfg, model, tokenizer, autocast)
    result["setup_rss_kb"] = vs.peak_rss_kb()
    result["peak_reset"] = reset_peak_rss()

    start = time.perf_counter()
    result["warmup_tokens"], _ = call()
    result["warmup_seconds"] = time.perf_counter() - start
    times, tokens, columns = [], [], []
    for _ in range(cfg["repeats"]):
        start = time.perf_counter()
        n, width = call()
        times.append(time.perf_counter() - start)
        tokens.append(n)
        columns.append(width)
    result.update(times=times, tokens=tokens, columns=sorted(set(columns)), peak_rss_kb=vs.peak_rss_kb(),
                  torch_threads=torch.get_num_threads())
    if inputs is not None and cfg["variant"] != "unshared":  # after the peak is read: the check does not count
        result.update(grad_check(cfg["variant"], model, inputs))
    sys.stdout.flush()
    print(json.dumps(result))


# ------------------------------------------------------------------------------------------------ parent


def run_worker(path: str, group: str, variant: str, precision: str, opts, scratch: str) -> dict:
    """One variant in its own subprocess; its JSON result, or {"error": ...} with the tail of its stderr."""
    tag = variant.replace(".", "_").replace("/", "+")
    log_path = os.path.join(scratch, f"{group}-{tag}-{precision}.log")
    command = [sys.executable, os.path.abspath(__file__), "--worker", f"group={group}", f"variant={variant}",
               f"precision={precision}", f"model={path}", f"tokens={opts.tokens}", f"repeats={opts.repeats}"]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(command, check=False, stdout=subprocess.PIPE, stderr=log, text=True,
                              env={**os.environ, **vs.OFFLINE_ENV})
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        if proc.returncode != 0 or not lines:
            raise ValueError
        result = json.loads(lines[-1])
    except (ValueError, json.JSONDecodeError):
        with open(log_path) as log:
            tail = log.read().strip().splitlines()[-12:]
        return {"error": f"exit {proc.returncode}", "stderr_tail": tail, "log": log_path, "wall": wall}
    result.update(wall=wall, log=log_path)
    return result


def note(result: dict) -> str:
    """The table's last column: what the worker checked."""
    parts = []
    if "lean_used" in result:
        parts.append(("LeanDecoder used" + (", prepacked" if result.get("prepacked") else ", plain weights"))
                     if result["lean_used"] else "LeanDecoder NOT used (fell back)")
    if "grad_rel_diff" in result:
        verdict = "ok" if result["grad_ok"] else f"MISMATCH > {GRAD_TOLERANCE:g}"
        parts.append(f"grad vs unshared: max diff {result['grad_max_diff']:.2e} = {result['grad_rel_diff']:.2e} of "
                     f"max |g| ({verdict})")
    elif "grad_check" in result:
        parts.append(result["grad_check"])
    if not result.get("peak_reset", True):
        parts.append("peak includes setup")
    return "; ".join(parts)


def print_report(rows: list[dict], facts: dict, opts) -> None:
    print()
    print(f"workload {opts.workload}: {facts}; {opts.tokens} new tokens per completion, 1 warm-up + {opts.repeats} "
          f"timed calls per variant, each variant in its own subprocess; torch threads "
          f"{next((r['torch_threads'] for r in rows if 'torch_threads' in r), '?')}, {os.cpu_count()} CPUs")
    print("median/min s: one call (rollout: one generate of 2 prompts x 4 samples; train: one micro-batch forward + "
          "backward); x base: median / the group's first variant's median; tok/s: completion tokens / median; "
          "setup MB: VmHWM after load + LoRA; peak MB: VmHWM over warm-up + timed calls; cols: generated columns")
    header = (f"{'prec':4} {'group':7} {'variant':27} {'median s':>9} {'min s':>8} {'x base':>6} {'tok/s':>8} "
              f"{'cols':>5} {'setup MB':>8} {'peak MB':>8} {'x base':>6}  notes")
    print(header)
    print("-" * len(header))
    for precision in opts.precisions:
        for group in opts.groups:
            base = None
            for row in rows:
                if row["precision"] != precision or row["group"] != group:
                    continue
                lead = f"{precision:4} {group:7} {row['variant']:27}"
                if "error" in row:
                    print(f"{lead} FAILED ({row['error']}; log {row['log']})")
                    continue
                median, fastest = statistics.median(row["times"]), min(row["times"])
                peak = row["peak_rss_kb"] / 1024
                if base is None and row["variant"] == GROUPS[group][0]:
                    base = (median, peak)
                ratio = f"{median / base[0]:6.2f}" if base else f"{'-':>6}"
                peak_ratio = f"{peak / base[1]:6.2f}" if base else f"{'-':>6}"
                tok_s = statistics.median(row["tokens"]) / median
                print(f"{lead} {median:9.3f} {fastest:8.3f} {ratio} {tok_s:8.0f} "
                      f"{','.join(map(str, row['columns'])):>5} {row['setup_rss_kb'] / 1024:8.0f} {peak:8.0f} "
                      f"{peak_ratio}  {note(row)}")
        print()


def main() -> None:
    """Parse flags; either be a worker, or build the model, run every variant and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="seed", choices=vs.WORKLOADS,
                        help="seed (SmolLM-135M architecture, the default) or tiny (smoke tests)")
    parser.add_argument("--precision", default="bf16,fp32", help="comma list of: bf16, fp32 (default both)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant after 1 warm-up (default 3)")
    parser.add_argument("--groups", default="rollout,train", help="comma list of: rollout, train")
    parser.add_argument("--tokens", type=int, default=96, help="new tokens per completion (default 96)")
    parser.add_argument("--scratch", default=None, help="folder for the model and worker logs (default: a temp dir)")
    opts = parser.parse_args()
    if opts.worker:
        worker(opts.worker)
        return
    opts.precisions = [p.strip() for p in opts.precision.split(",") if p.strip()]
    opts.groups = [g.strip() for g in opts.groups.split(",") if g.strip()]
    for value, allowed, flag in ((opts.precisions, ("bf16", "fp32"), "--precision"),
                                 (opts.groups, tuple(GROUPS), "--groups")):
        if not value or any(v not in allowed for v in value):
            parser.error(f"{flag}: comma list of {', '.join(allowed)}")
    if opts.repeats < 1 or opts.tokens < 1:
        parser.error("--repeats and --tokens must be at least 1")
    os.environ.update(vs.OFFLINE_ENV)
    scratch = opts.scratch or tempfile.mkdtemp(prefix="bench_components-")
    os.makedirs(scratch, exist_ok=True)
    started = time.perf_counter()
    path = os.path.join(scratch, f"model-{opts.workload}")
    facts = vs.build_and_save(opts.workload, path)
    print(f"saved {opts.workload}: {facts} -> {path}", flush=True)

    rows = []
    for precision in opts.precisions:
        for group in opts.groups:
            for variant in GROUPS[group]:
                print(f"running {precision} {group} {variant} ...", flush=True)
                result = run_worker(path, group, variant, precision, opts, scratch)
                result.update(group=group, variant=variant, precision=precision)
                if "error" in result:
                    print(f"  FAILED: {result['error']}\n    " + "\n    ".join(result["stderr_tail"]), flush=True)
                rows.append(result)
    print_report(rows, facts, opts)
    results_path = os.path.join(scratch, "results.json")
    with open(results_path, "w") as handle:
        json.dump({"workload": opts.workload, "facts": facts, "tokens": opts.tokens, "repeats": opts.repeats,
                   "rows": rows}, handle, indent=1)
    print(f"raw results: {results_path}; total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
