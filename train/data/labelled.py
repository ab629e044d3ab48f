"""The user's labelled examples: JSON-lines or CSV files read row by row, each value traced to its file and line.

    rows = read_rows("train.jsonl", ["text", "label"])   # [Row(file, line, values={"text": ..., "label": ...})]
    rows[0].fail("label", "not a class name")            # ValueError: train.jsonl:1: field 'label': not a class name

Formats, by the file name's ending:
  - `.jsonl` / `.json`: one JSON object per line (blank lines skipped); values keep their JSON types, so lists
    (`tokens`, `tags`, `choices`, `answers`) are JSON arrays.
  - `.csv` / `.tsv`: a header row naming the fields, then one row per example. A cell is a string; a field that
    holds a list (or an answers object) is written as JSON in its cell (`["a", "b"]`), and a label cell that is an
    integer or a number is read as one.

Every problem is a `ValueError` naming the file, the line and the field: a line that is not JSON, a field the
schema names but the row lacks (with the fields it has), a value of the wrong type. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

JSON_SUFFIXES = (".jsonl", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
# Fields whose CSV cells are JSON (they hold lists or objects).
_JSON_CELLS = ("tokens", "tags", "choices", "answers")


@dataclasses.dataclass(frozen=True)
class Row:
    """One example as read: `values` maps each field the schema names to its value; `line` counts from 1 (a CSV
    file's header is line 1, its first example line 2)."""

    file: str
    line: int
    values: dict

    def where(self, field: str | None = None) -> str:
        return f"{self.file}:{self.line}" + (f": field {field!r}" if field else "")

    def fail(self, field: str | None, rule: str):
        """Raises `ValueError("<file>:<line>: field '<field>': <rule>")`."""
        raise ValueError(f"{self.where(field)}: {rule}")


def file_digest(path: str) -> str:
    """A short hash of the file's bytes: names caches built from it (a tokenizer trained on its text)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_rows(path: str, fields: Sequence[str], *, key: str = "data.train_file",
              json_cells: dict[str, str] | None = None) -> list[Row]:
    """Every example of `path` with the values of `fields` (field names in the file).

    `key` names the config key the path came from, for errors about the file as a whole. `json_cells` maps a
    field to its role (`tokens`, `answers`, ...): a CSV cell of a list role is parsed as JSON.
    Raises ValueError naming the file (and line and field) when the file is missing, of an unknown format,
    empty, or a row lacks a field.
    """
    if not isinstance(path, str) or not path:
        raise ValueError(f"config.{key}={path!r}: expected the path of a .jsonl or .csv file")
    if not os.path.isfile(path):
        raise ValueError(f"config.{key}={path!r}: no such file")
    lower = path.lower()
    if lower.endswith(JSON_SUFFIXES):
        rows = list(_json_rows(path, fields))
    elif lower.endswith(CSV_SUFFIXES):
        rows = list(_csv_rows(path, fields, json_cells or {}))
    else:
        raise ValueError(f"config.{key}={path!r}: unknown format; expected a file ending in "
                         f"{' / '.join(JSON_SUFFIXES + CSV_SUFFIXES)}")
    if not rows:
        raise ValueError(f"config.{key}={path!r}: the file holds no examples")
    return rows


def _missing(path: str, line: int, field: str, present: Sequence[str]) -> ValueError:
    return ValueError(f"{path}:{line}: field {field!r} is missing (the row has: {', '.join(sorted(present)) or 'none'}; "
                      "config.data.schema names the fields to read)")


def _json_rows(path: str, fields: Sequence[str]):
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(value, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object per line, got {type(value).__name__}")
            for field in fields:
                if field not in value:
                    raise _missing(path, number, field, list(value))
            yield Row(path, number, {field: value[field] for field in fields})


def _csv_rows(path: str, fields: Sequence[str], json_cells: dict[str, str]):
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        for field in fields:
            if field not in header:
                raise ValueError(f"{path}:1: field {field!r} is missing from the header (columns: "
                                 f"{', '.join(header)}; config.data.schema names the fields to read)")
        columns = {field: header.index(field) for field in fields}
        for cells in reader:
            number = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise ValueError(f"{path}:{number}: {len(cells)} cells, the header has {len(header)}")
            values = {}
            for field, column in columns.items():
                cell = cells[column]
                if json_cells.get(field) in _JSON_CELLS:
                    try:
                        cell = json.loads(cell)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number}: field {field!r}: a {json_cells[field]} cell is JSON "
                                         f"(e.g. [\"a\", \"b\"]); {error.msg} at column {error.colno}") from None
                values[field] = cell
            yield Row(path, number, values)


def csv_number(value: Any) -> Any:
    """A CSV cell that spells an int (or a float) as that number; any other value unchanged (JSON values keep the
    type they have)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return value
