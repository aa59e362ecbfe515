"""`python tests/config/tiny_stage_cli.py <overrides>`: the real CLI (internvl_train.app.main) with the
registry's contrastive stage replaced by a tiny linear-regression stage, so the app's wiring (validate,
process group, resolved config, trainer, export) runs end to end in seconds."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from internvl_train.engine.stage_api import Stage


class CountingLoader:
    """Deterministic batches; the position is the number of batches drawn."""

    def __init__(self, batch_size: int):
        self.batch_size, self.position = batch_size, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            gen = torch.Generator().manual_seed(self.position)
            self.position += 1
            x = torch.randn(self.batch_size, 3, 2, 2, generator=gen)
            yield {"pixel_values": x, "target": x.flatten(1).sum(1, keepdim=True)}

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.position = int(state["position"])

    def metrics(self) -> dict[str, float]:
        return {"data/batches": float(self.position)}


class TinyStage(Stage):
    name = "tiny"

    def build_model(self) -> nn.Module:
        return nn.Linear(12, 1)

    def build_train_loader(self) -> CountingLoader:
        return CountingLoader(self.cfg.trainer.micro_batch_size)

    def compute_losses(self, model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        pred = model(batch["pixel_values"].flatten(1))
        return {"loss": nn.functional.mse_loss(pred, batch["target"])}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        batch = next(iter(CountingLoader(8)))
        return {"mse": float(self.compute_losses(model, batch)["loss"])}

    def export(self, model: nn.Module, out_dir: str) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), Path(out_dir) / "weights.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    from internvl_train import app
    from internvl_train.stages import STAGE_CLASSES

    STAGE_CLASSES["contrastive"] = "tiny_stage_cli:TinyStage"
    app.main()
