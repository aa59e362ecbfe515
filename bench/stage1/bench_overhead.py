"""Stage-1 framework overhead: end-to-end training throughput (real demo data pipeline, DeepSpeed, W&B
offline logging, checkpointing off) against a bare PyTorch loop over the same model on in-memory tensors.

    python -m bench.stage1.bench_overhead [--steps 60] [--batch 32]

Prints both samples/s and their ratio. It measures; it never fails on speed."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def framework_samples_per_s(steps: int, batch: int, run_dir: Path) -> float:
    """samples/s of the CLI run, averaged over the logging windows after the first (warm-up) one."""
    window = max(1, steps // 6)
    cmd = [sys.executable, "-m", "internvl_train", "stage=contrastive", f"run_dir={run_dir}",
           f"trainer.max_steps={steps}", f"trainer.micro_batch_size={batch}", f"trainer.log_every={window}",
           "trainer.save_every=0", "trainer.progress_bar=off", "logger=wandb", "logger.mode=offline"]
    subprocess.run(cmd, check=True, env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["perf/samples_per_s"] for r in rows if "perf/samples_per_s" in r][1:]
    return sum(rates) / len(rates)


def bare_samples_per_s(steps: int, batch: int) -> float:
    """The same tiny InternVL-C, torch AdamW, open_clip's ClipLoss and the text tower's LM loss (the demo trains
    both: its text tower starts random, so stage.text_lm_weight resolves to 1) on tensors already in memory."""
    from hydra import compose, initialize_config_dir

    from internvl_train.app import CONFIG_DIR
    from internvl_train.config import register_configs
    from internvl_train.losses.itc import itc_loss
    from internvl_train.losses.lm import lm_loss
    from internvl_train.models.internvl_c.build import build_internvl_c
    from internvl_train.stages.common import load_tokenizer

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["stage=contrastive"])
    tokenizer = load_tokenizer(cfg)
    model = build_internvl_c(cfg.model, vocab_size=len(tokenizer)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = cfg.model.vision.image_size
    pixels = torch.randn(batch, 3, size, size)
    ids = torch.randint(6, len(tokenizer), (batch, 24))
    mask = torch.ones_like(ids)
    warmup = max(1, steps // 6)
    for step in range(steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        out = model(pixels, ids, mask, text_logits=True)
        loss = itc_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"]) + lm_loss(out["text_logits"], ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    bare = bare_samples_per_s(args.steps, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        framework = framework_samples_per_s(args.steps, args.batch, Path(tmp) / "run")
    print(json.dumps({"steps": args.steps, "batch": args.batch, "threads": torch.get_num_threads(),
                      "bare_samples_per_s": round(bare, 1), "framework_samples_per_s": round(framework, 1),
                      "framework_over_bare": round(framework / bare, 3)}))


if __name__ == "__main__":
    main()
