"""Secrets never reach the tracking store: values of secret-looking environment variables,
passwords in URLs (`scheme://user:password@host`) and config keys named like secrets are
replaced by `***` in everything the runner logs (params, tags, config files, stage info, logs)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
SECRET_NAME = re.compile(r"token|secret|passw|pwd|api_?key|access_?key|credential|private_?key|"
                         r"auth", re.IGNORECASE)
# variables that name where a secret lives, not the secret itself; PWD is the working folder
NOT_SECRET_NAME = re.compile(r"(_DIR|_PATH|_FILE|_SOCK|_HOME)$|^(OLD)?PWD$", re.IGNORECASE)
# shorter values, or flags, would mask unrelated text everywhere without protecting anything
MIN_SECRET_LEN = 6
NOT_SECRET_VALUES = {"true", "false", "none", "null"}
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@")


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    environ = os.environ if environ is None else environ
    values = {
        value for name, value in environ.items()
        if SECRET_NAME.search(name) and not NOT_SECRET_NAME.search(name)
        and len(value) >= MIN_SECRET_LEN and value.lower() not in NOT_SECRET_VALUES
    }
    # longest first: a secret containing another is masked whole
    return sorted(values, key=lambda value: (-len(value), value))


def text(value: str, secrets: list[str] | None = None) -> str:
    masked = URL_PASSWORD.sub(rf"\g<head>:{MASK}@", value)
    for secret in secret_values() if secrets is None else secrets:
        masked = masked.replace(secret, MASK)
    return masked


def tree(value: Any, secrets: list[str] | None = None) -> Any:
    """A copy of a config tree (dicts, lists, scalars) with secrets masked."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, dict):
        return {
            key: MASK if SECRET_NAME.search(str(key)) and value[key] not in (None, "")
            else tree(value[key], secrets)
            for key in value
        }
    if isinstance(value, list | tuple):
        return [tree(item, secrets) for item in value]
    if isinstance(value, str):
        return text(value, secrets)
    return value
