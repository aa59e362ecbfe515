"""The training loop on DeepSpeed. Knows stages only through the Stage contract (engine/stage_api.py)."""
from __future__ import annotations

import logging
import math
import random
import signal
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from internvl_train.errors import ConfigError
from internvl_train.engine import collectives as D
from internvl_train.engine.compat import install_deepspeed_compat
from internvl_train.engine.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
from internvl_train.engine.ds_config import build_ds_config
from internvl_train.engine.freeze import freeze_modules
from internvl_train.engine.guard import GuardedEngine, NonFiniteCounter, NonFiniteLossError
from internvl_train.engine.metrics import MetricWindow, peak_tflops_per_device, throughput_metrics
from internvl_train.engine.optim import build_optimizer, build_param_groups
from internvl_train.engine.run_identity import check_resumable, config_hash, identity_config
from internvl_train.engine.run_outputs import (EXPORT_DIR, RESULTS_FILE, TMP_PREFIX, append_results, export_done,
                                               finished_results, recorded_results, write_export)
from internvl_train.engine.schedule import apply_lr, trainer_lr_at
from internvl_train.engine.signals import EXIT_PREEMPTED, Interrupted, StopSignals, exit_code_for
from internvl_train.engine.tracking import METRICS_FILE, Tracker, drop_rows_after
from internvl_train.engine.stage_api import DistInfo, Stage

log = logging.getLogger("internvl_train.engine")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sum_skipped_counters(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Loader metrics: skip counters summed over ranks, everything else as rank 0 reports it."""
    out = dict(per_rank[0])
    for key in {k for metrics in per_rank for k in metrics if "skipped" in k}:
        out[key] = float(sum(m.get(key, 0.0) for m in per_rank))
    return out


class Trainer:
    """fit(): train cfg.trainer.max_steps optimizer steps (resuming per cfg.resume), evaluate, export.
    evaluate(): evaluate the latest checkpoint (or the stage's init_from weights) without training."""

    def __init__(self, cfg: Any, stage: Stage, dist: DistInfo):
        self.cfg, self.stage, self.dist = cfg, stage, dist
        self.run_dir = Path(cfg.run_dir)
        self.ckpt = CheckpointManager(self.run_dir, cfg.trainer.keep_last, dist.rank)
        self.step = self.samples_seen = self.tokens_seen = 0
        self.run_id: str | None = None
        self.last_saved_step = -1
        self.nonfinite = NonFiniteCounter(cfg.trainer.max_nonfinite_steps)
        self.phase = "start-up"  # named when a stop signal ends the run outside the training loop

    # ---- setup ----------------------------------------------------------------------------------
    def _build_engine(self) -> None:
        import deepspeed

        install_deepspeed_compat()
        cfg, tr = self.cfg, self.cfg.trainer
        seed_everything(cfg.seed)  # identical initialisation on every rank
        self.ds_config = build_ds_config(cfg, self.dist.world_size)
        with deepspeed.zero.Init(config_dict_or_path=self.ds_config, enabled=cfg.deepspeed.zero_stage == 3):
            model = self.stage.build_model()
        freeze_modules(self.stage.frozen_modules(model))
        groups = build_param_groups(model, tr.weight_decay, dict(tr.lr_multipliers), self.stage.no_weight_decay)
        optimizer = build_optimizer(groups, tr, cfg.deepspeed)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config,
                                          dist_init_required=False)
        self.engine = GuardedEngine(engine)
        seed_everything(cfg.seed + 1000003 * self.dist.rank)  # per-rank dropout / augmentation streams

    def _restore(self, path: Path | None, loader: Any) -> None:
        identity = identity_config(self.cfg)
        if path is None:
            return
        state, rank_state = self.ckpt.load(self.engine, path)
        check_resumable(state, identity, self.dist.world_size, str(path))
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        self.tokens_seen, self.run_id = state["tokens_seen"], state.get("wandb_run_id")
        self.nonfinite.total = state.get("nonfinite_skipped", 0)
        self.last_saved_step = self.step
        loader.load_state_dict(rank_state["loader"])
        restore_rng_state(rank_state["rng"])
        if self.dist.rank == 0:
            log.info("resumed from %s at step %d (%d samples seen)", path, self.step, self.samples_seen)
            for name in (METRICS_FILE, RESULTS_FILE):  # the steps after the checkpoint are redone: no twins
                dropped = drop_rows_after(self.run_dir / name, self.step)
                if dropped:
                    log.info("%s: dropped %d rows logged after step %d (redone now)", name, dropped, self.step)

    # ---- public API -----------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train, then final checkpoint, evaluation and export. A stop signal (engine/signals.py) saves a
        checkpoint (in the loop) and exits 75 (130 for Ctrl-C); raises NonFiniteLossError after
        trainer.max_nonfinite_steps consecutive non-finite steps."""
        with StopSignals() as stop:
            try:
                return self._fit(stop)
            except Interrupted as interrupted:
                self._stop_now(interrupted.signum)

    def _fit(self, stop: StopSignals) -> dict[str, float]:
        self.phase = "start-up"
        self.ckpt.clean_incomplete()
        resume = self.ckpt.resolve_resume(self.cfg.resume)
        finished = self._finished_results(resume)
        if finished is not None:
            return finished
        self._build_engine()
        self.loader = self.stage.build_train_loader()
        self._restore(resume, self.loader)
        self.tracker = Tracker(self.cfg, self.dist.rank, self.run_dir, self.run_id,
                               self.cfg.trainer.max_steps, self.step)
        self.run_id = self.tracker.run_id if self.dist.rank == 0 else None
        self.run_id = D.all_gather_objects(self.run_id)[0]
        self.phase = "training"
        with stop.deferred():
            try:
                self._train_loop(stop)
            except NonFiniteLossError:
                self.tracker.close(exit_code=1)
                raise
            if stop.agreed():  # arrived after the last step's check
                self._stop_at_step_boundary(stop)
        results = self._finish()
        self.phase = "closing the tracker"
        self.tracker.close()
        return results

    def evaluate(self) -> dict[str, float]:
        """Evaluate only: latest checkpoint of run_dir (per cfg.resume), else the weights `init_from` or
        `model.pretrained` name; with none of them there is nothing trained to evaluate (a config error).
        A stop signal ends it at once (nothing to save)."""
        self.phase = "evaluation"
        with StopSignals():
            try:
                return self._evaluate_only()
            except Interrupted as interrupted:
                self._stop_now(interrupted.signum)

    def _evaluate_only(self) -> dict[str, float]:
        path = self.ckpt.resolve_resume(self.cfg.resume)
        if path is None and not (self.cfg.init_from or OmegaConf.select(self.cfg, "model.pretrained")):
            raise ConfigError("mode", f"eval found no checkpoint in {self.ckpt.root} and init_from is null: "
                                      "nothing trained to evaluate. Train first (mode=train), or set "
                                      "init_from=<export dir> or resume=<checkpoint dir>")
        self._build_engine()
        if path is not None:
            state = self.ckpt.load_module_only(self.engine, path)
            self.step = state["step"]
        return self._evaluate(tracker=None)

    # ---- loop -----------------------------------------------------------------------------------
    def _train_loop(self, stop: StopSignals) -> None:
        tr = self.cfg.trainer
        self.engine.train()
        data = iter(self.loader)
        window = MetricWindow()
        while self.step < tr.max_steps:
            self._train_step(data, window)
            self.step += 1
            self.tracker.advance(self.step)
            if self.step % tr.log_every == 0 or self.step == tr.max_steps:
                self._log(window)
                window = MetricWindow()
            if tr.eval_every > 0 and self.step % tr.eval_every == 0 and self.step < tr.max_steps:
                self._evaluate(self.tracker)
            if tr.save_every > 0 and self.step % tr.save_every == 0:
                self._save()
            if stop.agreed():
                self._stop_at_step_boundary(stop)

    def _train_step(self, data: Any, window: MetricWindow) -> None:
        tr = self.cfg.trainer
        started = window.elapsed()
        batches = [next(data) for _ in range(tr.grad_accum_steps)]
        window.data_wait_s += window.elapsed() - started
        sizes = [self.stage.batch_size_and_tokens(b) for b in batches]
        apply_lr(self.engine.optimizer.param_groups, trainer_lr_at(self.step, tr))
        losses = self.stage.train_step(self.engine, batches)
        keys = sorted(losses)
        local = [float(losses[k]) for k in keys] + [sum(s for s, _ in sizes), sum(t for _, t in sizes)]
        summed = D.all_reduce_sum(torch.tensor(local, dtype=torch.float64)).tolist()
        mean = {k: v / self.dist.world_size for k, v in zip(keys, summed)}
        self.samples_seen += int(summed[-2])
        self.tokens_seen += int(summed[-1])
        norm = self.engine.get_global_grad_norm()
        norm = None if norm is None else float(norm)
        skipped = (self.engine.take_nonfinite_flag() or not self.engine.was_step_applied()
                   or not math.isfinite(mean.get("loss", 0.0)))
        latest = self.ckpt.latest() if skipped else None
        self.nonfinite.record(skipped, self.step + 1, mean.get("loss", float("nan")), norm,
                              str(latest) if latest else None)
        if not skipped:
            self.stage.after_optimizer_step(self.engine.module)
            window.add_losses(mean)
            window.grad_norm = norm
        window.steps += 1
        window.samples += int(summed[-2])
        window.tokens += int(summed[-1])

    def _log(self, window: MetricWindow) -> None:
        tr = self.cfg.trainer
        elapsed = window.elapsed()
        wait = float(D.all_reduce_sum(torch.tensor([window.data_wait_s], dtype=torch.float64))[0])
        metrics = {f"loss/{k}": v / window.loss_steps for k, v in window.losses.items()} if window.loss_steps else {}
        metrics.update({"train/lr": trainer_lr_at(self.step - 1, tr), "train/samples_seen": self.samples_seen,
                        "train/nonfinite_skipped": self.nonfinite.total})
        if window.grad_norm is not None:
            metrics["train/grad_norm"] = window.grad_norm
        metrics.update(throughput_metrics(window.samples, window.tokens, wait, elapsed, self.dist.world_size,
                                          self.stage.flops_per_sample(),
                                          peak_tflops_per_device(tr.peak_tflops_per_device, tr.precision)))
        metrics.update(sum_skipped_counters(D.all_gather_objects(self.loader.metrics())))
        self.tracker.log(metrics, self.step)

    # ---- checkpoint, evaluation, export ---------------------------------------------------------
    def _save(self) -> None:
        identity = identity_config(self.cfg)
        state = {"step": self.step, "samples_seen": self.samples_seen, "tokens_seen": self.tokens_seen,
                 "wandb_run_id": self.run_id, "world_size": self.dist.world_size,
                 "nonfinite_skipped": self.nonfinite.total, "config_hash": config_hash(identity),
                 "config": identity}
        rank_state = {"loader": self.loader.state_dict(), "rng": capture_rng_state()}
        path = self.ckpt.save(self.engine, self.step, state, rank_state)
        self.last_saved_step = self.step
        if self.dist.rank == 0:
            log.info("saved checkpoint %s", path)

    def _stop_at_step_boundary(self, stop: StopSignals) -> None:
        """All ranks agreed on a stop signal: checkpoint this step, close the tracker, exit."""
        code = exit_code_for(stop.received) if stop.received is not None else EXIT_PREEMPTED
        if self.last_saved_step != self.step:
            self._save()
        if self.dist.rank == 0:
            log.warning("%s received: checkpoint saved at step %d (%s); exiting %d. Rerun the same command to "
                        "resume from it.", stop.name(), self.step, self.ckpt.latest(), code)
        self.tracker.close(exit_code=code)
        raise SystemExit(code)

    def _stop_now(self, signum: int) -> None:
        """A stop signal outside the training loop: nothing unsaved is lost; one line, then exit."""
        code = exit_code_for(signum)
        if self.dist.rank == 0:
            log.warning("%s received during %s: stopping, exit %d. The last checkpoint is %s; rerun the same "
                        "command to resume (completed work is not redone).", signal.Signals(signum).name,
                        self.phase, code, self.ckpt.latest() or "none (no step trained yet)")
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            with suppress(Interrupted):
                tracker.close(exit_code=code)
        raise SystemExit(code) from None

    def _finish(self) -> dict[str, float]:
        """Final checkpoint, evaluation and export; a rerun after a crash in between redoes only what is
        missing (results.jsonl never gets the final evaluation twice)."""
        self.phase = "the final checkpoint"
        if self.last_saved_step != self.step:
            self._save()
        self.phase = "the final evaluation"
        results = recorded_results(self.run_dir, self.step)
        if results is None:
            results = self._evaluate(self.tracker)
        self.phase = "the export"
        if not export_done(self.run_dir):
            self._export()
        return results

    def _finished_results(self, resume: Path | None) -> dict[str, float] | None:
        """A complete run (final checkpoint, evaluation and export all there): a rerun says so and does
        nothing (no model built, nothing appended)."""
        results = finished_results(self.run_dir, resume, self.cfg.trainer.max_steps)
        if results is not None and self.dist.rank == 0:
            log.info("run already finished: %s holds the final step (trainer.max_steps=%d), its results are in "
                     "%s and its export in %s; nothing to do (raise trainer.max_steps to train on, or set another "
                     "run_dir for a new run)", resume, self.cfg.trainer.max_steps, self.run_dir / RESULTS_FILE,
                     self.run_dir / EXPORT_DIR)
        return results

    def _evaluate(self, tracker: Tracker | None) -> dict[str, float]:
        self.engine.eval()
        with torch.no_grad():
            results = self.stage.evaluate(self.engine.module)
        self.engine.train()
        if self.dist.rank == 0 and results:
            append_results(self.run_dir, self.step, results)
            log.info("eval at step %d: %s", self.step, results)
        if tracker is not None and results:
            tracker.log({f"eval/{k}": v for k, v in results.items()}, self.step)
        return results

    def _export(self) -> None:
        """The stage's export, written beside and renamed into place: `export/` exists only when complete."""
        import deepspeed

        model = self.engine.module
        if self.cfg.deepspeed.zero_stage == 3 and getattr(self.stage, "streams_zero3_export", False):
            # The stage's export gathers module by module (weights.save_pretrained): every rank takes part,
            # rank 0 writes; no rank ever holds the whole model.
            export = lambda out_dir: self.stage.export(model, out_dir)  # noqa: E731
            if self.dist.rank == 0:
                write_export(self.run_dir, export)
            else:
                export(str(self.run_dir / f"{TMP_PREFIX}{EXPORT_DIR}"))
            D.barrier()
            return
        gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None) \
            if self.cfg.deepspeed.zero_stage == 3 else nullcontext()
        with gather:
            if self.dist.rank == 0:
                write_export(self.run_dir, lambda out_dir: self.stage.export(model, out_dir))
        D.barrier()
