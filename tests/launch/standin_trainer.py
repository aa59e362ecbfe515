"""A tiny program that honours the trainer's launch contract, so launch/ can be tested on real SLURM
before (and independently of) the real trainer.

Contract (same as `python -m internvl_train`): Hydra-style `key=value` arguments; ranks from torchrun env,
else from SLURM task env only inside a job step (SLURM_STEP_ID set); SIGUSR1/SIGTERM -> save a checkpoint
at the next step boundary and exit 75; on start, resume from the checkpoint in run_dir; at the end write
run_dir/export/ (what the next stage reads through init_from=).

Arguments: run_dir=DIR steps=N step_s=SECONDS stage=NAME init_from=DIR dist=none|gloo
preempt_plan=K0,K1,... (the start with SLURM_RESTART_COUNT=r behaves as if preempted after K<r> steps:
saves and exits 75; starts beyond the list run normally)
Per rank it writes in run_dir: checkpoint.rank<r>.json (atomic), steps.rank<r>.txt (one line per step
executed, appended across restarts: repeats or gaps would show there), env.rank<r>.<restart>.json,
result.rank<r>.json; rank 0 writes checkpoints/latest (`step_<N>`, as the trainer does: train.sbatch reads it
to tell progress) and export/model.json.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EXIT_PREEMPTED = 75


def parse_overrides(argv: list[str]) -> dict[str, str]:
    args = {"steps": "20", "step_s": "0.1", "stage": "standin", "dist": "none", "init_from": "",
            "preempt_plan": ""}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"standin: expected key=value, got {item!r}")
        args[key.lstrip("+")] = value
    if "run_dir" not in args:
        sys.exit("standin: run_dir=... is required")
    return args


def master_from_slurm() -> str:
    out = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                         capture_output=True, text=True, check=True).stdout.split()
    try:
        socket.gethostbyname(out[0])
        return out[0]
    except OSError:
        return "127.0.0.1"


def detect_ranks() -> dict[str, Any]:
    """The contract's rank detection: torchrun env, else SLURM task env inside a step, else single."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return {"source": "torchrun", "rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
                "local_rank": int(env["LOCAL_RANK"]), "master_addr": env["MASTER_ADDR"]}
    if "SLURM_STEP_ID" in env:
        return {"source": "slurm", "rank": int(env["SLURM_PROCID"]), "world_size": int(env["SLURM_NTASKS"]),
                "local_rank": int(env["SLURM_LOCALID"]), "master_addr": master_from_slurm()}
    return {"source": "single", "rank": 0, "world_size": 1, "local_rank": 0, "master_addr": "127.0.0.1"}


def all_reduce_ranks(ranks: dict[str, Any]) -> int:
    """Real gloo rendezvous on MASTER_ADDR/MASTER_PORT: returns the sum of (rank + 1) over the world."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", ranks["master_addr"])
    dist.init_process_group("gloo", rank=ranks["rank"], world_size=ranks["world_size"])
    value = torch.tensor([ranks["rank"] + 1])
    dist.all_reduce(value)
    dist.destroy_process_group()
    return int(value.item())


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def preempt_after(args: dict[str, str]) -> int | None:
    """Steps this start runs before acting as if preempted (preempt_plan), None: no such plan."""
    plan = [int(k) for k in args["preempt_plan"].split(",") if k.strip()]
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    return plan[restart] if restart < len(plan) else None


def save(run_dir: Path, rank: int, state: dict[str, Any]) -> None:
    write_json_atomic(run_dir / f"checkpoint.rank{rank}.json", state)
    if rank == 0 and state["step"] > 0:
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        tmp = run_dir / "checkpoints" / "latest.tmp"
        tmp.write_text(f"step_{state['step']}\n")
        os.replace(tmp, run_dir / "checkpoints" / "latest")


def train(args: dict[str, str], ranks: dict[str, Any], run_dir: Path) -> int:
    rank = ranks["rank"]
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = stop["signal"] or signum

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    ckpt_path = run_dir / f"checkpoint.rank{rank}.json"
    state = json.loads(ckpt_path.read_text()) if ckpt_path.exists() else {"step": 0, "total": 0}
    resumed_from = state["step"]
    planned = preempt_after(args)
    print(f"standin rank {rank}: start at step {state['step']} (source {ranks['source']})", flush=True)
    with open(run_dir / f"steps.rank{rank}.txt", "a") as steps_log:
        while state["step"] < int(args["steps"]):
            if planned is not None and state["step"] - resumed_from >= planned:
                stop["signal"] = stop["signal"] or int(signal.SIGUSR1)
            if stop["signal"]:
                save(run_dir, rank, state)
                print(f"standin rank {rank}: signal {stop['signal']}, saved step {state['step']}", flush=True)
                return EXIT_PREEMPTED
            time.sleep(float(args["step_s"]))
            state["step"] += 1
            state["total"] += state["step"] * (rank + 1)
            steps_log.write(f"{state['step']}\n")
            steps_log.flush()
    save(run_dir, rank, state)
    write_json_atomic(run_dir / f"result.rank{rank}.json", {**state, "resumed_from": resumed_from})
    return 0


def export(args: dict[str, str], run_dir: Path) -> None:
    chain: list[str] = []
    if args["init_from"]:
        parent = json.loads((Path(args["init_from"]) / "model.json").read_text())
        chain = parent["chain"] + [args["init_from"]]
    (run_dir / "export").mkdir(exist_ok=True)
    write_json_atomic(run_dir / "export" / "model.json",
                      {"stage": args["stage"], "chain": chain, "finished_at": time.time()})


def main() -> int:
    args = parse_overrides(sys.argv[1:])
    run_dir = Path(args["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    ranks = detect_ranks()
    if args["dist"] == "gloo":
        ranks["all_reduce"] = all_reduce_ranks(ranks)
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    env = {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "MASTER_")) or k in ("RANK", "WORLD_SIZE")}
    write_json_atomic(run_dir / f"env.rank{ranks['rank']}.{restart}.json", {"ranks": ranks, "env": env})
    code = train(args, ranks, run_dir)
    if code == 0 and ranks["rank"] == 0:
        export(args, run_dir)
    return code


if __name__ == "__main__":
    sys.exit(main())
