"""JSONL examples: `{"prompt", "answer"}` or `{"prompt", "choices", "answer"}`."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from mergekit_swarm.core.errors import UtilityError
from mergekit_swarm.core.storage import read_jsonl

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()
    answer_index: int = -1  # index into `choices` for multiple-choice examples


def load_examples(path: Path, *, multiple_choice: bool = False, answers: bool = True) -> list[Example]:
    """Read and check every line; errors name the file and line. With `answers=False`
    (reward model, judge) only `prompt` is required."""
    rows = read_jsonl(path, UtilityError, what="data file")
    examples = [_example(row, f"{path}:{number}", multiple_choice, answers) for number, row in rows]
    if not examples:
        raise UtilityError(f"data file {path} has no examples")
    return examples


def _example(row: object, where: str, multiple_choice: bool, answers: bool) -> Example:
    if not isinstance(row, dict):
        raise UtilityError(f"{where}: expected a JSON object")
    required = ("prompt", *(("answer",) if answers or multiple_choice else ()), *(("choices",) if multiple_choice else ()))
    for key in required:
        if key not in row:
            raise UtilityError(f"{where}: missing key {key!r}")
    prompt, answer = row["prompt"], row.get("answer", "")
    if not isinstance(prompt, str):
        raise UtilityError(f"{where}: 'prompt' must be a string")
    if not answers:
        return Example(prompt, str(answer))
    if not multiple_choice:
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or str(answer).strip() == "":
            raise UtilityError(f"{where}: 'answer' must be a non-empty string or number")
        return Example(prompt, str(answer))
    choices = row["choices"]
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
        raise UtilityError(f"{where}: 'choices' must be a list of at least 2 strings")
    index = _answer_index(answer, choices)
    if index is None:
        raise UtilityError(
            f"{where}: answer {answer!r} is not a choice index, a letter A-{LETTERS[len(choices) - 1]} or a choice"
        )
    return Example(prompt, choices[index], tuple(choices), index)


def _answer_index(answer: object, choices: list[str]) -> int | None:
    if isinstance(answer, int) and not isinstance(answer, bool):
        return answer if 0 <= answer < len(choices) else None
    if not isinstance(answer, str):
        return None
    if answer in choices:
        return choices.index(answer)
    letter = answer.strip().upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return LETTERS.index(letter)
    return None
