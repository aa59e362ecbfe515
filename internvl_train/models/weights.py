"""Reading weight files safely, loading them with a key report, and our save/from_pretrained format.

Never executes checkpoint code: safetensors first, `torch.load(weights_only=True)` otherwise, and no
remote code. Our directory format: `internvl_train_model.json` ({"model_class", "config"}) + safetensors
(sharded with an index above `max_shard_size`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from internvl_train.models.config import model_config_from_dict, model_config_to_dict

CONFIG_FILE = "internvl_train_model.json"
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_WRAPPER_KEYS = ("module", "model", "state_dict")  # training checkpoints nest the weights under one of these


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model; the message lists them."""


@dataclass
class LoadReport:
    loaded: int = 0
    created: list[str] = field(default_factory=list)  # missing but expected new (e.g. stage-2 queries)
    unused: list[str] = field(default_factory=list)  # in the checkpoint, deliberately not used
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"loaded {self.loaded} tensors; created {len(self.created)} new"
                f"{_sample(self.created)}; unused {len(self.unused)}{_sample(self.unused)}"
                f"; resized {self.resized or 'none'}")


def _sample(keys: list[str], n: int = 6) -> str:
    return f" ({', '.join(keys[:n])}{', ...' if len(keys) > n else ''})" if keys else ""


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


# ---- reading -----------------------------------------------------------------------------------
def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 4:
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _weight_files(directory: Path) -> list[Path]:
    for index in _INDEXES:
        if (directory / index).is_file():
            weight_map = json.loads((directory / index).read_text())["weight_map"]
            return [directory / name for name in sorted(set(weight_map.values()))]
    for name in _SINGLE_FILES:
        if (directory / name).is_file():
            return [directory / name]
    files = sorted(p for p in directory.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    safe = [p for p in files if p.suffix == ".safetensors"]
    return safe or files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a weight file or a local checkpoint directory (index files and shards understood)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist (weights are never downloaded: give a local "
                                "directory or file)")
    files = [path] if path.is_file() else _weight_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors, *.bin, *.pth or *.pt weight files")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(_read_file(file))
    return state


# ---- loading into a module ---------------------------------------------------------------------
SIZES_HINT = "Check that model.* sizes match the checkpoint (or pick the preset that does)."


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], new_ok: Iterable[str] = (),
                    unused_ok: Iterable[str] = (), hint: str = SIZES_HINT) -> LoadReport:
    """Copy `state` into `model`. Missing keys are an error unless they match a `new_ok` regex (then they
    keep their fresh init and are reported as created); unexpected keys are an error unless they match
    `unused_ok`; any shape mismatch is an error. `hint` (what to do) ends the error message."""
    own = _full_shapes(model)
    new_ok, unused_ok = tuple(new_ok), tuple(unused_ok)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_missing = [k for k in missing if not _matches(k, new_ok)]
    bad_unexpected = [k for k in unexpected if not _matches(k, unused_ok)]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {own[k]}"
              for k, v in state.items() if k in own and tuple(v.shape) != own[k]]
    if bad_missing or bad_unexpected or shapes:
        raise CheckpointMismatchError(
            f"checkpoint does not fit {type(model).__name__}: missing {len(bad_missing)}{_sample(bad_missing)}; "
            f"unexpected {len(bad_unexpected)}{_sample(bad_unexpected)}; shape mismatches {shapes[:6]}. {hint}")
    usable = {k: v for k, v in state.items() if k in own}
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        # built inside ZeRO-3 zero.Init: transformers' loader gathers each module, rank 0 copies, re-partitions
        from transformers.integrations.deepspeed import _load_state_dict_into_zero3_model

        _load_state_dict_into_zero3_model(model, usable)
    else:
        model.load_state_dict(usable, strict=False)
    return LoadReport(loaded=len(usable), created=missing, unused=unexpected)


def _full_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """State-dict key -> full shape (a ZeRO-3 partitioned parameter keeps it in `ds_shape`)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return {k: tuple(getattr(params.get(k), "ds_shape", None) or v.shape) for k, v in model.state_dict().items()}


# ---- our format --------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, out_dir: str | Path, max_shard_size: str = "5GB",
                    state: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write `model` (InternVLC/InternVLG) as config JSON + safetensors. `state` overrides the module's own
    state dict (e.g. one gathered from ZeRO-3 by the engine)."""
    from huggingface_hub import save_torch_state_dict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(state if state is not None else model.state_dict())
    save_torch_state_dict({k: v.detach().cpu().contiguous() for k, v in state.items()}, out,
                          max_shard_size=max_shard_size)
    meta = {"model_class": type(model).__name__, "config": model_config_to_dict(model.config)}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def is_our_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_our_config(path: str | Path) -> tuple[str, Any]:
    """(model class name, ModelConfig) of a directory written by save_pretrained."""
    meta = json.loads((Path(path) / CONFIG_FILE).read_text())
    return meta["model_class"], model_config_from_dict(meta["config"])


def from_pretrained(path: str | Path) -> nn.Module:
    """Rebuild the saved model class from its saved config and load its weights (all keys must match)."""
    from internvl_train.models.internvl_c.modeling import InternVLC
    from internvl_train.models.internvl_g.modeling import InternVLG

    if not is_our_checkpoint(path):
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; for official checkpoints use "
                                "models.builder.build_internvl_c/_g with model.pretrained=<dir>")
    class_name, cfg = read_our_config(path)
    classes = {"InternVLC": InternVLC, "InternVLG": InternVLG}
    if class_name not in classes:
        raise CheckpointMismatchError(f"{path}: unknown model_class {class_name!r}")
    model = classes[class_name](cfg)
    load_state_into(model, read_state_dict(path))
    return model
