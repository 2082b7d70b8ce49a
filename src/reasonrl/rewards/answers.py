"""Pull the final answer out of model text, and read plain numbers exactly.

Pure text processing, no math-verify: `accuracy.py` uses it to decide what to compare, and compares two
plain numbers itself (exactly, with Fraction) before falling back to math-verify.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# `#### x` (GSM8K's reference format): the rest of the line after the last `####`.
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
# A last line `A: x` (the format of GSM8K's example model solutions), or `Answer: x` / `Final answer: x`.
_LAST_LINE_ANSWER = re.compile(r"^\s*(?:A|Answer|Final answer)\s*:\s*(.*?)\s*$", re.IGNORECASE)
# `The answer is x`: up to a sentence end (a period followed by a space) or the end of the line.
_ANSWER_IS = re.compile(
    r"\bthe (?:final )?answer is\s*:?\s*(.+?)\s*(?:\.\s|\.?$)", re.IGNORECASE | re.MULTILINE
)


def extract_answer(text: str) -> str | None:
    """The final answer in `text`, or None if it states none. The first of these rules that applies wins:

    1. the last `<answer>...</answer>` block (and within it, a `\\boxed{...}` if there is one);
    2. the last `\\boxed{...}` with balanced braces;
    3. the rest of the line after the last `#### `;
    4. a last non-empty line `A: x` (or `Answer: x`);
    5. the last `The answer is x`.

    An empty answer (`<answer> </answer>`) counts as none. The text is not searched for a bare last
    number: a completion that never states an answer is not credited for one it happened to mention.
    """
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        inner = tagged[-1]
        return _nonempty(last_boxed(inner) if _BOXED.search(inner) else inner)
    boxed = last_boxed(text)
    if boxed is not None:
        return _nonempty(boxed)
    hashes = _HASHES.findall(text)
    if hashes:
        return _nonempty(hashes[-1])
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        match = _LAST_LINE_ANSWER.match(lines[-1])
        if match:
            return _nonempty(match.group(1))
    stated = _ANSWER_IS.findall(text)
    if stated:
        return _nonempty(stated[-1])
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) whose braces balance, else None."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for end in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                return text[match.end() : end]
    return None


def reference_answer(reference: Any) -> str | None:
    """The final answer of a dataset's reference, or None if there is none.

    A GSM8K reference (`...#### 18`) and a MATH solution (`...\\boxed{18}`) are reduced to `18` by the
    same rules as extract_answer; a reference without any marker (`18`, `\\frac{1}{2}`) is used whole.
    Numbers (from a numeric column) are turned into text.
    """
    if reference is None or isinstance(reference, bool):
        return None
    if isinstance(reference, (int, float, Fraction)):
        return str(reference)
    text = str(reference)
    return extract_answer(text) or _nonempty(text)


def _nonempty(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text or None


# Everything that decorates a number without changing its value: currency signs, LaTeX spacing and
# thousands grouping. Percent signs are removed too; `is_percentage` tells the caller one was there.
_DECORATION = re.compile(r"\\\$|\$|\\%|%|\\[,!;: ]|~|\{,\}")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_SLASH_FRACTION = re.compile(r"([+-]?\d+)\s*/\s*(\d+)")
_MIXED_NUMBER = re.compile(r"([+-]?)(\d+)\s+(\d+)\s*/\s*(\d+)")  # 1 1/2 = 3/2
_LATEX_FRACTION = re.compile(r"(-?)\\[dt]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
# A number then words: `18 dollars`, `2.5 hours per day`, `1.8 billion`.
_NUMBER_THEN_WORDS = re.compile(r"(.*?[\d}])\s+([A-Za-z][A-Za-z'-]*(?:\s+[A-Za-z][A-Za-z'-]*)*)")
_SCALE_WORDS = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
# Words after a number that make it something other than that number (`2 pi`, `3 sqrt`, `5 times`).
_NOT_UNITS = {"pi", "sqrt", "times", "over", "plus", "minus", "mod", "divided", "squared", "cubed", "or"}
_PERCENTAGE = re.compile(r"(?:%|\bpercent)\s*\.?\s*$", re.IGNORECASE)


def parse_number(text: str) -> Fraction | None:
    """`text` as an exact number if it is a plain one, else None (then math-verify has to decide).

    Accepted: integers and decimals (`18`, `-3.50`, `.5`, `18.`), thousands commas (`1,234.5`), currency
    and percent signs (`$18`, `\\$18`, `50%` reads as 50: see is_percentage), a trailing period, LaTeX
    spacing, fractions `3/4`, `\\frac{3}{4}`, `\\dfrac{3}{4}`, mixed numbers `1 1/2`, and a number followed
    by unit words (`18 dollars`, `1.8 billion` = 1800000000). `1,5` (a decimal comma), `1,2345`, `2 pi`
    and anything with an operator or a variable are not plain numbers.
    """
    text = _DECORATION.sub("", text.replace("\u2212", "-")).strip().rstrip(".").strip()
    value = _plain_number(text)
    if value is not None:
        return value
    with_words = _NUMBER_THEN_WORDS.fullmatch(text)
    if not with_words:
        return None
    number, words = with_words.group(1), with_words.group(2).lower().split()
    scale = _SCALE_WORDS.get(words[0], 1)
    if any(len(word) < 2 or word in _NOT_UNITS for word in words):
        return None
    value = _plain_number(number)
    return None if value is None else value * scale


def is_percentage(text: str) -> bool:
    """Whether `text` ends in a percent sign or the word percent (`50%`, `50\\%.`, `50 percent`)."""
    return bool(_PERCENTAGE.search(text))


def _plain_number(text: str) -> Fraction | None:
    if "," in text:
        if not _THOUSANDS.fullmatch(text):
            return None
        text = text.replace(",", "")
    if _DECIMAL.fullmatch(text):
        return Fraction(text)
    mixed = _MIXED_NUMBER.fullmatch(text)
    if mixed:
        sign, whole, numerator, denominator = mixed.groups()
        if int(denominator) == 0:
            return None
        value = int(whole) + Fraction(int(numerator), int(denominator))
        return -value if sign == "-" else value
    fraction = _SLASH_FRACTION.fullmatch(text)
    if fraction:
        sign = ""
    else:
        fraction = _LATEX_FRACTION.fullmatch(text)
        if not fraction:
            return None
        sign = fraction.group(1)
    numerator, denominator = int(fraction.groups()[-2]), int(fraction.groups()[-1])
    if denominator == 0:
        return None
    value = Fraction(numerator, denominator)
    return -value if sign else value
