"""Where the texts come from: .txt, .md and .epub files, and folders of them.

A source is read lazily, one item at a time, so a folder of a million chapters
never sits in memory. A text that cannot be used (bad UTF-8, a corrupt EPUB,
nothing to say) becomes an ``ItemError`` in the stream instead of an exception:
one bad file must not stop a job that has hours of good ones.

Structure reaches the text front end in the text itself: a blank line between
paragraphs and a form feed (``pipeline.text.CHAPTER_BREAK``) before a chapter,
which is what a Markdown heading becomes. An EPUB gives one item per chapter.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import ebooklib
import yaml
from ebooklib import epub
from markdown_it import MarkdownIt

from pipeline.text import CHAPTER_BREAK, PARAGRAPH_BREAK


@dataclass(frozen=True)
class Item:
    """One text to narrate.

    ``voice`` overrides the job's voice when set; ``params`` holds the item's
    own raw settings (a Markdown front-matter block, dataset columns), which
    the job validates as ``pipeline.config.ItemParams``; ``extra`` is metadata
    carried into the item's output as is (a dataset row's other columns).
    """

    id: str
    text: str
    voice: str | None = None
    title: str | None = None
    params: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ItemError:
    """An item that cannot be narrated, reported in the manifest instead of raised."""

    id: str
    field: str
    message: str


def iter_file_items(path: Path) -> Iterator[Item | ItemError]:
    """Items of one file, or of every readable file below a folder (sorted by path).

    A ``.txt`` or ``.md`` file is one item, an ``.epub`` one item per chapter.
    Ids are file stems (``book/003`` for an EPUB's third chapter); when two
    files in a folder share a stem, both get their path relative to the folder,
    without suffix (``part1/intro``), so ids stay unique and stable between runs
    (resume depends on it). In a folder, other files and hidden ones are skipped.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            (
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in READERS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        for file, item_id in zip(files, _item_ids(files, path)):
            yield from READERS[file.suffix.lower()](file, item_id)
    elif path.is_file():
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise ValueError(
                f"source {path}: cannot read {path.suffix or 'suffix-less'!r} files; "
                f"expected {', '.join(READERS)} or a folder"
            )
        yield from reader(path, path.stem)
    else:
        raise FileNotFoundError(f"source {path}: no such file or folder")


iter_text_items = iter_file_items  # the name from when there were only .txt files


def _item_ids(files: list[Path], root: Path) -> list[str]:
    """Stems; relative paths for shared stems; with suffix where even those clash (a.md, a.txt)."""
    stem_counts = Counter(f.stem for f in files)
    relative = [f.relative_to(root) for f in files]
    ids = [f.stem if stem_counts[f.stem] == 1 else r.with_suffix("").as_posix() for f, r in zip(files, relative)]
    id_counts = Counter(ids)
    return [i if id_counts[i] == 1 else r.as_posix() for i, r in zip(ids, relative)]


def _read_text(file: Path, item_id: str) -> str | ItemError:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return ItemError(item_id, "text", f"cannot read {file}: {exc.strerror}")
    try:
        # utf-8-sig: a byte-order mark some editors write is not part of the text.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ItemError(item_id, "text", f"{file} is not valid UTF-8 (byte {exc.start})")


def _no_text(file: Path, item_id: str) -> ItemError:
    return ItemError(item_id, "text", f"{file} has no text")


# --- .txt -------------------------------------------------------------------------


def _text_items(file: Path, item_id: str) -> Iterator[Item | ItemError]:
    text = _read_text(file, item_id)
    if isinstance(text, ItemError):
        yield text
    elif not text.strip():
        yield _no_text(file, item_id)
    else:
        yield Item(id=item_id, text=text)


# --- .md --------------------------------------------------------------------------

# YAML between two "---" lines at the very top ("..." may close it, as in YAML).
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL | re.MULTILINE)


def _markdown_items(file: Path, item_id: str) -> Iterator[Item | ItemError]:
    source = _read_text(file, item_id)
    if isinstance(source, ItemError):
        yield source
        return
    params: dict = {}
    match = _FRONT_MATTER.match(source)
    if match:
        try:
            params = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError as exc:
            yield ItemError(item_id, "front_matter", f"{file}: not valid YAML: {str(exc).splitlines()[0]}")
            return
        if not isinstance(params, dict):
            yield ItemError(item_id, "front_matter", f"{file}: must be a mapping of settings")
            return
        source = source[match.end() :]
    text, first_heading = markdown_to_text(source)
    # A title is what nearly every front-matter block has; it names the item, it is no setting.
    title = params.pop("title", None)
    title = title if isinstance(title, str) else first_heading
    if not text.strip():
        yield _no_text(file, item_id)
    else:
        yield Item(id=item_id, text=text, title=title, params=params)


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


def _epub_items(file: Path, book_id: str) -> Iterator[Item | ItemError]:
    """One item per spine document with text, in reading order, titled from the table of contents."""
    try:
        book = epub.read_epub(str(file), options={"ignore_ncx": False})
        documents = [book.get_item_with_id(idref) for idref, _linear in book.spine]
    except Exception as exc:  # noqa: BLE001 - a corrupt file fails in the parser's own ways
        yield ItemError(book_id, "file", f"{file} is not a readable EPUB: {str(exc) or type(exc).__name__}")
        return
    titles = _toc_titles(book.toc)
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
        yield Item(id=f"{book_id}/{n:03d}", text=text, title=title)
    if n == 0:
        yield _no_text(file, book_id)


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


READERS: dict[str, Callable[[Path, str], Iterator[Item | ItemError]]] = {
    ".txt": _text_items,
    ".md": _markdown_items,
    ".markdown": _markdown_items,
    ".epub": _epub_items,
}
