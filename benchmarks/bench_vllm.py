"""Generation time of one rollout: vLLM (vllm_engine.VLLMEngine, in process) against reasonrl's lean decoder.

    /work/vllm-venv/bin/python benchmarks/bench_vllm.py        # needs vLLM: docs/SCALING.md, "vLLM rollouts"

For each precision, in its own subprocess: the SmolLM-135M-shaped model (random weights), 8 completions (2 prompts x
4) of 96 sampled tokens (temperature 1; EOS is the last vocabulary id, which the random model samples about once in
49152 tokens) after 64 prompt tokens; the best
of 3 timed repeats after a warm-up, for each engine, side by side in one process. Also the engine's start-up and one
weight push (what each optimizer step adds). Times on a shared machine are only comparable within one run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def best_of(run, repeats: int = 3) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(precision: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from reasonrl import GRPOConfig
    from reasonrl.rollout import generate
    from reasonrl.tiny import smollm_135m_config
    from reasonrl.vllm_engine import VLLMEngine

    bf16 = precision == "bf16"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(smollm_135m_config(), dtype=torch.float32).eval()
    if bf16:
        model = model.to(torch.bfloat16)
    ids = torch.randint(4, 49152, (2, 64))
    mask = torch.ones_like(ids)
    never = 49151  # an EOS id sampled with probability ~1/49152 per token: completions run to 96 tokens
    options = dict(num_generations=4, max_new_tokens=96, eos_token_id=never, pad_token_id=0, temperature=1.0,
                   seeds=[1, 2])
    lengths = {}

    def lean():
        with torch.no_grad():
            lengths["lean"] = int(generate(model, ids, mask, **options)[1].sum())

    start = time.perf_counter()
    engine = VLLMEngine.build(model, GRPOConfig(seed=0, bf16=bf16), bf16=bf16, max_model_len=256)
    startup = time.perf_counter() - start

    def vllm():
        lengths["vllm"] = int(engine.generate(model, ids, mask, **options)[1].sum())

    lean_time, vllm_time = best_of(lean), best_of(vllm)
    engine.policy_changed()
    push = best_of(engine.push_weights)
    return (f"{precision:5} {lean_time:9.2f} {vllm_time:9.2f} {vllm_time / lean_time:7.2f} {startup:9.1f} "
            f"{push:8.2f} {lengths['lean']:>5}/{lengths['vllm']} {torch.get_num_threads():>7}")


def main() -> None:
    if len(sys.argv) == 2:
        print(measure(sys.argv[1]))
        return
    print(f"{'prec':5} {'lean s':>9} {'vllm s':>9} {'ratio':>7} {'start s':>9} {'push s':>8} tokens threads")
    for precision in ("fp32", "bf16"):
        out = subprocess.run([sys.executable, __file__, precision], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
