"""Time and memory of one rollout's decoding under the lean decoder's weight modes, on the seed model.

    python benchmarks/bench_decode_modes.py

For each mode and precision, in its own subprocess: the SmolLM-135M-shaped model (random weights) with LoRA r=8 on
all linears (bf16: frozen weights cast to bf16, as the trainer does), 8 rows (2 prompts x 4) of 64 prompt tokens,
prefill + 95 greedy decode steps; the best of 3 timed repeats, and the resident memory the decoder added at its
peak over what the model already held.

Modes: prepack = merged LoRA, fused q/k/v and gate/up, reordered into oneDNN's blocked layout (the default);
merged = the same without the reorder; shared = the model's own weights with the adapters beside them
(`LeanDecoder.build(..., merge=False)`, no copy of the weights).
"""

from __future__ import annotations

import subprocess
import sys
import time

MODES = ("prepack", "merged", "shared")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def measure(mode: str, precision: str) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reasonrl.cpu import release_freed_memory
    from reasonrl.lean_decode import LeanDecoder
    from reasonrl.models import cast_frozen_weights
    from reasonrl.policy import position_ids_from_mask
    from reasonrl.tiny import smollm_135m_config

    bf16 = precision == "bf16"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(smollm_135m_config(), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=32, target_modules="all-linear"))
    if bf16:
        cast_frozen_weights(model, torch.bfloat16)
    release_freed_memory()
    ids = torch.randint(0, 49152, (2, 64))
    mask = torch.ones_like(ids)
    base, peak, times = rss_mb(), 0.0, []
    for _ in range(4):  # the first is a warm-up
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            decoder = LeanDecoder.build(model, torch.bfloat16 if bf16 else None, merge=mode != "shared",
                                        prepack=mode == "prepack")
            logits = decoder.prefill(ids, mask, position_ids_from_mask(mask), 4, 96)
            peak = max(peak, rss_mb())
            for _ in range(95):
                logits = decoder.step(logits.argmax(-1))
            peak = max(peak, rss_mb())
            decoder.close()
        times.append(time.perf_counter() - start)
        release_freed_memory()
    return f"{precision:5} {mode:8} {min(times[1:]):8.2f} {peak - base:+10.0f}"


def main() -> None:
    if len(sys.argv) == 3:
        print(measure(sys.argv[1], sys.argv[2]))
        return
    print(f"{'prec':5} {'mode':8} {'best s':>8} {'decode MB':>10}")
    for precision in ("fp32", "bf16"):
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, mode, precision], capture_output=True, text=True,
                                 check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
