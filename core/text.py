"""Text as PostgreSQL can store it."""

from typing import Any


def storable(value: Any) -> Any:
    """The value with NUL characters removed from every string in it (nested in dicts and lists
    too): PostgreSQL text and jsonb cannot hold them, and a model's byte-level decoding can
    produce one. NUL carries nothing a reader could see, so it is dropped, not refused."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value
