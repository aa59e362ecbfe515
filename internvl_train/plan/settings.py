"""The planner's own knobs (`plan.*` on the command line), taken out before Hydra composes the run config.

Torch-free: a typo in a plan key fails in milliseconds, with the closest valid key."""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Sequence

from internvl_train.errors import ConfigError

PLAN_PREFIX = "plan."


@dataclass(frozen=True)
class PlanSettings:
    """The cluster the recipe is planned for. Defaults: 8 x H100-80GB (989 dense bf16 TFLOP/s) at 40% MFU."""

    gpus: int = 8  # data-parallel ranks (world size): ZeRO partitions over them, global batch scales with them
    gpu_mem_gb: float = 80.0  # memory per GPU, GB (1e9 bytes)
    peak_tflops: float = 989.0  # peak dense TFLOP/s per GPU in the training precision
    mfu: float = 0.4  # assumed model-FLOPs utilisation (model FLOPs / peak)

    def validate(self) -> None:
        if self.gpus < 1:
            raise ConfigError("plan.gpus", f"must be >= 1, got {self.gpus}")
        for key in ("gpu_mem_gb", "peak_tflops"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"plan.{key}", f"must be > 0, got {getattr(self, key)}")
        if not 0 < self.mfu <= 1:
            raise ConfigError("plan.mfu", f"must be in (0, 1], got {self.mfu}")


def split_plan_overrides(args: Sequence[str]) -> tuple[PlanSettings, list[str]]:
    """(plan settings, the remaining overrides for Hydra). Unknown plan keys and bad values raise ConfigError."""
    fields = {f.name: f.type for f in dataclasses.fields(PlanSettings)}
    values: dict[str, object] = {}
    rest: list[str] = []
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not key.startswith(PLAN_PREFIX):
            rest.append(arg)
            continue
        name = key[len(PLAN_PREFIX):]
        if name not in fields:
            raise ConfigError(key, f"unknown plan key{_did_you_mean(name, fields)}; plan keys: "
                                   + ", ".join(PLAN_PREFIX + f for f in fields))
        if not sep:
            raise ConfigError(key, f"needs a value, e.g. {key}={getattr(PlanSettings, name)}")
        values[name] = _parse(key, value, int if fields[name] in (int, "int") else float)
    settings = PlanSettings(**values)  # type: ignore[arg-type]
    settings.validate()
    return settings, rest


def _parse(key: str, value: str, kind: type) -> object:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(key, f"{value!r} is not a{'n int' if kind is int else ' number'}") from None


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {PLAN_PREFIX}{close[0]}?" if close else ""
