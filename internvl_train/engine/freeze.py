"""Freeze policy: frozen modules get requires_grad=False and stay in eval mode through every .train()."""
from __future__ import annotations

from typing import Iterable

from torch import nn


def pin_eval_mode(module: nn.Module) -> None:
    """Make module.train(mode) always mean eval, so a parent's .train() cannot re-enable dropout/drop-path."""

    def train_as_eval(mode: bool = True) -> nn.Module:
        return nn.Module.train(module, False)

    module.train = train_as_eval  # type: ignore[method-assign]
    module.eval()


def freeze_modules(modules: Iterable[nn.Module]) -> int:
    """Freeze `modules`; returns how many parameters were frozen."""
    frozen = 0
    for module in modules:
        for param in module.parameters():
            frozen += int(param.requires_grad)
            param.requires_grad_(False)
        pin_eval_mode(module)
    return frozen
