"""Dataset validation and loading for JSON-lines training files.

Pure standard library: the API server imports this to validate uploads, so nothing here may pull in
torch or transformers. Tokenization lives in ``tokenization.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DataFormat = Literal["chat", "prompt_response", "text", "preference"]
ROLES = ("system", "user", "assistant")
# DashScope pairs carry chosen/rejected next to messages; OpenAI's carry input + (non_)preferred_output.
_PREFERENCE_KEYS = {"chosen", "rejected", "preferred_output", "non_preferred_output"}


@dataclass(frozen=True)
class DataIssue:
    line: int  # 1-based; 0 means the file as a whole
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass
class DatasetReport:
    format: DataFormat | None
    rows: int  # non-blank lines, valid or not
    errors: list[DataIssue] = field(default_factory=list)
    more_errors: int = 0  # issues found beyond max_errors and left out of ``errors``

    @property
    def ok(self) -> bool:
        return not self.errors and self.format is not None and self.rows > 0

    def summary(self, name: str = "") -> str:
        """One human-readable paragraph, e.g. for an error event or an HTTP 400 body."""
        prefix = f"{name}: " if name else ""
        lines = [f"{prefix}{issue}" for issue in self.errors]
        if self.more_errors:
            lines.append(f"{prefix}... and {self.more_errors} more issue(s)")
        return "\n".join(lines)


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    weight: int = 1  # 0 = keep as context, no loss on this assistant turn
    reasoning: str | None = None  # an assistant turn's reasoning_content (DeepSeek / Qwen3 style)


@dataclass(frozen=True)
class Record:
    """One normalized training row: a conversation (sft formats), plain text (pretrain) or a
    preference pair (dpo: ``turns`` is the prompt, ending on a user turn)."""

    line: int
    turns: tuple[Turn, ...] = ()
    text: str | None = None
    chosen: str | None = None
    rejected: str | None = None


class DataError(Exception):
    """The data cannot be trained on; carries the issues for the ``error`` event."""


def formats_for_train_mode(train_mode: str) -> set[str]:
    if train_mode == "sft":
        return {"chat", "prompt_response"}
    if train_mode == "pretrain":
        return {"text"}
    if train_mode == "dpo":
        return {"preference"}
    raise ValueError(f"unknown train_mode {train_mode!r}")


def detect_format(obj: Any) -> DataFormat | None:
    if isinstance(obj, list):
        return "prompt_response"
    if not isinstance(obj, dict):
        return None
    if _PREFERENCE_KEYS & obj.keys():
        return "preference"
    if "messages" in obj:
        return "chat"
    if "prompt" in obj or "response" in obj:
        return "prompt_response"
    if "text" in obj:
        return "text"
    return None


def _nonblank_lines(path: Path) -> Iterator[tuple[int, str]]:
    # utf-8-sig: files saved by Windows editors start with a BOM that json.loads rejects.
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, line


def _describe(obj: Any) -> str:
    fmt = detect_format(obj)
    return f"looks like {fmt} format" if fmt else f"is a JSON {type(obj).__name__}"


def _check_text(value: Any, where: str, line: int, allow_empty: bool = False) -> list[DataIssue]:
    if not isinstance(value, str):
        return [DataIssue(line, where, f"must be a string, got {type(value).__name__}")]
    if not allow_empty and not value.strip():
        return [DataIssue(line, where, "must not be empty")]
    return []


def _parse_messages(messages: Any, line: int, prefix: str = "messages") -> tuple[list[Turn], list[DataIssue]]:
    """Role, content, weight and alternation checks shared by chat rows and preference prompts."""
    if not isinstance(messages, list) or not messages:
        return [], [DataIssue(line, prefix, "must be a non-empty list of {role, content} objects")]
    issues: list[DataIssue] = []
    turns: list[Turn] = []
    expected = "user"  # after an optional leading system turn, user and assistant alternate
    for i, msg in enumerate(messages):
        where = f"{prefix}[{i}]"
        if not isinstance(msg, dict):
            issues.append(DataIssue(line, where, "must be an object with role and content"))
            continue
        role = msg.get("role")
        if role not in ROLES:
            issues.append(DataIssue(line, f"{where}.role", "must be one of system, user, assistant"))
            continue
        issues += _check_text(msg.get("content"), f"{where}.content", line, allow_empty=role == "system")
        weight = 1
        if "weight" in msg:
            raw = msg["weight"]
            if role != "assistant":
                issues.append(DataIssue(line, f"{where}.weight", "only allowed on assistant turns"))
            elif isinstance(raw, bool) or raw not in (0, 1):
                issues.append(DataIssue(line, f"{where}.weight", "must be 0 or 1"))
            else:
                weight = int(raw)
        reasoning = msg.get("reasoning_content")
        if reasoning is not None:
            if role != "assistant":
                issues.append(
                    DataIssue(line, f"{where}.reasoning_content", "only allowed on assistant turns")
                )
            else:
                issues += _check_text(reasoning, f"{where}.reasoning_content", line, allow_empty=True)
        if role == "system":
            if i != 0:
                issues.append(DataIssue(line, f"{where}.role", "system is only allowed as the first message"))
        elif role != expected:
            issues.append(
                DataIssue(line, f"{where}.role", f"expected {expected} here (turns must alternate)")
            )
        else:
            expected = "assistant" if role == "user" else "user"
        if isinstance(msg.get("content"), str):
            thought = reasoning if isinstance(reasoning, str) else None
            turns.append(Turn(role, msg["content"], weight, thought))
    return turns, issues


def _parse_chat(obj: Any, line: int) -> tuple[Record | None, list[DataIssue]]:
    if not isinstance(obj, dict) or "messages" not in obj:
        return None, [
            DataIssue(line, "messages", f"missing; the file is chat format but this line {_describe(obj)}")
        ]
    turns, issues = _parse_messages(obj["messages"], line)
    if not issues:
        if not any(t.role == "assistant" for t in turns):
            issues.append(DataIssue(line, "messages", "needs at least one assistant turn"))
        elif not any(t.role == "assistant" and t.weight for t in turns):
            issues.append(DataIssue(line, "messages", "every assistant turn has weight 0; nothing to learn"))
    return (None if issues else Record(line, turns=tuple(turns))), issues


def _reply(value: Any, where: str, line: int, as_list: bool) -> tuple[str | None, list[DataIssue]]:
    """A preferred/rejected reply: an assistant message object or a plain string (DashScope), or a
    list holding exactly one assistant message (OpenAI)."""
    if as_list:
        if not isinstance(value, list) or len(value) != 1:
            return None, [DataIssue(line, where, "must be a list with exactly one assistant message")]
        value, where = value[0], f"{where}[0]"
    if isinstance(value, str):
        issues = _check_text(value, where, line)
        return (None if issues else value), issues
    if not isinstance(value, dict):
        return None, [DataIssue(line, where, "must be an assistant message {role, content} or a string")]
    if value.get("role", "assistant") != "assistant":
        return None, [DataIssue(line, f"{where}.role", "must be assistant")]
    if "content" not in value:
        return None, [DataIssue(line, f"{where}.content", "missing")]
    issues = _check_text(value["content"], f"{where}.content", line)
    return (None if issues else value["content"]), issues


def _parse_preference(obj: Any, line: int) -> tuple[Record | None, list[DataIssue]]:
    if not isinstance(obj, dict) or not _PREFERENCE_KEYS & obj.keys():
        return None, [
            DataIssue(
                line, "chosen", f"missing; the file is preference format but this line {_describe(obj)}"
            )
        ]
    openai = not ({"chosen", "rejected"} & obj.keys())
    if openai:
        keys, prefix = ("preferred_output", "non_preferred_output"), "input.messages"
        source = obj.get("input")
        if not isinstance(source, dict) or "messages" not in source:
            return None, [DataIssue(line, "input.messages", "missing; expected input: {messages: [...]}")]
        messages = source["messages"]
    else:
        keys, prefix = ("chosen", "rejected"), "messages"
        if "messages" not in obj:
            return None, [DataIssue(line, "messages", "missing; the prompt ending on a user turn")]
        messages = obj["messages"]
    turns, issues = _parse_messages(messages, line, prefix)
    if not issues and turns[-1].role != "user":
        issues.append(DataIssue(line, prefix, "must end with a user turn (the one being answered)"))
    replies: list[str | None] = []
    for key in keys:
        if key not in obj:
            issues.append(DataIssue(line, key, "missing"))
            replies.append(None)
            continue
        reply, reply_issues = _reply(obj[key], key, line, as_list=openai)
        issues += reply_issues
        replies.append(reply)
    if issues:
        return None, issues
    # Earlier assistant turns are context only: DPO scores nothing but the two replies.
    prompt = tuple(Turn(t.role, t.content, 0) for t in turns)
    return Record(line, turns=prompt, chosen=replies[0], rejected=replies[1]), []


def _first_candidate(value: Any, where: str, line: int) -> tuple[str | None, list[DataIssue]]:
    # Qianfan stores responses as [[candidate, ...]]; plain strings are accepted too.
    if isinstance(value, list):
        if not value or not isinstance(value[0], list) or not value[0]:
            return None, [
                DataIssue(line, where, 'must be a string or a list of lists of strings like [["answer"]]')
            ]
        value = value[0][0]
        where = f"{where}[0][0]"
    issues = _check_text(value, where, line)
    return (None if issues else value), issues


def _parse_prompt_response(obj: Any, line: int) -> tuple[Record | None, list[DataIssue]]:
    if isinstance(obj, dict):
        if "prompt" not in obj and "response" not in obj:
            return None, [
                DataIssue(
                    line,
                    "prompt",
                    f"missing; the file is prompt_response format but this line {_describe(obj)}",
                )
            ]
        items, prefix = [obj], ""
    elif isinstance(obj, list):
        if not obj:
            return None, [DataIssue(line, "[]", "must contain at least one {prompt, response} turn")]
        items, prefix = obj, "*"
    else:
        return None, [DataIssue(line, "prompt", f"missing; this line {_describe(obj)}")]
    issues: list[DataIssue] = []
    turns: list[Turn] = []
    for i, item in enumerate(items):
        base = f"[{i}]." if prefix else ""
        if not isinstance(item, dict):
            issues.append(DataIssue(line, f"[{i}]", "must be an object with prompt and response"))
            continue
        if "system" in item:
            if i != 0:
                issues.append(DataIssue(line, f"{base}system", "only allowed on the first turn"))
            else:
                sys_issues = _check_text(item["system"], f"{base}system", line, allow_empty=True)
                issues += sys_issues
                if not sys_issues and item["system"]:
                    turns.append(Turn("system", item["system"]))
        for key in ("prompt", "response"):
            if key not in item:
                issues.append(DataIssue(line, f"{base}{key}", "missing"))
        if "prompt" not in item or "response" not in item:
            continue
        prompt_issues = _check_text(item["prompt"], f"{base}prompt", line)
        response, response_issues = _first_candidate(item["response"], f"{base}response", line)
        issues += prompt_issues + response_issues
        if not prompt_issues and response is not None:
            turns += [Turn("user", item["prompt"]), Turn("assistant", response)]
    return (None if issues else Record(line, turns=tuple(turns))), issues


def _parse_text(obj: Any, line: int) -> tuple[Record | None, list[DataIssue]]:
    if not isinstance(obj, dict) or "text" not in obj:
        return None, [
            DataIssue(line, "text", f"missing; the file is text format but this line {_describe(obj)}")
        ]
    issues = _check_text(obj["text"], "text", line)
    return (None if issues else Record(line, text=obj["text"])), issues


_PARSERS = {
    "chat": _parse_chat,
    "prompt_response": _parse_prompt_response,
    "text": _parse_text,
    "preference": _parse_preference,
}


def _scan(path: Path, max_errors: int, keep: bool = True) -> tuple[DatasetReport, list[Record]]:
    report = DatasetReport(format=None, rows=0)
    records: list[Record] = []

    def add(issues: list[DataIssue]) -> None:
        room = max(0, max_errors - len(report.errors))
        report.errors.extend(issues[:room])
        report.more_errors += len(issues) - len(issues[:room])

    path = Path(path)
    if not path.is_file():
        add([DataIssue(0, "file", "not found")])
        return report, records
    try:
        for number, text in _nonblank_lines(path):
            report.rows += 1
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                add([DataIssue(number, "json", f"invalid JSON ({exc.msg} at column {exc.colno})")])
                continue
            except RecursionError:
                add([DataIssue(number, "json", "invalid JSON (nested too deeply)")])
                continue
            if report.format is None:
                report.format = detect_format(obj)
                if report.format is None:
                    add(
                        [
                            DataIssue(
                                number,
                                "<root>",
                                "cannot detect format: expected an object with messages, "
                                "prompt/response, text or a preference pair (chosen/rejected or "
                                "preferred_output/non_preferred_output), "
                                "or a Qianfan [{prompt, response}] array",
                            )
                        ]
                    )
                    continue
            record, issues = _PARSERS[report.format](obj, number)
            add(issues)
            if record is not None and keep:
                records.append(record)
    except UnicodeDecodeError as exc:
        add([DataIssue(report.rows + 1, "file", f"not valid UTF-8 ({exc.reason})")])
    if report.rows == 0:
        add([DataIssue(0, "file", "is empty")])
    return report, records


def validate_dataset(path: Path, max_errors: int = 20) -> DatasetReport:
    """Check every line of a JSON-lines file; detect its format from the first non-blank line.

    Reads line by line and keeps no records, so memory stays flat whatever the file's size."""
    return _scan(path, max_errors, keep=False)[0]


def load_records(path: Path, allowed_formats: set[str] | None = None) -> tuple[DataFormat, list[Record]]:
    """Parse a file into normalized records, or raise DataError describing why it cannot be used."""
    report, records = _scan(path, max_errors=20)
    if not report.ok:
        raise DataError(report.summary(Path(path).name))
    assert report.format is not None
    if allowed_formats is not None and report.format not in allowed_formats:
        raise DataError(
            f"{Path(path).name}: format {report.format} cannot be used here; expected "
            + " or ".join(sorted(allowed_formats))
        )
    return report.format, records


def check_files(paths: list[Path], allowed_formats: set[str], max_errors: int = 20) -> list[str]:
    """Problems across several files, each prefixed by its file name; empty means all usable."""
    problems: list[str] = []
    for path in paths:
        report = validate_dataset(path, max_errors)
        name = Path(path).name
        if report.errors:
            problems.append(report.summary(name))
        elif report.format not in allowed_formats:
            problems.append(
                f"{name}: format {report.format} is not allowed for this training mode; expected "
                + " or ".join(sorted(allowed_formats))
            )
    return problems
