"""``specvla_train``: collect demonstrations, train the target, distill the draft.

    specvla_train all     --out DIR [--episodes 600] [--preset small]   # the three steps below
    specvla_train collect --out DIR/demos --episodes N                  # = python -m specvla_ros.train.collect
    specvla_train target  --data DIR/demos --out DIR/target_run         # behaviour cloning
    specvla_train draft   --data DIR/demos --target DIR/target_run/final --out DIR/draft_run
    specvla_train eval    --target CKPT [--draft CKPT] --episodes 10    # closed loop in the simulator

``all`` writes DIR/demos, DIR/target_run, DIR/draft_run and copies the final
checkpoints to DIR/target and DIR/draft (pass those to the node's
``target_dir`` / ``draft_dir``, or copy them over specvla_ros/data/models/).
Every step uses fixed seeds and shows a progress bar.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco: headless rendering

from specvla_ros.train import distill_draft, train_target  # noqa: E402

EVAL_SEED_BASE = 50_000  # far from collect's seeds (0.. and 10000..)
CONTROL_PERIOD_S = 0.2


def _collect(out: Path, episodes: int, seed: int, tasks: str, progress: bool) -> dict:
    from specvla_ros.train.collect import CollectConfig, collect

    cfg = CollectConfig(out=out, episodes=episodes, seed=seed,
                        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), progress=progress)
    return collect(cfg)


def evaluate_closed_loop(
    target_dir: str | Path, draft_dir: str | Path | None = None, tasks: tuple[str, ...] = ("reach", "push", "pick"),
    episodes: int = 10, seed_base: int = EVAL_SEED_BASE, mode: str = "greedy", relax_bins: int = 0,
    draft_len: int = 4, drafter: str = "model", progress: bool = True,
) -> dict:
    """Run the deployed ``Policy`` (decoder + envelope mask + safety gate) in the simulator.

    Each step: render -> Policy.step -> the verdict's joint command to the arm's position
    servo. Returns success/collision per task, gate halts and decode statistics.
    """
    import torch
    from tqdm import tqdm

    from specvla_ros.core.policy import Policy, PolicyConfig
    from specvla_ros.core.decoding.decoder import DecodeConfig
    from specvla_ros.sim.task_env import TaskEnv
    from specvla_ros.train.collect import policy_drives

    torch.set_num_threads(1)
    policy = Policy(PolicyConfig(
        target_dir=str(target_dir), draft_dir=str(draft_dir) if draft_dir else None,
        drafter=drafter if draft_dir else "none", device="cpu", control_period_s=CONTROL_PERIOD_S,
        decode=DecodeConfig(mode=mode, relax_bins=relax_bins, draft_len=draft_len)))
    env = TaskEnv(tasks[0], seed=seed_base, image_size=policy.image_size)
    per_task: dict[str, dict] = {}
    emitted = passes = decisions = halts = 0
    latency: list[float] = []
    bar = tqdm(total=episodes * len(tasks), desc="eval", unit="ep", disable=not progress)
    for task in tasks:
        res = {"episodes": 0, "success": 0, "collision": 0, "steps": 0}
        for e in range(episodes):
            env.reset(seed=seed_base + e, task=task)
            while env.steps < env.max_steps and not env.success_ever:
                out = policy_drives(env, policy, env.render())
                latency.append(out.stats.total_time_s)
                emitted += out.stats.emitted
                passes += out.stats.target_passes
                decisions += 1
                halts += int(out.verdict.is_halt)
            res["episodes"] += 1
            res["success"] += int(env.success_ever)
            res["collision"] += int(bool(env.episode_collisions))
            res["steps"] += env.steps
            bar.update(1)
            bar.set_postfix(task=task, success=f"{res['success']}/{res['episodes']}")
        res["success_rate"] = res["success"] / res["episodes"]
        per_task[task] = res
    bar.close()
    env.close()
    lat = np.array(latency) if latency else np.zeros(1)
    return {
        "target": str(target_dir), "draft": str(draft_dir) if draft_dir else None, "mode": mode,
        "relax_bins": relax_bins, "seed_base": seed_base, "per_task": per_task,
        "success_rate": sum(r["success"] for r in per_task.values()) / sum(r["episodes"] for r in per_task.values()),
        "decisions": decisions, "halts": halts, "mean_accepted_length": emitted / max(passes, 1),
        "latency_ms_mean": float(lat.mean() * 1000), "latency_ms_p50": float(np.median(lat) * 1000),
    }


def _copy_ckpt(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specvla_train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p_all = sub.add_parser("all", help="collect, train the target, distill the draft")
    p_all.add_argument("--out", required=True, type=Path, help="working directory")
    p_all.add_argument("--episodes", type=int, default=600, help="demonstration episodes")
    p_all.add_argument("--tasks", default="reach,push,pick")
    p_all.add_argument("--preset", default="small", help="target size (tiny_vla.PRESETS)")
    p_all.add_argument("--target-steps", type=int, default=train_target.TargetTrainConfig(data=["x"], out="x").steps)
    p_all.add_argument("--draft-steps", type=int, default=distill_draft.DraftTrainConfig(data=["x"], target="x", out="x").steps)
    p_all.add_argument("--time-budget-min", type=float, default=0.0, help="per training stage (0 = none)")
    p_all.add_argument("--seed", type=int, default=0)
    p_all.add_argument("--no-progress", action="store_true")

    p_col = sub.add_parser("collect", help="scripted-expert demonstrations")
    p_col.add_argument("--out", required=True, type=Path)
    p_col.add_argument("--episodes", type=int, required=True)
    p_col.add_argument("--tasks", default="reach,push,pick")
    p_col.add_argument("--seed", type=int, default=0)
    p_col.add_argument("--no-progress", action="store_true")

    train_target.add_arguments(sub.add_parser("target", help="behaviour cloning of the target"))
    distill_draft.add_arguments(sub.add_parser("draft", help="distill the draft from a trained target"))

    p_ev = sub.add_parser("eval", help="closed-loop success in the simulator")
    p_ev.add_argument("--target", required=True)
    p_ev.add_argument("--draft", default=None)
    p_ev.add_argument("--tasks", default="reach,push,pick")
    p_ev.add_argument("--episodes", type=int, default=10, help="per task")
    p_ev.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE)
    p_ev.add_argument("--mode", default="greedy", choices=("greedy", "relaxed", "sample"))
    p_ev.add_argument("--relax-bins", type=int, default=0)
    p_ev.add_argument("--draft-len", type=int, default=4)
    p_ev.add_argument("--drafter", default="model", choices=("model", "eagle"))
    p_ev.add_argument("--json", type=Path, default=None, help="also write the results here")

    args = parser.parse_args(argv)
    try:
        if args.cmd == "collect":
            print(json.dumps(_collect(args.out, args.episodes, args.seed, args.tasks, not args.no_progress), indent=2))
        elif args.cmd == "target":
            print(json.dumps(train_target.train_target(train_target.config_from_args(args)), indent=2))
        elif args.cmd == "draft":
            print(json.dumps(distill_draft.distill_draft(distill_draft.config_from_args(args)), indent=2))
        elif args.cmd == "eval":
            res = evaluate_closed_loop(args.target, args.draft, tuple(args.tasks.split(",")), args.episodes,
                                       args.seed_base, args.mode, args.relax_bins, args.draft_len, args.drafter)
            text = json.dumps(res, indent=2)
            print(text)
            if args.json:
                args.json.write_text(text)
        else:  # all
            out: Path = args.out
            t0 = time.perf_counter()
            demos = out / "demos"
            if not (demos / "dataset_statistics.json").exists():
                _collect(demos, args.episodes, args.seed, args.tasks, not args.no_progress)
            tcfg = train_target.TargetTrainConfig(
                data=[str(demos)], out=str(out / "target_run"), preset=args.preset, steps=args.target_steps,
                time_budget_min=args.time_budget_min, seed=args.seed, progress=not args.no_progress)
            tsum = train_target.train_target(tcfg)
            dcfg = distill_draft.DraftTrainConfig(
                data=[str(demos)], target=tsum["final_dir"], out=str(out / "draft_run"), steps=args.draft_steps,
                time_budget_min=args.time_budget_min, seed=args.seed, progress=not args.no_progress)
            dsum = distill_draft.distill_draft(dcfg)
            _copy_ckpt(Path(tsum["final_dir"]), out / "target")
            _copy_ckpt(Path(dsum["final_dir"]), out / "draft")
            print(json.dumps({"target": tsum, "draft": dsum, "minutes": (time.perf_counter() - t0) / 60}, indent=2))
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
