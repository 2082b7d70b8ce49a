"""Evaluation: what RL bought, in numbers.

Greedy accuracy, pass@k with the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374), the rate of
completions in the `<think>…</think><answer>…</answer>` format, mean completion length and truncation rate.
"""

from __future__ import annotations

import json

import torch

from reasonrl.config_checks import TOOL_ISOLATIONS
from reasonrl.data import PromptTokenizer
from reasonrl.errors import ToolError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as a running product, which stays exact in floating point for large n (the binomials do not).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def mean_pass_at_k(correct_counts: list[int], n: int, ks) -> dict[int, float]:
    """{k: pass@k averaged over prompts} from each prompt's count of correct completions among its n samples."""
    return {k: sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts) for k in ks}


def _score(reward_fn, rows: list[dict], completions: list, repeat: int) -> list[float]:
    prompts = [row["prompt"] for row in rows for _ in range(repeat)]
    columns = {key: [row[key] for row in rows for _ in range(repeat)] for key in rows[0] if key != "prompt"}
    values = reward_fn(prompts=prompts, completions=completions, completion_ids=None, **columns)
    return [0.0 if v is None else float(v) for v in values]


@torch.no_grad()
def _complete(model, tokenizer, prompts, *, num_samples, max_new_tokens, greedy, temperature, batch_size,
              generator, max_prompt_length=None, tool_calling=None):
    """Completions (num_samples per prompt, grouped by prompt): their texts, the rewards' completions (the texts,
    or with tools each sample's assistant and tool messages), lengths (the model's tokens), truncation flags, and
    the tool counts (tools.tool_metrics's; None without tools)."""
    from reasonrl.rollout import sample_rollout

    device = next(model.parameters()).device
    prompt_tokenizer = PromptTokenizer(tokenizer, max_prompt_length, tool_calling.schemas if tool_calling else None)
    from tqdm.auto import tqdm

    texts, completions, lengths, truncated, counts = [], [], [], [], None
    for start in tqdm(range(0, len(prompts), batch_size), desc="eval" if greedy else f"eval x{num_samples}",
                      unit="batch", leave=False, dynamic_ncols=True):
        prompt_ids, prompt_mask = prompt_tokenizer(prompts[start: start + batch_size], device=device)
        # the rollout of training: multi-turn with the tools when there are tools
        rollout = sample_rollout(
            model, tokenizer, prompt_ids, prompt_mask, tool_calling, num_generations=num_samples,
            max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            temperature=temperature, greedy=greedy, generator=generator)
        texts += rollout.texts
        completions += rollout.texts if rollout.messages is None else rollout.messages
        model_tokens = rollout.completion_mask if rollout.tool_mask is None else (
            rollout.completion_mask * rollout.tool_mask)  # tool results are not the model's length
        lengths += model_tokens.sum(-1).tolist()
        truncated += rollout.is_truncated.tolist()
        if rollout.tool_counts is not None:
            counts = rollout.tool_counts if counts is None else counts + rollout.tool_counts
    return texts, completions, lengths, truncated, counts


def evaluate(model, tokenizer, rows: list[dict], reward_fn, *, k: int = 1, num_samples: int | None = None,
             max_new_tokens: int = 256, temperature: float = 1.0, batch_size: int = 64, seed: int = 0,
             tools=None, max_tool_calling_iterations: int | None = None, tool_timeout: float | None = 10.0,
             tool_isolation: str = "thread") -> dict:
    """Evaluate `model` on `rows` ({prompt, answer, ...}); `reward_fn` (TRL signature) returns 1.0 when correct.

    Greedy decoding gives accuracy, format rate, length and truncation. With k > 1, `num_samples` (default k)
    completions per prompt are sampled at `temperature` and pass@1..k is estimated from them. With `tools`
    (functions or 'module:function' specs, as the trainer's) the completions are the multi-turn rollouts of
    training (tools.py): the reward gets each sample's messages, and the report the tools' metrics (`tools`, of
    the greedy completions; with k > 1 also `tools_sampled`, of the sampled ones); tool_isolation='process' runs
    each call in a child process killed at tool_timeout, as GRPOConfig's option.
    """
    from reasonrl.rewards import format_reward
    from reasonrl.tools import ToolCalling, load_tools, tool_metrics

    tool_calling = None
    if tool_isolation not in TOOL_ISOLATIONS:
        raise ToolError(f"tool_isolation must be 'thread' or 'process' (got {tool_isolation!r})")
    if tools:
        tools = load_tools(tools)
        tool_calling = ToolCalling(tools, tokenizer, max_iterations=max_tool_calling_iterations,
                                   timeout=tool_timeout, isolated=tools if tool_isolation == "process" else ())
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    prompts = [row["prompt"] for row in rows]
    texts, completions, lengths, truncated, counts = _complete(
        model, tokenizer, prompts, num_samples=1, max_new_tokens=max_new_tokens, greedy=True, temperature=1.0,
        batch_size=batch_size, generator=generator, tool_calling=tool_calling)
    correct = _score(reward_fn, rows, completions, 1)
    formatted = format_reward(completions=texts)
    report = {
        "n": len(rows),
        "accuracy": sum(c > 0.5 for c in correct) / len(rows),
        "format_rate": sum(formatted) / len(rows),
        "mean_length": sum(lengths) / len(rows),
        "truncation_rate": sum(truncated) / len(rows),
        "pass_at_k": {},
    }
    if counts is not None:  # the greedy pass's tools/call_frequency, /failure_frequency, /timeouts, /mean_turns
        report["tools"] = {key.removeprefix("tools/"): value for key, value in tool_metrics(counts).items()}
    samples = max(k, num_samples or k)
    if k > 1:
        _, sampled, _, _, sampled_counts = _complete(
            model, tokenizer, prompts, num_samples=samples, max_new_tokens=max_new_tokens, greedy=False,
            temperature=temperature, batch_size=max(1, batch_size // samples), generator=generator,
            tool_calling=tool_calling)
        if sampled_counts is not None:  # the same metrics over the sampled completions (at `temperature`)
            report["tools_sampled"] = {key.removeprefix("tools/"): value
                                       for key, value in tool_metrics(sampled_counts).items()}
        sampled_correct = _score(reward_fn, rows, sampled, samples)
        per_prompt = [sum(v > 0.5 for v in sampled_correct[i * samples:(i + 1) * samples]) for i in range(len(rows))]
        report["pass_at_k"] = {str(j): value for j, value in mean_pass_at_k(per_prompt, samples,
                                                                              range(1, k + 1)).items()}
        report["samples_per_prompt"] = samples
        report["temperature"] = temperature
    report["examples"] = [{"prompt": p, "completion": t, "correct": c > 0.5}
                          for p, t, c in list(zip(prompts, texts, correct))[:5]]
    model.train(was_training)
    return report


def format_report(report: dict) -> str:
    lines = [(f"n={report['n']}  accuracy={report['accuracy']:.3f}  format_rate={report['format_rate']:.3f}  "
              f"mean_length={report['mean_length']:.1f}  truncation_rate={report['truncation_rate']:.3f}")]
    if report.get("tools"):
        lines.append("tools: " + "  ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                                          for key, value in report["tools"].items()))
    if report.get("tools_sampled"):
        lines.append(f"tools (sampled, T={report['temperature']}): " + "  ".join(
            f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
            for key, value in report["tools_sampled"].items()))
    if report["pass_at_k"]:
        lines.append("pass@k: " + "  ".join(f"@{k}={v:.3f}" for k, v in report["pass_at_k"].items()))
    return "\n".join(lines)


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1)

