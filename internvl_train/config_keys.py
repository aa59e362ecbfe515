"""Unknown config keys, named with a "did you mean": the ones Hydra lets through (`+trainer.max_step=5` adds
a key to a typed node, which the dataclass then silently drops) and the ones it rejects while composing (its
message suggests `+`, which would be ignored). No torch import: part of the fast config gate."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from internvl_train.errors import ConfigError

# Keys that moved, by full path: an old config naming one is told where the knob lives now.
MOVED_KEYS = {
    **{f"data.sft.{key}": f"model.chat.{key}"
       for key in ("dynamic_image_size", "min_dynamic_patch", "max_dynamic_patch", "use_thumbnail")},
    "data.sft.image_size": "model.chat.force_image_size",  # the tile size is the model's
}


def did_you_mean(name: str, candidates: Iterable[str], parent: str = "") -> str:
    """'; did you mean <parent>.X?' for the closest candidate, else the list of valid names."""
    candidates = sorted(candidates)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {parent + '.' if parent else ''}{close[0]}?"
    return f"; valid keys: {', '.join(candidates)}"


def _unknown(path: str, key: str, schema: type) -> ConfigError:
    full = f"{path}.{key}" if path else key
    fields = [f.name for f in dataclasses.fields(schema)]
    hint = f"; it moved to {MOVED_KEYS[full]}" if full in MOVED_KEYS else did_you_mean(key, fields, path)
    return ConfigError(full, f"unknown key: {schema.__name__} has no field {key!r}{hint}")


def check_known_keys(node: Any, path: str = "") -> None:
    """Raise ConfigError for the first key of a dataclass-typed node that its dataclass does not define.
    Dict-typed fields (e.g. trainer.lr_multipliers, deepspeed.extra) take any key."""
    if isinstance(node, DictConfig):
        if node._is_none() or node._is_missing():
            return
        schema = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(schema):
            fields = {f.name for f in dataclasses.fields(schema)}
            for key in node.keys():
                if key not in fields:
                    raise _unknown(path, str(key), schema)
        for key in node.keys():
            check_known_keys(node._get_node(key), f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        if node._is_none() or node._is_missing():
            return
        for i in range(len(node)):
            check_known_keys(node._get_node(i), f"{path}[{i}]")


def composition_key_error(err: BaseException) -> Optional[ConfigError]:
    """The ConfigError for a Hydra composition failure caused by an unknown key, else None."""
    cause = err.__cause__ or err.__context__
    schema = getattr(cause, "object_type", None)
    key = getattr(cause, "full_key", None)
    if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or not key \
            or not dataclasses.is_dataclass(schema):
        return None
    path, _, name = key.rpartition(".")
    return _unknown(path, name, schema)
