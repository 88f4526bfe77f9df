"""Parse and validate case files (JSONL or CSV) before anything is written.

Three line shapes, told apart by their fields:

- a bad case     {"prompt", "response", "better_response"?, "note"?, "trace_id"?, "split"?,
                  "tags"?, "topic"?, "must_include"?, "must_not_include"?}
- a pair to judge {"prompt", "response_a", "response_b", ...the optional fields above}
- a labelled pair {"prompt", "chosen", "rejected", ...}  (TRL's preference format)

Pairs are for split train (held-out and regression prompts are never queued); a labelled pair
may also be held out, its chosen answer then being the one expected.

A prompt is a string or a list of {"role", "content"} messages ("system" only first, the last one
from the user). In CSV the prompt cell may hold such a list as JSON, and tags are a JSON list or
comma-separated; checks (must_include, must_not_include: phrases or /regex/ items, see
training/engine/checks.py) are a JSON list or one phrase per line. Every bad line is collected,
so a user fixes the whole file in one go.
"""

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from annotate.field_rules import (
    InvalidValue,
    checks_cell,
    clean_check_items,
    clean_prompt,
    clean_short,
    clean_split,
    clean_tags,
    clean_text,
)
from training.engine.checks import FIELDS as CHECK_FIELDS

COMMON_FIELDS = ("prompt", "note", "trace_id", "split", "tags", "topic", *CHECK_FIELDS)
SHAPES = {
    "case": ("response", "better_response"),
    "pair": ("response_a", "response_b"),
    "labelled": ("chosen", "rejected"),
}
TEXT_FIELDS = tuple(name for names in SHAPES.values() for name in names)
ALL_FIELDS = COMMON_FIELDS + TEXT_FIELDS


class ImportRejected(Exception):
    """The file was refused; nothing was written. `errors` is [(line_no or None, reason), ...]."""

    def __init__(self, errors: list[tuple[int | None, str]]) -> None:
        self.errors = errors
        super().__init__("\n".join(self.messages()))

    def messages(self) -> list[str]:
        return [
            reason if line is None else f"line {line}: {reason}" for line, reason in self.errors
        ]


@dataclass
class CaseRow:
    """One validated line of a case file."""

    line_no: int
    shape: str  # "case" | "pair" | "labelled"
    prompt: str | list[dict[str, str]]
    texts: dict[str, str]  # the shape's response fields, present ones only
    note: str = ""
    trace_id: str = ""
    split: str = "train"
    tags: list[str] = field(default_factory=list)
    topic: str = ""
    must_include: list[str] = field(default_factory=list)
    must_not_include: list[str] = field(default_factory=list)


def parse_record(record: Any, line_no: int) -> CaseRow:
    """Validate one decoded line; raises InvalidValue with every problem of the line."""
    if not isinstance(record, dict):
        raise InvalidValue("expected a JSON object")
    unknown = sorted(set(record) - set(ALL_FIELDS))
    if unknown:
        raise InvalidValue(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(ALL_FIELDS)}"
        )
    shapes = [shape for shape, names in SHAPES.items() if any(n in record for n in names)]
    if len(shapes) != 1:
        raise InvalidValue(
            "a line needs exactly one of: response (a bad case), response_a + response_b "
            "(a pair to judge), chosen + rejected (a labelled pair)"
            + (f"; this one mixes {' and '.join(shapes)} fields" if shapes else "")
        )
    shape = shapes[0]
    problems: list[str] = []
    required = ("response",) if shape == "case" else SHAPES[shape]
    problems += [
        f"{name} is missing" if name not in record else f"{name} is null"
        for name in ("prompt", *required)
        if record.get(name) is None
    ]
    texts: dict[str, str] = {}
    row = CaseRow(line_no=line_no, shape=shape, prompt="", texts=texts)
    checks = [("prompt", lambda v: setattr(row, "prompt", clean_prompt(v)))]
    checks += [(n, lambda v, n=n: texts.__setitem__(n, clean_text(n, v))) for n in SHAPES[shape]]
    checks += [
        ("note", lambda v: setattr(row, "note", clean_text("note", v) if v else "")),
        ("trace_id", lambda v: setattr(row, "trace_id", clean_short("trace_id", v))),
        ("topic", lambda v: setattr(row, "topic", clean_short("topic", v))),
        ("split", lambda v: setattr(row, "split", clean_split(v))),
        ("tags", lambda v: setattr(row, "tags", clean_tags(v))),
    ]
    checks += [(n, lambda v, n=n: setattr(row, n, clean_check_items(n, v))) for n in CHECK_FIELDS]
    for name, check in checks:
        if name in record and record[name] is not None:
            try:
                check(record[name])
            except InvalidValue as exc:
                problems.append(str(exc))
    if not problems:
        values = list(texts.values())
        if len(values) == 2 and values[0] == values[1]:
            problems.append(f"{' and '.join(texts)} are the same text: nothing to compare")
        if shape == "pair" and row.split != "train":
            problems.append(
                f"a pair to judge belongs to split train: {row.split} prompts are never queued "
                "for annotators (give the answer as response, the better one as better_response)"
            )
        if shape == "labelled" and row.split == "regression":
            problems.append(
                "a regression prompt holds the answer that must not change: give it as "
                "{prompt, response}, not as a chosen/rejected pair"
            )
    if problems:
        raise InvalidValue("; ".join(problems))
    if shape == "labelled" and row.split == "heldout":
        # never queued: its chosen answer is what the patched model is expected to say, as a
        # held-out case's better_response
        row.shape = "case"
        row.texts = {"response": texts["rejected"], "better_response": texts["chosen"]}
    return row


def _records_jsonl(text: str):
    # Lines end at \n (and \r\n) only: str.splitlines would also split inside strings that
    # hold U+2028, U+0085 and the like, which JSON writers emit raw (ensure_ascii=False).
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line, parse_constant=_not_json)
        except json.JSONDecodeError as exc:
            yield line_no, InvalidValue(f"not valid JSON ({exc.msg} at column {exc.colno})")
        except ValueError as exc:  # NaN/Infinity, a number with thousands of digits
            yield line_no, InvalidValue(f"not valid JSON ({str(exc).split(';')[0]})")
        except RecursionError:
            yield line_no, InvalidValue("not valid JSON (nested too deeply)")


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON value")


def _csv_cell(name: str, cell: str) -> Any:
    if name == "prompt" and cell.lstrip().startswith("[{"):
        try:
            return json.loads(cell)
        except (ValueError, RecursionError) as exc:
            raise InvalidValue(
                f"{name} looks like a JSON list of messages but is not: {exc}"
            ) from None
    if name in TEXT_FIELDS and cell.lstrip().startswith("[{"):
        # TRL's conversational answer ([{"role": "assistant", ...}]), else the text as it is:
        # an answer may well be a JSON array
        try:
            value = json.loads(cell)
        except (ValueError, RecursionError):
            return cell
        is_messages = isinstance(value, list) and all(
            isinstance(item, dict) and {"role", "content"} <= set(item) for item in value
        )
        return value if is_messages else cell
    if name in CHECK_FIELDS:
        return checks_cell(name, cell)
    if name == "tags" and cell.lstrip().startswith("["):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as exc:
            raise InvalidValue(f"tags looks like a JSON list but is not: {exc.msg}") from None
    return cell


def _records_csv(text: str):
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    if "" in header:
        raise ImportRejected(
            [(1, f"column {header.index('') + 1} has no name: remove the stray comma or name it")]
        )
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ImportRejected([(1, f"column(s) {', '.join(repeated)} appear more than once")])
    unknown = [name for name in header if name not in ALL_FIELDS]
    if unknown:
        raise ImportRejected(
            [(1, f"unknown column(s) {', '.join(unknown)}; allowed: {', '.join(ALL_FIELDS)}")]
        )
    line_no = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line_no, InvalidValue(f"not valid CSV ({exc})")
            return
        start, line_no = line_no, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield start, InvalidValue(f"{len(cells)} cells, but the header has {len(header)}")
            continue
        try:
            yield start, {n: _csv_cell(n, c) for n, c in zip(header, cells, strict=True) if c != ""}
        except InvalidValue as exc:
            yield start, exc


def _size(n_bytes: int) -> str:
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


def parse_case_file(*, file_name: str, data: bytes, max_bytes: int) -> list[CaseRow]:
    """Every line of the file, validated; raises ImportRejected naming every bad line."""
    if len(data) > max_bytes:
        raise ImportRejected(
            [
                (
                    None,
                    f"{file_name} is {_size(len(data))}; the limit is {_size(max_bytes)} "
                    "(PATCHWISE_MAX_UPLOAD_BYTES): split the file",
                )
            ]
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportRejected(
            [(None, f"{file_name} is not UTF-8 text (byte {exc.start}): save it as UTF-8")]
        ) from None
    name = file_name.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        is_csv = False
    elif name.endswith(".csv"):
        is_csv = True
    else:
        is_csv = not text.lstrip().startswith("{")
    rows, errors = [], []
    for line_no, record in _records_csv(text) if is_csv else _records_jsonl(text):
        if isinstance(record, InvalidValue):
            errors.append((line_no, str(record)))
            continue
        try:
            rows.append(parse_record(record, line_no))
        except InvalidValue as exc:
            errors.append((line_no, str(exc)))
    if errors:
        raise ImportRejected(errors)
    if not rows:
        raise ImportRejected([(None, f"{file_name} has no cases")])
    return rows
