"""Natural-language skills for a small instruct model, each scored by exact match without ambiguity.

Every skill is a seeded generator of (prompt, answer) pairs drawn from a large space (thousands of
distinct prompts), so that dev and test can be disjoint, with answers that a wrong reply is unlikely
to contain by accident (several digits, or made-up words that appear in no question). SmolLM2-135M-
Instruct knows each of them a little (it adds 12 + 7 wrong) and a short LoRA fine-tune teaches them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

_ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def number_words(n: int) -> str:
    """English words of 1 <= n <= 999, as written in "three hundred forty-two"."""
    hundreds, rest = divmod(n, 100)
    parts = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if 10 <= rest < 20:
        parts.append(_TEENS[rest - 10])
    elif rest:
        tens, ones = divmod(rest, 10)
        parts.append("-".join(p for p in (_TENS[tens], _ONES[ones]) if p))
    return " ".join(parts)


def pseudo_word(rng: random.Random, syllables: int = 2) -> str:
    """A pronounceable made-up word ("kelo", "madu"): no question or stray reply contains it by chance."""
    return "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", str(a + b)


def _subtract(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(30, 99)
    b = rng.randint(10, a - 11)
    return f"What is {a} - {b}?", str(a - b)


def _successor(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(100, 9998)
    return f"Which number comes right after {n}?", str(n + 1)


def _digits(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(21, 999)
    return f"Write {number_words(n)} in digits.", str(n)


def _join(rng: random.Random) -> tuple[str, str]:
    a, b = pseudo_word(rng), pseudo_word(rng)
    return f"Join '{a}' and '{b}' into one word.", a + b


def _repeat(rng: random.Random) -> tuple[str, str]:
    word = pseudo_word(rng)
    return f"Write '{word}' three times.", f"{word} {word} {word}"


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = pseudo_word(rng)
    return f"Spell '{word}' backwards.", word[::-1]


def _double(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(13, 499)
    return f"What is twice {n}?", str(2 * n)


SKILLS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add,
    "subtract": _subtract,
    "successor": _successor,
    "digits": _digits,
    "join": _join,
    "repeat": _repeat,
    "reverse": _reverse,
    "double": _double,
}


def make_examples(skills: Sequence[str], n: int, seed: int) -> list[dict]:
    """`n` examples, round-robin over `skills`, distinct prompts (a draw seen before is drawn again)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    for i in range(n):
        skill = SKILLS[skills[i % len(skills)]]
        for _ in range(1000):
            prompt, answer = skill(rng)
            if prompt not in seen:
                break
        else:
            raise ValueError(f"skill {skills[i % len(skills)]!r} has too few distinct prompts for {n} examples")
        seen.add(prompt)
        rows.append({"prompt": prompt, "answer": answer})
    return rows
