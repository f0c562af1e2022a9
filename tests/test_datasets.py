"""Dataset sources: every format reads its good rows in order, fails each bad row alone, and streams."""

from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import json
import os
import subprocess
import sys
import tracemalloc
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

import pipeline.datasets as datasets
from pipeline.assembly import ItemMetadata
from pipeline.config import LimitsConfig
from pipeline.config import S3Config
from pipeline.datasets import ColumnsConfig, check_columns, is_dataset, iter_dataset_items
from pipeline.sources import Item, ItemError, SourceError, SourceNotFoundError
from workers.errors import UserError
from tests.conftest import REPO

LAZY_ROWS = 200_000
# Taking a few items must cost far less than the file: here some KiB against a ~16 MB file.
LAZY_PEAK_BYTES = 1 << 20


@pytest.fixture(autouse=True)
def item_with_extra(monkeypatch):
    """Until ``Item`` has its ``extra`` field, test against an Item that has it, so extras are checked now."""
    if "extra" not in {f.name for f in dataclasses.fields(Item)}:

        @dataclasses.dataclass(frozen=True)
        class ItemWithExtra(Item):
            extra: dict = dataclasses.field(default_factory=dict)

        monkeypatch.setattr(datasets, "Item", ItemWithExtra)


def outcome(results):
    """(kind, id, field) per result: what a test can compare in one line."""
    return [("error", r.id, r.field) if isinstance(r, ItemError) else ("item", r.id, r.text) for r in results]


def write_jsonl(path, rows):
    """Rows as JSON objects, or raw bytes for hostile lines."""
    path.write_bytes(b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows))
    return path


def write_csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as file:
        csv.writer(file, delimiter=delimiter).writerows(rows)
    return path


# --- JSONL ------------------------------------------------------------------------


def test_jsonl_rows_become_items_with_voice_params_and_extras(tmp_path):
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"id": 7, "text": "Hello there.", "voice": "v2/en_speaker_6", "params": {"seed": 3}, "lang": "en", "n": 1},
            {"id": "b", "text": "Second row.", "voice": None, "speaker": {"name": "Ann"}},
        ],
    )
    first, second = iter_dataset_items(path, ColumnsConfig())
    assert (first.id, first.text, first.voice, first.params) == ("7", "Hello there.", "v2/en_speaker_6", {"seed": 3})
    assert first.extra == {"lang": "en", "n": 1}
    assert (second.id, second.voice, second.params, second.extra) == ("b", None, {}, {"speaker": {"name": "Ann"}})


def test_jsonl_hostile_rows_fail_alone_and_good_rows_keep_their_order(tmp_path):
    path = write_jsonl(
        tmp_path / "data.ndjson",
        [
            {"id": "a", "text": "First."},
            {"id": "no-text"},
            {"id": "null-text", "text": None},
            {"id": "number-text", "text": 5},
            {"id": "empty", "text": ""},
            {"id": "blank", "text": " \n\t "},
            b'{"id": "broken", "text": "unterminated}',
            b"[1, 2, 3]",
            b'{"id": "latin1", "text": "caf\xe9"}',
            b'"just a string"',
            b"\xff\xfe garbage",
            {"text": "No id."},
            {"id": ["a", "list"], "text": "Odd id."},
            {"id": "bad-voice", "text": "Hi.", "voice": 3},
            {"id": "bad-params", "text": "Hi.", "params": [1]},
            {"id": "z", "text": "Last."},
        ],
    )
    (tmp_path / "data.ndjson").write_bytes(path.read_bytes().replace(b'"First."}\n', b'"First."}\n\n   \n'))
    results = list(iter_dataset_items(path, ColumnsConfig()))
    assert outcome(results) == [
        ("item", "a", "First."),
        ("error", "no-text", "text"),
        ("error", "null-text", "text"),
        ("error", "number-text", "text"),
        ("error", "empty", "text"),
        ("error", "blank", "text"),
        ("error", "line 9", "line"),  # blank lines count as lines: ids name the line to look at
        ("error", "line 10", "line"),
        ("error", "latin1", "line"),  # its id is readable although the text's byte is not UTF-8
        ("error", "line 12", "line"),
        ("error", "line 13", "line"),
        ("error", "line 14", "id"),
        ("error", "line 15", "id"),
        ("error", "bad-voice", "voice"),
        ("error", "bad-params", "params"),
        ("item", "z", "Last."),
    ]
    errors = [r for r in results if isinstance(r, ItemError)]
    assert all(r.message and "\n" not in r.message for r in errors)
    assert "empty" in errors[3].message and "empty" in errors[4].message
    assert "UTF-8" in errors[7].message and "JSON" in errors[5].message and "object" in errors[6].message


def test_gzipped_jsonl_with_a_byte_order_mark_and_custom_columns(tmp_path):
    lines = [{"key": "k1", "body": "Gzipped text.", "who": "announcer", "tag": "x"}]
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + json.dumps(lines[0]).encode() + b"\n"))
    columns = ColumnsConfig(id="key", text="body", voice="who", params=None, extra=["tag"])
    [item] = iter_dataset_items(path, columns)
    assert (item.id, item.text, item.voice, item.extra) == ("k1", "Gzipped text.", "announcer", {"tag": "x"})


def test_without_voice_and_params_columns_those_fields_are_plain_metadata(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, "text": "Hi.", "voice": "v2/en_speaker_1", "params": "raw"}])
    [item] = iter_dataset_items(path, ColumnsConfig(voice=None, params=None))
    assert (item.voice, item.params, item.extra) == (None, {}, {"voice": "v2/en_speaker_1", "params": "raw"})


def _first_ten_with_peak_memory(source):
    """Opens ``source`` as items and takes ten; returns the open iterator, the ten, and the
    peak traced Python memory while doing so."""
    tracemalloc.start()
    try:
        items = iter_dataset_items(source, ColumnsConfig())
        first = list(islice(items, 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return items, first, peak


def test_a_jsonl_generator_reads_only_what_it_yields(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w", encoding="utf-8") as file:
        for n in range(LAZY_ROWS):
            file.write(json.dumps({"id": n, "text": f"Sentence number {n} of a long dataset.", "n": n}) + "\n")
    assert path.stat().st_size > 10 * LAZY_PEAK_BYTES

    items, first, peak = _first_ten_with_peak_memory(path)
    items.close()
    assert [i.id for i in first] == [str(n) for n in range(10)]
    assert peak < LAZY_PEAK_BYTES


# --- CSV / TSV --------------------------------------------------------------------


def test_csv_rows_with_voice_params_extras_and_a_quoted_multiline_text(tmp_path):
    path = write_csv(
        tmp_path / "data.csv",
        [
            ["id", "text", "voice", "params", "chapter", "lang"],
            ["1", "One line.", "v2/en_speaker_6", '{"seed": 4, "sampling": {"semantic": {"temperature": 0.6}}}', "1", "en"],
            ["2", 'Two lines, with "quotes".\n\nSecond paragraph.', "", "", "1", "en"],
        ],
    )
    first, second = iter_dataset_items(path, ColumnsConfig())
    assert (first.id, first.voice, first.params) == ("1", "v2/en_speaker_6", {"seed": 4, "sampling": {"semantic": {"temperature": 0.6}}})
    assert first.extra == {"chapter": "1", "lang": "en"}
    assert second.text == 'Two lines, with "quotes".\n\nSecond paragraph.'
    assert (second.voice, second.params) == (None, {})  # empty cells: the job's defaults


def test_csv_extra_lists_only_the_chosen_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", [["id", "text", "a", "b"], ["1", "Hi.", "A", "B"]])
    [item] = iter_dataset_items(path, ColumnsConfig(extra=["b"]))
    assert item.extra == {"b": "B"}


def test_csv_hostile_rows_fail_alone(tmp_path):
    good = write_csv(
        tmp_path / "good.csv",
        [
            ["id", "text", "voice", "params"],
            ["a", "First.", "", ""],
            ["empty", "", "", ""],
            ["blank", "   ", "", ""],
            ["", "No id.", "", ""],
            ["short", "Too few fields."],
            ["long", "Too, many", "fields", "", "x"],
            ["bad-params", "Hi.", "", "{not json"],
            ["list-params", "Hi.", "", "[1]"],
        ],
    )
    latin1 = "latin1,caf\xe9,,\n".encode("latin-1")
    tail = b"z,Last.,,\n"
    path = tmp_path / "data.csv"
    path.write_bytes(good.read_bytes() + latin1 + tail)
    results = list(iter_dataset_items(path, ColumnsConfig()))
    assert outcome(results) == [
        ("item", "a", "First."),
        ("error", "empty", "text"),
        ("error", "blank", "text"),
        ("error", "row 4", "id"),
        ("error", "short", "row"),
        ("error", "long", "row"),
        ("error", "bad-params", "params"),
        ("error", "list-params", "params"),
        ("error", "latin1", "text"),
        ("item", "z", "Last."),
    ]
    assert all("\n" not in r.message for r in results if isinstance(r, ItemError))


def test_tsv_reads_tab_separated_rows(tmp_path):
    path = write_csv(tmp_path / "d.tsv", [["id", "text", "note"], ["1", "Commas, kept.", "n"]], delimiter="\t")
    [item] = iter_dataset_items(path, ColumnsConfig())
    assert (item.text, item.extra) == ("Commas, kept.", {"note": "n"})


def test_a_header_without_a_configured_column_fails_the_whole_file(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", [["ID", "text"], ["1", "Hi."]])
    with pytest.raises(SourceError, match="no column 'id'"):
        next(iter_dataset_items(csv_path, ColumnsConfig()))
    parquet_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["Hi."]}), parquet_path)
    with pytest.raises(SourceError, match="no column 'text'"):
        next(iter_dataset_items(parquet_path, ColumnsConfig()))
    with pytest.raises(SourceError, match="'missing'"):
        next(iter_dataset_items(parquet_path, ColumnsConfig(text="body", extra=["missing"])))


def test_an_empty_csv_is_an_empty_dataset(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    assert list(iter_dataset_items(tmp_path / "empty.csv", ColumnsConfig())) == []


# --- Parquet ----------------------------------------------------------------------


def test_parquet_rows_with_typed_extras_struct_params_and_hostile_rows(tmp_path):
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, None, 6], pa.int64()),
            "text": ["First.", None, "", "  ", "No id.", "Last."],
            "voice": ["announcer", None, None, None, None, None],
            "params": pa.array(
                [{"seed": 5}, None, None, None, None, {"seed": None}], pa.struct([("seed", pa.int64())])
            ),
            "day": [datetime.date(2024, 5, 1)] * 6,
            "score": [0.5] * 6,
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    results = list(iter_dataset_items(path, ColumnsConfig()))
    assert outcome(results) == [
        ("item", "1", "First."),
        ("error", "2", "text"),
        ("error", "3", "text"),
        ("error", "4", "text"),
        ("error", "row 5", "id"),
        ("item", "6", "Last."),
    ]
    first = results[0]
    assert (first.voice, first.params, first.extra) == ("announcer", {"seed": 5}, {"day": "2024-05-01", "score": 0.5})
    json.dumps(first.extra)  # what metadata will do with it


def test_parquet_json_string_params(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["Hi.", "Ho."], "params": ['{"voice_mode": "chained"}', "{oops"]}), path)
    results = list(iter_dataset_items(path, ColumnsConfig()))
    assert results[0].params == {"voice_mode": "chained"}
    assert outcome(results[1:]) == [("error", "b", "params")]


def test_parquet_streams_one_batch_at_a_time(tmp_path, monkeypatch):
    rows, group = 5_000, 500
    path = tmp_path / "d.parquet"
    table = pa.table({"id": list(range(rows)), "text": [f"Row {n} " + "words " * 40 for n in range(rows)]})
    pq.write_table(table, path, row_group_size=group)
    assert pq.ParquetFile(path).num_row_groups == rows // group

    batches = []
    real_iter_batches = pq.ParquetFile.iter_batches

    def counting_iter_batches(self, *args, **kwargs):
        for batch in real_iter_batches(self, *args, **kwargs):
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting_iter_batches)
    monkeypatch.setattr(datasets, "PARQUET_BATCH_ROWS", 100)
    items = iter_dataset_items(path, ColumnsConfig())
    assert [i.id for i in islice(items, 150)] == [str(n) for n in range(150)]
    assert batches == [100, 100]  # two batches read for 150 rows, not the file
    assert sum(1 for _ in items) == rows - 150
    assert len(batches) == rows // 100


# --- suffixes, config, opening ----------------------------------------------------


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("data.jsonl", True),
        ("s3://bucket/folder/DATA.NDJSON.GZ", True),
        ("file:///tmp/rows.csv", True),
        ("rows.tsv.gz", True),
        ("part-0.parquet", True),
        ("part-0.parquet.gz", False),
        ("book.txt", False),
        ("data.json", False),
        ("folder/", False),
    ],
)
def test_is_dataset_by_suffix(uri, expected):
    assert is_dataset(uri) is expected


def test_columns_config_rejects_typos_and_clashing_columns():
    with pytest.raises(ValidationError, match="extra_forbidden"):
        ColumnsConfig(txt="body")
    with pytest.raises(ValidationError, match="different columns"):
        ColumnsConfig(text="id")
    with pytest.raises(ValidationError, match="must not repeat"):
        ColumnsConfig(extra=["voice"])
    assert ColumnsConfig.model_validate({"voice": None, "extra": ["a"]}).named == ["id", "text", "params", "language"]
    assert ColumnsConfig.model_validate({"language": None}).named == ["id", "text", "voice", "params"]
    with pytest.raises(ValidationError, match="different columns"):
        ColumnsConfig(language="voice")


def test_missing_files_and_unknown_suffixes_raise(tmp_path):
    with pytest.raises(SourceNotFoundError, match="no such file") as missing:
        next(iter_dataset_items(tmp_path / "nope.jsonl", ColumnsConfig()))
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(SourceError, match="not a dataset"):
        next(iter_dataset_items(tmp_path / "book.txt", ColumnsConfig()))
    for no_key in ("s3://bucket.jsonl", "s3:///key.jsonl"):
        with pytest.raises(SourceError, match="bucket and a key"):
            next(iter_dataset_items(no_key, ColumnsConfig()))


def test_file_uris_are_local_paths(tmp_path):
    path = write_jsonl(tmp_path / "my data.jsonl", [{"id": 1, "text": "Hi."}])
    [item] = iter_dataset_items(path.as_uri(), ColumnsConfig())
    assert item.text == "Hi."


def test_count_rows_gives_the_progress_bar_its_total(tmp_path):
    from pipeline.datasets import count_rows

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(f'{{"id": {n}, "text": "t"}}\n' for n in range(25)))
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("id,text\n" + "".join(f"{n},t\n" for n in range(7)))
    assert count_rows(jsonl) == 25 and count_rows(csv_file) == 7
    assert count_rows("s3://bucket/rows.jsonl") is None and count_rows(tmp_path / "missing.jsonl") is None
    assert sum(1 for _ in iter_dataset_items(jsonl)) == count_rows(jsonl)


# --- Hugging Face datasets --------------------------------------------------------


@pytest.fixture
def hf():
    """The optional ``datasets`` package (in the ``hf`` and ``test`` extras)."""
    return pytest.importorskip("datasets")


STORY_ROWS = {
    "id": ["s1", "s2", "s3", None, "s5", "s6", "s7"],
    "text": ["Once upon a time.", None, "   ", "No id here.", "A voice.", "Bad params.", "The end."],
    "voice": [None, None, None, None, "v2/en_speaker_6", "", ""],
    "params": [None, None, None, None, '{"seed": 3}', "{oops", ""],
    "speaker": ["ann", "bob", "cy", "di", "ed", "fay", "gus"],
    "n": [1, 2, 3, 4, 5, 6, 7],
}
STORY_OUTCOME = [
    ("item", "s1", "Once upon a time."),
    ("error", "s2", "text"),
    ("error", "s3", "text"),
    ("error", "row 4", "id"),
    ("item", "s5", "A voice."),
    ("error", "s6", "params"),
    ("item", "s7", "The end."),
]


def test_a_save_to_disk_folder_reads_as_items_and_bad_rows_fail_alone(hf, tmp_path):
    folder = tmp_path / "stories"
    hf.Dataset.from_dict(STORY_ROWS).save_to_disk(str(folder))
    assert is_dataset(folder) and is_dataset(str(folder)) and is_dataset(folder.as_uri())
    results = list(iter_dataset_items(folder, ColumnsConfig()))
    assert outcome(results) == STORY_OUTCOME
    first, voiced, last = (r for r in results if isinstance(r, Item))
    assert (first.voice, first.params, first.extra) == (None, {}, {"speaker": "ann", "n": 1})
    assert (voiced.voice, voiced.params, voiced.extra) == ("v2/en_speaker_6", {"seed": 3}, {"speaker": "ed", "n": 5})
    assert last.voice is None and last.params == {}
    assert "\n" not in results[3].message and results[3].message == "no 'id'"
    assert datasets.count_rows(folder) == 7 == len(results)
    assert outcome(iter_dataset_items(f"hf:{folder}", ColumnsConfig())) == STORY_OUTCOME


def test_a_saved_folder_with_custom_columns_reads_only_the_chosen_extras(hf, tmp_path):
    folder = tmp_path / "custom"
    rows = {"key": [7, 8], "body": ["Seven.", "Eight."], "lang": ["en", "de"], "big": ["x" * 10, "y" * 10]}
    hf.Dataset.from_dict(rows).save_to_disk(str(folder))
    columns = ColumnsConfig(id="key", text="body", voice=None, params=None, extra=["lang"])
    results = list(iter_dataset_items(folder, columns))
    assert [(r.id, r.text, r.extra) for r in results] == [("7", "Seven.", {"lang": "en"}), ("8", "Eight.", {"lang": "de"})]
    with pytest.raises(SourceError, match="no column 'speaker'"):
        next(iter_dataset_items(folder, ColumnsConfig(id="key", text="body", extra=["speaker"])))


def test_a_dataset_dict_folder_picks_train_or_the_named_split(hf, tmp_path):
    folder = tmp_path / "splits"
    train = hf.Dataset.from_dict({"id": ["t1", "t2"], "text": ["Train one.", "Train two."]})
    test = hf.Dataset.from_dict({"id": ["x1"], "text": ["Test one."]})
    hf.DatasetDict({"train": train, "test": test}).save_to_disk(str(folder))
    assert [i.id for i in iter_dataset_items(folder)] == ["t1", "t2"]
    assert [i.id for i in iter_dataset_items(f"{folder}@test")] == ["x1"]
    assert [i.id for i in iter_dataset_items(f"hf:{folder}@test")] == ["x1"]
    assert is_dataset(f"{folder}@test") and not is_dataset(f"{tmp_path}@test")
    assert datasets.count_rows(f"{folder}@test") == 1 and datasets.count_rows(folder) == 2
    with pytest.raises(SourceError, match="no split 'dev'; it has 'train', 'test'"):
        next(iter_dataset_items(f"{folder}@dev"))

    no_train = tmp_path / "no-train"
    hf.DatasetDict({"a": test, "b": test}).save_to_disk(str(no_train))
    with pytest.raises(SourceError, match="pick a split with @SPLIT; it has 'a', 'b'"):
        next(iter_dataset_items(no_train))


def test_a_saved_folder_is_read_a_batch_at_a_time(hf, tmp_path, monkeypatch):
    rows = 100_000
    folder = tmp_path / "big"
    hf.Dataset.from_dict({"id": list(range(rows)), "text": [f"Sentence number {n} of a long dataset." for n in range(rows)]}).save_to_disk(
        str(folder)
    )
    monkeypatch.setattr(datasets, "HF_BATCH_ROWS", 100)
    items, first, peak = _first_ten_with_peak_memory(folder)
    assert [i.id for i in first] == [str(n) for n in range(10)]
    assert peak < LAZY_PEAK_BYTES  # the Arrow file is memory-mapped; only one batch of rows becomes Python objects
    assert sum(1 for _ in items) == rows - 10
    items.close()


def test_an_hf_name_streams_through_load_dataset(hf, tmp_path):
    """``hf:NAME`` goes to ``load_dataset(..., streaming=True)``; a local folder of data files stands in for the hub."""
    folder = tmp_path / "hub-like"
    folder.mkdir()
    write_jsonl(folder / "part-0.jsonl", [{"id": f"r{n}", "text": f"Row {n}.", "tag": n % 2} for n in range(5)])
    results = list(iter_dataset_items(f"hf:{folder}", ColumnsConfig()))
    assert [(r.id, r.text, r.extra) for r in results] == [(f"r{n}", f"Row {n}.", {"tag": n % 2}) for n in range(5)]
    assert datasets.count_rows(f"hf:{folder}") is None  # a stream is not counted ahead
    assert [r.id for r in iter_dataset_items(f"hf:{folder}@train")] == [f"r{n}" for n in range(5)]
    with pytest.raises(SourceError, match="Bad split: dev"):
        next(iter_dataset_items(f"hf:{folder}@dev"))


@pytest.mark.parametrize(
    "uri, spec",
    [
        ("hf:user/stories", ("user/stories", None, None)),
        ("hf:user/stories@test", ("user/stories", None, "test")),
        ("hf:wikitext:wikitext-2-raw-v1@validation", ("wikitext", "wikitext-2-raw-v1", "validation")),
        ("hf:user/name.v2:en", ("user/name.v2", "en", None)),
    ],
)
def test_hf_specs_parse(uri, spec):
    parsed = datasets.parse_hf_spec(uri)
    assert (parsed.name, parsed.config, parsed.split, parsed.on_disk) == (*spec, False)
    assert is_dataset(uri)


@pytest.mark.parametrize("uri", ["hf:", "hf:user/x@", "hf:a:b:c", "hf:a@b@c", "hf: user/x", "hf:user/x:", "hf:x@train[:10]"])
def test_bad_hf_specs_fail_with_the_syntax(uri):
    with pytest.raises(SourceError, match=r"expected hf:NAME\[:CONFIG\]\[@SPLIT\]"):
        next(iter_dataset_items(uri))
    with pytest.raises(SourceError, match="expected hf:NAME"):
        datasets.count_rows(uri)


def test_without_the_datasets_package_an_hf_input_fails_in_one_line(tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    saved.mkdir()
    for name in datasets.HF_SAVED_FILES:
        (saved / name).write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` meets when it is not installed
    for uri in ("hf:user/stories", str(saved)):
        for attempt in (lambda: next(iter_dataset_items(uri)), lambda: datasets.count_rows(uri)):
            with pytest.raises(datasets.MissingDependencyError, match=r"pip install 'bark-pipeline\[hf\]'") as info:
                attempt()
            assert "\n" not in str(info.value) and isinstance(info.value, UserError)


def test_an_unreachable_hub_name_fails_fast_in_one_line_offline(hf):
    """No hub here: with HF_HUB_OFFLINE=1 the library answers at once (read at import, hence a fresh process)."""
    code = (
        "import time\n"
        "from pipeline.datasets import iter_dataset_items\n"
        "from pipeline.sources import SourceError\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    next(iter_dataset_items('hf:nobody-here/no-such-dataset@train'))\n"
        "except SourceError as exc:\n"
        "    print(type(exc).__name__, '|', exc, '|', round(time.monotonic() - start, 1))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    kind, message, seconds = done.stdout.strip().split(" | ")
    assert kind in {"SourceUnavailableError", "SourceNotFoundError"}, done.stderr
    assert message.startswith("source hf:nobody-here/no-such-dataset@train: ") and "\n" not in message
    assert float(seconds) < 10


# --- one bad row, one failed row: hostile rows and damaged files --------------------


def nested(depth: int):
    """An object nested ``depth`` objects deep."""
    value = "bottom"
    for _ in range(depth):
        value = {"in": value}
    return value


def test_a_row_whose_extra_nests_too_deep_fails_alone_where_it_is_read(tmp_path):
    """The issue's row nested 300 objects deep failed the job when its metadata was written."""
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "a", "text": "First.", "meta": nested(31)},
            {"id": "deep", "text": "Deep.", "meta": nested(300)},
            {"id": "z", "text": "Last.", "tags": ["x"]},
        ],
    )
    results = list(iter_dataset_items(path, ColumnsConfig()))
    assert outcome(results) == [("item", "a", "First."), ("error", "deep", "meta"), ("item", "z", "Last.")]
    assert results[1].message == "'meta' nests deeper than limits.max_metadata_depth (32)"
    # What passes is what the item's metadata file can hold: pydantic writes it at the limit.
    ItemMetadata(
        id="a", status="ok", duration_s=1, sample_rate=24000, voice_mode="fixed", language="en",
        seed=0, model="m", wall_s=1, extra={"meta": nested(32)},
    ).model_dump_json()
    tight = list(iter_dataset_items(path, ColumnsConfig(), limits=LimitsConfig(max_metadata_depth=2)))
    assert outcome(tight)[0] == ("error", "a", "meta")


def test_a_parquet_row_with_a_deep_struct_fails_alone(tmp_path):
    struct = pa.struct([("in", pa.struct([("in", pa.string())]))])
    table = pa.table({"id": ["a", "b"], "text": ["One.", "Two."], "meta": pa.array([None, {"in": {"in": "x"}}], struct)})
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    results = list(iter_dataset_items(path, ColumnsConfig(), limits=LimitsConfig(max_metadata_depth=1)))
    assert outcome(results) == [("item", "a", "One."), ("error", "b", "meta")]


ROWS = [{"id": f"r{n}", "text": f"Row number {n} says something a little different."} for n in range(400)]


def gzip_cut(data: bytes, keep: float) -> bytes:
    compressed = gzip.compress(data)
    return compressed[: int(len(compressed) * keep)]


@pytest.mark.parametrize("keep", [0.3, 0.75, 0.995])
def test_a_truncated_jsonl_gz_gives_its_whole_rows_then_one_error_naming_the_file(tmp_path, keep):
    data = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip_cut(data, keep))
    results = list(iter_dataset_items(path, ColumnsConfig()))  # no EOFError
    *items, error = results
    assert items and all(isinstance(i, Item) for i in items)
    assert [(i.id, i.text) for i in items] == [(r["id"], r["text"]) for r in ROWS[: len(items)]]  # whole rows only
    assert isinstance(error, ItemError) and error.field == "file" and error.id == f"line {len(items) + 1}"
    assert error.message.startswith(f"{path} breaks off after line {len(items)} (")
    assert error.message.endswith("); the lines after it cannot be read") and "\n" not in error.message


def test_a_gz_cut_inside_its_last_line_never_yields_that_line_half(tmp_path):
    data = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS[:3]).rstrip(b"\n")  # no final newline
    whole = gzip.compress(data)
    for cut in range(len(whole) - 8, len(whole)):  # the compressed data is all there; the trailer is not
        path = tmp_path / "trailer.jsonl.gz"
        path.write_bytes(whole[:cut])
        results = list(iter_dataset_items(path, ColumnsConfig()))
        assert [r.id for r in results if isinstance(r, Item)] in (["r0", "r1"], ["r0", "r1", "r2"])
        assert isinstance(results[-1], ItemError) and results[-1].field == "file"


def test_a_truncated_csv_gz_gives_the_rows_before_the_damage_then_one_error(tmp_path):
    lines = ["id,text"] + [f'{r["id"]},"{r["text"]}"' for r in ROWS]
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(gzip_cut(("\n".join(lines) + "\n").encode(), 0.5))
    results = list(iter_dataset_items(path, ColumnsConfig()))
    *items, error = results
    assert [(i.id, i.text) for i in items] == [(r["id"], r["text"]) for r in ROWS[: len(items)]]
    assert 0 < len(items) < len(ROWS)
    assert error.field == "file" and error.id == f"row {len(items) + 1}"
    assert error.message.startswith(f"{path} breaks off after row {len(items)} (")
    # A header cut off is the whole file's problem: one line, before any row.
    (tmp_path / "head.csv.gz").write_bytes(gzip_cut(b"id,text," + b"x" * 5000, 0.5))
    with pytest.raises(SourceError, match=r"breaks off in its header"):
        next(iter_dataset_items(tmp_path / "head.csv.gz", ColumnsConfig()))


def test_a_line_over_the_byte_limit_fails_alone_and_is_never_held_whole(tmp_path):
    """A .gz of ~100 KB that inflates to one 64 MiB line: read a bounded piece at a time."""
    limit = 1 << 20
    huge = b'{"id": "huge", "text": "' + b" " * (64 << 20) + b'"}\n'
    for kind, head, good in [
        ("jsonl", b"", [json.dumps(r).encode() + b"\n" for r in ROWS[:2]]),
        ("csv", b"id,text\n", [f'{r["id"]},{r["text"]}\n'.encode() for r in ROWS[:2]]),
    ]:
        path = tmp_path / f"bomb.{kind}.gz"
        with gzip.open(path, "wb", compresslevel=1) as file:
            file.write(head + good[0] + huge + good[1])
        assert path.stat().st_size < 1 << 20
        tracemalloc.start()
        try:
            results = list(iter_dataset_items(path, ColumnsConfig(), limits=LimitsConfig(max_item_bytes=limit)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        where = "line 2" if kind == "jsonl" else "row 2"
        assert outcome(results) == [("item", "r0", ROWS[0]["text"]), ("error", where, "line" if kind == "jsonl" else "row"),
                                    ("item", "r1", ROWS[1]["text"])]
        assert "longer than limits.max_item_bytes (1048576 bytes)" in results[1].message
        assert peak < 8 * limit  # a few buffers of the limit, never the 64 MiB line
    del huge


# --- the schema, checked once before the job starts ---------------------------------


def test_check_columns_names_the_missing_column_and_those_present_in_one_line(tmp_path):
    csv_path = write_csv(tmp_path / "d.csv", [["id", "body", "lang"], ["1", "Hi.", "en"]])
    with pytest.raises(SourceError) as caught:
        check_columns(csv_path, ColumnsConfig())
    assert str(caught.value) == f"source {csv_path}: no column 'text'; it has 'id', 'body', 'lang'"
    assert isinstance(caught.value, UserError) and not isinstance(caught.value, ValueError)
    assert check_columns(csv_path, ColumnsConfig(text="body")) == ["id", "body", "lang"]

    parquet_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"key": ["1"], "text": ["Hi."]}), parquet_path)
    with pytest.raises(SourceError, match=r"no column 'id'; it has 'key', 'text'$"):
        check_columns(parquet_path, ColumnsConfig())
    with pytest.raises(SourceError, match=r"no column 'speaker'"):
        check_columns(parquet_path, ColumnsConfig(id="key", extra=["speaker"]))

    jsonl = write_jsonl(tmp_path / "d.jsonl", [{"id": n, "body": "Hi."} for n in range(50)])
    with pytest.raises(SourceError, match=r"no column 'text' in its first 20 rows; they have 'id', 'body'$"):
        check_columns(jsonl, ColumnsConfig())


def test_check_columns_reads_only_the_schema(tmp_path):
    # A CSV whose rows after the header are cut off: the header alone is read.
    header_then_damage = gzip.compress(b"id,text\n" + b"".join(f"{n},Row {n}.\n".encode() for n in range(5000)))
    path = tmp_path / "d.csv.gz"
    path.write_bytes(header_then_damage[: len(header_then_damage) // 2])
    assert check_columns(path, ColumnsConfig()) == ["id", "text"]
    # JSONL: one bad first row does not fail the file; an empty file has nothing to lack.
    jsonl = write_jsonl(tmp_path / "d.jsonl", [b"not json", {"id": "a"}, {"id": "b", "text": "Hi.", "n": 1}])
    assert check_columns(jsonl, ColumnsConfig()) == ["id", "text", "n"]
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert check_columns(tmp_path / "empty.jsonl", ColumnsConfig()) == []
    with pytest.raises(SourceNotFoundError):
        check_columns(tmp_path / "missing.csv", ColumnsConfig())
    with pytest.raises(SourceError, match="not a dataset"):
        check_columns(tmp_path / "book.txt", ColumnsConfig())


def test_check_columns_of_a_saved_hugging_face_dataset(hf, tmp_path):
    folder = tmp_path / "stories"
    hf.Dataset.from_dict({"id": ["a"], "body": ["Hi."]}).save_to_disk(str(folder))
    with pytest.raises(SourceError, match=r"no column 'text'; it has 'id', 'body'$"):
        check_columns(folder, ColumnsConfig())
    assert check_columns(f"hf:{folder}", ColumnsConfig(text="body")) == ["id", "body"]
    stream = tmp_path / "hub-like"
    stream.mkdir()
    write_jsonl(stream / "part-0.jsonl", [{"id": "r", "body": "Row."}])
    with pytest.raises(SourceError, match=r"no column 'text'; it has 'id', 'body'$"):
        check_columns(f"hf:{stream}", ColumnsConfig())


def test_check_columns_of_an_s3_object(s3_env, tmp_path):
    import boto3

    key = f"schema/{tmp_path.name}/d.jsonl"
    boto3.client("s3", endpoint_url=s3_env.endpoint_url).put_object(
        Bucket=s3_env.bucket, Key=key, Body=b'{"id": 1, "body": "Hi."}\n'
    )
    with pytest.raises(SourceError, match=r"no column 'text' in its first 1 rows; they have 'id', 'body'$"):
        check_columns(f"s3://{s3_env.bucket}/{key}", ColumnsConfig(), s3=S3Config(endpoint_url=s3_env.endpoint_url))
