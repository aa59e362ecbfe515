"""Reading weight files safely, loading them with a key report, and our save/from_pretrained format.

Never executes checkpoint code: safetensors first, `torch.load(weights_only=True)` otherwise, and no
remote code. Our directory format: `internvl_train_model.json` ({"model_class", "config"}) + safetensors
(sharded with an index above `max_shard_size`).

Streaming (docs/performance.md, "Streaming weights"): `load_checkpoint` reads a checkpoint one shard at a
time, tensor by tensor (`iter_state_shards`), after checking every key and shape against the model from the
shard headers alone; under ZeRO-3 it gathers only the parameters of the modules a shard touches.
`save_state_sharded` (behind save_pretrained) writes shard by shard, and under ZeRO-3 gathers one module at a
time, so a rank holds at most one shard of copies plus one gathered module. `track_host_tensors` counts the
checkpoint tensors that both hold in host memory (the tests' and the bench's instrument).
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import struct
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import torch
from torch import nn

from internvl_train.models.config import model_config_from_dict, model_config_to_dict

log = logging.getLogger(__name__)

CONFIG_FILE = "internvl_train_model.json"
SAFE_INDEX = "model.safetensors.index.json"
_INDEXES = (SAFE_INDEX, "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_WRAPPER_KEYS = ("module", "model", "state_dict")  # training checkpoints nest the weights under one of these
_OUR_SHARD = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors")

State = dict[str, torch.Tensor]
Convert = Callable[[State], State]


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


def _nbytes(t: torch.Tensor) -> int:
    """Bytes of the whole tensor (a ZeRO-3 partitioned parameter counts its full `ds_numel`)."""
    return int(getattr(t, "ds_numel", None) or t.numel()) * t.element_size()


# ---- accounting of checkpoint tensors in host memory -------------------------------------------
class HostTensors:
    """What the streaming reader and writer hold in host memory while a `track_host_tensors()` is open.

    Every tensor read from a weight file and every CPU copy the exporter makes is counted from its creation
    until it is garbage-collected (a weakref finalizer, so this measures liveness, not bookkeeping); a module
    gathered under ZeRO-3 counts while it is gathered. `peak_live` is the high-water mark of their sum."""

    def __init__(self) -> None:
        self.bytes_read = 0  # tensor bytes read from weight files
        self.tensors_read = 0
        self.bytes_copied = 0  # bytes the exporter copied to CPU
        self.live = 0
        self.peak_live = 0
        self.shards_read: list[str] = []
        self.shards_written: list[str] = []

    def _hold(self, n: int) -> None:
        self.live += n
        self.peak_live = max(self.peak_live, self.live)

    def _release(self, n: int) -> None:
        self.live -= n

    def _track(self, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        self._hold(n)
        weakref.finalize(t, self._release, n)


_TRACKERS: list[HostTensors] = []


@contextlib.contextmanager
def track_host_tensors() -> Iterator[HostTensors]:
    """Count the checkpoint tensors the reader/writer hold while the block runs (see HostTensors)."""
    tracker = HostTensors()
    _TRACKERS.append(tracker)
    try:
        yield tracker
    finally:
        _TRACKERS.remove(tracker)


def _note_read(t: torch.Tensor) -> torch.Tensor:
    for tracker in _TRACKERS:
        tracker.bytes_read += t.numel() * t.element_size()
        tracker.tensors_read += 1
        tracker._track(t)
    return t


def _note_copy(t: torch.Tensor) -> torch.Tensor:
    for tracker in _TRACKERS:
        tracker.bytes_copied += t.numel() * t.element_size()
        tracker._track(t)
    return t


@contextlib.contextmanager
def _held(n: int) -> Iterator[None]:
    for tracker in _TRACKERS:
        tracker._hold(n)
    try:
        yield
    finally:
        for tracker in _TRACKERS:
            tracker._release(n)


# ---- reading -----------------------------------------------------------------------------------
def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 4:
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    """One weight file: safetensors tensor by tensor, otherwise torch.load(weights_only=True) (whole file)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as reader:
            for key in reader.keys():
                out[key] = _note_read(reader.get_tensor(key))
        return out
    state = _unwrap(torch.load(str(path), map_location="cpu", weights_only=True), path)
    return {k: _note_read(v) for k, v in state.items()}


_SAFE_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64}


def _meta_of_file(path: Path) -> dict[str, torch.Tensor]:
    """Meta tensors (shape, dtype, no data) for the tensors of one weight file: the safetensors header only;
    a torch file is memory-mapped when it can be (zip format), so its data is not read either."""
    if path.suffix == ".safetensors":
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        return {k: torch.empty(v["shape"], dtype=_SAFE_DTYPES[v["dtype"]], device="meta")
                for k, v in header.items() if k != "__metadata__"}
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) torch file: cannot be mapped
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: torch.empty_like(v, device="meta") for k, v in _unwrap(state, path).items()}


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


def weight_files(path: str | Path) -> list[Path]:
    """The weight files of a file or a local checkpoint directory (index files and shards understood)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist (weights are never downloaded: give a local "
                                "directory or file)")
    files = [path] if path.is_file() else _weight_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors, *.bin, *.pth or *.pt weight files")
    return files


def iter_state_shards(path: str | Path) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors of a checkpoint one weight file at a time; drop each before asking for the next."""
    for file in weight_files(path):
        for tracker in _TRACKERS:
            tracker.shards_read.append(file.name)
        yield _read_file(file)


def read_meta_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint as a meta tensor (names, shapes, dtypes), without reading the data."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        state.update(_meta_of_file(file))
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a weight file or a local checkpoint directory, in memory at once (small checkpoints,
    tests, and whole-state transforms; loading into a model streams instead: load_checkpoint)."""
    state: dict[str, torch.Tensor] = {}
    for shard in iter_state_shards(path):
        state.update(shard)
    return state


# ---- loading into a module ---------------------------------------------------------------------
SIZES_HINT = "Check that model.* sizes match the checkpoint (or pick the preset that does)."


def _check_keys(model: nn.Module, own: Mapping[str, tuple[int, ...]], state: Mapping[str, torch.Tensor],
                new_ok: Iterable[str], unused_ok: Iterable[str], hint: str) -> LoadReport:
    """Missing keys are an error unless they match a `new_ok` regex, unexpected ones unless they match
    `unused_ok`; any shape mismatch is an error. `state` may hold meta tensors (only names and shapes count)."""
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
    return LoadReport(loaded=len(state) - len(unexpected), created=missing, unused=unexpected)


def is_partitioned(model: nn.Module) -> bool:
    """Built inside ZeRO-3 zero.Init (parameters partitioned across ranks)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _copy_into(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` (keys of `model`, shapes checked) into `model`. Under ZeRO-3 only the modules owning a key
    are gathered, one module at a time; every rank holds the same `state`, rank 0's copy is re-partitioned."""
    if not state:
        return
    if not is_partitioned(model):
        model.load_state_dict(dict(state), strict=False)
        return
    import deepspeed
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        params = [(dot + n, p) for n, p in module.named_parameters(recurse=False) if dot + n in state]
        if params:
            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0), torch.no_grad():
                if rank == 0:
                    for key, param in params:
                        param.copy_(state[key])
        with torch.no_grad():  # buffers are not partitioned and every rank read the same shard
            for name, buf in module.named_buffers(recurse=False):
                if dot + name in state and buf is not None:
                    buf.copy_(state[dot + name])


def load_state_into(model: nn.Module, state: Mapping[str, torch.Tensor], new_ok: Iterable[str] = (),
                    unused_ok: Iterable[str] = (), hint: str = SIZES_HINT) -> LoadReport:
    """Copy an in-memory `state` into `model`. Missing keys are an error unless they match a `new_ok` regex
    (then they keep their fresh init and are reported as created); unexpected keys are an error unless they
    match `unused_ok`; any shape mismatch is an error. `hint` (what to do) ends the error message.
    Checkpoints on disk: load_checkpoint (streams shard by shard)."""
    own = _full_shapes(model)
    report = _check_keys(model, own, state, new_ok, unused_ok, hint)
    _copy_into(model, {k: v for k, v in state.items() if k in own})
    return report


def load_checkpoint(model: nn.Module, path: str | Path, convert: Optional[Convert] = None,
                    new_ok: Iterable[str] = (), unused_ok: Iterable[str] = (), hint: str = SIZES_HINT,
                    rules: Optional[Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]] = None) -> LoadReport:
    """Load a checkpoint file/directory into `model` one shard at a time (load_state_into's key rules).

    1. From the shard headers alone (no tensor data read): every key and shape, after `convert` (a key/layout
       map, e.g. official -> ours, run on meta tensors), is checked against the model; `rules(converted meta
       state)` may override new_ok/unused_ok/hint. A mismatch raises before any weight is read or copied.
    2. Each shard is read tensor by tensor, converted, copied into the model (ZeRO-3: only the modules it
       touches are gathered) and dropped before the next shard is read.
    `convert` sees the whole key set: the current shard's real tensors plus meta placeholders for the other
    shards' keys, and its real outputs are loaded. A conversion that needs real tensors from several shards
    (it raises on the meta/real mix) keeps the shards it needs buffered until it succeeds."""
    convert = convert or dict
    meta_in = read_meta_state(path)
    meta_out = convert(dict(meta_in))
    kwargs: dict[str, Any] = {"new_ok": new_ok, "unused_ok": unused_ok, "hint": hint}
    if rules is not None:
        kwargs.update(rules(meta_out))
    own = _full_shapes(model)
    report = _check_keys(model, own, meta_out, **kwargs)
    expected = {k for k in meta_out if k in own}
    produced: set[str] = set()
    pending: State = {}
    last, i = len(weight_files(path)) - 1, -1
    for shard in iter_state_shards(path):  # not enumerate(): its cached result tuple would keep the last shard
        i += 1                              # alive while the next one is read
        pending.update(shard)
        del shard
        try:
            converted = convert({**meta_in, **pending})
        except RuntimeError as err:  # needs tensors of a later shard: keep this one (the last shard re-raises)
            if i == last:
                raise
            log.warning("converting %s needs tensors from several shards (%s): buffering %d tensors", path,
                        str(err).splitlines()[0], len(pending))
            continue
        real = {k: v for k, v in converted.items() if k in own and not v.is_meta}
        del converted
        _copy_into(model, real)
        produced.update(real)
        pending, real = {}, {}
    never = sorted(expected - produced)
    if never:
        raise CheckpointMismatchError(f"{path}: the key conversion left {len(never)} tensors unproduced"
                                      f"{_sample(never)} (a conversion that mixes shards it cannot stream)")
    return report


def _full_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """State-dict key -> full shape (a ZeRO-3 partitioned parameter keeps it in `ds_shape`)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return {k: tuple(getattr(params.get(k), "ds_shape", None) or v.shape) for k, v in model.state_dict().items()}


def meta_like(model: nn.Module, keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Meta tensors of the model's full shapes for `keys` (what a converter that resizes to the model needs;
    model.state_dict() under ZeRO-3 holds empty partitions)."""
    shapes = _full_shapes(model)
    return {k: torch.empty(shapes[k], device="meta") for k in keys if k in shapes}


# ---- writing -----------------------------------------------------------------------------------
def _shard_names(count: int) -> list[str]:
    return ["model.safetensors"] if count == 1 else [f"model-{i:05d}-of-{count:05d}.safetensors"
                                                    for i in range(1, count + 1)]


def plan_shards(sizes: Mapping[str, int], max_shard_size: int) -> list[list[str]]:
    """Keys in order, cut into shards of at most `max_shard_size` bytes (a bigger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, n in sizes.items():
        if shards[-1] and used + n > max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += n
    return shards


def save_state_sharded(model: Optional[nn.Module], out_dir: str | Path, max_shard_size: int | str = "5GB",
                       state: Optional[Mapping[str, torch.Tensor]] = None) -> list[str]:
    """Write `state` (default: `model`'s own state dict) as safetensors shards of at most `max_shard_size`
    (+ `model.safetensors.index.json` when more than one), the layout huggingface_hub writes. Returns the
    shard file names on the writing rank, [] on the others.

    The shards are planned from the shapes alone, so each shard's header is written first and every tensor
    is then written straight into its file as soon as it is whole: nothing is buffered. A model partitioned
    by ZeRO-3 is gathered one module at a time (its direct parameters), so this is collective: every rank
    calls it, rank 0 writes. Held on the writing rank: one gathered module plus the CPU copy of one tensor
    (none for a contiguous CPU tensor), so at most one module + one tensor <= max_shard_size + one module."""
    from huggingface_hub.serialization._base import parse_size_to_int

    limit = parse_size_to_int(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    tensors = dict(state) if state is not None else dict(model.state_dict(keep_vars=True))
    zero3 = any(hasattr(t, "ds_id") for t in tensors.values())
    writes = True
    if zero3:
        import torch.distributed as dist

        writes = not dist.is_initialized() or dist.get_rank() == 0
    shards = plan_shards({k: _nbytes(t) for k, t in tensors.items()}, limit)
    names = _shard_names(len(shards))
    shard_of = {k: i for i, keys in enumerate(shards) for k in keys}
    out = Path(out_dir)
    if writes:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [p for p in out.iterdir() if _OUR_SHARD.fullmatch(p.name)] + [out / SAFE_INDEX]:
            stale.unlink(missing_ok=True)
    current: Optional[_ShardFile] = None
    try:
        for keys in _module_groups(tensors):
            params = [tensors[k] for k in keys if hasattr(tensors[k], "ds_id")]
            gathered = _gathered(params) if params else contextlib.nullcontext()
            with gathered, _held(sum(_nbytes(p) for p in params)):
                for key in keys if writes else ():
                    if current is None or current.index != shard_of[key]:
                        if current is not None:
                            current.close()
                        i = shard_of[key]
                        current = _ShardFile(out / names[i], i, {k: tensors[k] for k in shards[i]})
                    current.write(key, tensors[key])
        if current is not None:
            current.close()
    finally:
        if current is not None:
            current.fh.close()
    if not writes:
        return []
    if len(names) > 1:
        index = {"metadata": {"total_size": sum(_nbytes(t) for t in tensors.values())},
                 "weight_map": {k: names[i] for k, i in shard_of.items()}}
        (out / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    return names


_DTYPE_NAMES = {v: k for k, v in _SAFE_DTYPES.items()}


class _ShardFile:
    """One safetensors file written tensor by tensor: the header (shapes, dtypes, offsets: all known from the
    plan) first, then each tensor's bytes in plan order, straight from its (CPU, contiguous) memory."""

    def __init__(self, path: Path, index: int, planned: Mapping[str, torch.Tensor]) -> None:
        self.path, self.index, self.keys = path, index, list(planned)
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for key, t in planned.items():
            shape = list(getattr(t, "ds_shape", None) or t.shape)
            header[key] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": shape,
                           "data_offsets": [offset, offset + _nbytes(t)]}
            offset += _nbytes(t)
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # as safetensors: the data starts 8-byte aligned
        self.fh = open(path, "wb")
        self.fh.write(struct.pack("<Q", len(raw)) + raw)
        self.next = 0

    def write(self, key: str, tensor: torch.Tensor) -> None:
        if self.keys[self.next] != key:
            raise RuntimeError(f"{self.path.name}: expected {self.keys[self.next]}, got {key}")
        self.next += 1
        source = tensor.detach()
        t = source.to("cpu").contiguous()
        if t.numel() and t.data_ptr() != source.data_ptr():
            _note_copy(t)
        self.fh.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))

    def close(self) -> None:
        if self.next != len(self.keys):
            raise RuntimeError(f"{self.path.name}: {len(self.keys) - self.next} planned tensors never written")
        self.fh.close()
        for tracker in _TRACKERS:
            tracker.shards_written.append(self.path.name)


def _module_groups(tensors: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Consecutive keys owned by the same module (its direct parameters and buffers)."""
    groups: list[list[str]] = []
    owner = None
    for key in tensors:
        prefix = key.rpartition(".")[0]
        if groups and prefix == owner:
            groups[-1].append(key)
        else:
            groups.append([key])
            owner = prefix
    return groups


def _gathered(params: list[torch.Tensor]) -> Any:
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


# ---- our format --------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, out_dir: str | Path, max_shard_size: int | str = "5GB",
                    state: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write `model` (InternVLC/InternVLG) as config JSON + safetensors shards (save_state_sharded). `state`
    overrides the module's own state dict. A ZeRO-3 partitioned model (no `state`) is gathered module by
    module: call this on every rank; rank 0 writes."""
    out = Path(out_dir)
    if save_state_sharded(model, out, max_shard_size, state=state):  # the writing rank
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
    """Rebuild the saved model class from its saved config and load its weights shard by shard (all keys
    must match)."""
    from internvl_train.models.internvl_c.modeling import InternVLC
    from internvl_train.models.internvl_g.modeling import InternVLG

    if not is_our_checkpoint(path):
        raise FileNotFoundError(f"{path}: no {CONFIG_FILE}; for official checkpoints use "
                                "internvl_c/build.build_internvl_c or internvl_g/build.build_internvl_g with "
                                "model.pretrained=<dir>")
    class_name, cfg = read_our_config(path)
    classes = {"InternVLC": InternVLC, "InternVLG": InternVLG}
    if class_name not in classes:
        raise CheckpointMismatchError(f"{path}: unknown model_class {class_name!r}")
    model = classes[class_name](cfg)
    load_checkpoint(model, path)
    return model
