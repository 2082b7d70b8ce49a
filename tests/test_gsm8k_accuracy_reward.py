"""Acceptance test: accuracy_reward agrees with human correctness labels on real GSM8K model solutions.

`example_model_solutions.jsonl` (openai/grade-school-math) has 1,319 GSM8K test problems, each with four
model-written solutions and a human `is_correct` label: 5,276 labelled solutions. We score every solution
against the reference answer two ways, from `ground_truth` (its last line `A: x`) and from test.jsonl's
`answer` (`... #### x`, rows matched by question), and require >= 99% agreement with the labels.

The data lives in the workspace's shared/ folder beside the repository, never in the project. The test
fails, rather than skips, when it is missing: CI has it at that path.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from reasonrl.rewards import accuracy_reward, reference_answer

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
MIN_AGREEMENT = 0.99

# Disagreements we accept, as (row index, model key, why). None today: with the final-answer rules in
# rewards/answers.py, the reward matches every label. Worth knowing why the awkward cases agree:
# - 10 solutions are cut off mid-sentence (row 5 / 175b_finetuning repeats "Kylar needs to pay 5 * 1/2"
#   until it stops; rows 48, 150 and 633 end in "3333...", "1818...", "2727..."), so they state no final
#   answer; extract_answer finds none (it has no "last number" fallback) and they score 0.0, as labelled.
#   Row 852 / 175b_verification is the bare text "25": no answer marker, 0.0, labelled wrong.
# - Row 507 / 6b_finetuning ends "A: -1.8 billion" (reference 2): read as -1800000000, wrong, as labelled.
# - Row 931 / 175b_finetuning ends "A: 10+John's age" (reference 50): math-verify reads an expression with
#   variables, not 50, so 0.0. (math-verify's plain-text parser would read it as 10; that is why answers
#   are parsed as LaTeX: see _math_verify_parse in rewards/accuracy.py.)
# A label that says correct while the final number differs (the grader judging the reasoning, not the
# answer) would belong here; none occurs in this file.
ACCEPTED_DISAGREEMENTS: list[tuple[int, str, str]] = []


def _read_jsonl(path: Path) -> list[dict]:
    assert path.is_file(), f"GSM8K data missing: {path} (it ships in the workspace's shared/data/gsm8k/)"
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _disagreements(
    rows: list[dict], references: list[str]
) -> tuple[list[tuple[int, str, float | None]], int]:
    """Score every solution against its row's reference; return the (row, model, reward) that disagree."""
    completions, answers, labels, where = [], [], [], []
    for index, (row, reference) in enumerate(zip(rows, references, strict=True)):
        for model in MODELS:
            completions.append(row[model]["solution"])
            answers.append(reference)
            labels.append(row[model]["is_correct"])
            where.append((index, model))
    rewards = accuracy_reward(completions=completions, answer=answers, prompts=[None] * len(completions))
    wrong = [
        (*place, reward) for place, reward, label in zip(where, rewards, labels) if (reward == 1.0) != label
    ]
    return wrong, len(completions)


def _check(name: str, rows: list[dict], references: list[str]) -> None:
    start = time.perf_counter()
    wrong, total = _disagreements(rows, references)
    seconds = time.perf_counter() - start
    accepted = {(index, model) for index, model, _ in ACCEPTED_DISAGREEMENTS}
    unexpected = [case for case in wrong if case[:2] not in accepted]
    agreement = 1 - len(wrong) / total
    print(
        f"GSM8K accuracy_reward vs is_correct ({name}): {total - len(wrong)}/{total} = {agreement:.2%} "
        f"in {seconds:.2f}s"
    )
    assert total == 5276
    assert agreement >= MIN_AGREEMENT, f"agreement {agreement:.2%} < {MIN_AGREEMENT:.0%}; first: {wrong[:10]}"
    assert not unexpected, f"disagreements not in ACCEPTED_DISAGREEMENTS: {unexpected[:20]}"


def test_accuracy_reward_agrees_with_labels_using_ground_truth():
    rows = _read_jsonl(GSM8K / "example_model_solutions.jsonl")
    assert len(rows) == 1319
    references = [reference_answer(row["ground_truth"]) for row in rows]
    assert all(references), "every ground_truth should end in 'A: <number>'"
    assert references[0] == "18"  # Janet's ducks
    _check("ground_truth 'A: x'", rows, references)


def test_accuracy_reward_agrees_with_labels_using_test_split_answers():
    rows = _read_jsonl(GSM8K / "example_model_solutions.jsonl")
    answer_by_question = {row["question"]: row["answer"] for row in _read_jsonl(GSM8K / "test.jsonl")}
    missing = [row["question"][:60] for row in rows if row["question"] not in answer_by_question]
    assert not missing, f"questions not in test.jsonl: {missing[:3]}"
    # The whole GSM8K answer text goes in: accuracy_reward reduces "...#### 18" to "18" itself.
    references = [answer_by_question[row["question"]] for row in rows]
    _check("test.jsonl '#### x'", rows, references)
