"""Run the toy stage through the real Trainer: `python run_toy.py RUN_DIR [key=json_value ...]`.
Used by the tests as a subprocess (plain, or under torchrun)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_stage import ToyStage, make_cfg  # noqa: E402

from internvl_train.engine.distributed import init_distributed  # noqa: E402
from internvl_train.engine.trainer import Trainer  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = {k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])}
    cfg = make_cfg(sys.argv[1], **overrides)
    dist = init_distributed(cfg.trainer.dist_timeout_s)
    trainer = Trainer(cfg, ToyStage(cfg, dist), dist)
    if cfg.mode == "eval":
        print("EVAL", json.dumps(trainer.evaluate()))
    else:
        trainer.fit()


if __name__ == "__main__":
    main()
