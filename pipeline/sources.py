"""Where the texts come from: .txt, .md and .epub files, and folders of them.

A source is read lazily, one item at a time, so a folder of a million chapters
never sits in memory. A text that cannot be used (bad UTF-8, a corrupt EPUB,
nothing to say) becomes an ``ItemError`` in the stream instead of an exception:
one bad file must not stop a job that has hours of good ones.

Structure reaches the text front end in the text itself: a blank line between
paragraphs and a form feed (``pipeline.text.CHAPTER_BREAK``) before a chapter,
which is what a Markdown heading becomes. An EPUB gives one item per chapter.

Nothing is read past ``LimitsConfig``'s bounds: a text file no further than
``max_item_bytes``, an EPUB only after its declared inflated sizes pass.
"""

from __future__ import annotations

import datetime
import posixpath
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote
from xml.etree import ElementTree

import ebooklib
import yaml
from ebooklib import epub
from markdown_it import MarkdownIt

from pipeline.archives import oversize_reason
from pipeline.config import ItemParams, LimitsConfig
from pipeline.text import CHAPTER_BREAK, PARAGRAPH_BREAK, chapters
from workers.errors import UserError

_READ_PIECE_BYTES = 1 << 20  # a text file is read a MiB at a time, up to limits.max_item_bytes


@dataclass(frozen=True)
class Book:
    """The book an item belongs to, as its source reads it, for the audiobook step
    (:mod:`pipeline.audiobook`): no second read of the source is needed there.

    An EPUB's chapters are items of their own, each holding the same ``Book``
    (``chapter_titles`` None: a chapter's title is its item's title). A Markdown
    file with headings is one item whose chapters are in its text;
    ``chapter_titles`` names them, one per chapter the text front end keeps
    (the text before the first heading, when there is any, first).
    """

    id: str
    title: str | None = None
    author: str | None = None
    cover: bytes | None = None  # a JPEG or PNG image, as the source holds it
    chapter_titles: tuple[str | None, ...] | None = None


@dataclass(frozen=True)
class Item:
    """One text to narrate.

    ``voice`` overrides the job's voice when set, ``language`` its language (a code the
    job checks, like ``params``); ``params`` holds the item's
    own raw settings (a Markdown front-matter block's settings, dataset columns),
    which the job validates as ``pipeline.config.ItemParams``; ``extra`` is
    metadata carried into the item's output as is (a dataset row's other
    columns, a front-matter block's other keys), already plain JSON.
    """

    id: str
    text: str
    voice: str | None = None
    title: str | None = None
    language: str | None = None
    params: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    book: Book | None = None


@dataclass(frozen=True)
class ItemError:
    """An item that cannot be narrated, reported in the manifest instead of raised."""

    id: str
    field: str
    message: str


class SourceError(UserError):
    """An input that cannot be read at all (not one item of it); one line naming the input."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """An input that is not there; also a FileNotFoundError, as the open() it stands for."""


class SourceUnavailableError(SourceError, OSError):
    """An input that cannot be reached now (a hub offline, a network down); also an OSError."""


# --- metadata ---------------------------------------------------------------------

_JSON_SCALARS = (str, int, float, bool, type(None))


def plain_metadata(values: dict, max_depth: int) -> dict | str:
    """``values`` as the item's JSON metadata can hold them (dates as ISO text, keys as
    text), or a one-line reason naming the key whose value cannot be held: nested
    deeper than ``max_depth`` (what JSON writers refuse), or of a kind JSON lacks.

    Checked when the item is read, so such a value fails its item there, not when
    the item's audio is done and its metadata is written.
    """
    plain = {}
    for key, value in values.items():
        try:
            plain[str(key)] = _plain_value(value, max_depth)
        except _TooDeep:
            return f"{str(key)!r} nests deeper than limits.max_metadata_depth ({max_depth})"
        except _NotJson as exc:
            return f"{str(key)!r} holds {exc.args[0]}, which JSON metadata cannot hold"
    return plain


class _TooDeep(Exception):
    pass


class _NotJson(Exception):
    pass


def _plain_value(value, depth_left: int):
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, (datetime.date, datetime.time)):  # YAML reads 2024-05-01 as a date
        return value.isoformat()
    if not isinstance(value, (dict, list, tuple)):
        raise _NotJson(f"a {type(value).__name__}")
    if depth_left < 1:
        raise _TooDeep
    if isinstance(value, dict):
        return {str(k): _plain_value(v, depth_left - 1) for k, v in value.items()}
    return [_plain_value(v, depth_left - 1) for v in value]


def iter_file_items(path: Path, limits: LimitsConfig | None = None) -> Iterator[Item | ItemError]:
    """Items of one file, or of every readable file below a folder (sorted by id).

    A ``.txt`` or ``.md`` file is one item, an ``.epub`` one item per chapter.
    In a folder, an item's id is the file's path relative to the folder without
    its suffix (``intro``, ``part1/intro``; ``book/003`` for an EPUB's third
    chapter), so adding or removing files never changes another file's id
    (resume depends on it); a single file's id is its stem. Two files whose paths
    differ only by suffix (``a.md``, ``a.txt``, ``a.epub``) would share an id:
    the first in sorted order of suffix keeps it, and each other one fails under
    its path with suffix (``a.txt``), asking for a rename. In a folder, other files and
    hidden ones are skipped. ``limits`` bounds what one file may make us read.
    """
    path = Path(path)
    limits = limits or LimitsConfig()
    if path.is_dir():
        # Sorted by id, then suffix: files that would share an id come one after the other.
        files = sorted(
            (
                p.relative_to(path)
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in READERS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ),
            key=lambda r: (r.with_suffix("").as_posix(), r.suffix),
        )
        kept: Path | None = None
        for relative in files:
            item_id = relative.with_suffix("").as_posix()
            if kept is not None and kept.with_suffix("").as_posix() == item_id:
                yield ItemError(
                    relative.as_posix(),
                    "id",
                    f"{relative.as_posix()} would have the id {item_id!r} of {kept.as_posix()} "
                    "(an id leaves out the suffix); rename one of them",
                )
                continue
            kept = relative
            yield from READERS[relative.suffix.lower()](path / relative, item_id, limits)
    elif path.is_file():
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise SourceError(
                f"source {path}: cannot read {path.suffix or 'suffix-less'!r} files; "
                f"expected {', '.join(READERS)} or a folder"
            )
        yield from reader(path, path.stem, limits)
    else:
        raise SourceNotFoundError(f"source {path}: no such file or folder")


iter_text_items = iter_file_items  # the name from when there were only .txt files


def _read_text(file: Path, item_id: str, limits: LimitsConfig) -> str | ItemError:
    """The file's text, read no further than ``limits.max_item_bytes``."""
    try:
        with open(file, "rb") as stream:
            raw = _read_at_most(stream, limits.max_item_bytes)
    except OSError as exc:
        return ItemError(item_id, "text", f"cannot read {file}: {exc.strerror}")
    if raw is None:
        return ItemError(item_id, "text", f"{file} is over limits.max_item_bytes ({limits.max_item_bytes} bytes)")
    try:
        # utf-8-sig: a byte-order mark some editors write is not part of the text.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ItemError(item_id, "text", f"{file} is not valid UTF-8 (byte {exc.start})")


def _read_at_most(stream: BinaryIO, limit: int) -> bytes | None:
    """All of ``stream``, or None when it holds more than ``limit`` bytes. Read in
    pieces: ``read(limit)`` would set aside ``limit`` bytes even for a small file."""
    pieces, size = [], 0
    while size <= limit:
        piece = stream.read(min(_READ_PIECE_BYTES, limit + 1 - size))
        if not piece:
            return b"".join(pieces)
        pieces.append(piece)
        size += len(piece)
    return None


def _no_text(file: Path, item_id: str) -> ItemError:
    return ItemError(item_id, "text", f"{file} has no text")


# --- .txt -------------------------------------------------------------------------


def _text_items(file: Path, item_id: str, limits: LimitsConfig) -> Iterator[Item | ItemError]:
    text = _read_text(file, item_id, limits)
    if isinstance(text, ItemError):
        yield text
    elif not text.strip():
        yield _no_text(file, item_id)
    else:
        yield Item(id=item_id, text=text)


# --- .md --------------------------------------------------------------------------

# YAML between two "---" lines at the very top ("..." may close it, as in YAML).
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)


# Front-matter keys that are the item's settings (validated by the job); "title" names
# the item; every other key (author, date, tags, ...) is kept as the item's metadata.
_SETTINGS_KEYS = frozenset(ItemParams.model_fields)


def _markdown_items(file: Path, item_id: str, limits: LimitsConfig) -> Iterator[Item | ItemError]:
    source = _read_text(file, item_id, limits)
    if isinstance(source, ItemError):
        yield source
        return
    front: dict = {}
    match = _FRONT_MATTER.match(source)
    if match:
        try:
            front = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError as exc:
            yield ItemError(item_id, "front_matter", f"{file}: not valid YAML: {str(exc).splitlines()[0]}")
            return
        except RecursionError:  # [[[[... nested past Python's own limit
            yield ItemError(item_id, "front_matter", f"{file}: nests deeper than limits.max_metadata_depth ({limits.max_metadata_depth})")
            return
        if not isinstance(front, dict):
            yield ItemError(item_id, "front_matter", f"{file}: must be a mapping of settings")
            return
        source = source[match.end() :]
    params = {key: value for key, value in front.items() if key in _SETTINGS_KEYS}
    extra = plain_metadata({key: value for key, value in front.items() if key not in _SETTINGS_KEYS and key != "title"}, limits.max_metadata_depth)
    if isinstance(extra, str):
        yield ItemError(item_id, "front_matter", f"{file}: {extra}")
        return
    text, first_heading = markdown_to_text(source)
    # A title is what nearly every front-matter block has; it names the item, it is no setting.
    title = front.get("title")
    title = title if isinstance(title, str) else first_heading
    if not text.strip():
        yield _no_text(file, item_id)
        return
    book = None
    if first_heading is not None:  # headings make chapters: the item is a book
        author = front.get("author")
        book = Book(
            id=item_id, title=title, author=author if isinstance(author, str) else None,
            chapter_titles=_chapter_titles(text),
        )
    yield Item(id=item_id, text=text, title=title, params=params, extra=extra, book=book)


def _chapter_titles(text: str) -> tuple[str | None, ...]:
    """The heading of each chapter of ``markdown_to_text``'s text that the text front end keeps
    (a heading is its chapter's first paragraph; the text before the first heading has none)."""
    titles = []
    for n, chapter in enumerate(text.split(CHAPTER_BREAK)):
        kept = chapters(chapter)
        if kept:
            titles.extend([kept[0][0] if n > 0 else None] + [None] * (len(kept) - 1))
    return tuple(titles)


def markdown_to_text(source: str) -> tuple[str, str | None]:
    """The words of a Markdown text, and its first heading.

    Each heading starts a chapter (a form feed) and is a paragraph of its own;
    paragraphs, list items and quotes are paragraphs; emphasis, links and images
    leave their text (an image its alt text); code blocks and HTML are dropped.
    """
    blocks: list[str] = []
    first_heading = None
    in_heading = False
    for token in MarkdownIt("commonmark").parse(source):
        if token.type == "heading_open":
            blocks.append(CHAPTER_BREAK)
            in_heading = True
        elif token.type == "heading_close":
            in_heading = False
        elif token.type == "inline":
            words = "".join(_inline_text(child) for child in token.children or [])
            blocks.append(words + PARAGRAPH_BREAK)
            if in_heading and first_heading is None and words.strip():
                first_heading = " ".join(words.split())
    return "".join(blocks), first_heading


def _inline_text(token) -> str:
    """What one inline token says: its text (an image: its alt text); markup says nothing."""
    if token.type in ("text", "code_inline", "image"):
        return token.content
    return " " if token.type in ("softbreak", "hardbreak") else ""


# --- .epub ------------------------------------------------------------------------


def _epub_items(file: Path, book_id: str, limits: LimitsConfig) -> Iterator[Item | ItemError]:
    """One item per spine document with text, in reading order, titled from the table of contents.

    The parser inflates every file of the book into memory, so their declared
    sizes are checked first (``limits.max_epub_bytes``, ``limits.max_compression_ratio``).
    """
    try:
        with zipfile.ZipFile(file) as archive:
            too_large = oversize_reason(
                archive.infolist(),
                limits.max_epub_bytes,
                limits.max_compression_ratio,
                bytes_limit="limits.max_epub_bytes",
                ratio_limit="limits.max_compression_ratio",
            )
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        yield ItemError(book_id, "file", f"{file} is not a readable EPUB: {str(exc) or type(exc).__name__}")
        return
    if too_large:
        yield ItemError(book_id, "file", f"{file} {too_large}")
        return
    try:
        book = epub.read_epub(str(file), options={"ignore_ncx": False})
        documents = [book.get_item_with_id(idref) for idref, _linear in book.spine]
    except Exception as exc:  # noqa: BLE001 - a corrupt file fails in the parser's own ways
        yield ItemError(book_id, "file", f"{file} is not a readable EPUB: {str(exc) or type(exc).__name__}")
        return
    titles = _toc_titles(book.toc)
    about = Book(
        id=book_id, title=_dc_text(book, "title"), author=_dc_text(book, "creator"), cover=_cover_image(book)
    )
    n = 0
    for document in documents:
        if document is None or document.get_type() != ebooklib.ITEM_DOCUMENT or isinstance(document, epub.EpubNav):
            continue
        html = _HtmlText()
        html.feed(document.get_content().decode("utf-8-sig", errors="replace"))
        html.close()
        text = PARAGRAPH_BREAK.join(html.paragraphs)
        if not text.strip():
            continue  # a cover image, a blank page
        n += 1
        name = posixpath.normpath(document.get_name())
        title = titles.get(name) or titles.get(posixpath.basename(name)) or html.first_heading
        yield Item(id=f"{book_id}/{n:03d}", text=text, title=title, book=about)
    if n == 0:
        yield _no_text(file, book_id)


_CONTAINER = "META-INF/container.xml"
_XHTML = "application/xhtml+xml"


def count_epub_chapters(file: Path, limits: LimitsConfig | None = None) -> int:
    """How many items :func:`_epub_items` gives, read cheaply for the progress bar: the spine's XHTML
    documents other than the navigation document, from the package file alone (no chapter is inflated).

    A spine document without text (a cover image, a blank page) is counted though it gives no item,
    so this is at most that many over; a book that cannot be read counts as its one failed item.
    """
    limits = limits or LimitsConfig()
    try:
        with zipfile.ZipFile(file) as archive:
            if oversize_reason(
                archive.infolist(), limits.max_epub_bytes, limits.max_compression_ratio, bytes_limit="", ratio_limit=""
            ):
                return 1
            container = ElementTree.fromstring(archive.read(_CONTAINER))
            rootfile = next(e.get("full-path") for e in container.iter() if e.tag.endswith("}rootfile") and e.get("full-path"))
            package = ElementTree.fromstring(archive.read(rootfile))
    except (OSError, EOFError, ValueError, KeyError, StopIteration, zipfile.BadZipFile, ElementTree.ParseError):
        return 1
    manifest = {e.get("id"): e for e in package.iter() if e.tag.endswith("}item")}
    chapters = 0
    for ref in (e for e in package.iter() if e.tag.endswith("}itemref")):
        item = manifest.get(ref.get("idref"))
        if item is not None and item.get("media-type") == _XHTML and "nav" not in (item.get("properties") or "").split():
            chapters += 1
    return max(chapters, 1)  # none: the book is one failed item


def count_file_items(file: Path, limits: LimitsConfig | None = None) -> int:
    """Items a file gives: one, or an EPUB's chapters (:func:`count_epub_chapters`)."""
    return count_epub_chapters(file, limits) if file.suffix.lower() == ".epub" else 1


COVER_MEDIA_TYPES = ("image/jpeg", "image/png")  # what an audiobook's cover may be


def _dc_text(book: epub.EpubBook, name: str) -> str | None:
    """The first Dublin Core ``name`` (title, creator) of the book, on one line."""
    for value, _attributes in book.get_metadata("DC", name):
        if isinstance(value, str) and value.strip():
            return " ".join(value.split())
    return None


def _cover_image(book: epub.EpubBook) -> bytes | None:
    """The cover image's bytes: the manifest's ``cover-image`` (EPUB 3), else the item the
    ``<meta name="cover">`` names (EPUB 2); None when there is none, or it is no JPEG or PNG."""
    candidates = list(book.get_items_of_type(ebooklib.ITEM_COVER))
    for _value, attributes in book.get_metadata("OPF", "meta"):
        if (attributes or {}).get("name") == "cover" and attributes.get("content"):
            candidates.append(book.get_item_with_id(attributes["content"]))
    for item in candidates:
        if item is not None and getattr(item, "media_type", None) in COVER_MEDIA_TYPES and item.get_content():
            return item.get_content()
    return None


def _toc_titles(toc) -> dict[str, str]:
    """Title of each document named in the table of contents (nav or NCX), first entry first.

    Keys are the document's path and, as a fallback for NCX paths relative to
    another folder, its file name.
    """
    titles: dict[str, str] = {}
    for entry in toc if isinstance(toc, list) else [toc]:  # ebooklib's NCX reader may give one Link
        if isinstance(entry, tuple):  # (Section, [children])
            section, children = entry
            entries = [section]
            nested = _toc_titles(children)
        else:
            entries, nested = [entry], {}
        for node in entries:
            if isinstance(node, (epub.Link, epub.Section)) and node.href and node.title and node.title.strip():
                name = posixpath.normpath(unquote(node.href.split("#")[0]))
                for key in (name, posixpath.basename(name)):
                    titles.setdefault(key, " ".join(node.title.split()))
        for key, title in nested.items():
            titles.setdefault(key, title)
    return titles


class _HtmlText(HTMLParser):
    """Paragraphs of an (X)HTML document: one per block element, in document order."""

    BLOCKS = frozenset(
        "address article aside blockquote dd div dl dt figcaption footer h1 h2 h3 h4 h5 h6 header "
        "hr li main nav ol p pre section table td th tr ul".split()
    )
    HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())
    # Not read aloud: metadata, code, drawings, and ruby readings (the base text is read).
    SKIPPED = frozenset("head script style svg math rt rp".split())

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.first_heading: str | None = None
        self._words: list[str] = []
        self._skipping = 0
        self._heading_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIPPED:
            self._skipping += 1
        elif tag == "br":
            self._words.append(" ")
        elif tag in self.BLOCKS:
            self._flush()
            self._heading_depth += tag in self.HEADINGS

    def handle_endtag(self, tag):
        if tag in self.SKIPPED:
            self._skipping = max(self._skipping - 1, 0)
        elif tag in self.BLOCKS:
            self._flush()
            self._heading_depth = max(self._heading_depth - (tag in self.HEADINGS), 0)

    def handle_data(self, data):
        if not self._skipping:
            self._words.append(data)

    def close(self):
        super().close()
        self._flush()

    def _flush(self):
        paragraph = " ".join("".join(self._words).split())
        self._words = []
        if paragraph:
            self.paragraphs.append(paragraph)
            if self._heading_depth and self.first_heading is None:
                self.first_heading = paragraph


READERS: dict[str, Callable[[Path, str, LimitsConfig], Iterator[Item | ItemError]]] = {
    ".txt": _text_items,
    ".md": _markdown_items,
    ".markdown": _markdown_items,
    ".epub": _epub_items,
}
