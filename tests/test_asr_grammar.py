"""Grammar building and result matching (no model needed)."""

from __future__ import annotations

import json

import pytest

from asr.grammar import Grammar, build_grammar, match, normalize

MENU = {
    "balance": ["잔액", "잔액 조회"],
    "agent": ["상담원", "사람"],
    "english": ["English", "영어"],
}


def test_grammar_lists_phrases_then_unk() -> None:
    grammar = build_grammar(MENU)
    assert json.loads(grammar.json) == ["잔액", "잔액 조회", "상담원", "사람", "english", "영어", "[unk]"]
    assert grammar.phrase_to_choice["잔액 조회"] == "balance"
    assert grammar.phrase_to_choice["english"] == "english"
    assert grammar.phrases == ["잔액", "잔액 조회", "상담원", "사람", "english", "영어"]


def test_grammar_unpacks_as_pair_and_keeps_korean_readable() -> None:
    grammar_json, phrase_to_choice = build_grammar({"yes": ["네"]})
    assert "네" in grammar_json  # not \\uXXXX escapes
    assert phrase_to_choice == {"네": "yes"}


def test_grammar_without_unk() -> None:
    assert json.loads(build_grammar({"a": ["하나"]}, unk=False).json) == ["하나"]


def test_normalisation_of_phrases() -> None:
    grammar = build_grammar({"a": ["  Hello,   World! ", "hello world"], "b": ["ＡＢＣ"], "c": "네"})
    assert grammar.phrase_to_choice == {"hello world": "a", "abc": "b", "네": "c"}
    assert normalize("Don't—STOP…") == "don't stop"
    assert normalize("<UNK> 바나나") == "[unk] 바나나"
    assert normalize("नमस्ते") == "नमस्ते"  # combining marks stay inside the word


def test_phrase_shared_by_two_choices_is_rejected() -> None:
    with pytest.raises(ValueError, match="both choice"):
        build_grammar({"a": ["네"], "b": ["네!"]})


def test_empty_grammar_is_rejected() -> None:
    with pytest.raises(ValueError):
        build_grammar({"a": ["", "  ", "[unk]"]})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("잔액", "balance"),
        ("잔액 조회", "balance"),
        ("  잔액   조회 ", "balance"),
        ("잔액 잔액", "balance"),  # the same choice twice
        ("ENGLISH", "english"),
        ("영어 english", "english"),
        ("상담원", "agent"),
        ("", None),
        ("[unk]", None),
        ("<UNK>", None),
        ("[unk] 잔액", None),  # anything outside the grammar is no match
        ("잔액 상담원", None),  # two different choices
        ("조회", None),  # only part of a phrase
        ("바나나", None),
    ],
)
def test_match(text: str, expected: str | None) -> None:
    assert match(text, build_grammar(MENU).phrase_to_choice) == expected


def test_match_accepts_a_hand_made_mapping() -> None:
    assert match("hello world", {"Hello, World": "greet"}) == "greet"


def test_grammar_type() -> None:
    assert isinstance(build_grammar(MENU), Grammar)
