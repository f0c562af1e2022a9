"""Text sources: ids, order, laziness and per-item errors instead of exceptions."""

from __future__ import annotations

import pytest

from pipeline.sources import Item, ItemError, iter_text_items


def write(path, content: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_single_file_is_one_item_named_by_stem(tmp_path):
    path = write(tmp_path / "chapter one.txt", "Héllo wörld.")
    assert list(iter_text_items(path)) == [Item(id="chapter one", text="Héllo wörld.")]


def test_directory_is_recursive_and_sorted_and_skips_other_files(tmp_path):
    write(tmp_path / "b.txt", "B")
    write(tmp_path / "a.txt", "A")
    write(tmp_path / "sub" / "c.txt", "C")
    write(tmp_path / "notes.md", "not narrated")
    items = list(iter_text_items(tmp_path))
    assert [(i.id, i.text) for i in items] == [("a", "A"), ("b", "B"), ("c", "C")]


def test_shared_stems_use_relative_paths(tmp_path):
    write(tmp_path / "part1" / "intro.txt", "one")
    write(tmp_path / "part2" / "intro.txt", "two")
    write(tmp_path / "intro.txt", "zero")
    write(tmp_path / "part2" / "outro.txt", "end")
    ids = [i.id for i in iter_text_items(tmp_path)]
    assert ids == ["intro", "part1/intro", "part2/intro", "outro"]
    assert len(set(ids)) == len(ids)


def test_bad_items_become_errors_and_the_stream_goes_on(tmp_path):
    write(tmp_path / "a_bad.txt", b"caf\xe9 latin-1")
    write(tmp_path / "b_blank.txt", " \n\t ")
    write(tmp_path / "c_empty.txt", "")
    write(tmp_path / "d_good.txt", "fine")
    results = list(iter_text_items(tmp_path))
    assert [type(r) for r in results] == [ItemError, ItemError, ItemError, Item]
    assert results[0].id == "a_bad" and results[0].field == "text"
    assert "UTF-8" in results[0].message
    assert "no text" in results[1].message
    assert results[3] == Item(id="d_good", text="fine")


def test_byte_order_mark_is_not_text(tmp_path):
    path = write(tmp_path / "bom.txt", "\ufeffHello".encode())
    assert next(iter_text_items(path)).text == "Hello"


def test_files_are_read_one_item_at_a_time(tmp_path):
    write(tmp_path / "a.txt", "A")
    write(tmp_path / "b.txt", "B")
    stream = iter_text_items(tmp_path)
    assert next(stream).text == "A"
    write(tmp_path / "b.txt", "B, edited")  # not read yet
    assert [i.text for i in stream] == ["B, edited"]


def test_missing_path_and_wrong_file_type(tmp_path):
    with pytest.raises(FileNotFoundError):
        next(iter_text_items(tmp_path / "nope"))
    with pytest.raises(ValueError, match=".txt"):
        next(iter_text_items(write(tmp_path / "x.csv", "a,b")))
