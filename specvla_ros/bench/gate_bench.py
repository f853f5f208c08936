"""Safety-gate latency: p50/p95 per action, with and without collision checking.

    python -m specvla_ros.bench.gate_bench [--n 2000] [--json] [--safety-config PATH] [--objects N]

States are reachable poses of the task region (IK to random TCP poses above the
table); actions are ordinary ee_delta steps (inside the envelope), fast ones
(scaled by the gate) and ones that halt. Also times ``envelope()`` (what the
policy computes for the decoder's mask before each decode). ``--objects N``
puts N cube-sized scene objects on the table (the first one gripper_may_touch,
like a task's object) and re-sets the list before every check, as the policy
node and the evaluation do each control step.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.core.safety.kinematics import rpy_matrix
from specvla_ros.core.safety.config import load_safety_config
from specvla_ros.core.safety.gate import SafetyGate
from specvla_ros.core.types import RobotState

HOME_Q = np.array([0.0, -0.05, 0.0, -2.35, 0.0, 2.3, np.pi / 4])


def _states(gate: SafetyGate, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    _, R0 = gate.kin.fk(HOME_Q)
    out: list[np.ndarray] = []
    while len(out) < n:
        p = rng.uniform([0.3, -0.3, 0.05], [0.7, 0.3, 0.5])
        res = gate.kin.ik(p, rpy_matrix(*rng.uniform(-0.4, 0.4, 3)) @ R0, HOME_Q)
        if res.success:
            out.append(res.q)
    return out


def _actions(kind: str, gate: SafetyGate, state: RobotState, dt: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "inside_envelope":
        low, high = gate.envelope(state, dt)
        return rng.uniform(low, high)
    if kind == "too_fast":
        return np.r_[rng.uniform(-0.05, 0.05, 3), rng.uniform(-0.3, 0.3, 3), rng.uniform(0, 1)]
    return np.r_[0.0, 0.0, -0.05, 0.0, 0.0, 0.0, 1.0]  # "downward": halts near the table


def _pcts(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "n": int(a.size)}


def _objects(n: int, rng: np.random.Generator) -> list[SceneObject]:
    return [SceneObject(f"object{i}", (float(rng.uniform(0.36, 0.62)), float(rng.uniform(-0.22, 0.22)), 0.022),
                        (0.044, 0.044, 0.044), gripper_may_touch=i == 0) for i in range(n)]


def run(n: int = 2000, safety_config: str | None = None, dt: float = 0.2, seed: int = 0, objects: int = 0) -> dict:
    gate = SafetyGate(load_safety_config(safety_config))
    rng = np.random.default_rng(seed)
    states = _states(gate, 64, rng)
    scene_objects = _objects(objects, rng)
    results: dict = {"n_collision_pairs": gate.scene.n_pairs if gate.scene is not None else 0,
                     "scene_objects": objects, "checks": {}}
    statuses: dict[str, dict[str, int]] = {}
    for collision in (True, False):
        gate.collision_checking = collision and gate.scene is not None
        for kind in ("inside_envelope", "too_fast", "downward"):
            times: list[float] = []
            counts: dict[str, int] = {}
            for i in range(n):
                state = RobotState(q=states[i % len(states)], gripper=0.04)
                action = _actions(kind, gate, state, dt, rng)
                t0 = time.perf_counter()
                if objects:
                    gate.set_scene_objects(scene_objects)
                v = gate.check(action, state, dt)
                # with objects: the per-step list update counts too
                times.append(time.perf_counter() - t0 if objects else v.check_time_s)
                counts[v.status.name] = counts.get(v.status.name, 0) + 1
            key = f"{kind}/{'collision' if collision else 'no_collision'}"
            results["checks"][key] = _pcts(times)
            statuses[key] = counts
    env_times = []
    for i in range(n):
        state = RobotState(q=states[i % len(states)])
        t0 = time.perf_counter()
        gate.envelope(state, dt)
        env_times.append(time.perf_counter() - t0)
    results["envelope"] = _pcts(env_times)
    results["statuses"] = statuses
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="actions per configuration")
    ap.add_argument("--safety-config", default=None, help="safety.yaml (default: the shipped one)")
    ap.add_argument("--dt", type=float, default=0.2, help="control period [s]")
    ap.add_argument("--objects", type=int, default=0, help="scene objects on the table (set before every check)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    if args.n < 1 or not args.dt > 0 or args.objects < 0:
        ap.error("--n must be >= 1, --dt > 0 and --objects >= 0")
    res = run(args.n, args.safety_config, args.dt, objects=args.objects)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"safety gate latency per action ({res['n_collision_pairs']} collision pairs, "
          f"{res['scene_objects']} scene objects)")
    print(f"{'actions / collision checking':42s} {'p50 ms':>8s} {'p95 ms':>8s}  statuses")
    for key, r in res["checks"].items():
        st = ", ".join(f"{k} {v}" for k, v in sorted(res["statuses"][key].items()))
        print(f"{key:42s} {r['p50_ms']:8.3f} {r['p95_ms']:8.3f}  {st}")
    e = res["envelope"]
    print(f"{'envelope()':42s} {e['p50_ms']:8.3f} {e['p95_ms']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
