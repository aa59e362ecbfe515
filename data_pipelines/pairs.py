"""The image-text pair pipeline of stages 1 and 2: `build_pair_loader` -> PairLoader (a StatefulLoader).

Batches: {"pixel_values": FloatTensor[B,3,H,W], "captions": list[str], "keys": list[str],
optional "labels": LongTensor[B] (-1 where a sample has no label)}. The sample order is a pure function of
(seed, rank, world_size, num_workers, batch_size, chunk size); state_dict() holds each worker's position,
so a resumed loader yields exactly the batches the uninterrupted one would have.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any, Iterator, Mapping

import torch
from torch.utils.data import DataLoader

from data_pipelines import plan
from data_pipelines.config import DataConfig, PairSourceConfig, expand_urls
from data_pipelines.decode import build_geometry
from data_pipelines.shards import shard_sample_count
from data_pipelines.stream import PairStream, Position, StreamSpec
from data_pipelines.workers import ignore_termination_signals

log = logging.getLogger(__name__)
STATE_VERSION = 1


class PairLoader:
    """Endless micro-batches for one rank; iterate it, checkpoint it with state_dict()."""

    def __init__(self, spec: StreamSpec, prefetch_factor: int = 2, use_processes: bool = True):
        self.spec, self.prefetch_factor, self.use_processes = spec, prefetch_factor, use_processes
        self.batches = 0
        self.positions: dict[int, Position] = {}
        self.skipped: Counter = Counter()
        self.borrowed = 0

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches every rank yields per epoch (epoch mode); None when resampled."""
        if self.spec.resampled:
            return None
        return plan.epoch_layout(self.spec.shards, self.spec.counts, self.spec.seed, 0,
                                 self.spec.world_size, self.spec.batch_size).batches_per_rank

    def __iter__(self) -> Iterator[dict[str, Any]]:
        workers = self.spec.num_workers
        dataset = PairStream(self.spec, dict(self.positions), rotation=self.batches % workers)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers if self.use_processes else 0,
                            prefetch_factor=self.prefetch_factor if self.use_processes else None,
                            pin_memory=torch.cuda.is_available(),
                            # its own generator: creating the iterator must not draw from the caller's RNG
                            generator=torch.Generator().manual_seed(self.spec.seed),
                            persistent_workers=False, worker_init_fn=ignore_termination_signals)
        for batch in loader:
            meta = batch.pop("_meta")
            self.positions[meta["worker"]] = meta["position"]
            self.skipped.update(meta["skipped"])
            self.borrowed += meta["borrowed"]
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "batches": self.batches, "layout": self._layout_key(),
                "positions": {str(w): dataclasses.asdict(p) for w, p in self.positions.items()},
                "skipped": dict(self.skipped), "borrowed": self.borrowed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {state.get('version')} != {STATE_VERSION}")
        if dict(state["layout"]) != self._layout_key():
            raise ValueError(f"cannot resume the data position: the checkpoint was taken with "
                             f"{dict(state['layout'])}, this run has {self._layout_key()}; resume with the "
                             f"same world size, micro-batch size, data.num_workers, seed and shards")
        self.batches = int(state["batches"])
        self.positions = {int(w): Position(**p) for w, p in state["positions"].items()}
        self.skipped = Counter(state["skipped"])
        self.borrowed = int(state["borrowed"])

    def metrics(self) -> dict[str, float]:
        out = {f"data/skipped/{reason}": float(n) for reason, n in sorted(self.skipped.items())}
        out["data/skipped_total"] = float(sum(self.skipped.values()))
        out["data/borrowed_samples"] = float(self.borrowed)
        out["data/batches"] = float(self.batches)
        if not self.spec.resampled and self.positions:
            out["data/epoch"] = float(min(p.epoch for p in self.positions.values()))
        return out

    def _layout_key(self) -> dict[str, Any]:
        s = self.spec
        return {"rank": s.rank, "world_size": s.world_size, "num_workers": s.num_workers,
                "batch_size": s.batch_size, "chunk_size": s.chunk_size, "seed": s.seed,
                "resampled": s.resampled, "shards": len(s.shards), "samples": sum(s.counts)}


def build_pair_loader(cfg: DataConfig, rank: int, world_size: int, micro_batch_size: int,
                      seed: int) -> PairLoader:
    """The training pair loader of this rank (cfg.demo: the embedded demo shards)."""
    cfg = as_data_config(cfg)
    if cfg.demo:
        cfg = resolve_demo(cfg)
    sources = [expand_urls(s.urls) for s in cfg.sources]
    shards = tuple(u for urls in sources for u in urls)
    counts: tuple[int, ...] = ()
    workers = max(1, cfg.num_workers)
    if not cfg.resampled:
        counts = tuple(shard_sample_count(u) for u in shards)
        per_rank = (sum(counts) // world_size) // micro_batch_size
        if per_rank == 0:
            raise ValueError(f"{sum(counts)} samples in {len(shards)} shards cannot give every one of "
                             f"{world_size} ranks one batch of {micro_batch_size}")
        if per_rank < workers:
            log.warning("data: only %d batches per rank per epoch; using %d dataloader workers instead of %d",
                        per_rank, per_rank, workers)
            workers = per_rank
    augmenting = cfg.augment.random_resized_crop or cfg.augment.hflip
    spec = StreamSpec(
        shards=shards, counts=counts, sources=tuple(tuple(u) for u in sources),
        weights=tuple(float(s.weight) for s in cfg.sources), resampled=cfg.resampled, seed=seed, rank=rank,
        world_size=world_size, num_workers=workers, batch_size=micro_batch_size, chunk_size=cfg.shuffle_buffer,
        max_pixels=cfg.max_image_pixels, max_aspect_ratio=cfg.max_aspect_ratio, augment_seeded=augmenting,
        geometry=build_geometry(cfg.image_size, cfg.augment, train=True), normalization=cfg.normalization,
        draft_size=None if cfg.augment.random_resized_crop else cfg.image_size)
    return PairLoader(spec, cfg.prefetch_factor, use_processes=cfg.num_workers > 0)


def as_data_config(cfg: Any) -> DataConfig:
    """A DataConfig from the dataclass itself or its OmegaConf node (cfg.data of the run config)."""
    if isinstance(cfg, DataConfig):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), cfg))


def resolve_demo(cfg: DataConfig) -> DataConfig:
    """cfg with the embedded demo shards as source and the held-out demo set as eval set."""
    from data_pipelines.config import EvalSetConfig
    from data_pipelines.demo import ensure_demo_data

    paths = ensure_demo_data()
    eval_sets = list(cfg.eval_sets) or [EvalSetConfig(
        name="demo_heldout", shards=paths.heldout_shards, classnames_file=paths.classnames_file,
        templates_file=paths.templates_file)]
    return dataclasses.replace(cfg, demo=False, sources=[PairSourceConfig(urls=paths.train_shards)],
                               eval_sets=eval_sets)
