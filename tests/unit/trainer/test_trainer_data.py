"""Dataset validation: formats, row counts and precise line/field error reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunehouse.trainer.data import DataIssue, formats_for_train_mode, load_records, validate_dataset

from .conftest import chat_rows, text_rows, write_jsonl


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_chat_file_validates_as_chat(tmp_path: Path) -> None:
    report = validate_dataset(write_jsonl(tmp_path / "a.jsonl", chat_rows(repeats=3)))
    assert (report.format, report.rows, report.errors) == ("chat", 12, [])


def test_prompt_response_objects_validate(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Hi", "response": "Hello"},
        {"prompt": "Bye", "response": [["See you"]], "system": "Be kind"},
    ]
    report = validate_dataset(write_jsonl(tmp_path / "a.jsonl", rows))
    assert (report.format, report.rows, report.errors) == ("prompt_response", 2, [])


def test_qianfan_multi_turn_array_becomes_a_conversation(tmp_path: Path) -> None:
    row = [
        {"system": "You are terse.", "prompt": "Hi", "response": [["Hello", "Hey"]]},
        {"prompt": "Bye", "response": [["See you"]]},
    ]
    path = write_jsonl(tmp_path / "q.jsonl", [row])
    assert validate_dataset(path).format == "prompt_response"
    _, records = load_records(path)
    assert [(t.role, t.content) for t in records[0].turns] == [
        ("system", "You are terse."),
        ("user", "Hi"),
        ("assistant", "Hello"),  # first candidate only
        ("user", "Bye"),
        ("assistant", "See you"),
    ]


def test_text_file_validates_as_text(tmp_path: Path) -> None:
    report = validate_dataset(write_jsonl(tmp_path / "t.jsonl", text_rows(repeats=2)))
    assert (report.format, report.rows, report.errors) == ("text", 8, [])


def test_blank_lines_are_skipped_but_line_numbers_stay_physical(tmp_path: Path) -> None:
    good = json.dumps({"text": "fine"})
    path = write_lines(tmp_path / "t.jsonl", [good, "", "   ", good, json.dumps({"text": ""})])
    report = validate_dataset(path)
    assert report.rows == 3
    assert report.errors == [DataIssue(5, "text", "must not be empty")]


def test_bad_json_reports_its_line(tmp_path: Path) -> None:
    good = json.dumps({"text": "fine"})
    report = validate_dataset(write_lines(tmp_path / "t.jsonl", [good, good, '{"text": "unterminated']))
    assert [(e.line, e.field) for e in report.errors] == [(3, "json")]


def test_bad_role_message_format(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    report = validate_dataset(write_jsonl(tmp_path / "c.jsonl", [chat_rows()[0], chat_rows()[1], row]))
    assert [str(e) for e in report.errors] == [
        "line 3: messages[1].role: must be one of system, user, assistant"
    ]


def test_missing_messages_in_chat_file(tmp_path: Path) -> None:
    report = validate_dataset(write_jsonl(tmp_path / "c.jsonl", [chat_rows()[0], {"conversation": []}]))
    assert [(e.line, e.field) for e in report.errors] == [(2, "messages")]


def test_mixed_formats_are_rejected_per_line(tmp_path: Path) -> None:
    report = validate_dataset(write_jsonl(tmp_path / "c.jsonl", [chat_rows()[0], {"text": "prose"}]))
    assert report.format == "chat"
    assert report.errors[0].line == 2 and "text format" in report.errors[0].message


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "assistant", "content": "I speak first"}], "messages[0].role"),
        ([{"role": "user", "content": "hi"}], "messages"),  # no assistant turn at all
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "messages[1].role"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 2}],
            "messages[1].weight",
        ),
        ([{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}], "messages[0].content"),
    ],
)
def test_chat_structure_errors_name_the_field(tmp_path: Path, messages: list[dict], field: str) -> None:
    report = validate_dataset(write_jsonl(tmp_path / "c.jsonl", [{"messages": messages}]))
    assert [(e.line, e.field) for e in report.errors] == [(1, field)]


def test_empty_file_is_an_error_at_line_zero(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    report = validate_dataset(path)
    assert (report.format, report.rows) == (None, 0)
    assert [(e.line, e.field) for e in report.errors] == [(0, "file")]


def test_error_list_is_capped_but_counted(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"text": "ok"})] + ["nope"] * 30)
    report = validate_dataset(path, max_errors=5)
    assert len(report.errors) == 5 and report.more_errors == 25 and report.rows == 31


def test_formats_for_train_mode() -> None:
    assert formats_for_train_mode("sft") == {"chat", "prompt_response"}
    assert formats_for_train_mode("pretrain") == {"text"}


def test_validation_modules_do_not_import_torch() -> None:
    code = (
        "import sys, tunehouse.trainer.data, tunehouse.trainer.events, tunehouse.trainer.spec;"
        "sys.exit(1 if {'torch', 'transformers'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_dashscope_preference_pairs_accept_objects_and_strings(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Sky color?"},
            ],
            "chosen": {"role": "assistant", "content": "Blue.", "loss_weight": 1},
            "rejected": {"role": "assistant", "content": "Green."},
        },
        {"messages": [{"role": "user", "content": "2+2?"}], "chosen": "Four.", "rejected": "Five."},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    report = validate_dataset(path)
    assert (report.format, report.rows, report.errors) == ("preference", 2, [])
    _, records = load_records(path, formats_for_train_mode("dpo"))
    assert (records[0].chosen, records[0].rejected, records[1].chosen) == ("Blue.", "Green.", "Four.")
    assert records[0].turns[-1].role == "user" and all(t.weight == 0 for t in records[0].turns)


def test_openai_preference_pairs_validate(tmp_path: Path) -> None:
    row = {
        "input": {"messages": [{"role": "user", "content": "Name a cat."}]},
        "preferred_output": [{"role": "assistant", "content": "Pebble."}],
        "non_preferred_output": [{"role": "assistant", "content": "Cat."}],
    }
    path = write_jsonl(tmp_path / "o.jsonl", [row])
    assert validate_dataset(path).format == "preference"
    record = load_records(path)[1][0]
    assert (record.chosen, record.rejected, record.turns[0].content) == ("Pebble.", "Cat.", "Name a cat.")


GOOD_PAIR = {"messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({**GOOD_PAIR, "rejected": {"role": "user", "content": "b"}}, "rejected.role"),
        ({**GOOD_PAIR, "chosen": {"role": "assistant"}}, "chosen.content"),
        ({**GOOD_PAIR, "chosen": ""}, "chosen"),
        ({"messages": GOOD_PAIR["messages"], "chosen": "a"}, "rejected"),
        (
            {
                **GOOD_PAIR,
                "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
            },
            "messages",
        ),
        ({"chosen": "a", "rejected": "b"}, "messages"),
        (
            {
                "input": {"messages": [{"role": "user", "content": "q"}]},
                "preferred_output": [],
                "non_preferred_output": [],
            },
            "preferred_output",
        ),
        ({"preferred_output": [{"role": "assistant", "content": "a"}]}, "input.messages"),
        (
            {
                "input": {"messages": [{"role": "robot", "content": "q"}]},
                "preferred_output": [{"role": "assistant", "content": "a"}],
                "non_preferred_output": [{"role": "assistant", "content": "b"}],
            },
            "input.messages[0].role",
        ),
    ],
)
def test_bad_preference_rows_name_line_and_field(tmp_path: Path, row: dict, field: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD_PAIR, GOOD_PAIR, row])
    report = validate_dataset(path)
    assert report.format == "preference"
    assert (report.errors[0].line, report.errors[0].field) == (3, field), report.errors


def test_chat_line_in_a_preference_file_is_reported(tmp_path: Path) -> None:
    report = validate_dataset(write_jsonl(tmp_path / "p.jsonl", [GOOD_PAIR, chat_rows()[0]]))
    assert (report.errors[0].line, report.errors[0].field) == (2, "chosen")
    assert "chat format" in report.errors[0].message


def test_dpo_mode_takes_only_preference_files() -> None:
    assert formats_for_train_mode("dpo") == {"preference"}


def test_assistant_turns_may_carry_reasoning_content(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."},
        ]
    }
    _, records = load_records(write_jsonl(tmp_path / "r.jsonl", [row]))
    assert records[0].turns[1].reasoning == "Two and two make four."


def test_reasoning_content_is_refused_outside_assistant_turns_with_its_line(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {
            "messages": [
                {"role": "user", "content": "a", "reasoning_content": "x"},
                {"role": "assistant", "content": "b", "reasoning_content": 3},
            ]
        },
    ]
    report = validate_dataset(write_jsonl(tmp_path / "r.jsonl", rows))
    assert report.errors == [
        DataIssue(2, "messages[0].reasoning_content", "only allowed on assistant turns"),
        DataIssue(2, "messages[1].reasoning_content", "must be a string, got int"),
    ]
