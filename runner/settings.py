"""Settings objects: a stage's (or backend's) frozen dataclass of everything it reads, and the
part of it that is a cache key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

RUNTIME_ONLY = "runtime_only"


def runtime_only(default: Any = dataclasses.MISSING) -> Any:
    """A settings field the stage reads that cannot change its output: left out of the key."""
    return dataclasses.field(default=default, metadata={RUNTIME_ONLY: True}, compare=False)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.metadata.get(RUNTIME_ONLY)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def key_settings(settings: Any) -> dict[str, Any]:
    """The part of a stage's settings that is its cache key (nested settings included)."""
    plain = _plain(settings)
    assert isinstance(plain, dict)
    return plain
