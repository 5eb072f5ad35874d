"""The pure scoring rules: answer extraction, equivalence, and the arithmetic check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_b.rules import (
    ArithmeticCheck,
    as_integer,
    check_arithmetic,
    extract_answer,
    math_equivalent,
    normalize_answer,
)


class TestExtractAnswer:
    @pytest.mark.parametrize(
        ("solution", "expected"),
        [
            # \boxed{}, nested braces kept whole, the last box wins
            ("so the result is \\boxed{42}.", "42"),
            ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
            ("first \\boxed{3}, corrected: \\boxed{4}", "4"),
            ("The answer is $\\boxed{-7}$.", "-7"),
            # GSM8K's #### N
            ("48 / 2 = 24\n#### 24", "24"),
            ("#### 1,234", "1,234"),
            # Answer: N, The answer is N, Final answer: N
            ("Answer: 17", "17"),
            ("The answer is 3.5.", "3.5"),
            ("Final answer: x = 5", "5"),
            ("the answer is: $\\frac{3}{4}$", "\\frac{3}{4}"),
            ("answer: 5 + 3 = 8", "8"),  # the result of a stated sum
            ("The answer is **12** apples.", "12"),
            ("Answer: 3/4", "3/4"),
            ("Answer: -0.25", "-0.25"),
            ("The answer is 42. Then I checked 7 more.", "42"),
            ("The answer is 1,000,000 dollars", "1,000,000"),
            ("Answer: \\$12.50", "12.50"),
            # the last number when nothing is marked
            ("I got 3 apples, then 4 more, so 7", "7"),
            ("10-3 leaves", "3"),  # a hyphen between digits is not a sign
            ("it drops to −5", "-5"),  # unicode minus
            # nothing to find
            ("I do not know.", None),
            ("", None),
            ("\\boxed{unclosed", None),
        ],
    )
    def test_formats(self, solution: str, expected: str | None) -> None:
        assert extract_answer(solution) == expected

    def test_boxed_beats_later_text(self) -> None:
        # an explicit box is the answer even when numbers follow it
        assert extract_answer("\\boxed{9} (I checked 3 times)") == "9"

    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_never_raises(self, text: str) -> None:
        answer = extract_answer(text)
        assert answer is None or isinstance(answer, str)


class TestEquivalence:
    @pytest.mark.parametrize(
        ("answer", "reference", "equal"),
        [
            ("42", "42", True),  # integers
            ("41", "42", False),
            ("-3", "-3", True),  # negative numbers
            ("-3", "3", False),
            ("1,234", "1234", True),  # thousands separators, either side
            ("1234", "1,234", True),
            ("1,234", "1243", False),
            ("2.50", "2.5", True),  # decimals
            ("2.51", "2.5", False),
            ("0.5", "1/2", True),  # fractions
            ("3/4", "0.75", True),
            ("2/3", "0.5", False),
            ("\\frac{1}{2}", "0.5", True),  # LaTeX
            ("\\dfrac{3}{4}", "3/4", True),
            ("\\frac{1}{3}", "0.5", False),
            ("\\sqrt{4}", "2", True),
            ("x = 5", "5", True),
            ("10^6", "1,000,000", True),
        ],
    )
    def test_math_equivalent(self, answer: str, reference: str, equal: bool) -> None:
        assert math_equivalent(answer, reference) is equal

    @pytest.mark.parametrize(
        ("text", "value"),
        [("42", 42), ("-7", -7), ("1,234", 1234), ("$5$", 5), ("\\$5", 5), ("5.0", None)],
    )
    def test_as_integer(self, text: str, value: int | None) -> None:
        assert as_integer(text) == value

    def test_normalize(self) -> None:
        assert normalize_answer(" $1,234,567$ ") == "1234567"
        assert normalize_answer("(1,2,3)") == "(1,2,3)"  # a tuple is not a separated number


class TestArithmetic:
    @pytest.mark.parametrize(
        ("solution", "checked", "correct"),
        [
            ("3 x 4 = 12, then 12 + 5 = 18", 2, 1),
            ("2 + 3 = 5", 1, 1),
            ("2 + 3 = 6", 1, 0),
            ("7 ÷ 7 = 1 and 2 − 5 = −3", 2, 2),  # unicode operators and minus
            ("2 \\times 3 + 1 = 7", 1, 1),  # LaTeX, with precedence
            ("2 + 3 * 4 = 20", 1, 0),  # precedence: 14, not 20
            ("$1,200 / 4 = $300", 1, 1),  # currency and separators
            ("10 / 3 = 3.33", 1, 1),  # right to the precision written
            ("10 / 3 = 3.4", 1, 0),
            ("5 - -3 = 8", 1, 1),
            ("1/0 = 5", 1, 0),  # division by zero is not a true statement
            ("x + 2 + 3 = 10", 0, 0),  # part of an equation, not arithmetic
            ("2 + 3 = 4 + 1", 0, 0),  # expression on the right: skipped
            ("(2 + 3) * 4 = 20", 0, 0),  # parentheses are not parsed
            ("2^3 + 1 = 9", 0, 0),
            ("50 * 0.2 = 10%", 0, 0),
            ("no arithmetic here", 0, 0),
        ],
    )
    def test_statements(self, solution: str, checked: int, correct: int) -> None:
        assert check_arithmetic(solution) == ArithmeticCheck(checked, correct)

    def test_fraction(self) -> None:
        assert ArithmeticCheck(4, 3).fraction == 0.75
        assert ArithmeticCheck(0, 0).fraction is None

    def test_huge_operands_do_not_raise(self) -> None:
        # ints over Python's 4300-digit conversion limit count as a failed statement
        assert check_arithmetic("9" * 5000 + " + 1 = 2") == ArithmeticCheck(1, 0)

    def test_long_adversarial_text_finishes(self) -> None:
        # digit runs and separators that could make a careless regex backtrack for ages
        text = ("1," * 5000) + "1" + " + " + "2" * 20_000
        assert check_arithmetic(text).checked == 0
        assert extract_answer(text) is not None

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from("0123456789 +-*/x=.,$\\()^%abc−÷×")))
    def test_never_raises(self, text: str) -> None:
        result = check_arithmetic(text)
        assert 0 <= result.correct <= result.checked
