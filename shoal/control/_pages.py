"""Page arithmetic: file identity, page keys, and which pieces of which pages a byte range
of a file covers.

A file of ``size`` bytes is cut into pages of ``page_size`` bytes (the last one shorter; a
small file is one page, an empty file has none) and into chunks of ``chunk_size`` bytes for
placement. A read of ``length`` bytes at ``offset`` becomes a list of :class:`PageSlice`:
page ``index``, the piece ``[start, start + length)`` of that page, and where the piece goes
in the destination buffer. Client and worker use the same functions, so they agree on every
boundary.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, NamedTuple

from ..engine import _batch

if TYPE_CHECKING:
    from .ufs import ObjectInfo

__all__ = [
    "MAX_PAGES",
    "PageSlice",
    "chunk_of",
    "file_id",
    "page_count",
    "page_key",
    "page_length",
    "page_slices",
    "read_length",
]

#: Pages a file may have: page keys hold the page number in 4 bytes.
MAX_PAGES = 1 << 32


class PageSlice(NamedTuple):
    """A piece of one page that a read needs.

    Attributes
    ----------
    index
        Page number in the file.
    start
        Offset of the piece within the page.
    length
        Bytes in the piece (> 0).
    buf_offset
        Where the piece goes in the destination buffer.
    """

    index: int
    start: int
    length: int
    buf_offset: int


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _page_size(page_size: object) -> int:
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise TypeError(f"page_size must be an int, got {type(page_size).__name__}")
    if page_size <= 0:
        raise ValueError(f"page_size must be > 0, got {page_size}")
    return page_size


def page_count(size: int, page_size: int) -> int:
    """Pages of a file of ``size`` bytes (0 for an empty file).

    Raises ``ValueError`` when the file would need more than :data:`MAX_PAGES` pages.
    """
    size, page_size = _count(size, "size"), _page_size(page_size)
    count = -(-size // page_size)
    if count > MAX_PAGES:
        raise ValueError(
            f"a file of {size} bytes needs {count} pages of {page_size} bytes; at most "
            f"{MAX_PAGES} are supported (use a larger page_size)"
        )
    return count


def page_length(index: int, size: int, page_size: int) -> int:
    """Bytes in page ``index`` of a file of ``size`` bytes; ``ValueError`` past the end."""
    index = _count(index, "page index")
    count = page_count(size, page_size)
    if index >= count:
        raise ValueError(f"page {index} is past the end of a file of {count} pages")
    return min(page_size, size - index * page_size)


def read_length(offset: int, length: int, size: int) -> int:
    """Bytes a read of ``length`` bytes at ``offset`` returns from a file of ``size``:
    ``length``, fewer at the end of the file, 0 past it."""
    offset, length, size = _count(offset, "offset"), _count(length, "length"), _count(size, "size")
    return max(0, min(length, size - offset))


def page_slices(offset: int, length: int, size: int, page_size: int) -> list[PageSlice]:
    """The pieces of pages that a read of ``length`` bytes at ``offset`` needs.

    Parameters
    ----------
    offset
        Byte offset in the file, >= 0 (past the end reads nothing).
    length
        Bytes wanted (the destination buffer's size), >= 0.
    size
        The file's size.
    page_size
        Bytes per page.

    Returns
    -------
    list of PageSlice
        In file order, contiguous, covering ``[offset, offset + read_length(...))``; their
        ``buf_offset`` run from 0 without gaps. Empty for a read of nothing.
    """
    page_size = _page_size(page_size)
    n = read_length(offset, length, size)
    if n == 0:
        return []
    page_count(size, page_size)  # refuses files with too many pages
    out = []
    pos, end = offset, offset + n
    while pos < end:
        index, start = divmod(pos, page_size)
        take = min(page_size - start, end - pos)
        out.append(PageSlice(index, start, take, pos - offset))
        pos += take
    return out


def chunk_of(index: int, page_size: int, chunk_size: int) -> int:
    """The placement chunk holding page ``index``; ``chunk_size`` is a multiple of
    ``page_size``."""
    index, page_size = _count(index, "page index"), _page_size(page_size)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size <= 0 or chunk_size % page_size:
        raise ValueError(
            f"chunk_size ({chunk_size}) must be a positive multiple of page_size ({page_size})"
        )
    return index // (chunk_size // page_size)


def file_id(uri: str, version: str) -> bytes:
    """The 16-byte identity of one version of an object: a changed object gets a new one,
    so its new content is never served from pages of the old."""
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"file_id: uri must be a non-empty str, got {uri!r}")
    if not isinstance(version, str):
        raise TypeError(f"file_id: version must be a str, got {type(version).__name__}")
    return _digest(uri, version)


def file_ids(base_uri: str, infos: list[ObjectInfo]) -> list[bytes]:
    """:func:`file_id` of each object ``info.path`` under the URI ``base_uri`` (ending in
    ``/``), for a listing's many files at once, in one native pass."""
    return _batch.file_ids(base_uri, infos)


def _digest(uri: str, version: str) -> bytes:
    data = (uri + "\0" + version).encode("utf-8", "surrogateescape")
    return hashlib.blake2b(data, digest_size=16).digest()


def page_key(fid: bytes, index: int) -> bytes:
    """The page store key of page ``index`` of the file ``fid`` (see :func:`file_id`)."""
    if not isinstance(fid, (bytes, bytearray)) or len(fid) != 16:
        raise ValueError(f"page_key: file id must be 16 bytes, got {fid!r}")
    index = _count(index, "page index")
    if index >= MAX_PAGES:
        raise ValueError(f"page index {index} does not fit a page key (max {MAX_PAGES - 1})")
    return bytes(fid) + index.to_bytes(4, "big")
