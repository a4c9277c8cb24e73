"""The math environment's calculator: exact rational arithmetic on untrusted expression text.

Grammar (a recursive-descent parser that evaluates as it parses; nothing is ever ``eval``-ed)::

    expression := term (("+" | "-") term)*
    term       := unary (("*" | "/") unary)*
    unary      := ("-" | "+") unary | power
    power      := atom ("**" unary)?          right-associative; -2 ** 2 is -(2 ** 2), as in Python
    atom       := NUMBER | "(" expression ")"
    NUMBER     := 12 | 2.5 | .5               decimals are exact: 0.1 is 1/10

Values are ``fractions.Fraction``. Every way an expression can cost unbounded time or memory
has a limit: its length, its nesting depth (parentheses, unary signs and chained powers), the
size of an exponent, and the size of every intermediate numerator and denominator. A bad
expression raises ``CalculatorError`` with a short message the policy can read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_EXPRESSION_CHARS = 200
MAX_NESTING = 24
MAX_EXPONENT = 64
#: Every intermediate numerator and denominator stays below 2**MAX_VALUE_BITS (about 3.4e38).
MAX_VALUE_BITS = 128
MAX_ANSWER_CHARS = 64

_DECIMAL = r"(?:\d+(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(_DECIMAL)
_NAME = re.compile(r"[A-Za-z_]\w*")
_OPERATORS = ("**", "+", "-", "*", "/", "(", ")")
# A final answer: an optionally signed integer (thousands may be grouped with commas), decimal
# or fraction. Answers are at most MAX_ANSWER_CHARS long, so the match cost is bounded.
_ANSWER = re.compile(
    r"(?P<sign>[+-]?)\s*(?:(?P<num>\d+)\s*/\s*(?P<den>\d+)|(?P<grouped>\d{1,3}(?:,\d{3})+(?:\.\d+)?)|(?P<plain>"
    + _DECIMAL
    + r"))"
)


class CalculatorError(ValueError):
    """A malformed or out-of-limits expression; the message is meant for the policy."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "number" or one of _OPERATORS
    text: str
    value: Fraction | None = None


def evaluate(expression: str) -> Fraction:
    """The exact value of ``expression``, or ``CalculatorError`` saying what is wrong."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens = _tokenize(expression)
    if not tokens:
        raise CalculatorError("empty expression")
    return _Parser(tokens).parse()


def format_value(value: Fraction) -> str:
    """``48``, ``-3/4``: the one text form of a value, in observations and task files alike."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def parse_value(text: str) -> Fraction:
    """Inverse of ``format_value``; ``ValueError`` for any other text."""
    match = re.fullmatch(r"-?\d{1,40}(?:/\d{1,40})?", text)
    if match is None:
        raise ValueError(f"not an exact value: {text!r}")
    value = Fraction(text)
    if format_value(value) != text:
        raise ValueError(f"not in canonical form: {text!r}")
    return value


def parse_number(text: str) -> Fraction | None:
    """A final answer's number (``7``, ``-3/4``, ``2.5``, ``1,200``), or ``None`` if it is not one."""
    text = text.strip()
    if len(text) > MAX_ANSWER_CHARS:
        return None
    match = _ANSWER.fullmatch(text)
    if match is None:
        return None
    sign = -1 if match["sign"] == "-" else 1
    if match["num"] is not None:
        denominator = int(match["den"])
        return None if denominator == 0 else sign * Fraction(int(match["num"]), denominator)
    return sign * Fraction((match["grouped"] or match["plain"]).replace(",", ""))


def _tokenize(expression: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(expression):
        char = expression[position]
        if char.isspace():
            position += 1
            continue
        number = _NUMBER.match(expression, position)
        if number is not None:
            tokens.append(_Token("number", number.group(), _checked(Fraction(number.group()), "number")))
            position = number.end()
            continue
        operator = next((op for op in _OPERATORS if expression.startswith(op, position)), None)
        if operator is not None:
            tokens.append(_Token(operator, operator))
            position += len(operator)
            continue
        name = _NAME.match(expression, position)
        if name is not None:
            raise CalculatorError(f"names are not allowed , only numbers and + - * / ** ( ) : {name.group()[:20]!r}")
        hint = " ( use ** for powers )" if char == "^" else ""
        raise CalculatorError(f"unexpected character {char!r}{hint}")
    return tokens


def _checked(value: Fraction, what: str = "result") -> Fraction:
    if value.numerator.bit_length() > MAX_VALUE_BITS or value.denominator.bit_length() > MAX_VALUE_BITS:
        raise CalculatorError(f"{what} too large")
    return value


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._position = 0
        self._depth = 0

    def parse(self) -> Fraction:
        value = self._expression()
        if self._position < len(self._tokens):
            raise CalculatorError(f"unexpected {self._tokens[self._position].text!r}")
        return value

    def _peek(self) -> str | None:
        return self._tokens[self._position].kind if self._position < len(self._tokens) else None

    def _take(self) -> _Token:
        if self._position >= len(self._tokens):
            raise CalculatorError("expression ends too early")
        token = self._tokens[self._position]
        self._position += 1
        return token

    def _nest(self) -> None:
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise CalculatorError(f"nesting deeper than {MAX_NESTING}")

    def _expression(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            operator = self._take().kind
            right = self._term()
            value = _checked(value + right if operator == "+" else value - right)
        return value

    def _term(self) -> Fraction:
        value = self._unary()
        while self._peek() in ("*", "/"):
            operator = self._take().kind
            right = self._unary()
            if operator == "*":
                value = _checked(value * right)
            elif right == 0:
                raise CalculatorError("division by zero")
            else:
                value = _checked(value / right)
        return value

    def _unary(self) -> Fraction:
        if self._peek() in ("-", "+"):
            sign = -1 if self._take().kind == "-" else 1
            self._nest()
            value = sign * self._unary()
            self._depth -= 1
            return value
        return self._power()

    def _power(self) -> Fraction:
        base = self._atom()
        if self._peek() != "**":
            return base
        self._take()
        self._nest()
        exponent = self._unary()
        self._depth -= 1
        return _power(base, exponent)

    def _atom(self) -> Fraction:
        token = self._take()
        if token.kind == "number":
            assert token.value is not None
            return token.value
        if token.kind == "(":
            self._nest()
            value = self._expression()
            if self._peek() != ")":
                raise CalculatorError("missing ')'")
            self._take()
            self._depth -= 1
            return value
        raise CalculatorError(f"unexpected {token.text!r}")


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise CalculatorError("exponent must be a whole number")
    power = exponent.numerator
    if abs(power) > MAX_EXPONENT:
        raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
    if base == 0 and power < 0:
        raise CalculatorError("division by zero")
    # Checked before computing, so a huge result is never built.
    if abs(power) * max(base.numerator.bit_length(), base.denominator.bit_length()) > MAX_VALUE_BITS + abs(power):
        raise CalculatorError("result too large")
    return _checked(base**power)
