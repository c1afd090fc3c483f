"""Which errno a FUSE reply carries for each error the client raises."""

from __future__ import annotations

import errno

import pyfuse3
import pytest

from shoal._errors import PageCorruptedError
from shoal.control.ufs import ObjectChangedError
from shoal.fuse._ops import errno_of


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (FileNotFoundError(errno.ENOENT, "no such file"), errno.ENOENT),
        (IsADirectoryError(errno.EISDIR, "dir"), errno.EISDIR),
        (NotADirectoryError(errno.ENOTDIR, "file"), errno.ENOTDIR),
        (PermissionError(errno.EACCES, "refused"), errno.EACCES),
        (PermissionError("refused, no errno"), errno.EACCES),
        (TimeoutError("slow"), errno.ETIMEDOUT),
        (ConnectionRefusedError("no worker"), errno.EIO),
        (ObjectChangedError("changed", "/d/f"), errno.ESTALE),
        (PageCorruptedError("bad crc"), errno.EIO),
        (OSError(errno.ENOSPC, "full"), errno.ENOSPC),
        (ValueError("bad name"), errno.EINVAL),
        (RuntimeError("anything else"), errno.EIO),
        (pyfuse3.FUSEError(errno.EROFS), errno.EROFS),
    ],
)
def test_errno_of(exc, code):
    assert errno_of(exc) == code
