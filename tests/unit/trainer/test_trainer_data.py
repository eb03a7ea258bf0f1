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
