"""Tests for the rule-based mock completion engine and the UTF-16 offset conversion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collab_server.autocomplete import (
    CompletionEngine,
    RuleBasedEngine,
    Suggestion,
    utf16_offset_to_index,
)

ENGINE = RuleBasedEngine()
LANGUAGES = ["python", "py", "JavaScript", "js", "ts", "typescriptreact", "cobol", "", " PY "]


def complete_at_end(code: str, language: str) -> list[Suggestion]:
    """Complete with the cursor at the end of ``code``, where the user is typing."""
    return ENGINE.complete(code, len(code), language)


def labels_at_end(code: str, language: str) -> list[str]:
    return [s.label for s in complete_at_end(code, language)]


def by_label(suggestions: list[Suggestion], label: str) -> Suggestion:
    matches = [s for s in suggestions if s.label == label]
    assert matches, f"no suggestion labelled {label!r} in {suggestions}"
    return matches[0]


# --- keywords and builtins ---------------------------------------------------


def test_python_builtin_prefix_completes_print_with_remainder_only() -> None:
    print_suggestion = by_label(complete_at_end("pri", "python"), "print")
    assert print_suggestion.text in ("nt(", "nt")


def test_python_builtin_does_not_add_paren_when_one_follows_cursor() -> None:
    code = "pri()"
    print_suggestion = by_label(ENGINE.complete(code, 3, "python"), "print")
    assert print_suggestion.text == "nt"


def test_python_keyword_prefix_is_completed() -> None:
    assert by_label(complete_at_end("whi", "python"), "while").text == "le"


def test_typescript_offers_interface_but_javascript_does_not() -> None:
    assert "interface" in labels_at_end("inter", "typescript")
    assert "interface" not in labels_at_end("inter", "javascript")


def test_no_keyword_suggestions_inside_python_comment() -> None:
    assert "print" not in labels_at_end("x = 1  # pri", "python")


def test_no_keyword_suggestions_inside_string() -> None:
    assert "print" not in labels_at_end('x = "pri', "python")
    assert "console" not in labels_at_end("const s = `cons", "javascript")


def test_no_keyword_suggestions_inside_javascript_block_comment() -> None:
    assert "console" not in labels_at_end("/* cons", "javascript")


def test_number_literal_gets_no_word_completion() -> None:
    assert complete_at_end("total = 1\nx = 12", "python") == []


def test_python_import_line_offers_modules_not_keywords() -> None:
    labels = labels_at_end("import o", "python")
    assert labels[0] == "os"
    assert "or" not in labels


# --- identifiers from the document ------------------------------------------


def test_identifier_defined_earlier_is_suggested() -> None:
    code = "total_count = 0\nfor item in items:\n    tot"
    assert by_label(complete_at_end(code, "python"), "total_count").text == "al_count"


def test_identifier_defined_after_cursor_is_suggested() -> None:
    code = "const x = ren\nfunction renderPage() {}"
    assert by_label(ENGINE.complete(code, len("const x = ren"), "javascript"), "renderPage")


def test_nearer_identifier_ranks_above_distant_one() -> None:
    code = "alpha_far = 1\n" + "pass\n" * 400 + "alpha_near = 2\nalp"
    labels = labels_at_end(code, "python")
    assert labels.index("alpha_near") < labels.index("alpha_far")


def test_more_frequent_identifier_ranks_above_rarer_one() -> None:
    code = "beta_rare = 1\n" + "beta_common = 1\n" * 5 + "bet"
    labels = labels_at_end(code, "python")
    assert labels.index("beta_common") < labels.index("beta_rare")


def test_word_being_typed_is_not_suggested_to_itself() -> None:
    assert "uniqueword" not in labels_at_end("uniqueword", "python")


def test_unknown_language_suggests_only_document_identifiers() -> None:
    assert labels_at_end("foobar = 1\nfoo", "cobol") == ["foobar"]
    assert labels_at_end("pri", "cobol") == []


# --- member access -----------------------------------------------------------


def test_javascript_console_member_completion() -> None:
    suggestions = complete_at_end("console.", "javascript")
    labels = [s.label for s in suggestions]
    assert "log" in labels
    assert "error" in labels
    assert by_label(suggestions, "log").text == "log("


def test_javascript_member_completion_filters_by_prefix() -> None:
    suggestions = complete_at_end("console.er", "javascript")
    assert by_label(suggestions, "error").text == "ror("
    assert "log" not in [s.label for s in suggestions]


def test_javascript_math_members() -> None:
    assert by_label(complete_at_end("Math.fl", "js"), "floor").text == "oor("


def test_no_keywords_after_a_dot() -> None:
    assert "while" not in labels_at_end("obj.whi", "python")


def test_python_self_attribute_completion() -> None:
    code = (
        "class Counter:\n"
        "    def __init__(self):\n"
        "        self.value = 0\n"
        "\n"
        "    def bump(self):\n"
        "        self.va"
    )
    assert by_label(complete_at_end(code, "python"), "value").text == "lue"


def test_python_self_dot_lists_assigned_attributes_and_methods() -> None:
    code = (
        "class User:\n"
        "    def __init__(self, name):\n"
        "        self.name = name\n"
        "        self.age = 0\n"
        "\n"
        "    def greet(self):\n"
        "        return self."
    )
    labels = labels_at_end(code, "python")
    assert {"name", "age", "greet"} <= set(labels)
    assert "__init__" not in labels


def test_javascript_this_attribute_completion() -> None:
    code = "class A {\n  constructor() {\n    this.count = 0;\n  }\n  inc() {\n    this.c"
    assert by_label(complete_at_end(code, "javascript"), "count").text == "ount"


def test_python_module_members_after_dot() -> None:
    assert by_label(complete_at_end("import os\nos.path.j", "python"), "join").text == "oin("


# --- context snippets --------------------------------------------------------


def test_python_def_body_after_signature_and_newline() -> None:
    suggestions = complete_at_end("def handler(event):\n", "python")
    assert suggestions[0].label == "pass"
    assert suggestions[0].text == "    pass"


def test_python_def_body_does_not_repeat_existing_indentation() -> None:
    suggestions = complete_at_end("def handler(event):\n    ", "python")
    assert by_label(suggestions, "pass").text == "pass"


def test_python_main_guard_snippet() -> None:
    top = complete_at_end("if __na", "python")[0]
    assert top.text == 'me__ == "__main__":\n    main()'
    assert top.label == 'if __name__ == "__main__": main()'


def test_python_from_module_suggests_import() -> None:
    assert by_label(complete_at_end("from os ", "python"), "import").text == "import "


def test_python_from_import_suggests_module_members_without_call_paren() -> None:
    suggestions = complete_at_end("from collections import def", "python")
    assert by_label(suggestions, "defaultdict").text == "aultdict"


def test_javascript_function_signature_gets_body() -> None:
    assert ") {\n}" in [s.text for s in complete_at_end("function add(a, b", "javascript")]


def test_javascript_import_clause_snippet() -> None:
    assert "{ } from '';" in [s.text for s in complete_at_end("import ", "javascript")]
    assert "from '';" in [s.text for s in complete_at_end("import React ", "typescript")]


def test_javascript_arrow_after_parameter_list() -> None:
    assert by_label(complete_at_end("const f = (a, b) ", "js"), "=>").text == "=> "
    assert by_label(complete_at_end("const f = (a, b) =", "js"), "=>").text == "> "


def test_unclosed_bracket_is_closed_with_low_confidence() -> None:
    closer = by_label(complete_at_end("print(foo", "python"), ")")
    assert closer.text == ")"
    assert closer.confidence < 0.5


def test_unclosed_quote_is_closed() -> None:
    assert by_label(complete_at_end('name = "abc', "python"), '"').text == '"'


def test_no_closer_when_editor_already_closed_bracket() -> None:
    code = "print(foo)"
    assert ")" not in [s.label for s in ENGINE.complete(code, len("print(foo"), "python")]


def test_brackets_inside_strings_and_comments_are_ignored() -> None:
    assert ")" not in labels_at_end('x = "(" # (\ny = 1', "python")


# --- ranking, cap, determinism -------------------------------------------------


def test_results_sorted_by_confidence_and_capped_at_default_five() -> None:
    suggestions = complete_at_end("console.", "javascript")
    confidences = [s.confidence for s in suggestions]
    assert len(suggestions) == 5
    assert confidences == sorted(confidences, reverse=True)


def test_max_suggestions_caps_results() -> None:
    code = "console."
    assert len(RuleBasedEngine(max_suggestions=2).complete(code, len(code), "js")) == 2


def test_max_suggestions_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RuleBasedEngine(max_suggestions=0)


def test_suggestion_rejects_confidence_outside_unit_interval() -> None:
    with pytest.raises(ValueError):
        Suggestion(text="x", label="x", confidence=1.5)


def test_same_input_gives_same_output() -> None:
    code = "import os\nvalue_a = 1\nvalue_b = 2\nval"
    assert ENGINE.complete(code, len(code), "python") == ENGINE.complete(code, len(code), "python")


def test_output_identical_across_processes_with_different_hash_seeds() -> None:
    """String hashing is randomised per process; ranking must not depend on it."""
    script = (
        "import json\n"
        "from collab_server.autocomplete import RuleBasedEngine\n"
        "code = 'abc_one = abc_two = abc_three = 1\\nimport o\\nab'\n"
        "out = RuleBasedEngine(max_suggestions=50).complete(code, len(code), 'python')\n"
        "print(json.dumps([[s.text, s.label, s.confidence] for s in out]))\n"
    )
    root = Path(__file__).resolve().parents[1]
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=root,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1
    assert json.loads(outputs.pop())


def test_rule_based_engine_satisfies_protocol() -> None:
    engine: CompletionEngine = RuleBasedEngine()
    assert engine.complete("pri", 3, "python")


# --- language aliases ----------------------------------------------------------


@pytest.mark.parametrize("alias", ["py", "PY", "Python", " python "])
def test_python_aliases(alias: str) -> None:
    assert complete_at_end("pri", alias) == complete_at_end("pri", "python")


@pytest.mark.parametrize("alias", ["js", "JS", "javascriptreact", "JavaScript"])
def test_javascript_aliases(alias: str) -> None:
    assert complete_at_end("console.", alias) == complete_at_end("console.", "javascript")


@pytest.mark.parametrize("alias", ["ts", "TS", "typescriptreact", "TypeScript"])
def test_typescript_aliases(alias: str) -> None:
    assert "interface" in labels_at_end("inter", alias)


# --- odd input -------------------------------------------------------------------


@given(st.text(), st.integers(), st.sampled_from(LANGUAGES))
def test_never_raises_and_returns_valid_suggestions(code: str, cursor: int, language: str) -> None:
    suggestions = ENGINE.complete(code, cursor, language)
    assert isinstance(suggestions, list)
    assert len(suggestions) <= 5
    for suggestion in suggestions:
        assert isinstance(suggestion, Suggestion)
        assert 0.0 <= suggestion.confidence <= 1.0
        assert suggestion.text


@given(st.text(alphabet="()[]{}'\"`#/*\\\n .:=_abcdefis$", max_size=200), st.integers())
def test_never_raises_on_code_made_of_syntax_characters(code: str, cursor: int) -> None:
    for language in ("python", "javascript", "typescript"):
        assert isinstance(ENGINE.complete(code, cursor, language), list)


@pytest.mark.parametrize("cursor", [-10, -1, 10**9])
def test_out_of_range_cursor_is_clamped(cursor: int) -> None:
    code = "value_one = 1\nval"
    clamped = 0 if cursor < 0 else len(code)
    assert ENGINE.complete(code, cursor, "python") == ENGINE.complete(code, clamped, "python")


def test_empty_code_gives_no_suggestions() -> None:
    assert ENGINE.complete("", 0, "python") == []


def test_binary_garbage_with_nul_characters() -> None:
    code = "\x00\xff\x01garbage_word\x00\ufffd\x7f gar"
    assert "garbage_word" in labels_at_end(code, "python")


def test_five_megabyte_document_completes() -> None:
    filler = "x_filler = 1\n" * (5 * 1024 * 1024 // 13)
    code = filler + "near_cursor_name = 2\nnear_"
    assert by_label(complete_at_end(code, "python"), "near_cursor_name").text == "cursor_name"
    assert isinstance(ENGINE.complete(code, 0, "python"), list)


def test_identifiers_outside_the_window_are_not_considered() -> None:
    code = "far_away_name = 1\n" + "pass\n" * 5_000 + "far_"
    assert "far_away_name" not in labels_at_end(code, "python")


# --- UTF-16 offsets --------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "index"),
    [(0, 0), (1, 1), (2, 1), (3, 2), (4, 3)],
)
def test_utf16_offset_with_emoji(offset: int, index: int) -> None:
    # "😀" is one code point but two UTF-16 code units; offset 2 is mid-pair.
    assert utf16_offset_to_index("a😀b", offset) == index


def test_utf16_offset_with_cjk_is_one_unit_per_character() -> None:
    text = "中文字x"
    assert [utf16_offset_to_index(text, i) for i in range(5)] == [0, 1, 2, 3, 4]


def test_utf16_offset_with_consecutive_emoji() -> None:
    text = "😀😀中"
    assert [utf16_offset_to_index(text, i) for i in range(6)] == [0, 0, 1, 1, 2, 3]


@pytest.mark.parametrize(("offset", "index"), [(-5, 0), (100, 3), (10**12, 3)])
def test_utf16_offset_out_of_range_is_clamped(offset: int, index: int) -> None:
    assert utf16_offset_to_index("a😀b", offset) == index


@given(st.text(), st.data())
def test_utf16_offset_of_every_code_point_boundary_round_trips(
    text: str, data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(text)))
    offset = len(text[:index].encode("utf-16-le")) // 2
    assert utf16_offset_to_index(text, offset) == index


def test_utf16_offset_counts_lone_surrogate_as_one_unit() -> None:
    text = "\ud800ab"
    assert [utf16_offset_to_index(text, i) for i in range(4)] == [0, 1, 2, 3]
