"""Zip archives opened within bounds: an EPUB and a voice ``.npz`` are zip files, and a
few hundred compressed bytes can claim, or inflate to, gigabytes.

Sizes are judged on the central directory's declared sizes before anything is
inflated. That is enough because ``zipfile`` never returns more than a member's
declared size (it stops there, and a member whose data says otherwise fails its
CRC check). Only stored and deflated members are allowed: bzip2 and LZMA members
inflate a whole compressed block in one call, beyond any bound.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable

# A member smaller than this is never judged by its compression ratio: it cannot
# cost much, and small, very regular members (a stylesheet, a cover page) do compress well.
RATIO_CHECKED_BYTES = 1 << 20
_BOUNDED_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})


def oversize_reason(
    members: Iterable[zipfile.ZipInfo], max_bytes: int, max_ratio: int, *, bytes_limit: str, ratio_limit: str
) -> str | None:
    """Why inflating ``members`` could cost more than allowed, in one line; None when it cannot.

    ``bytes_limit`` and ``ratio_limit`` name the settings in the message, so the
    user knows which one to raise.
    """
    members = list(members)
    for info in members:
        if info.compress_type not in _BOUNDED_METHODS:
            return f"{info.filename} uses zip compression method {info.compress_type}; only stored and deflated are read"
    if sum(info.file_size for info in members) > max_bytes:
        return f"inflates to more than {bytes_limit} ({max_bytes} bytes)"
    for info in members:
        if info.file_size > RATIO_CHECKED_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            ratio = info.file_size // max(info.compress_size, 1)
            return f"{info.filename} is compressed {ratio}:1, over {ratio_limit} ({max_ratio}:1)"
    return None
