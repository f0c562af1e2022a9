"""Which books the job has seen, and which are whole: the driver's side of the audiobook step.

As items are admitted, the tracker notes each one that belongs to a book (an
EPUB's chapters, a Markdown file with headings: :class:`pipeline.sources.Book`)
in input order, and every one of them that fails. Once the job's items are all
settled, a book none of whose items failed becomes a
:class:`pipeline.audiobook.BookOrder` for a writer; a book with a failed item
becomes one line naming it and that item. Only ids are kept per item, and one
``Book`` (title, author, cover) per book.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.audiobook import BookOrder, ChapterSource
from pipeline.config import OutputConfig
from pipeline.sources import Book, Item
from pipeline.writer import ItemFiles


@dataclass
class _BookItems:
    book: Book
    items: list[tuple[str, str | None]] = field(default_factory=list)  # (id, title) in input order
    failed: str | None = None  # the first item of the book that failed


class BookTracker:
    def __init__(self, output: OutputConfig) -> None:
        self.output = output
        self.enabled = output.audiobook is not None
        self._books: dict[str, _BookItems] = {}
        self._book_of: dict[str, str] = {}  # item id -> book id

    def admitted(self, item: Item) -> None:
        if not self.enabled or item.book is None:
            return
        book = self._books.setdefault(item.book.id, _BookItems(item.book))
        book.items.append((item.id, item.title))
        self._book_of[item.id] = item.book.id

    def failed(self, item_id: str) -> None:
        book = self._books.get(self._book_of.get(item_id, ""))
        if book is not None and book.failed is None:
            book.failed = item_id

    @property
    def seen(self) -> int:
        return len(self._books)

    def orders(self) -> tuple[list[BookOrder], list[tuple[str, str]]]:
        """The orders of the books whose items are all ok, and (book id, reason) of the others."""
        orders, left_out = [], []
        for book_id, book in self._books.items():
            if book.failed is not None:
                what = "its item" if book.failed == book_id else f"its chapter {book.failed}"
                left_out.append((book_id, f"not made: {what} failed"))
                continue
            files = [(ItemFiles.of(item_id, self.output.format), item_id, title) for item_id, title in book.items]
            titles = book.book.chapter_titles
            orders.append(
                BookOrder(
                    book_id=book_id,
                    title=book.book.title,
                    author=book.book.author,
                    cover=book.book.cover,
                    items=[ChapterSource(item_id=i, title=t, audio_key=f.audio, metadata_key=f.metadata) for f, i, t in files],
                    chapter_titles=list(titles) if titles is not None else None,
                    gap_s=self.output.silence.chapter,
                )
            )
        return orders, left_out
