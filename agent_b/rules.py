"""Pure scoring rules: find the final answer in a solution, compare it with a reference, and
re-check the arithmetic the solution writes out.

Everything here is deterministic and never raises on any text; `math_equivalent` calls
math-verify, whose timeouts need a main thread, so the service runs it in worker processes
(`agent_b/workers.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# A number as solutions write it: sign, thousands separators, decimals, a plain fraction.
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}(?:/\d+)?")
_LEADING_NUMBER_RE = re.compile(rf"\\?\$?\s*({_NUMBER}(?:/\d+)?)(?![\w,/^%]|\.\d)")
_INTEGER_RE = re.compile(r"-?\d{1,100}")
_SEPARATOR_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES_RE = re.compile(r"####\s*([^\n]*)")
_PHRASE_RE = re.compile(r"\b(?:final\s+)?answer\s*(?:is\s*:?|:|=)\s*([^\n]*)", re.IGNORECASE)
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_MAX_PHRASE_CHARS = 200

# `a op b [op c ...] = d`, as in "3 x 4 = 12", "$1,200 / 4 = $300", "2 \times 3 + 1 = 7".
_OP = r"(?:[-+*/x×÷·]|\\times|\\cdot|\\div)"
_OPERAND = rf"\\?\$?{_NUMBER}"
_STATEMENT_RE = re.compile(
    rf"(?<![\w.,$\\])({_OPERAND}(?:\s*{_OP}\s*{_OPERAND})+)\s*=\s*({_OPERAND})"
)
_TERM_RE = re.compile(rf"\s*({_OP})?\s*\\?\$?({_NUMBER})")
_MAX_STATEMENTS = 100


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced; None when absent or unclosed."""
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip() or None
    return None


def _strip_delimiters(text: str) -> str:
    text = text.strip().rstrip(".;,!").strip().strip("*_").strip()
    for left, right in _DELIMITERS:
        if text.startswith(left) and text.endswith(right) and len(text) > len(left + right):
            return text[len(left) : -len(right)].strip()
    return text


def _answer_in_phrase(rest: str) -> str | None:
    """The answer after 'Answer:' or '####': what follows the sentence's last '=' ('x = 5'
    answers 5), a number when it starts with one, else that expression ('\\frac{1}{2}')."""
    boxed = _last_boxed(rest)
    if boxed is not None:
        return boxed
    sentence = re.split(r"\.(?:\s|$)", _strip_delimiters(rest), maxsplit=1)[0]
    # 'Answer: 5 + 3 = 8' answers 8
    sentence = _strip_delimiters(sentence.rpartition("=")[2])
    number = _LEADING_NUMBER_RE.match(sentence)
    if number:
        return number.group(1)
    return sentence if 0 < len(sentence) <= _MAX_PHRASE_CHARS else None


def extract_answer(solution: str) -> str | None:
    """The solution's final answer, by the first rule that finds one.

    1. the last `\\boxed{...}`; 2. the last `#### N` (GSM8K); 3. the last 'Answer: N',
    'The answer is N' or 'Final answer: N'; 4. the last number in the text.

    >>> extract_answer("so x = 4 and the answer is 1,234.")
    '1,234'
    """
    solution = solution.replace("−", "-")
    boxed = _last_boxed(solution)
    if boxed is not None:
        return boxed
    for pattern in (_HASHES_RE, _PHRASE_RE):
        found = [m.group(1) for m in pattern.finditer(solution)]
        answer = _answer_in_phrase(found[-1]) if found else None
        if answer is not None:
            return answer
    numbers = NUMBER_RE.findall(solution)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str) -> str:
    """Drop thousands separators ('1,234' -> '1234') and outer math delimiters."""
    return _SEPARATOR_RE.sub("", _strip_delimiters(answer.replace("−", "-")))


def as_integer(answer: str) -> int | None:
    """The answer as an int when it is exactly one (after normalising), else None."""
    text = normalize_answer(answer).removeprefix("\\$").removeprefix("$")
    return int(text) if _INTEGER_RE.fullmatch(text) else None


def math_equivalent(answer: str, reference: str, timeout_s: int = 2) -> bool:
    """math-verify's equivalence of the extracted answer and the reference (decimals,
    fractions, LaTeX, sets...). Uses signal.alarm: call it on a main thread only."""
    from math_verify import parse, verify

    def parsed(text: str) -> list:
        text = normalize_answer(text)
        wrapped = text if "$" in text or "\\boxed" in text else f"${text}$"
        return parse(wrapped, parsing_timeout=timeout_s) or parse(text, parsing_timeout=timeout_s)

    gold, target = parsed(reference), parsed(answer)
    return bool(gold and target and verify(gold, target, timeout_seconds=timeout_s))


@dataclass(frozen=True)
class ArithmeticCheck:
    checked: int
    correct: int

    @property
    def fraction(self) -> float | None:
        return self.correct / self.checked if self.checked else None


def _number(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def _evaluate(lhs: str) -> Fraction:
    """Left side of a statement with the usual precedence (x, / before +, -)."""
    pending: list[tuple[str, Fraction]] = []  # (+ or -, product so far)
    for match in _TERM_RE.finditer(lhs):
        op, value = match.group(1) or "+", _number(match.group(2))
        if op in {"+", "-"}:
            pending.append((op, value))
        elif op in {"/", "÷", "\\div"}:
            sign, product = pending[-1]
            pending[-1] = (sign, product / value)
        else:
            sign, product = pending[-1]
            pending[-1] = (sign, product * value)
    terms = [product if sign == "+" else -product for sign, product in pending]
    return sum(terms, Fraction(0))


def _statement_holds(lhs: str, rhs: str) -> bool:
    """Exact, or right to the precision written ('10 / 3 = 3.33' holds)."""
    stated = rhs.lstrip("\\$")
    value, claimed = _evaluate(lhs), _number(stated)
    decimals = len(stated.partition(".")[2])
    return abs(value - claimed) <= (Fraction(1, 2 * 10**decimals) if decimals else 0)


def check_arithmetic(solution: str) -> ArithmeticCheck:
    """Re-evaluate every `a op b = c` the solution states; count those that hold.

    Statements inside longer expressions ('x + 2 + 3 = 10', '2 + 3 = 4 + 1') are skipped:
    only a chain of numbers and + - x / with a single number on the right is checked.

    >>> check_arithmetic("3 x 4 = 12, then 12 + 5 = 18")
    ArithmeticCheck(checked=2, correct=1)
    """
    text = solution.replace("−", "-")
    checked = correct = 0
    for match in _STATEMENT_RE.finditer(text):
        before = text[: match.start()].rstrip()[-1:]
        after = text[match.end() :].lstrip()[:1]
        if (before and before in "+-*/x×÷·^(") or (after and after in "+-*/x×÷·^(%"):
            continue
        try:
            holds = _statement_holds(match.group(1), match.group(2))
        except (ZeroDivisionError, ValueError):  # 1/0, or an int too long to convert
            holds = False
        checked += 1
        correct += holds
        if checked == _MAX_STATEMENTS:
            break
    return ArithmeticCheck(checked, correct)
