"""Rewards: exact values for hand-made completions, the None semantics, the registry and its errors."""

from __future__ import annotations

import functools
import importlib
import sys
import threading
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reasonrl.rewards import (
    RewardSpecError,
    accuracy_reward,
    available_rewards,
    completion_text,
    extract_answer,
    format_reward,
    get_reward,
    length_reward,
    make_length_reward,
    parse_number,
    reference_answer,
    reward_name,
    tag_count_reward,
)

accuracy_module = importlib.import_module("reasonrl.rewards.accuracy")


def chat(text: str) -> list[dict[str, str]]:
    """A conversational completion, as TRL passes it for conversational datasets."""
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------- completion_text


def test_completion_text_reads_strings_and_conversations():
    assert completion_text("plain") == "plain"
    assert completion_text(chat("hi")) == "hi"
    assert completion_text({"role": "assistant", "content": "one message"}) == "one message"
    assert completion_text([{"content": "no role"}]) == "no role"
    # Tool output is not the model's text; None content (a tool call) contributes nothing.
    turns = [
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "it is 42"},
    ]
    assert completion_text(turns) == "\nit is 42"
    parts = [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}],
        }
    ]
    assert completion_text(parts) == "ab"


def test_completion_text_rejects_other_types_with_the_fix():
    with pytest.raises(TypeError, match="string or a list of message dicts, got int"):
        completion_text(3)
    with pytest.raises(TypeError, match="must hold message dicts, got str"):
        completion_text(["not a message"])


# ---------------------------------------------------------------- length


def test_length_reward_is_minus_the_distance_to_50_characters():
    completions = ["", "a" * 50, "a" * 60, "a" * 45, chat("a" * 10)]
    assert length_reward(completions=completions) == [-50.0, 0.0, -10.0, -5.0, -40.0]
    assert length_reward.__name__ == "length_reward"


def test_make_length_reward_sets_the_target_and_ignores_other_columns():
    reward = make_length_reward(ideal_length=3)
    assert reward.__name__ == "length_reward"
    out = reward(
        prompts=["p", "p"],
        completions=["abc", "abcdefg"],
        completion_ids=[[1], [2]],
        answer=["x", "y"],
        trainer_state=None,
    )
    assert out == [0.0, -4.0]
    assert make_length_reward(0)(completions=["ab"]) == [-2.0]


@pytest.mark.parametrize("bad", [-1, 2.5, "50", True])
def test_make_length_reward_rejects_bad_targets(bad):
    with pytest.raises(ValueError, match="ideal_length must be a non-negative integer"):
        make_length_reward(bad)


# ---------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>reason</think><answer>42</answer>", 1.0),
        ("<think>\nmulti\nline\n</think>\n<answer>\n42\n</answer>", 1.0),  # newlines inside and between
        ("  <think>r</think><answer>42</answer>\n", 1.0),  # surrounding whitespace is stripped
        ("<think></think><answer></answer>", 1.0),
        ("<think>r</think><answer>42</answer> trailing text", 0.0),
        ("preamble <think>r</think><answer>42</answer>", 0.0),
        ("<answer>42</answer><think>r</think>", 0.0),
        ("<think>r</think>", 0.0),
        ("<think>r</think>between<answer>42</answer>", 0.0),
        ("42", 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(completions=[text]) == [expected]
    assert format_reward(completions=[chat(text)], prompts=["p"], solution=["s"]) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>r</think><answer>42</answer>", 1.0),
        ("<answer>42</answer><think>r</think>", 1.0),  # order is format_reward's business
        ("<think>r</think> 42", 0.5),
        ("<think>r</think><answer>42", 0.75),
        ("<think>a</think><think>b</think><answer>42</answer>", 0.5),  # repeated tags earn nothing
        ("no tags", 0.0),
    ],
)
def test_tag_count_reward_gives_a_quarter_per_tag_seen_exactly_once(text, expected):
    assert tag_count_reward(completions=[text, chat(text)], trainer_state=object()) == [expected, expected]


# ---------------------------------------------------------------- answer extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 1. the last <answer> block wins over everything else, and a \boxed inside it is unwrapped
        (r"\boxed{1} #### 2 <answer>3</answer> <answer> 4 </answer>", "4"),
        (r"<answer>so \boxed{\frac{1}{2}}</answer> \boxed{9}", r"\frac{1}{2}"),
        # 2. the last balanced \boxed{}, nested braces kept; an unclosed last one falls back to the one before
        (r"first \boxed{1}, then \boxed{\frac{3}{4}} #### 9", r"\frac{3}{4}"),
        (r"\boxed{7} and a truncated \boxed{\frac{1}{", "7"),
        # 3. the line after the last ####
        ("work\n#### 1 \n#### 1,234\nA: 5", "1,234"),
        # 4. a last line A: x
        ("She makes 9 * 2 = $18\nA: 18", "18"),
        ("A: 3\nmore text", None),  # only the last line counts
        ("Answer: 12", "12"),
        # 5. the last "The answer is x", up to the end of the sentence
        ("The answer is 3. Checking: the answer is 4.5. Done.", "4.5"),
        ("so the final answer is: $1,000.", "$1,000"),
        # nothing stated: no "last number" guessing
        ("I computed 5 + 6 = 11", None),
        ("<answer>  </answer>", None),
        ("", None),
    ],
)
def test_extract_answer_order(text, expected):
    assert extract_answer(text) == expected


def test_reference_answer_reduces_gsm8k_and_math_references():
    assert reference_answer("Janet sells 9 eggs.\n#### 18") == "18"
    assert reference_answer(r"so the result is $\boxed{\dfrac{1}{3}}$.") == r"\dfrac{1}{3}"
    assert reference_answer("She makes $18.\nA: 18") == "18"
    assert reference_answer(" 0.75 ") == "0.75"
    assert reference_answer(7) == "7"
    assert reference_answer(None) is None
    assert reference_answer("   ") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", Fraction(1234)),
        ("$18", Fraction(18)),
        (r"\$18.00", Fraction(18)),
        ("18.0", Fraction(18)),
        ("18.", Fraction(18)),
        ("-3.50", Fraction(-7, 2)),
        (".5", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        (r"\frac{3}{4}", Fraction(3, 4)),
        (r"-\dfrac{1}{2}", Fraction(-1, 2)),
        ("1 1/2", Fraction(3, 2)),
        ("50%", Fraction(50)),
        ("1{,}234", Fraction(1234)),
        ("\u22124", Fraction(-4)),  # unicode minus
        ("18 dollars", Fraction(18)),
        ("1.8 billion", Fraction(1_800_000_000)),
        ("1,5", None),  # decimal comma: not a plain number
        ("1,2345", None),
        ("2 pi", None),
        ("x + 1", None),
        ("3/0", None),
        ("", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    ("completion", "reference"),
    [
        ("A: 1,234", "1234"),
        ("A: $18", "18"),
        ("A: 18.0", "18"),
        ("The answer is 18.", "#### 18"),
        ("<answer>0.75</answer>", "3/4"),
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        ("A: 18 dollars", "Janet sells 9 eggs a day.\n#### 18"),
        ("A: 50%", "50"),
        ("A: 50%", "0.5"),  # a percentage may mean either, as math-verify also accepts
        # not plain numbers: math-verify decides
        (r"\boxed{\sqrt{2}/2}", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{2^{10}}", "1024"),
        (r"\boxed{x = 5}", "5"),
        (r"<answer>\{2, 1\}</answer>", r"\{1,2\}"),
    ],
)
def test_accuracy_reward_credits_equal_answers(completion, reference):
    assert accuracy_reward(completions=[completion], answer=[reference]) == [1.0]


@pytest.mark.parametrize(
    ("completion", "reference"),
    [
        ("A: 1,235", "1234"),
        ("A: 18.01", "18"),
        ("<answer>0.76</answer>", "3/4"),
        (r"\boxed{\frac{1}{3}}", "0.33"),
        ("A: -1.8 billion", "2"),
        ("A: 10+John's age", "10"),  # an expression is not its first number
        ("A: 2 pi", "2"),
        ("I computed 18 eggs", "18"),  # no stated answer
        (r"<answer>7</answer> \boxed{18}", "18"),  # the answer block wins
        (r"\boxed{x+1}", "2"),
    ],
)
def test_accuracy_reward_rejects_different_answers(completion, reference):
    assert accuracy_reward(completions=[completion], answer=[reference]) == [0.0]


def test_accuracy_reward_reads_conversations_and_ignores_other_columns():
    rewards = accuracy_reward(
        prompts=[chat("q"), chat("q")],
        completions=[chat("<think>9*2</think><answer>18</answer>"), chat("A: 17")],
        completion_ids=[[1, 2], [3]],
        answer=["#### 18", "#### 18"],
        question=["q", "q"],
        trainer_state=None,
        log_extra=None,
    )
    assert rewards == [1.0, 0.0]


def test_accuracy_reward_none_means_unscorable():
    rewards = accuracy_reward(
        completions=["A: 1", "A: 2", "A: 3", "A: 4", "A: 5"],
        answer=[None, None, "", "\\", "5"],
        solution=["#### 1", None, None, None, "#### 99"],
    )
    # row 0 falls back to `solution`; 1-3 have no usable reference; 4 prefers `answer` over `solution`
    assert rewards == [1.0, None, None, None, 1.0]
    assert accuracy_reward(completions=[r"\boxed{\frac{1}{2}}"], solution=[r"$\frac{1}{2}$"]) == [1.0]


def test_accuracy_reward_needs_a_reference_column():
    with pytest.raises(ValueError, match=r"'answer' or 'solution' dataset column \(got columns: question\)"):
        accuracy_reward(completions=["A: 1"], question=["q"])
    with pytest.raises(ValueError, match="got 2 completions but 1 'answer' values"):
        accuracy_reward(completions=["A: 1", "A: 2"], answer=["1"])


@pytest.mark.parametrize(
    "garbage",
    [
        r"\boxed{\frac{\frac{\frac{",
        r"<answer>\left( \right] \sqrt[}{</answer>",
        "<answer>" + "(" * 60 + "</answer>",
        "<answer>\x00\ufffd\U0001f600</answer>",
        r"\boxed{\begin{pmatrix} 1 & 2 \end{pmatrix}}",
    ],
)
def test_accuracy_reward_never_raises_on_model_text(garbage):
    assert accuracy_reward(completions=[garbage], answer=["3"]) == [0.0]


def test_accuracy_reward_gives_up_on_slow_math_at_the_timeout(monkeypatch):
    # A tower of exponents keeps math-verify busy for longer than its timeout; it counts as wrong.
    monkeypatch.setattr(accuracy_module, "MATH_VERIFY_TIMEOUT_SECONDS", 1)
    assert accuracy_reward(completions=[r"\boxed{" + "x^" * 40 + "2}"], answer=["3"]) == [0.0]


def test_math_verify_timeout_is_used_on_the_main_thread_only(monkeypatch):
    seen = []

    def recording_parse(text, parsing_timeout):
        seen.append((threading.current_thread() is threading.main_thread(), parsing_timeout))
        return []

    monkeypatch.setattr(accuracy_module, "parse", recording_parse)
    accuracy_reward(completions=[r"\boxed{\sqrt{5}}"], answer=[r"\sqrt{7}"])
    worker = threading.Thread(
        target=accuracy_reward, kwargs={"completions": [r"\boxed{\sqrt{6}}"], "answer": [r"\sqrt{8}"]}
    )
    worker.start()
    worker.join(timeout=60)
    assert seen == [(True, accuracy_module.MATH_VERIFY_TIMEOUT_SECONDS), (False, None)]


def test_accuracy_reward_works_off_the_main_thread():
    # math-verify's signal-based timeout raises off the main thread; the reward must switch it off there.
    results = []
    worker = threading.Thread(
        target=lambda: results.append(
            accuracy_reward(completions=[r"\boxed{\sqrt{2}/2}", "A: 3"], answer=[r"\frac{1}{\sqrt{2}}", "4"])
        )
    )
    worker.start()
    worker.join(timeout=60)
    assert results == [[1.0, 0.0]]


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_any_integer_in_any_everyday_format_verifies(n):
    sign = "-" if n < 0 else ""
    formats = [f"{n:,}", f"{sign}${abs(n):,}", f"{n}.0", f"{n:,}.00", f"${n}.", f"\\boxed{{{n}}}"]
    completions = [f"A: {text}" for text in formats]
    assert accuracy_reward(completions=completions, answer=[str(n)] * len(formats)) == [1.0] * len(formats)
    assert accuracy_reward(completions=[f"A: {n + 1:,}"], answer=[str(n)]) == [0.0]


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("accuracy", accuracy_reward),
        ("accuracy_reward", accuracy_reward),
        ("format", format_reward),
        ("format_reward", format_reward),
        ("tag_count", tag_count_reward),
        ("tag-count", tag_count_reward),
        ("tag_count_reward", tag_count_reward),
    ],
)
def test_get_reward_by_registered_name(name, expected):
    assert get_reward(name) is expected


def test_get_reward_length_with_options():
    assert available_rewards() == ["accuracy", "code_tests", "format", "length", "reasoning_gym",
                                   "soft_overlong_punishment", "tag_count"]
    assert get_reward("length")(completions=["a" * 49]) == [-1.0]
    assert get_reward("length_reward", ideal_length=30)(completions=["a" * 40]) == [-10.0]
    assert reward_name(get_reward("length", ideal_length=30)) == "length_reward"


def test_get_reward_rejects_options_a_reward_does_not_take():
    with pytest.raises(RewardSpecError, match=r"reward 'format' has no option scale \(it takes none\)"):
        get_reward("format", scale=2)
    with pytest.raises(RewardSpecError, match=r"has no option ideal \(its options: ideal_length\)"):
        get_reward("length", ideal=3)
    with pytest.raises(
        RewardSpecError, match="got a bad option: ideal_length must be a non-negative integer"
    ):
        get_reward("length", ideal_length=-5)


# ---------------------------------------------------------------- soft overlong punishment


def test_soft_overlong_punishment_by_hand():
    # L = 10, C = 4: no penalty up to 6 tokens, then (6 - n) / 4 down to -1 at 10, and -1 beyond
    reward = get_reward("soft_overlong_punishment", max_completion_len=10, soft_punish_cache=4)
    lengths = [0, 6, 7, 8, 9, 10, 11, 50]
    completion_ids = [[3] * n for n in lengths]
    assert reward(completion_ids=completion_ids) == [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    # TRL's docstring example: 90 tokens with L = 100, C = 20 -> -0.5
    assert get_reward("soft_overlong_punishment_reward", max_completion_len=100, soft_punish_cache=20)(
        completion_ids=[[1] * 90]) == [-0.5]
    # no cache: only completions over L are punished, with -1
    assert get_reward("soft_overlong_punishment", max_completion_len=5, soft_punish_cache=0)(
        completion_ids=[[1] * 5, [1] * 6]) == [0.0, -1.0]
    assert reward_name(reward) == "soft_overlong_punishment_reward"


def test_soft_overlong_punishment_counts_tokens_not_text():
    reward = get_reward("soft_overlong_punishment", max_completion_len=4, soft_punish_cache=2)
    # the texts are ignored: the token ids (which include EOS, as TRL's) decide
    assert reward(prompts=["p", "p"], completions=["a" * 100, ""], completion_ids=[[1, 2], [1, 2, 3, 4]]) == [
        0.0, -1.0]


@pytest.mark.parametrize(("options", "phrase"), [
    ({}, ("reward 'soft_overlong_punishment' needs the option max_completion_len, soft_punish_cache; set "
         "reward_kwargs: {soft_overlong_punishment: {max_completion_len: ..., soft_punish_cache: ...}}")),
    ({"max_completion_len": 512}, "needs the option soft_punish_cache"),
    ({"max_completion_len": 0, "soft_punish_cache": 0}, "got a bad option: max_completion_len must be >= 1"),
    ({"max_completion_len": 10, "soft_punish_cache": 11}, "soft_punish_cache must be in [0, max_completion_len=10]"),
    ({"max_completion_len": 10, "soft_punish_cache": -1}, "soft_punish_cache must be in [0, max_completion_len=10]"),
    ({"max_completion_len": 10.5, "soft_punish_cache": 2}, "max_completion_len must be an integer number of tokens"),
    ({"max_completion_len": 10, "soft_punish_cache": 2, "cache": 3}, "has no option cache"),
])
def test_soft_overlong_punishment_option_errors(options, phrase):
    with pytest.raises(RewardSpecError) as error:
        get_reward("soft_overlong_punishment", **options)
    assert phrase in str(error.value) and "\n" not in str(error.value)


USER_REWARDS = """
CALLS = []

def shout_reward(completions, **kwargs):
    return [float(c.isupper()) for c in completions]

def scaled_reward(completions, scale=1.0, **kwargs):
    return [scale * len(c) for c in completions]

class ContainsReward:
    def __init__(self, word="yes"):
        self.word = word
    def __call__(self, completions, **kwargs):
        return [float(self.word in c) for c in completions]

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `my_rewards_pkg.rewards` importable from sys.path, removed again after the test."""
    package = tmp_path / "my_rewards_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rewards.py").write_text(USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards_pkg.rewards"
    for name in ("my_rewards_pkg", "my_rewards_pkg.rewards"):
        sys.modules.pop(name, None)


def test_get_reward_by_module_function(user_module):
    shout = get_reward(f"{user_module}:shout_reward")
    assert shout(prompts=["p", "p"], completions=["YES", "no"], completion_ids=None, answer=["a", "b"]) == [
        1.0,
        0.0,
    ]
    assert reward_name(shout) == "shout_reward"
    # TRL's dotted form works too
    assert get_reward(f"{user_module}.shout_reward") is shout
    # options bind to a function with functools.partial, and construct a class
    scaled = get_reward(f"{user_module}:scaled_reward", scale=0.5)
    assert scaled(completions=["abcd"]) == [2.0]
    assert reward_name(scaled) == "scaled_reward"
    contains = get_reward(f"{user_module}:ContainsReward", word="cat")
    assert contains(completions=["a cat", "a dog"]) == [1.0, 0.0]
    assert reward_name(contains) == "ContainsReward"


def test_get_reward_by_file_path_runs_user_code_only_when_named(tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    reward_file = tmp_path / "my rewards-v2.py"  # a file name that is not a module name
    reward_file.write_text(f"open({str(marker)!r}, 'a').write('x')\n" + USER_REWARDS)
    assert not marker.exists()
    shout = get_reward(f"{reward_file}:shout_reward")
    assert marker.read_text() == "x"
    assert shout(completions=["LOUD", "quiet"]) == [1.0, 0.0]
    # relative to the current directory; the file runs once per path
    monkeypatch.chdir(tmp_path)
    contains = get_reward("./my rewards-v2.py:ContainsReward")
    assert contains(completions=["yes"]) == [1.0]
    assert marker.read_text() == "x"


def test_get_reward_runs_trl_reward_functions_unchanged():
    think = get_reward("trl.rewards:think_format_reward")
    assert think(prompts=[chat("q")], completions=[chat("<think>r</think>42")], completion_ids=[[1]]) == [1.0]
    assert reward_name(think) == "think_format_reward"


def test_get_reward_passes_callables_through():
    def my_reward(completions, bonus=0.0, **kwargs):
        return [bonus] * len(completions)

    assert get_reward(my_reward) is my_reward
    assert get_reward(my_reward, bonus=2.0)(completions=["a"]) == [2.0]


HOW_TO = (
    "use a registered name: accuracy, code_tests, format, length, reasoning_gym, soft_overlong_punishment, tag_count, "
    + "or module:function / path/to/file.py:function"
)


def test_bad_specs_say_what_is_wrong_and_how_to_fix_it(tmp_path, user_module):
    def error(spec):
        with pytest.raises(RewardSpecError) as info:
            get_reward(spec)
        message = str(info.value)
        assert "\n" not in message
        assert isinstance(info.value, ValueError)
        return message

    assert error("foo:bar") == f"reward 'foo:bar' could not be imported: No module named 'foo' ({HOW_TO})"
    assert error("lenght") == f"reward 'lenght' is not a registered name; did you mean 'length'? ({HOW_TO})"
    assert error("accuracy_rewards").startswith(
        "reward 'accuracy_rewards' is not a registered name; did you mean 'accuracy'?"
    )
    assert error("zzz") == f"reward 'zzz' is not a registered name; ({HOW_TO})"
    assert error(f"{user_module}:missing") == (
        f"reward '{user_module}:missing' not found: '{user_module}' has no 'missing' "
        "(callables there: ContainsReward, scaled_reward, shout_reward)"
    )
    assert error(f"{user_module}:NOT_A_FUNCTION") == (
        f"reward '{user_module}:NOT_A_FUNCTION' is not callable: 'NOT_A_FUNCTION' is a int; "
        "point the spec at a reward function"
    )
    assert (
        error("rewards.py")
        == "reward 'rewards.py' names a file but no function in it; write 'rewards.py:function_name'"
    )
    assert (
        error(f"{user_module}:")
        == f"reward '{user_module}:' is incomplete; write module:function or path/to/file.py:function"
    )
    missing_file = tmp_path / "nope.py"
    assert (
        error(f"{missing_file}:f")
        == f"reward '{missing_file}:f' could not be imported: no file {missing_file} "
        "(relative paths start at the current directory; fix the path)"
    )
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_module_xyz\n")
    assert (
        error(f"{broken}:f")
        == f"reward '{broken}:f' could not be imported: No module named 'not_a_real_module_xyz' ({HOW_TO})"
    )
    crashing = tmp_path / "crashing.py"
    crashing.write_text("raise RuntimeError('bad\\nconfig')\n")
    assert (
        error(f"{crashing}:f")
        == f"reward '{crashing}:f' could not be imported: RuntimeError: bad config ({HOW_TO})"
    )
    assert "_reasonrl_reward_crashing" not in " ".join(sys.modules)  # a failed file leaves nothing behind
    assert error("") == f"reward '' is not a name or a spec ({HOW_TO})"


# ---------------------------------------------------------------- reward_name


def test_reward_name_for_functions_partials_and_objects():
    class Judge:
        def __call__(self, completions, **kwargs):
            return [0.0] * len(completions)

    def custom(completions, **kwargs):
        return [0.0] * len(completions)

    assert reward_name(accuracy_reward) == "accuracy_reward"
    assert reward_name(make_length_reward(10)) == "length_reward"
    assert reward_name(functools.partial(functools.partial(custom, a=1), b=2)) == "custom"
    assert reward_name(Judge()) == "Judge"
