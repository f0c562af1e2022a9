"""Text sources: .txt, .md and .epub files and folders; ids, order, laziness, per-item errors."""

from __future__ import annotations

import json
import re
import tracemalloc
import zipfile

import pytest
from ebooklib import epub

from pipeline.config import LimitsConfig
from pipeline.sources import (
    Item,
    ItemError,
    SourceError,
    SourceNotFoundError,
    iter_file_items,
    iter_text_items,
    markdown_to_text,
)
from pipeline.text import ChunkBudget, make_chunks
from workers.errors import UserError


def write(path, content: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_the_old_name_is_the_same_function():
    assert iter_text_items is iter_file_items


# --- .txt and folders ------------------------------------------------------------


def test_single_file_is_one_item_named_by_stem(tmp_path):
    path = write(tmp_path / "chapter one.txt", "Héllo wörld.")
    assert list(iter_file_items(path)) == [Item(id="chapter one", text="Héllo wörld.")]


def test_directory_is_recursive_and_sorted_and_skips_other_and_hidden_files(tmp_path):
    write(tmp_path / "b.txt", "B")
    write(tmp_path / "a.TXT", "A")
    write(tmp_path / "sub" / "c.md", "C")
    write(tmp_path / "sub" / "d.markdown", "D")
    write(tmp_path / "notes.csv", "not, narrated")
    write(tmp_path / ".hidden.txt", "not narrated")
    write(tmp_path / ".git" / "x.txt", "not narrated")
    items = list(iter_file_items(tmp_path))
    assert [(i.id, i.text.strip()) for i in items] == [("a", "A"), ("b", "B"), ("sub/c", "C"), ("sub/d", "D")]


def test_ids_are_paths_relative_to_the_folder_and_adding_files_changes_none(tmp_path):
    write(tmp_path / "intro.txt", "zero")
    write(tmp_path / "part1" / "intro.md", "one")
    before = {i.id: i.text.strip() for i in iter_file_items(tmp_path)}
    assert before == {"intro": "zero", "part1/intro": "one"}

    # The trap: a same-named file elsewhere used to rename "intro" to a path.
    write(tmp_path / "part2" / "intro.txt", "two")
    write(tmp_path / "b" / "intro.md", "bee")
    write(tmp_path / "a.txt", "first by name")
    after = {i.id: i.text.strip() for i in iter_file_items(tmp_path)}
    assert {k: after[k] for k in before} == before
    assert list(after) == ["a", "b/intro", "intro", "part1/intro", "part2/intro"]


def test_files_that_differ_only_by_suffix_keep_one_id_and_the_other_fails_by_its_path(tmp_path):
    write(tmp_path / "intro.txt", "text")
    write(tmp_path / "intro.md", "markdown")
    write(tmp_path / "z.txt", "still read")
    results = list(iter_file_items(tmp_path))
    assert [type(r) for r in results] == [Item, ItemError, Item]
    assert (results[0].id, results[0].text.strip()) == ("intro", "markdown")  # .md sorts before .txt
    error = results[1]
    assert (error.id, error.field) == ("intro.txt", "id")  # never the id of the item it clashes with
    assert error.message == "intro.txt would have the id 'intro' of intro.md (an id leaves out the suffix); rename one of them"
    assert results[2].id == "z"


def test_bad_items_become_errors_and_the_stream_goes_on(tmp_path):
    write(tmp_path / "a_bad.txt", b"caf\xe9 latin-1")
    write(tmp_path / "b_blank.txt", " \n\t ")
    write(tmp_path / "c_empty.txt", "")
    write(tmp_path / "d_good.txt", "fine")
    results = list(iter_file_items(tmp_path))
    assert [type(r) for r in results] == [ItemError, ItemError, ItemError, Item]
    assert results[0].id == "a_bad" and results[0].field == "text"
    assert "UTF-8" in results[0].message
    assert "no text" in results[1].message
    assert results[3] == Item(id="d_good", text="fine")


def test_byte_order_mark_is_not_text(tmp_path):
    path = write(tmp_path / "bom.txt", "\ufeffHello".encode())
    assert next(iter_file_items(path)).text == "Hello"


def test_form_feeds_in_a_text_file_are_chapter_breaks(tmp_path):
    path = write(tmp_path / "book.txt", "One.\n\nTwo.\n\fThree.")
    chunks = make_chunks(next(iter_file_items(path)).text, len, ChunkBudget(100))
    assert [(c.text, c.break_after) for c in chunks] == [
        ("One.", "paragraph"), ("Two.", "chapter"), ("Three.", "end"),
    ]


def test_files_are_read_one_item_at_a_time(tmp_path):
    write(tmp_path / "a.txt", "A")
    write(tmp_path / "b.txt", "B")
    stream = iter_file_items(tmp_path)
    assert next(stream).text == "A"
    write(tmp_path / "b.txt", "B, edited")  # not read yet
    assert [i.text for i in stream] == ["B, edited"]


def test_missing_path_and_unknown_file_type(tmp_path):
    with pytest.raises(SourceNotFoundError, match="no such file or folder") as missing:
        next(iter_file_items(tmp_path / "nope"))
    assert isinstance(missing.value, (UserError, FileNotFoundError))
    with pytest.raises(SourceError, match=r"'\.csv'.*\.txt, \.md, \.markdown, \.epub") as unknown:
        next(iter_file_items(write(tmp_path / "x.csv", "a,b")))
    assert isinstance(unknown.value, UserError) and not isinstance(unknown.value, ValueError)


def test_a_text_file_over_the_byte_limit_fails_alone_without_being_read(tmp_path):
    limit = 1 << 20
    write(tmp_path / "a_huge.txt", "word " * (limit // 2))  # 2.5 MiB
    write(tmp_path / "b.txt", "Small.")
    tracemalloc.start()
    try:
        results = list(iter_file_items(tmp_path, LimitsConfig(max_item_bytes=limit)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(r) for r in results] == [ItemError, Item]
    assert results[0].id == "a_huge" and results[0].field == "text"
    assert results[0].message.endswith("a_huge.txt is over limits.max_item_bytes (1048576 bytes)")
    assert peak < 2 * limit  # read no further than the limit
    assert [type(r) for r in iter_file_items(tmp_path)] == [Item, Item]  # the default allows 16 MiB


# --- .md -------------------------------------------------------------------------

BOOK_MD = """---
title: The Rain
voice: v2/de_speaker_3
sampling: {semantic: {temperature: 0.5}}
---
# Chapter *One*

The *first* chapter [laughs] begins [here](https://example.com).
It goes on ![a red door](door.png) and `quietly`.

- a list item
- another **one**

> A quote.

```python
print("never read aloud")
```

<div>raw html is dropped</div>

## Chapter Two

The end... ♪ — [MAN] Bye.
"""


def test_markdown_is_plain_text_with_chapters_and_front_matter(tmp_path):
    (item,) = iter_file_items(write(tmp_path / "rain.md", BOOK_MD))
    assert item.id == "rain" and item.title == "The Rain"
    assert item.params == {"voice": "v2/de_speaker_3", "sampling": {"semantic": {"temperature": 0.5}}}
    chunks = make_chunks(item.text, len, ChunkBudget(256))
    assert [(c.text, c.break_after) for c in chunks] == [
        ("Chapter One", "paragraph"),
        ("The first chapter [laughs] begins here. It goes on a red door and quietly.", "paragraph"),
        ("a list item", "paragraph"),
        ("another one", "paragraph"),
        ("A quote.", "chapter"),
        ("Chapter Two", "paragraph"),
        ("The end... ♪ — [MAN] Bye.", "end"),
    ]


def test_markdown_title_falls_back_to_the_first_heading():
    text, heading = markdown_to_text("Intro words.\n\n# The *Real* Start\n\nText.")
    assert heading == "The Real Start"
    assert text.startswith("Intro words.")
    assert markdown_to_text("No headings here.")[1] is None


def test_markdown_without_front_matter_and_a_thematic_break(tmp_path):
    (item,) = iter_file_items(write(tmp_path / "plain.md", "---\n\nJust text.\n"))
    assert item.params == {} and item.title is None and item.text.strip() == "Just text."


@pytest.mark.parametrize(
    ("front_matter", "message"),
    [("voice: [unclosed\n", "not valid YAML"), ("- a list\n", "mapping")],
)
def test_bad_front_matter_is_an_item_error(tmp_path, front_matter, message):
    write(tmp_path / "a.md", f"---\n{front_matter}---\nText.")
    write(tmp_path / "b.md", "Fine.")
    results = list(iter_file_items(tmp_path))
    assert isinstance(results[0], ItemError) and results[0].field == "front_matter"
    assert message in results[0].message
    assert results[1].id == "b"


def test_front_matter_keys_we_do_not_use_are_kept_as_metadata(tmp_path):
    front = (
        "title: The Rain\nauthor: Ann Smith\ndate: 2024-05-01\ntags: [rain, sea]\n"
        "draft: false\n1999: a year as a key\nvoice: v2/en_speaker_1\nseed: 7\n"
    )
    (item,) = iter_file_items(write(tmp_path / "rain.md", f"---\n{front}---\nText."))
    assert item.title == "The Rain"
    assert item.params == {"voice": "v2/en_speaker_1", "seed": 7}  # the settings, which the job validates
    assert item.extra == {
        "author": "Ann Smith", "date": "2024-05-01", "tags": ["rain", "sea"], "draft": False, "1999": "a year as a key",
    }
    json.dumps(item.extra)  # what the item's metadata file will hold


def test_front_matter_nested_too_deep_fails_its_file_alone(tmp_path):
    deep = "[" * 300 + "]" * 300
    write(tmp_path / "a.md", f"---\nnotes: {deep}\n---\nText.")
    write(tmp_path / "b.md", "---\nnotes: " + "[" * 5000 + "]" * 5000 + "\n---\nText.")  # past Python's recursion
    write(tmp_path / "c.md", "---\nnotes: [[[ok]]]\n---\nText.")
    results = list(iter_file_items(tmp_path))
    assert [(type(r), r.id) for r in results] == [(ItemError, "a"), (ItemError, "b"), (Item, "c")]
    assert results[0].field == "front_matter"
    assert results[0].message.endswith("a.md: 'notes' nests deeper than limits.max_metadata_depth (32)")
    assert "limits.max_metadata_depth" in results[1].message and "\n" not in results[1].message
    assert results[2].extra == {"notes": [[["ok"]]]}


def test_markdown_with_nothing_to_say_is_an_item_error(tmp_path):
    (result,) = iter_file_items(write(tmp_path / "code.md", "---\nvoice: x\n---\n```\ncode only\n```\n"))
    assert isinstance(result, ItemError) and "no text" in result.message


# --- .epub -----------------------------------------------------------------------


def make_epub(path, chapters, *, toc=True, extra_spine=()):
    """A small real EPUB: (file name, toc title or None, body html) per chapter."""
    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title("A Test Book")
    book.set_language("en")
    documents = []
    for name, _title, body in chapters:
        document = epub.EpubHtml(title=name, file_name=name, lang="en")
        document.content = f"<html><head><title>not read</title></head><body>{body}</body></html>"
        book.add_item(document)
        documents.append(document)
    if toc:
        book.toc = [epub.Link(d.file_name, title, d.id) for d, (_, title, _) in zip(documents, chapters) if title]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *extra_spine, *documents]
    path.parent.mkdir(parents=True, exist_ok=True)
    epub.write_epub(str(path), book, {"raise_exceptions": True})
    return path


CHAPTERS = [
    ("cover.xhtml", None, '<img src="cover.jpg" alt="Cover"/>'),
    ("ch1.xhtml", "The Beginning", "<h1>Chapter 1</h1><p>It was a <em>dark</em> night.</p><p>Rain fell.</p>"),
    ("ch2.xhtml", None, "<h2>Chapter 2</h2><section><p>Morning &amp; light.</p><h3>Later</h3><p>Done.</p>"
     "</section>"),
    ("ch3.xhtml", "The End", "<p>Fin<ruby>漢<rt>かん</rt></ruby>.<br/>Really.</p><script>x()</script>"),
]


def test_epub_is_one_item_per_chapter_in_spine_order_with_titles(tmp_path):
    path = make_epub(tmp_path / "novel.epub", CHAPTERS)
    items = list(iter_file_items(path))
    assert [(i.id, i.title) for i in items] == [
        ("novel/001", "The Beginning"),  # from the table of contents
        ("novel/002", "Chapter 2"),  # not in it: the first heading
        ("novel/003", "The End"),
    ]
    assert items[0].text == "Chapter 1\n\nIt was a dark night.\n\nRain fell."
    # Headings inside a chapter are paragraph breaks, not chapter breaks.
    chunks = make_chunks(items[1].text, len, ChunkBudget(256))
    assert [(c.text, c.break_after) for c in chunks] == [
        ("Chapter 2", "paragraph"), ("Morning & light.", "paragraph"), ("Later", "paragraph"), ("Done.", "end"),
    ]
    assert items[2].text == "Fin漢. Really."  # ruby readings and scripts are not read


def without_toc_document(path, target, kind: str):
    """A copy of the EPUB without its nav document (an EPUB 2 book) or without its NCX."""
    drop = {
        "nav": ('properties="nav"', '<itemref idref="nav"/>', "nav.xhtml"),
        "ncx": ('id="ncx"', ' toc="ncx"', "toc.ncx"),
    }
    manifest_marker, spine_entry, file_name = drop[kind]
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w") as copy:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(".opf"):
                lines = data.decode().replace(spine_entry, "").splitlines()
                data = "\n".join(line for line in lines if manifest_marker not in line).encode()
            if not info.filename.endswith(file_name):
                copy.writestr(info, data)
    return target


@pytest.mark.parametrize("kind", ["nav", "ncx"])
def test_epub_titles_come_from_either_table_of_contents(tmp_path, kind):
    path = without_toc_document(make_epub(tmp_path / "full.epub", CHAPTERS), tmp_path / "book.epub", kind)
    items = list(iter_file_items(path))
    assert [(i.id, i.title) for i in items] == [
        ("book/001", "The Beginning"), ("book/002", "Chapter 2"), ("book/003", "The End"),
    ]


def test_epubs_in_a_folder_follow_the_id_rule(tmp_path):
    make_epub(tmp_path / "a" / "book.epub", CHAPTERS[1:2])
    make_epub(tmp_path / "b" / "book.epub", CHAPTERS[3:4])
    write(tmp_path / "c.txt", "Text.")
    ids = [i.id for i in iter_file_items(tmp_path)]
    assert ids == ["a/book/001", "b/book/001", "c"]


def test_corrupt_and_empty_epubs_are_one_item_error_each(tmp_path):
    write(tmp_path / "a_corrupt.epub", b"PK\x03\x04 not really a zip")
    make_epub(tmp_path / "b_empty.epub", CHAPTERS[:1])  # only a cover image
    write(tmp_path / "c.txt", "Still read.")
    results = list(iter_file_items(tmp_path))
    assert [type(r) for r in results] == [ItemError, ItemError, Item]
    assert results[0].id == "a_corrupt" and results[0].field == "file" and "EPUB" in results[0].message
    assert results[1].id == "b_empty" and "no text" in results[1].message


def epub_with_chapter_bytes(path, chapter_bytes: int):
    """A real EPUB whose second chapter is ``chapter_bytes`` of one repeated paragraph:
    it deflates about 1000:1, as the 196 KB EPUB of the issue that took 416 MB did."""
    make_epub(path, CHAPTERS[1:3])
    paragraph = b"<p>" + b"All work and no play. " * 40 + b"</p>"
    body = paragraph * (chapter_bytes // len(paragraph))
    bomb = path.with_name("bomb-" + path.name)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as copy:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("ch2.xhtml"):
                data = data.replace(b"<section>", b"<section>" + body)
            copy.writestr(info, data, compress_type=zipfile.ZIP_STORED if info.filename == "mimetype" else None)
    bomb.replace(path)
    return path


def test_an_epub_that_inflates_past_the_ratio_fails_alone_before_inflating(tmp_path):
    epub_with_chapter_bytes(tmp_path / "a_bomb.epub", 64 << 20)
    assert (tmp_path / "a_bomb.epub").stat().st_size < 256_000
    write(tmp_path / "b.txt", "Still read.")
    tracemalloc.start()
    try:
        results = list(iter_file_items(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(type(r), r.id) for r in results] == [(ItemError, "a_bomb"), (Item, "b")]
    assert results[0].field == "file"
    assert re.search(r"a_bomb\.epub EPUB/ch2\.xhtml is compressed \d+:1, over limits\.max_compression_ratio \(100:1\)$", results[0].message)
    assert peak < 4 << 20


def test_an_epub_over_its_inflated_size_limit_fails_and_a_raised_limit_reads_it(tmp_path):
    path = epub_with_chapter_bytes(tmp_path / "long.epub", 3 << 20)
    tight = LimitsConfig(max_epub_bytes="2MiB", max_compression_ratio=10_000)
    (error,) = iter_file_items(path, tight)
    assert error.message.endswith("long.epub inflates to more than limits.max_epub_bytes (2097152 bytes)")
    roomy = LimitsConfig(max_epub_bytes="8MiB", max_compression_ratio=10_000)
    items = list(iter_file_items(path, roomy))
    assert [i.id for i in items] == ["long/001", "long/002"] and len(items[1].text) > 3_000_000
