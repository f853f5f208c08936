"""``python -m specvla_ros.bench.hard_starts``: does a robot parked next to a joint limit, the table
or an object get out?

"Safe must not mean stuck". The shipped policy drives the arm through the deployed ``Policy``
(envelope mask, trajectory gate) in the simulator from a hard start, each case twice on the same
layouts in one run: the gate halting what comes too close (what it did before) and the gate making
the minimal change instead.

- ``limits``: the start pose stays the layout's (the policy's own situation); one joint's limit in
  the gate's limits is moved to ``inside`` rad beyond its start value, as a cell that restricts a
  joint's range does. Halting a motion toward the limit (``hold_limit_joints: false``) vs holding
  that joint and moving with the others (``true``).
- ``objects``: the arm starts (fingers down, the layout's orientation) with the fingertips about
  about 1 cm above the table, 1 cm above a distractor, or 1 cm beside a distractor on the side away
  from the task's object (clearances by the gate's model). Halting a motion that comes closer than the collision margins
  (``slide_along_obstacles: false``) vs sliding along the surface (``true``).

Printed per case and task: successes, steps held, the step the arm first moved, and the worst
violation (joint limits: rad past a limit; objects: contacts the simulator recorded) -- always none.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable

import numpy as np

#: (name, joint index, side, distance inside the limit [rad])
LIMIT_CASES = (("joint1 0.03 rad from its lower limit", 0, "lower", 0.03),
               ("joint1 0.03 rad from its upper limit", 0, "upper", 0.03),
               ("joint4 0.03 rad from its upper limit", 3, "upper", 0.03),
               ("joint7 0.03 rad from its lower limit", 6, "lower", 0.03),
               ("joint7 0.03 rad from its upper limit", 6, "upper", 0.03))
#: hard starts near surfaces: name -> where the TCP starts (see ``_object_start``)
OBJECT_CASES = ("fingers 1 cm above the table", "fingers 1 cm above a distractor", "hand beside a distractor")
#: TCP height over the fingertips' lowest point [m] (the fingers end a little past the TCP)
_FINGERTIP_BELOW_TCP = 0.003


def _run_episode(policy, env, task: str, seed: int, start_q: np.ndarray | None,  # noqa: ANN001
                 worst: Callable[[], float], res: dict) -> None:
    """One closed-loop episode from ``start_q`` (None = the layout's); adds to ``res``."""
    from specvla_ros.core.types import Observation
    from specvla_ros.sim.known_objects import task_scene_objects

    env.reset(seed=seed, task=task, start_q=start_q)
    env.episode_collisions.clear()
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
        res["worst"] = max(res["worst"], worst())
        if env.success:
            res["success"] += 1
            break
    res["episodes"] += 1
    res["first_move"].append(first_move)


def _new_result() -> dict:
    return {"episodes": 0, "success": 0, "held_steps": 0, "steps": 0, "first_move": [], "worst": 0.0}


def _use_gate(policy, config, kin) -> None:  # noqa: ANN001
    from specvla_ros.core.safety.gate import SafetyGate
    from specvla_ros.core.safety.trajectory import TrajectoryGate

    gate = SafetyGate(config, kin)
    policy.gate, policy.trajectory_gate = gate, TrajectoryGate(gate)


def run_limit_case(policy, base, env, joint: int, side: str, inside: float, task: str, seeds: list[int],  # noqa: ANN001
                   hold: bool) -> dict:
    """``base``: the shipped safety config (each episode's gate is it with one limit moved)."""
    from specvla_ros.core.safety.config import JointLimits
    from specvla_ros.sim.tasks import sample_layout

    res = _new_result()
    for seed in seeds:
        q0 = sample_layout(task, seed).start_q.copy()
        jl = base.joint_limits
        lower, upper = jl.min_position.copy(), jl.max_position.copy()
        if side == "lower":
            lower[joint] = q0[joint] - inside
        else:
            upper[joint] = q0[joint] + inside
        limits = JointLimits(jl.names, lower, upper, jl.max_velocity, jl.max_acceleration)
        _use_gate(policy, dataclasses.replace(base, joint_limits=limits, hold_limit_joints=hold), policy.gate.kin)
        lo, hi = policy.gate.lower, policy.gate.upper
        _run_episode(policy, env, task, seed, None,
                     lambda: float(np.max(np.maximum(lo - env.robot_state().q, env.robot_state().q - hi))), res)
    return res


def _object_start(env, gate, case: str) -> np.ndarray | None:  # noqa: ANN001
    """Joint positions for an object case at the current layout (after a plain reset), or None when
    the layout has no such pose (IK fails, or no start 8-20 mm from the surface within 12 cm). The
    clearance is measured by the gate's own collision model (the simulator's finger meshes are a
    little larger than its boxes)."""
    from specvla_ros.sim.known_objects import task_scene_objects

    kin = gate.kin
    q0 = env.layout.start_q
    pos0, R = kin.fk(q0)
    boxes = task_scene_objects(env)
    target, others = boxes[0], boxes[1:]
    gate.set_scene_objects(boxes)
    if case != OBJECT_CASES[0] and not others:
        return None
    for extra in np.arange(0.0, 0.12, 0.002):  # move out until the gate's model is clear by 8 mm
        if case == OBJECT_CASES[0]:
            pos = np.array([pos0[0], pos0[1], 0.008 + extra + _FINGERTIP_BELOW_TCP])
        else:
            box = others[0]
            c, half = np.asarray(box.center), np.asarray(box.size) / 2
            if case == OBJECT_CASES[1]:
                pos = np.array([c[0], c[1], c[2] + half[2] + 0.008 + extra + _FINGERTIP_BELOW_TCP])
            else:  # beside it, on the side away from the task object, fingertips 2 cm over the table
                away = c[:2] - np.asarray(target.center[:2])
                away /= max(float(np.linalg.norm(away)), 1e-9)
                pos = np.array([*(c[:2] + away * (float(np.max(np.abs(half[:2]))) + extra)),
                                0.02 + _FINGERTIP_BELOW_TCP])
        res = kin.ik(pos, R, q0)
        if not res.success or gate.scene is None:
            continue
        d = gate.scene.distances(res.q)
        near = d.obstacle if case == OBJECT_CASES[0] else d.object
        if min(d.obstacle, d.object) >= 0.008:
            return res.q if near <= 0.02 else None
    return None


def run_object_case(policy, base, env, case: str, task: str, seeds: list[int], slide: bool) -> dict:  # noqa: ANN001
    kin = policy.gate.kin
    _use_gate(policy, dataclasses.replace(base, slide_along_obstacles=slide), kin)
    res = _new_result()
    res["skipped"] = 0
    for seed in seeds:
        env.reset(seed=seed, task=task)
        start = _object_start(env, policy.gate, case)
        if start is None:
            res["skipped"] += 1
            continue
        _run_episode(policy, env, task, seed, start, lambda: float(len(env.episode_collisions)), res)
    return res


def _line(name: str, task: str, a: dict, b: dict, labels: tuple[str, str], unit: str) -> str:
    return (f"{name:34s} {task:5s} | {labels[0]}: {a['success']}/{a['episodes']} ok, held {a['held_steps']}/"
            f"{a['steps']} steps, worst {a['worst']:.4g} {unit} | {labels[1]}: {b['success']}/{b['episodes']} ok, "
            f"held {b['held_steps']}/{b['steps']} steps, first move at {b['first_move']}, worst {b['worst']:.4g} {unit}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", choices=("limits", "objects", "all"), default="all")
    p.add_argument("--episodes", type=int, default=5, help="layouts per case and task")
    p.add_argument("--tasks", default="reach,push,pick")
    p.add_argument("--seed-base", type=int, default=1_100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--target", default=None, help="target checkpoint dir (default: the shipped one)")
    p.add_argument("--draft", default=None, help="draft checkpoint dir (default: the shipped one)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    from specvla_ros.core.policy import Policy, PolicyConfig
    from specvla_ros.sim.task_env import TaskEnv

    torch.set_num_threads(args.threads)
    kw = {k: v for k, v in (("target_dir", args.target), ("draft_dir", args.draft)) if v}
    policy = Policy(PolicyConfig(device="cpu", **kw))
    base = policy.gate.config
    env = TaskEnv("reach", seed=args.seed_base)
    tasks = [t for t in args.tasks.split(",") if t]
    seeds = [args.seed_base + i for i in range(args.episodes)]
    rows = []
    try:
        if args.cases in ("limits", "all"):
            for name, joint, side, inside in LIMIT_CASES:
                for task in tasks:
                    row = {"case": name, "task": task}
                    for hold in (False, True):
                        row["hold" if hold else "halt"] = run_limit_case(policy, base, env, joint, side, inside,
                                                                         task, seeds, hold)
                    rows.append(row)
                    print(_line(name, task, row["halt"], row["hold"], ("halt", "hold joint"), "rad"), flush=True)
        if args.cases in ("objects", "all"):
            for name in OBJECT_CASES:
                for task in tasks:
                    row = {"case": name, "task": task}
                    for slide in (False, True):
                        row["slide" if slide else "halt"] = run_object_case(policy, base, env, name, task, seeds, slide)
                    rows.append(row)
                    print(_line(name, task, row["halt"], row["slide"], ("halt", "slide"), "contacts"), flush=True)
    finally:
        env.close()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
