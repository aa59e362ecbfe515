"""The plan as a plain-text table (what `python -m internvl_train.plan` prints)."""
from __future__ import annotations

from internvl_train.plan.memory import OPTIMIZER_BYTES, WEIGHT_BYTES
from internvl_train.plan.planner import Plan

GB = 1e9
TRAILING_PARTS = ("queries", "heads", "other")  # listed after the towers whatever the parameter order


def format_plan(plan: Plan, command: str) -> str:
    sections = [_header(plan, command), _parameters(plan), _memory(plan), _compute(plan)]
    notes = plan.model.notes
    if notes:
        sections.append("notes\n" + "\n".join(f"  - {n}" for n in notes))
    return "\n\n".join(sections) + "\n"


def _count(n: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


def _gb(n: float) -> str:
    """Bytes in GB with two decimals; small amounts in MB/KB so a tiny model does not read as zero."""
    if abs(n) >= 1e8 or n == 0:
        return f"{n / GB:.2f}"
    return f"{n / 1e6:.1f} MB" if abs(n) >= 1e6 else f"{n / 1e3:.1f} KB"


def _flop(n: float) -> str:
    for scale, unit in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOP"


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds >= 0.01 else f"{seconds * 1e3:.3f} ms"


def _header(plan: Plan, command: str) -> str:
    cfg, s = plan.cfg, plan.settings
    ds, tr = cfg.deepspeed, cfg.trainer
    offload = [f"{what} offload" for what, on in (("optimizer", ds.offload_optimizer == "cpu"),
                                                  ("param", ds.offload_param == "cpu")) if on]
    samples = plan.global_batch * tr.max_steps
    return "\n".join([
        f"plan: {command}",
        f"recipe   stage {cfg.stage.name}, model {cfg.model.name}, {tr.precision}, ZeRO-{ds.zero_stage}"
        f" ({', '.join(offload) or 'no offload'}), {s.gpus} GPUs x {s.gpu_mem_gb:g} GB",
        f"batch    micro {tr.micro_batch_size} x accum {tr.grad_accum_steps} x {s.gpus} GPUs = global "
        f"{plan.global_batch} per step; {tr.max_steps} steps = {_count(samples)} samples",
        f"sample   {plan.workload.unit}: {plan.workload.shape}",
    ])


def _parameters(plan: Plan) -> str:
    rows = [f"{'parameters':<28}{'total':>10}{'trainable':>12}{'frozen':>10}"]
    for part in sorted(plan.model.parts(), key=lambda p: p.name in TRAILING_PARTS):  # stable: model order
        rows.append(f"  {part.name:<26}{_count(part.total):>10}{_count(part.trainable):>12}{_count(part.frozen):>10}")
    total, trainable = plan.model.total, plan.model.trainable
    rows.append(f"  {'all':<26}{_count(total):>10}{_count(trainable):>12}{_count(total - trainable):>10}")
    return "\n".join(rows)


def _memory(plan: Plan) -> str:
    cfg, st = plan.cfg, plan.state
    zero, n, precision = cfg.deepspeed.zero_stage, plan.settings.gpus, cfg.trainer.precision
    w, o = WEIGHT_BYTES[precision], OPTIMIZER_BYTES[precision]
    split = lambda stage: f" / {n}" if zero >= stage else ""  # noqa: E731 (partitioned over the ranks)
    rows = [f"memory per GPU (GB), ZeRO-{zero} over {n} ranks",
            f"  {'weights':<22}{_gb(st.params):>9}   {w} B x all params{split(3)}" + _cpu(st.cpu_params),
            f"  {'gradients':<22}{_gb(st.grads):>9}   {w} B x trainable{split(2)}",
            f"  {'optimizer states':<22}{_gb(st.optimizer):>9}   {o} B x trainable{split(1)}" + _cpu(st.cpu_optimizer)]
    if plan.gather_bytes:
        rows.append(f"  {'ZeRO-3 gathered':<22}{_gb(plan.gather_bytes):>9}   prefetch bucket + largest layer")
    rows += _activation_rows(plan)
    verdict = "fits" if plan.headroom_bytes >= 0 else "DOES NOT FIT"
    rows.append(f"  {'total':<22}{_gb(plan.gpu_bytes):>9}   of {plan.settings.gpu_mem_gb:g} GB: {verdict}, "
                f"headroom {_gb(plan.headroom_bytes)} GB")
    return "\n".join(rows)


def _cpu(nbytes: float) -> str:
    size = _gb(nbytes)
    return f" (offloaded: {size if ' ' in size else size + ' GB'} in CPU memory)" if nbytes else ""


def _activation_rows(plan: Plan) -> list[str]:
    """Activations of one micro-batch: the recipe's checkpointing counts in the total; both variants shown."""
    acts = plan.workload.activations
    configured = {g.name: g.checkpointed for g in acts.groups if g.layers}
    ckpt_desc = ", ".join(f"{name} {'ckpt' if on else 'no ckpt'}" for name, on in configured.items()) or "none"
    return [f"  {'activations':<22}{_gb(plan.activation_bytes(None)):>9}   micro-batch {plan.micro_batch}, as "
            f"configured ({ckpt_desc})",
            f"  {'':<22}{'':>9}   without checkpointing {_gb(plan.activation_bytes(False))}, with "
            f"{_gb(plan.activation_bytes(True))} (peak: layer inputs + one recomputed layer)"]


def _compute(plan: Plan) -> str:
    s, wl = plan.settings, plan.workload
    gpu_hours = plan.budget_seconds * s.gpus / 3600
    return "\n".join([
        f"compute at an assumed MFU of {s.mfu:.0%} of {s.peak_tflops:g} TFLOP/s per GPU",
        f"  {'FLOPs per sample':<22}{_flop(wl.flops_per_sample):>9}   (forward + backward, model FLOPs)",
        f"  {'step time':<22}{_duration(plan.step_seconds):>9}   ({plan.micro_batch} x "
        f"{plan.cfg.trainer.grad_accum_steps} samples per GPU)",
        f"  {'throughput':<22}{plan.samples_per_second:>9.1f} samples/s ({plan.samples_per_second / s.gpus:.2f} "
        f"per GPU)",
        f"  {'budget':<22}{_duration(plan.budget_seconds):>9}   {plan.cfg.trainer.max_steps} steps, "
        f"{gpu_hours:,.0f} GPU-hours",
    ])
