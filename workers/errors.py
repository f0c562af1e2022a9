"""The one family of errors that a user can fix: a config, an input, a voice, a checkpoint,
a storage setting. Each carries a one-line message naming the thing and the field.
And how any error is put on one line (:func:`last_line`), for records and consoles.

It is deliberately not a ``ValueError``: a ``ValueError`` (or any other exception)
from inside the job is a bug, reported as such with its traceback, never mistaken
for "bad config".
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user gave us; the message is one line and says what to fix."""


def last_line(exc: BaseException) -> str:
    """An error on one line, for a record or a console line: its message's last line (where a
    library puts the gist), else its type's name."""
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
