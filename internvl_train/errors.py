"""ConfigError and the config check helpers: the one home, importing only the standard library.

The key rule: a validator raises keys relative to the node it checks (`"hidden_size"`, `"sources[0].urls"`; an
error about the whole node uses the key `""`), and whoever calls the validator of a sub-node qualifies the key
with that node's path: `err.under("data")` or `with qualified("data"): ...`. The tree walk of
internvl_train.config does this for every dataclass, so the user sees the full dotted path.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


class ConfigError(ValueError):
    """A config value that cannot work; `key` is the dotted path relative to the node that raised it
    ("" for the node itself) until a caller qualifies it with `under`."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key qualified by the path of the node whose validator raised it."""
        return ConfigError(join_key(prefix, self.key), self.reason)


def join_key(prefix: str, key: str) -> str:
    """`prefix` + `key` as a dotted path: ("data", "sources[0]") -> "data.sources[0]", ("a", "[1]") -> "a[1]"."""
    if not prefix:
        return key
    if not key:
        return prefix
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


@contextmanager
def qualified(prefix: str) -> Iterator[None]:
    """Qualify the key of a ConfigError raised inside the block with `prefix` (the checked node's path)."""
    try:
        yield
    except ConfigError as err:
        raise err.under(prefix) from None


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ConfigError unless `value` is one of `choices`."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(key, f"got {value!r}, expected one of {', '.join(map(repr, choices))}")


def check_at_least(key: str, value: float, minimum: float) -> None:
    """Raise ConfigError unless `value >= minimum`."""
    if value < minimum:
        raise ConfigError(key, f"got {value!r}, must be >= {minimum}")


def check_positive(node: Any, *keys: str) -> None:
    """Raise ConfigError for the first of `node`'s fields `keys` that is not > 0."""
    for key in keys:
        if getattr(node, key) <= 0:
            raise ConfigError(key, f"must be > 0, got {getattr(node, key)}")


def check_divisible(key: str, width: int, heads: int, heads_key: str) -> None:
    """Raise ConfigError unless `width` (the field `key`) is a multiple of `heads` (the field `heads_key`)."""
    if width % heads:
        raise ConfigError(key, f"{width} is not divisible by {heads_key}={heads}")


def check_existing_path(key: str, value: str, hint: str = "") -> None:
    """Raise ConfigError unless `value` names an existing file or directory."""
    if not Path(value).expanduser().exists():
        raise ConfigError(key, f"path {value!r} does not exist" + (f"; {hint}" if hint else ""))
