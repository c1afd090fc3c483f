"""Checks shared by the stores' options: credentials are passed by reference only.

A mount's options are stored in the mount table and shown by the CLI, so they must never
hold a secret. Options name an environment variable (``*_env``) or a file instead; a key
that looks like a literal secret is refused, and no message ever echoes its value. A URI
appears in a message only through :func:`redact_uri`, without its userinfo.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "check_env_name",
    "check_name",
    "env_value",
    "has_password",
    "is_env_option",
    "looks_like_key",
    "looks_secret",
    "redact_uri",
    "reject_literal_secrets",
]

_SECRET_WORDS = re.compile(
    r"(secret|passw|token|credential|private|access_?key|account_?key|sas|key_?id|^key$)",
    re.IGNORECASE,
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A run of 16 or more letters and digits, with both: the shape of an access key id
# (AKIA...) or a token, not of a name a person gives a variable or a profile.
_KEY_RUN = re.compile(r"[A-Za-z0-9]{16,}")
_QUERY_OR_FRAGMENT = re.compile(r"[?#]")


def is_env_option(key: str) -> bool:
    """True for an option that names an environment variable (``*_env``), whose value
    the store reads when it connects: ``access_key_env``, ``token_env`` ..."""
    return key.endswith("_env")


def looks_secret(key: str) -> bool:
    """True for an option name that would carry a credential's value."""
    return bool(_SECRET_WORDS.search(key)) and not key.endswith("_env")


def reject_literal_secrets(
    options: Mapping[str, Any], store: str, allowed: Iterable[str] = ()
) -> None:
    """Raise ``ValueError`` for any option (not in ``allowed``) that looks like a secret.

    The message names the option and says how to pass it by reference; it never
    contains the value.
    """
    allowed = set(allowed)
    for key, value in options.items():
        if key not in allowed and looks_secret(str(key)):
            raise ValueError(
                f"{store}: option {key!r} would hold a secret; secrets are never accepted "
                f"in options. Put it in an environment variable and pass its name as "
                f"'{key}_env' (or use a credentials file)"
            )
        if isinstance(value, Mapping):
            # Nested client options (fsspec's ``client_kwargs``) could hide one too.
            reject_literal_secrets(value, f"{store} option {key!r}")


def looks_like_key(value: str) -> bool:
    """True if ``value`` holds a run of 16 or more letters and digits mixing both, as
    access key ids and tokens do and names of variables or profiles do not."""
    return any(
        any(c.isdigit() for c in run) and any(c.isalpha() for c in run)
        for run in _KEY_RUN.findall(value)
    )


def check_env_name(value: object, field: str) -> str:
    """``value`` if it is a valid environment variable name, else ``ValueError``.

    A name shaped like a key or a token (``AKIA...``) is refused too: it is a credential
    pasted where its variable's name belongs. The message never echoes the value, so a
    secret given here by mistake stays out of logs.
    """
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError(
            f"{field} must be the NAME of an environment variable (letters, digits and "
            "underscores), not its value; the value given is not shown"
        )
    if looks_like_key(value):
        raise ValueError(
            f"{field} must be the NAME of an environment variable, not its value; the value "
            "given looks like a key or a token and is not shown"
        )
    return value


def check_name(value: object, field: str) -> str:
    """``value`` if it is a str that does not look like a key (:func:`looks_like_key`),
    for options that name a credential (a profile); the message never echoes it."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, got {type(value).__name__}")
    if looks_like_key(value):
        raise ValueError(
            f"{field} must be a name, not a credential; the value given looks like a key "
            "or a token and is not shown"
        )
    return value


def has_password(uri: str) -> bool:
    """True if ``uri`` carries ``user:password@`` (a key pair, ``s3://KEY:SECRET@...``).

    Told without ``urlsplit``, which misses it when the password holds a ``/``: a ``:``
    before the first ``/`` after the scheme, not followed by a port, and an ``@`` later.
    """
    rest = _QUERY_OR_FRAGMENT.split(uri, maxsplit=1)[0].partition("://")[2]
    userinfo = rest.rpartition("@")[0]
    authority = userinfo.partition("/")[0]
    _, colon, after = authority.partition(":")
    return bool(colon) and not after.isdigit()


def redact_uri(uri: str) -> str:
    """``uri`` fit for a message: everything between the scheme and the last ``@`` (the
    userinfo, ``user:password@``) becomes ``***``, and a query or fragment ``?***``.

    The whole stretch up to the last ``@`` goes, not only the authority: a secret key
    may hold a ``/``, which would end the authority early and show the rest of it.
    """
    head = _QUERY_OR_FRAGMENT.split(uri, maxsplit=1)[0]
    tail = uri[len(head)] + "***" if len(head) < len(uri) else ""
    scheme, sep, rest = head.partition("://")
    if not sep:
        scheme, rest = "", head
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}{tail}"


def env_value(name: str, field: str) -> str:
    """The value of environment variable ``name``; ``ValueError`` naming it if unset.

    A worker opens a store only after its
    :class:`~shoal.control._admission.MountPolicy` admitted the mount's options, so the
    ``name`` read here is one its operator allows; a client reads its own environment.
    """
    value = os.environ.get(name)
    if value is None or value == "":
        raise ValueError(f"{field}: environment variable {name} is not set")
    return value
