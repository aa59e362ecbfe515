"""Peak checkpoint bytes held in host memory while loading a multi-shard checkpoint: the streaming loader
(weights.load_checkpoint, one shard at a time) against the old full load (read_state_dict + load_state_into).

    .venv/bin/python -m bench.weights.bench_streaming_load --vocab 8000 --width 256 --layers 4 --shard 5MB

Builds an InternVL-C of that size, saves it in `--shard` shards (weights.save_pretrained), loads it both ways
under weights.track_host_tensors and prints the peaks (and the checkpoint's total and biggest shard)."""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from internvl_train.models import weights
from internvl_train.models.config import ModelConfig, TextTowerConfig, VisionTowerConfig
from internvl_train.models.internvl_c.modeling import InternVLC

MB = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shard", default="5MB")
    args = ap.parse_args()
    w, n = args.width, args.layers
    cfg = ModelConfig(
        name="bench", embed_dim=128, clip_projector_heads=4,
        vision=VisionTowerConfig(hidden_size=w, num_layers=n, num_heads=4, intermediate_size=4 * w, image_size=32,
                                 patch_size=8, norm_type="rms_norm", qk_normalization=True, qkv_bias=False,
                                 layer_scale_init=0.1),
        text=TextTowerConfig(hidden_size=w, num_layers=n, num_heads=4, intermediate_size=4 * w,
                             vocab_size=args.vocab, max_position_embeddings=128))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        weights.save_pretrained(InternVLC(cfg), tmp, max_shard_size=args.shard)
        shards = [sum(t.numel() * t.element_size() for t in weights._meta_of_file(f).values())
                  for f in weights.weight_files(tmp)]
        model = InternVLC(cfg)
        start = time.perf_counter()
        with weights.track_host_tensors() as streamed:
            weights.load_checkpoint(model, tmp)
        streamed_s = time.perf_counter() - start
        start = time.perf_counter()
        with weights.track_host_tensors() as full:
            weights.load_state_into(model, weights.read_state_dict(tmp))
        full_s = time.perf_counter() - start
    print(f"checkpoint: {sum(shards) / MB:.1f} MiB in {len(shards)} shards (biggest {max(shards) / MB:.1f} MiB)")
    print(f"streamed (load_checkpoint): peak held {streamed.peak_live / MB:.1f} MiB, {streamed_s:.2f} s")
    print(f"full load (read_state_dict + load_state_into): peak held {full.peak_live / MB:.1f} MiB, {full_s:.2f} s")


if __name__ == "__main__":
    main()
