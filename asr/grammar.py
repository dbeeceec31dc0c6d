"""Vosk grammars built from menu choices, and matching results back to choices.

A menu offers choices by key, each with spoken keywords and synonyms for one
language::

    grammar = build_grammar({"balance": ["잔액", "잔액 조회"], "agent": ["상담원"]})
    grammar.json              # '["잔액", "잔액 조회", "상담원", "[unk]"]'
    match("잔액 조회", grammar.phrase_to_choice)   # "balance"

The grammar limits Vosk to these phrases plus ``[unk]`` (anything else), which
is far more accurate than free dictation for a short menu. A result matches a
choice when its words are one phrase of that choice, or the same choice's
phrases repeated ("영어 영어"); anything else (``[unk]``, an empty result,
phrases of different choices) is no match.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from .models import UNK

__all__ = ["Grammar", "build_grammar", "match", "normalize"]

_UNK_TOKENS = frozenset({"[unk]", "<unk>"})


def _is_word_char(ch: str) -> bool:
    # Letters, digits, combining marks and apostrophes belong to words; any
    # other character separates them (Vosk vocabularies hold no punctuation).
    return ch.isalnum() or ch == "'" or unicodedata.category(ch).startswith("M")


def normalize(text: str) -> str:
    """Normalise a phrase or a recognised text for comparison.

    NFKC (so full-width and compatibility forms compare equal), lower case,
    punctuation to spaces, whitespace collapsed. ``[unk]``/``<UNK>`` tokens are
    kept (as ``[unk]``) so that they still count as "outside the grammar".
    """
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for raw in text.split():
        if raw in _UNK_TOKENS:
            tokens.append(UNK)
            continue
        tokens.extend("".join(ch if _is_word_char(ch) else " " for ch in raw).split())
    return " ".join(t.strip("'") for t in tokens if t.strip("'"))


class Grammar(NamedTuple):
    """A Vosk grammar and the way back from phrases to choice keys.

    Unpacks as ``(grammar_json, phrase_to_choice)``.
    """

    json: str
    phrase_to_choice: dict[str, str]

    @property
    def phrases(self) -> list[str]:
        """The grammar's phrases (without ``[unk]``)."""
        return list(self.phrase_to_choice)


def build_grammar(choices: Mapping[str, Iterable[str]], *, unk: bool = True) -> Grammar:
    """Build a Vosk grammar from ``{choice_key: [keyword, synonym, ...]}``.

    Phrases are normalised (see :func:`normalize`); empty ones are ignored and
    duplicates within one choice collapse.

    Raises:
        ValueError: the same phrase belongs to two choices (the menu would be
            ambiguous), or no choice has any phrase.
    """
    phrase_to_choice: dict[str, str] = {}
    for key, phrases in choices.items():
        if isinstance(phrases, str):  # a lone string is one phrase, not characters
            phrases = [phrases]
        for phrase in phrases:
            norm = normalize(phrase)
            if not norm or norm == UNK:
                continue
            owner = phrase_to_choice.setdefault(norm, key)
            if owner != key:
                raise ValueError(f"phrase {norm!r} is used by both choice {owner!r} and choice {key!r}")
    if not phrase_to_choice:
        raise ValueError("a grammar needs at least one non-empty phrase")
    phrases_json = [*phrase_to_choice, UNK] if unk else list(phrase_to_choice)
    return Grammar(json.dumps(phrases_json, ensure_ascii=False), phrase_to_choice)


def match(text: str, phrase_to_choice: Mapping[str, str]) -> str | None:
    """The choice key a recognised text stands for, or None.

    The normalised text must consist entirely of grammar phrases (longest
    phrase first) that all belong to the same choice. ``[unk]``, an empty text
    and phrases of different choices are no match.
    """
    tokens = normalize(text).split()
    if not tokens:
        return None
    # phrase_to_choice keys are normalised by build_grammar; normalise again in
    # case a caller built the mapping by hand.
    by_tokens = {tuple(normalize(p).split()): c for p, c in phrase_to_choice.items()}
    longest = max((len(k) for k in by_tokens), default=0)
    found: set[str] = set()
    i = 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            choice = by_tokens.get(tuple(tokens[i : i + n]))
            if choice is not None:
                found.add(choice)
                i += n
                break
        else:
            return None  # a word outside the grammar, [unk] included
    return found.pop() if len(found) == 1 else None
