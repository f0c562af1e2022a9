"""Dataset sources: rows of JSONL, CSV/TSV and Parquet files as items, local or on S3,
and Hugging Face ``datasets`` (a hub name, or a folder written by ``save_to_disk``).

A dataset may hold a million rows, so it is read as a stream: JSONL and CSV
line by line, Parquet and Hugging Face datasets one record batch at a time.
Nothing here holds more than one line or one batch. A row that cannot be
narrated (no id, no text, a broken JSON line, bytes that are not UTF-8, ...)
becomes an ``ItemError`` naming the row and the field, and the rows after it
still come through; a problem with the whole file (no such file, a configured
column missing from the header) raises, because no row of it could succeed.

Which columns hold what is configured by ``ColumnsConfig``; every other column
(or the listed ones) is carried as is into the item's ``extra`` metadata.

Hugging Face datasets (the optional ``datasets`` package, ``pip install
'bark-pipeline[hf]'``, imported only when such an input is used):

- ``hf:NAME[:CONFIG][@SPLIT]`` names a dataset for ``datasets.load_dataset``,
  loaded with ``streaming=True``: rows arrive as they are downloaded, nothing is
  downloaded whole. ``NAME`` is a hub id (``user/name``) or a local folder of
  data files; ``CONFIG`` is the dataset's configuration (its ``name``);
  ``SPLIT`` defaults to the dataset's only split, else ``train``. Examples:
  ``hf:user/stories``, ``hf:user/stories@test``, ``hf:wikitext:wikitext-2-raw-v1@validation``.
- A folder written by ``Dataset.save_to_disk`` (it holds ``dataset_info.json``
  and ``state.json``) or ``DatasetDict.save_to_disk`` (``dataset_dict.json``;
  pick a split with ``FOLDER@SPLIT``, same default) is opened with
  ``datasets.load_from_disk``: memory-mapped Arrow files, read a batch at a time.
  ``hf:FOLDER[@SPLIT]`` means the same.

Their rows go through the same column mapping and the same per-row checks as
the files above; a row that fails is named ``row N`` when its own id cannot
be read.
"""

from __future__ import annotations

import csv
import datetime
import functools
import gzip
import json
import os
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import pyarrow.parquet as pq

from pipeline.config import ColumnsConfig, LimitsConfig, S3Config
from pipeline.object_store import S3Storage
from pipeline.sources import (
    Item,
    ItemError,
    SourceError,
    SourceNotFoundError,
    SourceUnavailableError,
    plain_metadata,
)
from workers.errors import UserError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
GZIP_SUFFIX = ".gz"
COMPRESSIBLE = frozenset({"jsonl", "csv", "tsv"})  # Parquet compresses its own pages
CSV_DELIMITERS = {"csv": ",", "tsv": "\t"}

# Rows per Parquet record batch: a few MB of text at most, read and dropped in turn.
PARQUET_BATCH_ROWS = 1024
# check_columns looks at this many JSONL objects: enough that one bad row cannot fail the file.
JSONL_SCHEMA_ROWS = 20
# A line longer than limits.max_item_bytes is skipped a MiB at a time, never held whole.
_SKIP_PIECE_BYTES = 1 << 20
UTF8_BOM = b"\xef\xbb\xbf"

HF_PREFIX = "hf:"
HF_DEFAULT_SPLIT = "train"
HF_SAVED_FILES = ("dataset_info.json", "state.json")  # what Dataset.save_to_disk writes beside its .arrow files
HF_DICT_FILE = "dataset_dict.json"  # DatasetDict.save_to_disk: this, and one saved Dataset folder per split
HF_BATCH_ROWS = PARQUET_BATCH_ROWS
HF_INSTALL = "pip install 'bark-pipeline[hf]'"
HF_MESSAGE_CHARS = 400  # the datasets library's messages can list hundreds of configs
_HF_SPEC = re.compile(r"hf:(?P<name>[^:@]+)(?::(?P<config>[^:@]+))?(?:@(?P<split>[^:@]+))?")

_JSON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


class MissingDependencyError(UserError):
    """An input needs an optional package that is not installed (one line, with the install command)."""


@dataclass(frozen=True)
class HFSpec:
    """A Hugging Face dataset input: ``hf:NAME[:CONFIG][@SPLIT]``, or a ``save_to_disk`` folder.

    ``split`` None: the only split, else ``train``. ``on_disk``: ``name`` is a
    folder written by ``save_to_disk``, opened with ``load_from_disk``.
    """

    name: str
    config: str | None = None
    split: str | None = None
    on_disk: bool = False


def parse_hf_spec(uri: str) -> HFSpec:
    """The parts of ``hf:NAME[:CONFIG][@SPLIT]``; a SourceError naming the syntax for anything else."""
    match = _HF_SPEC.fullmatch(uri)
    parts = match.groupdict() if match else {}
    if not match or any(p is not None and (not p.strip() or p != p.strip()) for p in parts.values()):
        raise SourceError(
            f"source {uri}: expected hf:NAME[:CONFIG][@SPLIT], e.g. hf:user/stories or hf:user/stories:en@test"
        )
    return HFSpec(parts["name"], parts["config"], parts["split"])


def is_dataset(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` names a dataset this module reads: a file by its suffix, an ``hf:``
    name, or a folder (``FOLDER@SPLIT``) written by the datasets library's ``save_to_disk``."""
    uri = os.fspath(uri)
    return _format(uri) is not None or uri.startswith(HF_PREFIX) or _saved_dataset(uri) is not None


def count_rows(uri: str | os.PathLike) -> int | None:
    """Rows of a local, uncompressed dataset, cheaply (for the progress bar's ETA); None if unknown.

    Parquet keeps the count in its footer, a ``save_to_disk`` folder in its Arrow
    files; JSONL and CSV are counted by lines in one streaming pass (blank JSONL
    lines and a CSV's quoted line breaks make it an estimate). A streamed ``hf:``
    name is not counted, but a bad spec or a missing ``datasets`` package raises
    here already, before the job starts.
    """
    path = os.fspath(uri)
    hf = _hf_source(path)
    if hf is not None:
        if not hf.on_disk:
            _import_datasets(path)
            return None
        return len(_open_hf(hf, path))
    kind = _format(path)
    if kind is None or "://" in path or path.lower().endswith(GZIP_SUFFIX) or not os.path.isfile(path):
        return None
    if kind == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as file:
        lines = sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 20), b""))
    return max(0, lines - 1) if kind in CSV_DELIMITERS else lines


def iter_dataset_items(
    uri: str | os.PathLike,
    columns: ColumnsConfig | None = None,
    *,
    s3: S3Config | None = None,
    limits: LimitsConfig | None = None,
) -> Iterator[Item | ItemError]:
    """Items of a dataset file, one per row in file order, read lazily.

    ``uri`` is a local path, a ``file://`` URI or ``s3://bucket/key``; the format
    comes from the suffix (``.jsonl``/``.ndjson``/``.csv``/``.tsv``, each
    optionally ``.gz``, or ``.parquet``). An S3 object is read with the job's
    ``s3`` settings (endpoint, profile, region, addressing, retries, timeouts),
    the same client the outputs use; its failures are one-line ``StorageError``s.
    Rows that fail are ``ItemError``s with id ``line N`` (JSONL, the file's
    line) or ``row N`` (CSV/Parquet/Hugging Face, the N-th data row) when the
    row's own id cannot be read. ``uri`` may also be a Hugging Face dataset:
    ``hf:NAME[:CONFIG][@SPLIT]`` or a ``save_to_disk`` folder (see the module
    docstring). ``limits`` bounds one line or row (``max_item_bytes``, after
    gunzip) and the nesting of a row's metadata; a truncated or corrupt ``.gz``
    gives its rows up to the damage, then one error naming the file.
    """
    uri = os.fspath(uri)
    columns = columns or ColumnsConfig()
    limits = limits or LimitsConfig()
    hf = _hf_source(uri)
    if hf is not None:
        yield from _hf_items(hf, uri, columns, limits)
        return
    kind = _format(uri)
    if kind is None:
        raise SourceError(
            f"source {uri}: not a dataset; expected one of {', '.join(FORMATS)} "
            f"({', '.join(s for s, k in FORMATS.items() if k in COMPRESSIBLE)} optionally {GZIP_SUFFIX}), "
            f"{HF_PREFIX}NAME[:CONFIG][@SPLIT], or a folder saved by datasets' save_to_disk"
        )
    if kind == "parquet":
        with _random_access_path(uri, s3) as path:
            yield from _parquet_items(path, uri, columns, limits)
        return
    with _open_stream(uri, s3) as stream:
        if kind == "jsonl":
            yield from _jsonl_items(stream, uri, columns, limits)
        else:
            yield from _csv_items(stream, CSV_DELIMITERS[kind], uri, columns, limits)


def check_columns(
    uri: str | os.PathLike,
    columns: ColumnsConfig | None = None,
    *,
    s3: S3Config | None = None,
    limits: LimitsConfig | None = None,
) -> list[str]:
    """The dataset's column names, read from its schema alone; a ``SourceError`` in one
    line naming each configured column it lacks (id, text, listed extras) and the
    columns it has.

    For the CLI to call before Ray starts and the models load: a dataset without
    its text column then fails once, in a second, not row by row afterwards. What
    is read: a Parquet file's footer (an S3 object is downloaded first, as for
    reading it), a CSV/TSV's header line, a Hugging Face dataset's features (the
    first rows of a stream whose features are not declared), and for JSONL the
    keys of its first ``JSONL_SCHEMA_ROWS`` objects (a column counts as present
    when any of them has it: one bad row must not fail the file). An empty
    dataset has no columns to lack and passes.
    """
    uri = os.fspath(uri)
    columns = columns or ColumnsConfig()
    limits = limits or LimitsConfig()
    hf = _hf_source(uri)
    if hf is not None:
        names = _hf_column_names(hf, uri)
    else:
        kind = _format(uri)
        if kind is None:
            raise SourceError(f"source {uri}: not a dataset (see iter_dataset_items for the formats read)")
        if kind == "parquet":
            with _random_access_path(uri, s3) as path:
                names = _parquet_column_names(path, uri)
        else:
            with _open_stream(uri, s3) as stream:
                if kind == "jsonl":
                    names = _jsonl_keys(stream, uri, columns, limits)
                else:
                    lines = _CsvLines(stream, limits.max_item_bytes)
                    names = _csv_header(csv.reader(lines, delimiter=CSV_DELIMITERS[kind]), lines, uri) or []
    if names:
        _check_columns(names, uri, columns)
    return names


def _jsonl_keys(stream: BinaryIO, uri: str, columns: ColumnsConfig, limits: LimitsConfig) -> list[str]:
    """The keys of the first ``JSONL_SCHEMA_ROWS`` objects, in first-seen order; lines that
    are not JSON objects are passed over (they fail as rows). A column missing from all
    of them is a SourceError naming how many rows were looked at."""
    keys: dict[str, None] = {}
    seen = 0
    for raw in _bounded_lines(stream, limits.max_item_bytes):
        if seen == JSONL_SCHEMA_ROWS or isinstance(raw, _Broken):
            break
        if isinstance(raw, _LongLine) or not raw.strip():
            continue
        try:
            row = json.loads(raw.removeprefix(UTF8_BOM).decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            seen += 1
            keys.update(dict.fromkeys(row))
    required = [columns.id, columns.text, *(columns.extra if columns.extra != "*" else [])]
    missing = [name for name in required if name not in keys]
    if seen and missing:
        raise SourceError(
            f"source {uri}: no column {', '.join(map(repr, missing))} in its first {seen} rows; "
            f"they have {', '.join(map(repr, keys))}"
        )
    return list(keys)


def _parquet_column_names(path: str, uri: str) -> list[str]:
    try:
        return pq.read_schema(path).names
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid: not a Parquet file, corrupt footer
        raise SourceError(f"source {uri}: cannot read Parquet: {_reason(exc)}") from None


def _hf_column_names(spec: HFSpec, uri: str) -> list[str]:
    dataset = _open_hf(spec, uri)
    if dataset.column_names is not None:
        return list(dataset.column_names)
    try:  # a stream whose features are known only once read: its first row says
        first = next(iter(dataset.with_format("arrow").iter(batch_size=1)), None)
    except Exception as exc:  # a download or a data file failing
        raise _hf_error(uri, exc) from None
    return [] if first is None else list(first.column_names)


# --- formats ----------------------------------------------------------------------


def _format(uri: str) -> str | None:
    name = uri.lower()
    compressed = name.endswith(GZIP_SUFFIX)
    if compressed:
        name = name[: -len(GZIP_SUFFIX)]
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix) and (not compressed or kind in COMPRESSIBLE):
            return kind
    return None


def _jsonl_items(stream: BinaryIO, uri: str, columns: ColumnsConfig, limits: LimitsConfig) -> Iterator[Item | ItemError]:
    """One JSON object per line; each line is decoded on its own, so bad bytes fail only their line."""
    for n, raw in enumerate(_bounded_lines(stream, limits.max_item_bytes), start=1):
        where = f"line {n}"
        if isinstance(raw, _LongLine):
            yield ItemError(where, "line", f"longer than limits.max_item_bytes ({limits.max_item_bytes} bytes)")
            continue
        if isinstance(raw, _Broken):
            yield ItemError(where, "file", f"{uri} breaks off after line {n - 1} ({raw.reason}); the lines after it cannot be read")
            return
        if n == 1:
            raw = raw.removeprefix(UTF8_BOM)
        if not raw.strip():
            continue  # blank lines, and the newline at the end of the file
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield ItemError(_best_effort_id(raw, columns) or where, "line", f"not valid UTF-8 (byte {exc.start + 1})")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield ItemError(where, "line", f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, [[[[...
            yield ItemError(where, "line", f"not readable JSON: {type(exc).__name__}")
            continue
        if not isinstance(row, dict):
            yield ItemError(where, "line", f"must be a JSON object, got {_kind(row)}")
            continue
        yield row_item(row, where, columns, limits)


def _best_effort_id(raw: bytes, columns: ColumnsConfig) -> str | None:
    """The id of a line whose bad bytes lie elsewhere, so the failure can be named by its id."""
    try:
        row = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(row, dict) or _id_problem(row.get(columns.id), columns.id):
        return None
    return str(row[columns.id])


def _csv_items(
    stream: BinaryIO, delimiter: str, uri: str, columns: ColumnsConfig, limits: LimitsConfig
) -> Iterator[Item | ItemError]:
    """Rows under a header line, read with the csv module from lines decoded one by one.

    Each line is decoded with ``surrogateescape``: bytes that are not UTF-8 stay
    in the text as lone surrogates, which cannot clash with the ASCII quote and
    delimiter, so the row still splits right and fails alone, named by the
    column that holds them. The limit is the csv format itself: a stray
    opening quote makes everything up to the next quote (at most
    ``limits.max_item_bytes`` characters) one field, so several lines become one row.
    """
    csv.field_size_limit(max(csv.field_size_limit(), int(limits.max_item_bytes)))
    lines = _CsvLines(stream, limits.max_item_bytes)
    reader = csv.reader(lines, delimiter=delimiter)
    header = _csv_header(reader, lines, uri)
    if header is None:
        return  # an empty file is an empty dataset
    _check_columns(header, uri, columns)
    n = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            n += 1
            yield ItemError(f"row {n}", "row", f"not valid CSV: {exc}")
            continue
        except _LineTooLong:
            n += 1
            yield ItemError(f"row {n}", "row", f"has a line longer than limits.max_item_bytes ({limits.max_item_bytes} bytes)")
            continue
        except _StreamBroken:
            n += 1
            yield ItemError(f"row {n}", "file", f"{uri} breaks off after row {n - 1} ({lines.broken}); the rows after it cannot be read")
            return
        if not cells:
            continue  # a blank line
        n += 1
        row = dict(zip(header, cells))
        if len(cells) != len(header):
            item_id = row.get(columns.id)
            where = f"row {n}" if _id_problem(item_id, columns.id) else item_id
            yield ItemError(where, "row", f"has {len(cells)} fields where the header has {len(header)}")
            continue
        yield row_item(row, f"row {n}", columns, limits)


def _csv_header(reader, lines: _CsvLines, uri: str) -> list[str] | None:
    """The column names of a CSV reader's first row; None for an empty file."""
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise SourceError(f"source {uri}: header is not valid CSV: {exc}") from None
    except _LineTooLong:
        raise SourceError(f"source {uri}: header is longer than limits.max_item_bytes") from None
    except _StreamBroken:
        raise SourceError(f"source {uri}: breaks off in its header ({lines.broken})") from None
    if header is not None and any(_unencodable(name) for name in header):
        raise SourceError(f"source {uri}: header is not valid UTF-8")
    return header


# --- lines, within bounds -----------------------------------------------------------


@dataclass(frozen=True)
class _LongLine:
    """A line longer than the limit: read on to its end in bounded pieces and dropped."""


@dataclass(frozen=True)
class _Broken:
    """Where a stream breaks off (a truncated or corrupt ``.gz``, a read error), and why."""

    reason: str


def _bounded_lines(stream: BinaryIO, limit: int) -> Iterator[bytes | _LongLine | _Broken]:
    """The lines of ``stream``, none read into memory past ``limit`` bytes.

    A gzip stream can inflate a few KB into a line of gigabytes, so each line is
    read at most ``limit`` bytes at a time; a longer one comes as ``_LongLine``.
    A stream that breaks off ends with ``_Broken`` in place of its partial last
    line: every line before the damage is whole, and read as usual.
    """
    while True:
        try:
            line = stream.readline(limit + 1)
            if len(line) > limit and not line.endswith(b"\n"):
                while (piece := stream.readline(_SKIP_PIECE_BYTES)) and not piece.endswith(b"\n"):
                    pass
                yield _LongLine()
                continue
            if not line.endswith(b"\n") and stream.readline(1):  # the end, but only if the stream says so
                raise EOFError("a line was cut short")
        except (EOFError, OSError, zlib.error) as exc:
            yield _Broken(_reason(exc))
            return
        if not line:
            return
        yield line


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (an OSError's own words), or its kind."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


class _LineTooLong(Exception):
    """Raised through the csv reader for a ``_LongLine``; the reader goes on with the next line."""


class _StreamBroken(Exception):
    """Raised through the csv reader for a ``_Broken`` stream; nothing follows it."""


class _CsvLines:
    """Decoded lines for the csv module, from ``_bounded_lines``.

    An iterator class rather than a generator: it raises for a line too long and
    still gives the next line afterwards (the csv reader starts a new row then).
    """

    def __init__(self, stream: BinaryIO, limit: int):
        self._lines = _bounded_lines(stream, limit)
        self._first = True
        self.broken: str | None = None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        if isinstance(raw, _LongLine):
            raise _LineTooLong
        if isinstance(raw, _Broken):
            self.broken = raw.reason
            raise _StreamBroken
        if self._first:
            raw, self._first = raw.removeprefix(UTF8_BOM), False
        return raw.decode("utf-8", "surrogateescape")


def _parquet_items(path: str, uri: str, columns: ColumnsConfig, limits: LimitsConfig) -> Iterator[Item | ItemError]:
    """Rows one record batch at a time, reading only the columns that are used."""
    try:
        file = pq.ParquetFile(path)
    except ValueError as exc:  # pyarrow's ArrowInvalid: not a Parquet file, corrupt footer
        raise SourceError(f"source {uri}: cannot read Parquet: {exc}") from None
    with file:
        names = file.schema_arrow.names
        _check_columns(names, uri, columns)
        n = 0
        for batch in file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=_wanted_columns(names, columns)):
            for row in batch.to_pylist():
                n += 1
                yield row_item({name: plain_cell(value) for name, value in row.items()}, f"row {n}", columns, limits)


def _wanted_columns(names: list[str], columns: ColumnsConfig) -> list[str] | None:
    """The columns a row needs, in file order; None: all of them (``extra: "*"``)."""
    return None if columns.extra == "*" else [c for c in names if c in {*columns.named, *columns.extra}]


def plain_cell(value):
    """A Parquet cell as what JSON metadata can hold (dates as ISO text, decimals as text)."""
    if isinstance(value, dict):
        return {str(k): plain_cell(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_cell(v) for v in value]
    if isinstance(value, bytes):  # a binary column; bytes that are not UTF-8 fail the row, as in CSV
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)  # Decimal, timedelta


def _check_columns(names: list[str], uri: str, columns: ColumnsConfig) -> None:
    """A header that lacks a configured column fails the whole file before any row."""
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise SourceError(f"source {uri}: column names appear twice: {', '.join(duplicates)}")
    required = [columns.id, columns.text, *(columns.extra if columns.extra != "*" else [])]
    missing = [name for name in required if name not in names]
    if missing:
        raise SourceError(
            f"source {uri}: no column {', '.join(map(repr, missing))}; it has {', '.join(map(repr, names))}"
        )


# --- one row ----------------------------------------------------------------------


def row_item(row: Mapping, where: str, columns: ColumnsConfig, limits: LimitsConfig) -> Item | ItemError:
    """The item of one row, or the first reason it cannot be one. ``where`` names a row without an id."""
    problem = _id_problem(row.get(columns.id), columns.id)
    if problem:
        return ItemError(where, "id", problem)
    item_id = str(row[columns.id])

    text = row.get(columns.text)
    if text is None:
        return ItemError(item_id, "text", f"no {columns.text!r}")
    if not isinstance(text, str):
        return ItemError(item_id, "text", f"{columns.text!r} must be a string, got {_kind(text)}")
    if _unencodable(text):
        return ItemError(item_id, "text", f"{columns.text!r} is not valid UTF-8")
    if not text.strip():
        return ItemError(item_id, "text", f"{columns.text!r} is empty" + (" (only whitespace)" if text else ""))

    voice, problem = _optional_string(row, columns.voice)
    if problem:
        return ItemError(item_id, "voice", problem)
    language, problem = _optional_string(row, columns.language)  # its code is checked with the item's settings
    if problem:
        return ItemError(item_id, "language", problem)

    params = _params(row.get(columns.params) if columns.params else None)
    if isinstance(params, str):
        return ItemError(item_id, "params", f"{columns.params!r} {params}")

    named = set(columns.named)
    kept = [name for name in row if name not in named] if columns.extra == "*" else columns.extra
    extra = {name: row[name] for name in kept if name in row}

    for name, value in extra.items():
        if isinstance(value, str) and _unencodable(value):
            return ItemError(item_id, name, f"{name!r} is not valid UTF-8")
        # Checked now, not when the item's metadata is written after its audio is made.
        problem = plain_metadata({name: value}, limits.max_metadata_depth)
        if isinstance(problem, str):
            return ItemError(item_id, name, problem)
    return _make_item(id=item_id, text=text, voice=voice, language=language, params=params, extra=extra)


def _optional_string(row: Mapping, column: str | None) -> tuple[str | None, str | None]:
    """An optional column's string cell, stripped (None: no column, an empty cell), or the reason it is unusable."""
    value = row.get(column) if column else None
    if isinstance(value, str):
        if _unencodable(value):
            return None, f"{column!r} is not valid UTF-8"
        return value.strip() or None, None  # an empty CSV cell is no value
    if value is not None:
        return None, f"{column!r} must be a string, got {_kind(value)}"
    return None, None


def _id_problem(value, name: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"no {name!r}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"{name!r} must be a string or an integer, got {_kind(value)}"
    if isinstance(value, str) and _unencodable(value):
        return f"{name!r} is not valid UTF-8"
    return None


def _params(value) -> dict | str:
    """The item's raw settings, or a one-line reason why they are unusable."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):  # CSV cells, and JSON or Parquet string columns
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            return f"is not valid JSON: {getattr(exc, 'msg', type(exc).__name__)}"
    if not isinstance(value, dict):
        return f"must be a JSON object, got {_kind(value)}"
    return dict(value)


def _unencodable(text: str) -> bool:
    """Whether ``text`` holds lone surrogates: undecodable bytes (surrogateescape) or a JSON ``\\udXXX``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _kind(value) -> str:
    return "null" if value is None else _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


@functools.cache
def _item_fields(item_class: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclass_fields(item_class))


def _make_item(**values) -> Item:
    """An ``Item`` from the fields a row gives, leaving out those this checkout's ``Item`` lacks yet."""
    known = _item_fields(Item)
    return Item(**{name: value for name, value in values.items() if name in known})


# --- Hugging Face datasets --------------------------------------------------------


def _hf_source(uri: str) -> HFSpec | None:
    """The Hugging Face dataset that ``uri`` names, or None when it names none."""
    if uri.startswith(HF_PREFIX):
        spec = parse_hf_spec(uri)
        if _saved_kind(Path(spec.name)) is None:
            return spec
        if spec.config is not None:
            raise SourceError(f"source {uri}: a folder saved by save_to_disk has no configs; use {HF_PREFIX}FOLDER[@SPLIT]")
        return HFSpec(spec.name, None, spec.split, on_disk=True)
    saved = _saved_dataset(uri)
    return None if saved is None else HFSpec(str(saved[0]), None, saved[1], on_disk=True)


def _saved_dataset(uri: str) -> tuple[Path, str | None] | None:
    """(folder, split) when ``uri`` is a ``save_to_disk`` folder, or a DatasetDict folder and ``@SPLIT``."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    path = Path(unquote(urlparse(uri).path)) if uri.startswith("file://") else Path(uri)
    if _saved_kind(path) is not None:
        return path, None
    folder, at, split = str(path).rpartition("@")
    if at and split and os.sep not in split and _saved_kind(Path(folder)) == "dict":
        return Path(folder), split
    return None


def _saved_kind(path: Path) -> str | None:
    """What ``save_to_disk`` wrote at ``path``: ``"dict"`` (a DatasetDict), ``"dataset"`` (a Dataset), or None."""
    try:
        if not path.is_dir():
            return None
        if (path / HF_DICT_FILE).is_file():
            return "dict"
        return "dataset" if all((path / name).is_file() for name in HF_SAVED_FILES) else None
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return None


def _import_datasets(uri: str):
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(
            f"source {uri}: reading Hugging Face datasets needs the optional 'datasets' package: {HF_INSTALL}"
        ) from None
    return datasets


def _open_hf(spec: HFSpec, uri: str):
    """The ``Dataset`` (memory-mapped, from disk) or streaming ``IterableDataset`` of one split."""
    hf = _import_datasets(uri)
    try:
        if spec.on_disk:
            loaded = hf.load_from_disk(spec.name)
        else:
            loaded = hf.load_dataset(spec.name, spec.config, split=spec.split, streaming=True)
    except Exception as exc:  # the library's own errors, ConnectionError, FileNotFoundError, ...
        raise _hf_error(uri, exc) from None
    if not isinstance(loaded, Mapping):  # one split already
        if spec.split is not None and spec.on_disk:
            raise SourceError(f"source {uri}: this saved Dataset has no splits; leave out @{spec.split}")
        return loaded
    splits = list(loaded)
    split = spec.split
    if split is None:
        if len(splits) == 1:
            split = splits[0]
        elif HF_DEFAULT_SPLIT in splits:
            split = HF_DEFAULT_SPLIT
        else:
            raise SourceError(f"source {uri}: pick a split with @SPLIT; it has {', '.join(map(repr, splits))}")
    if split not in loaded:
        raise SourceError(f"source {uri}: no split {split!r}; it has {', '.join(map(repr, splits))}")
    return loaded[split]


def _hf_items(spec: HFSpec, uri: str, columns: ColumnsConfig, limits: LimitsConfig) -> Iterator[Item | ItemError]:
    """Rows one Arrow batch at a time, as stored (no feature decoding), only the columns used."""
    dataset = _open_hf(spec, uri)
    names = dataset.column_names  # None for a stream whose features are known only once read
    if names is not None:
        _check_columns(names, uri, columns)
        wanted = _wanted_columns(names, columns)
        if wanted is not None:
            dataset = dataset.select_columns(wanted)
    batches = iter(dataset.with_format("arrow").iter(batch_size=HF_BATCH_ROWS))
    n = 0
    while True:
        try:
            table = next(batches)
        except StopIteration:
            return
        except Exception as exc:  # a download or a data file failing mid-stream
            raise _hf_error(uri, exc) from None
        if names is None:
            names = table.column_names
            _check_columns(names, uri, columns)
        for row in table.to_pylist():
            n += 1
            yield row_item({name: plain_cell(value) for name, value in row.items()}, f"row {n}", columns, limits)


def _hf_error(uri: str, exc: Exception) -> Exception:
    """The datasets library's failure as one line of the kind the other readers raise."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if len(message) > HF_MESSAGE_CHARS:
        message = message[: HF_MESSAGE_CHARS - 3] + "..."
    text = f"source {uri}: {message}"
    if isinstance(exc, FileNotFoundError):
        return SourceNotFoundError(text)
    if isinstance(exc, OSError):  # ConnectionError: the hub cannot be reached (or HF_HUB_OFFLINE)
        return SourceUnavailableError(text)
    return SourceError(text)


# --- opening local files and S3 objects -------------------------------------------


def _split_s3(uri: str) -> tuple[str, str] | None:
    """(bucket, key) of an ``s3://`` URI; None for anything else."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        return None
    key = parsed.path.lstrip("/")
    if not parsed.netloc or not key:
        raise SourceError(f"source {uri}: an S3 URI needs a bucket and a key: s3://bucket/key")
    return parsed.netloc, key


def _local_path(uri: str) -> Path:
    path = Path(unquote(urlparse(uri).path)) if uri.startswith("file://") else Path(uri)
    if not path.is_file():
        raise SourceNotFoundError(f"source {uri}: no such file")
    return path


def _s3_object(location: tuple[str, str], s3: S3Config | None) -> tuple[S3Storage, str]:
    """The bucket (as the outputs' storage class, so the same client settings and error
    messages) and the key of an input object."""
    bucket, key = location
    return S3Storage(bucket, "", s3), key


@contextmanager
def _open_stream(uri: str, s3: S3Config | None) -> Iterator[BinaryIO]:
    """A buffered binary stream over a local file or an S3 object's body, gunzipped for ``.gz``."""
    with ExitStack() as stack:
        location = _split_s3(uri)
        if location is None:
            stream = stack.enter_context(open(_local_path(uri), "rb"))
        else:
            storage, key = _s3_object(location, s3)
            stream = stack.enter_context(storage.open_reader(key))
        if uri.lower().endswith(GZIP_SUFFIX):
            stream = stack.enter_context(gzip.GzipFile(fileobj=stream, mode="rb"))
        yield stream


@contextmanager
def _random_access_path(uri: str, s3: S3Config | None) -> Iterator[str]:
    """A local path to a Parquet file: the file itself, or a temporary download of an S3 object.

    Parquet cannot be read front to back: its footer, at the end, says where
    each row group lies, and the reader seeks there. A streamed GET body cannot
    seek, so an S3 object is first copied to a temporary folder (as large as the
    object; deleted when the items are done or the generator is closed).
    """
    location = _split_s3(uri)
    if location is None:
        yield str(_local_path(uri))
        return
    with tempfile.TemporaryDirectory(prefix="bark-dataset-") as folder:
        path = os.path.join(folder, "dataset.parquet")
        storage, key = _s3_object(location, s3)
        storage.download_file(key, path)
        yield path
