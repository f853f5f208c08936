"""``python -m specvla_ros.bench.limit_starts``: does a robot parked next to a joint limit get out?

"Safe must not mean stuck": the arm starts a few hundredths of a radian inside a joint limit and
the shipped policy drives it through the deployed ``Policy`` (envelope mask, trajectory gate) in
the simulator. The start pose stays the layout's (the policy's own situation); the limit is moved
to it: one joint's limit in the gate's limits is set ``inside`` rad beyond its start value, as a
cell that restricts a joint's range does. Each case runs twice on the
same layouts, in one run: the gate halting a motion that moves such a joint toward its limit
(``hold_limit_joints: false``, what the gate did before) and the gate holding that joint and moving
with the others (``hold_limit_joints: true``). Printed per case and task: successes, steps held,
the step the arm first moved, and the largest joint-limit violation (always none).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

#: (name, joint index, side, distance inside the limit [rad])
CASES = (("joint1 0.03 rad from its lower limit", 0, "lower", 0.03),
         ("joint1 0.03 rad from its upper limit", 0, "upper", 0.03),
         ("joint4 0.03 rad from its upper limit", 3, "upper", 0.03),
         ("joint7 0.03 rad from its lower limit", 6, "lower", 0.03),
         ("joint7 0.03 rad from its upper limit", 6, "upper", 0.03))


def run_case(policy, base, env, joint: int, side: str, inside: float, task: str, seeds: list[int],  # noqa: ANN001
             hold: bool) -> dict:
    """``base``: the shipped safety config (each episode's gate is it with one limit moved)."""
    from specvla_ros.core.types import Observation
    from specvla_ros.sim.known_objects import task_scene_objects
    from specvla_ros.sim.tasks import sample_layout

    from specvla_ros.core.safety.config import JointLimits
    from specvla_ros.core.safety.gate import SafetyGate
    from specvla_ros.core.safety.trajectory import TrajectoryGate

    res = {"episodes": 0, "success": 0, "held_steps": 0, "steps": 0, "first_move": [], "worst_violation_rad": 0.0}
    for seed in seeds:
        q0 = sample_layout(task, seed).start_q.copy()
        jl = base.joint_limits
        lower, upper = jl.min_position.copy(), jl.max_position.copy()
        if side == "lower":
            lower[joint] = q0[joint] - inside
        else:
            upper[joint] = q0[joint] + inside
        limits = JointLimits(jl.names, lower, upper, jl.max_velocity, jl.max_acceleration)
        gate = SafetyGate(dataclasses.replace(base, joint_limits=limits, hold_limit_joints=hold), policy.gate.kin)
        policy.gate, policy.trajectory_gate = gate, TrajectoryGate(gate)
        lo, hi = gate.lower, gate.upper
        env.reset(seed=seed, task=task)
        first_move = None
        for step in range(env.max_steps):
            state = env.robot_state()
            obs = Observation(env.render(), env.instruction, np.concatenate([state.q, [state.gripper]]).astype(np.float32),
                              frame_id=step + 1)
            policy.set_scene_objects(task_scene_objects(env))
            out = policy.step(obs, state)
            held = out.verdict.is_halt
            res["held_steps"] += int(held)
            if not held and first_move is None and np.max(np.abs(out.verdict.joint_command - state.q)) > 1e-4:
                first_move = step
            env.command(out.verdict.joint_command, out.verdict.gripper_command)
            env.step_control()
            res["steps"] += 1
            q = env.robot_state().q
            res["worst_violation_rad"] = max(res["worst_violation_rad"], float(np.max(np.maximum(lo - q, q - hi))))
            if env.success:
                res["success"] += 1
                break
        res["episodes"] += 1
        res["first_move"].append(first_move)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=5, help="layouts per case and task")
    p.add_argument("--tasks", default="reach,push,pick")
    p.add_argument("--seed-base", type=int, default=1_100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from specvla_ros.core.policy import Policy, PolicyConfig
    from specvla_ros.sim.task_env import TaskEnv

    torch.set_num_threads(args.threads)
    policy = Policy(PolicyConfig(device="cpu"))
    base = policy.gate.config
    env = TaskEnv("reach", seed=args.seed_base)
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [args.seed_base + i for i in range(args.episodes)]
    rows = []
    try:
        for name, joint, side, inside in CASES:
            for task in tasks:
                row = {"case": name, "task": task}
                for hold in (False, True):
                    row["hold" if hold else "halt"] = run_case(policy, base, env, joint, side, inside, task, seeds, hold)
                rows.append(row)
                a, b = row["halt"], row["hold"]
                print(f"{name:28s} {task:5s} | halt: {a['success']}/{a['episodes']} ok, held {a['held_steps']}/"
                      f"{a['steps']} steps | hold joint: {b['success']}/{b['episodes']} ok, held {b['held_steps']}/"
                      f"{b['steps']} steps, first move at {b['first_move']} | violation "
                      f"{max(a['worst_violation_rad'], b['worst_violation_rad']):.4f} rad", flush=True)
    finally:
        env.close()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
