"""Secrets never reach the tracking store: values of secret-looking environment variables,
passwords in URLs (`scheme://user:password@host`) and config keys named like secrets are
replaced by `***` in everything the runner logs (params, tags, config files, stage info, logs)."""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
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
# for finding the passwords of the config's URLs: up to the last "@" of the URL, so a password
# with "/" or "@" in it is found whole (masking more than the password is harmless)
URL_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:(?P<password>\S+)@")

# secrets found in this process's config (URL passwords, values of secret-named keys): masked
# wherever they turn up later, whatever the form of the text around them (an exception saying
# "nonnumeric port: '<password>@host'", a traceback, a log line)
_remembered: set[str] = set()


def _password_forms(url_text: str) -> set[str]:
    forms = set()
    for match in URL_USERINFO.finditer(url_text):
        password = match.group("password")
        for form in (password, urllib.parse.unquote(password)):
            if len(form) >= 4:  # a shorter one would mask letters everywhere; URLs still are
                forms.add(form)
    return forms


def remember(config_tree: Any) -> None:
    """Remember the secrets of a config (resolved: `${oc.env:...}` gives its value): passwords of
    URLs anywhere in it and values of keys named like secrets, to mask them in any later text."""
    for key, value in _walk(config_tree):
        if isinstance(value, str):
            _remembered.update(_password_forms(value))
            if (SECRET_NAME.search(key) and len(value) >= MIN_SECRET_LEN
                    and value.lower() not in NOT_SECRET_VALUES):
                _remembered.add(value)


def _walk(value: Any, key: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for name, item in value.items():
            yield from _walk(item, str(name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item, key)
    else:
        yield key, value


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    remembered = _remembered if environ is None else set()
    environ = os.environ if environ is None else environ
    values = {
        value for name, value in environ.items()
        if SECRET_NAME.search(name) and not NOT_SECRET_NAME.search(name)
        and len(value) >= MIN_SECRET_LEN and value.lower() not in NOT_SECRET_VALUES
    } | remembered
    # longest first: a secret containing another is masked whole
    return sorted(values, key=lambda value: (-len(value), value))


def text(value: str, secrets: list[str] | None = None) -> str:
    masked = URL_PASSWORD.sub(rf"\g<head>:{MASK}@", value)
    for secret in secret_values() if secrets is None else secrets:
        masked = masked.replace(secret, MASK)
    return masked


def rewrite_files(paths: Iterable[Path]) -> None:
    """Mask secrets in files written by others (Hydra's `.hydra/*.yaml`, `multirun.yaml` keep the
    command line's overrides verbatim), in place, each replaced whole by a rename."""
    for path in paths:
        try:
            original = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        masked = text(original)
        if masked != original:
            tmp = path.with_name(f".{path.name}.redacted-{os.getpid()}")
            tmp.write_text(masked)
            os.replace(tmp, path)


class LogFilter(logging.Filter):
    """Masks secrets in every record a handler emits (the console and the run's log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install_log_filter() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, LogFilter) for f in handler.filters):
            handler.addFilter(LogFilter())


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
