"""Checks shared by the stores' options: credentials are passed by reference only.

A mount's options are stored in the mount table and shown by the CLI, so they must never
hold a secret. Options name an environment variable (``*_env``) or a file instead; a key
that looks like a literal secret is refused, and no message ever echoes its value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["env_value", "looks_secret", "reject_literal_secrets", "check_env_name"]

_SECRET_WORDS = re.compile(
    r"(secret|passw|token|credential|private|access_?key|account_?key|sas|key_?id|^key$)",
    re.IGNORECASE,
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def check_env_name(value: object, field: str) -> str:
    """``value`` if it is a valid environment variable name, else ``ValueError``.

    The message does not echo the value: a secret pasted here by mistake stays out of
    logs.
    """
    if not isinstance(value, str) or not _ENV_NAME.match(value):
        raise ValueError(
            f"{field} must be the NAME of an environment variable (letters, digits and "
            "underscores), not its value; the value given is not shown"
        )
    return value


def env_value(name: str, field: str) -> str:
    """The value of environment variable ``name``; ``ValueError`` naming it if unset."""
    value = os.environ.get(name)
    if value is None or value == "":
        raise ValueError(f"{field}: environment variable {name} is not set")
    return value
