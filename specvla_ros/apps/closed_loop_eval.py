"""Closed-loop evaluation (`specvla_eval`): the policy drives the simulated Panda.

For each decoding mode it runs N episodes per task and reports the columns of
Spec-VLA's tables: success %, collision %, unsafe actions % (actions the gate
blocked, or would have blocked with the gate off), mean and p95 decision
latency, mean accepted length, speedup over the target-only baseline.

Modes (all share one loaded target and draft):

    baseline_nogate  target-only greedy, gate OFF: the IK target of every action is
                     sent unchecked (the gate still runs, to count what it would block)
    baseline         target-only greedy autoregressive decoding, gate on
    spec_exact       speculative greedy (token-identical to baseline), gate on
    spec_relaxed     speculative, action tokens accepted within r bins, gate on

With an action-chunk model each decision is a plan of H points (the trajectory gate's safe
prefix); the simulated arm executes ``execute_steps`` of them, then the policy plans again
from the newest frame (receding horizon; the previous plan's unexecuted tail is the next
decision's free draft). ``horizon`` decodes fewer actions than the model's H.

Two back-ends run the same episodes: ``direct`` calls ``Policy.step`` on the
simulator state (fast; what CI runs), ``ros`` puts the real ROS nodes in the
loop (``specvla_sim`` + ``specvla_node`` as processes, see graph_runner.SimGraph);
the node has no gate-off switch, so baseline_nogate is direct-only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from specvla_ros.core.types import MAX_CHUNK_HORIZON, WEIGHT_DTYPES, Observation, PolicyOutput, RobotState, SafetyStatus

ALL_MODES = ("baseline_nogate", "baseline", "spec_exact", "spec_relaxed")
ALL_TASKS = ("reach", "push", "pick")
#: Evaluation layouts never overlap the training seeds (collect uses small seeds).
EVAL_SEED_BASE = 1_000_000


@dataclass
class EvalConfig:
    """What to evaluate. Validated on construction."""

    tasks: tuple[str, ...] = ALL_TASKS
    episodes: int = 10  # per task and mode
    modes: tuple[str, ...] = ALL_MODES
    relax_bins: int = 9
    draft_len: int = 4
    target_dir: str | None = None  # None: the shipped model
    draft_dir: str | None = None
    drafter: str = "model"
    seed_base: int = EVAL_SEED_BASE
    control_period_s: float = 0.2
    max_steps: int | None = None  # None: each task's own limit
    device: str = "auto"
    dtype: str = "float32"  # model weights: float32 | float16 | bfloat16 | auto (the node's dtype parameter)
    backend: str = "direct"  # "direct" (Policy.step on the simulator) | "ros" (specvla_sim + specvla_node graph)
    horizon: int = 0  # actions decoded per decision (0 = the model's chunk length)
    execute_steps: int = 1  # plan points executed before the next decision (receding horizon)
    ensemble: bool = False  # temporal ensembling of overlapping chunks (PolicyConfig.ensemble)
    ensemble_coeff: float = 0.01

    def __post_init__(self) -> None:
        if not 0 <= self.horizon <= MAX_CHUNK_HORIZON:
            raise ValueError(f"horizon must be in [0, {MAX_CHUNK_HORIZON}] (0 = the model's), got {self.horizon}")
        if not 1 <= self.execute_steps <= MAX_CHUNK_HORIZON:
            raise ValueError(f"execute_steps must be in [1, {MAX_CHUNK_HORIZON}], got {self.execute_steps}")
        if self.dtype not in WEIGHT_DTYPES:
            raise ValueError(f"dtype must be one of {WEIGHT_DTYPES}, got {self.dtype!r}")
        if self.backend not in ("direct", "ros"):
            raise ValueError(f"backend must be 'direct' or 'ros', got {self.backend!r}")
        if self.backend == "ros" and "baseline_nogate" in self.modes:
            raise ValueError("the node never sends an unchecked command: mode baseline_nogate needs backend 'direct'")
        bad = [t for t in self.tasks if t not in ALL_TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {ALL_TASKS}, got {self.tasks}")
        bad = [m for m in self.modes if m not in ALL_MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {ALL_MODES}, got {self.modes}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.relax_bins < 0:
            raise ValueError(f"relax_bins must be >= 0, got {self.relax_bins}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


@dataclass
class EpisodeResult:
    mode: str
    task: str
    seed: int
    success: bool
    collision: bool
    steps: int
    unsafe_actions: int
    decisions: int = 0
    latencies_s: list[float] = field(default_factory=list)
    emitted: int = 0
    target_passes: int = 0
    halts: dict[str, int] = field(default_factory=dict)
    narrations: list[str] = field(default_factory=list)
    actions: list[list[float]] = field(default_factory=list)  # every decision's decoded chunk, flattened
    points_executed: int = 0  # plan points the arm executed (the rest of each plan was replaced)
    starved: int = 0  # control steps with no plan point to execute (the arm held)
    points_cut: int = 0  # plan points the trajectory gate cut
    jerk_rms: float = float("nan")  # [rad/s^3] RMS third difference of the measured joint positions


@dataclass
class ModeSummary:
    mode: str
    episodes: int
    success_pct: float
    collision_pct: float
    unsafe_action_pct: float
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    mean_accepted_length: float
    speedup: float = float("nan")  # baseline p50 latency / this mode's p50
    per_task_success_pct: dict[str, float] = field(default_factory=dict)
    halts: dict[str, int] = field(default_factory=dict)
    plan_latency_p50_ms: float = float("nan")  # = latency_p50_ms: one decision is one plan
    points_per_plan: float = float("nan")  # plan points executed per decision
    starved_periods: int = 0  # control steps the arm had no plan point (held)
    command_rate_hz: float = float("nan")  # plan points sent per second of simulated time
    points_cut: int = 0
    jerk_rms: float = float("nan")  # [rad/s^3] mean over episodes


def _policy_config(cfg: EvalConfig, mode: str):
    """The PolicyConfig a mode runs with."""
    from specvla_ros.core.paths import DEFAULT_DRAFT_DIR, DEFAULT_TARGET_DIR
    from specvla_ros.core.policy import PolicyConfig
    from specvla_ros.core.decoding.decoder import DecodeConfig

    speculative = mode.startswith("spec_")
    decode = DecodeConfig(
        mode="relaxed" if mode == "spec_relaxed" else "greedy",
        relax_bins=cfg.relax_bins if mode == "spec_relaxed" else 0,
        draft_len=cfg.draft_len,
    )
    decode.horizon = cfg.horizon
    return PolicyConfig(
        target_dir=str(cfg.target_dir or DEFAULT_TARGET_DIR),
        draft_dir=str(cfg.draft_dir or DEFAULT_DRAFT_DIR) if speculative else None,
        drafter=cfg.drafter if speculative else "none",
        decode=decode,
        device=cfg.device,
        dtype=cfg.dtype,
        control_period_s=cfg.control_period_s,
        safe_envelope=mode != "baseline_nogate",
        ensemble=cfg.ensemble,
        ensemble_coeff=cfg.ensemble_coeff,
    )


def run_episode(env, policy, mode: str, task: str, seed: int, max_steps: int | None, kinematics=None,
                frame_sink=None, execute_steps: int = 1) -> EpisodeResult:
    """Run one episode with ``policy`` in ``env`` (a TaskEnv) and collect its figures.

    Each decision's plan (the trajectory gate's safe prefix of the chunk) is executed for up to
    ``execute_steps`` control steps, then the policy decides again (at once when the plan ran
    out or held). With mode "baseline_nogate" the unchecked IK targets of the chunk are sent
    (what a wrapper without a gate would do); the verdict is still counted.
    """
    from specvla_ros.core.safety.kinematics import ee_delta_to_joint_target
    from specvla_ros.sim.known_objects import task_scene_objects

    env.reset(seed=seed, task=task)
    limit = max_steps or env.max_steps
    dt = env.config.control_period_s
    res = EpisodeResult(mode=mode, task=task, seed=seed, success=False, collision=False, steps=0, unsafe_actions=0)
    plan: list[tuple[np.ndarray, float]] = []
    since_plan = 0
    running = False  # a plan of the last decision is being executed (else the arm holds: shift 0)
    measured = [np.asarray(env.robot_state().q, dtype=np.float64).copy()]
    step = 0
    while step < limit:
        if not plan or since_plan >= execute_steps:
            state: RobotState = env.robot_state()
            image = env.render()
            obs = Observation(image=image, instruction=env.instruction,
                              proprio=np.concatenate([state.q, [state.gripper]]).astype(np.float32),
                              frame_id=step + 1)
            # the gate knows the objects on the table, as specvla_node does from /specvla/scene_objects
            policy.set_scene_objects(task_scene_objects(env))
            t0 = time.perf_counter()
            out: PolicyOutput = policy.step(obs, state, shift=since_plan if running else 0)
            res.latencies_s.append(time.perf_counter() - t0)
            res.decisions += 1
            v = out.verdict
            res.emitted += out.stats.emitted
            res.target_passes += out.stats.target_passes
            res.narrations.append(out.narration)
            chunk = out.actions if out.actions is not None else out.action[None]
            res.actions.append([float(x) for x in np.asarray(chunk).reshape(-1)])
            if v.status != SafetyStatus.OK:
                res.halts[v.status.name] = res.halts.get(v.status.name, 0) + 1
            if v.is_halt:
                res.unsafe_actions += 1
            if out.plan is not None:
                res.points_cut += out.plan.cut
            if frame_sink is not None:
                frame_sink(image, out)
            if mode == "baseline_nogate" and np.all(np.isfinite(chunk)):
                q = np.asarray(state.q, dtype=np.float64)
                plan = []
                for a in np.asarray(chunk):
                    q = ee_delta_to_joint_target(kinematics, q, a).q
                    plan.append((q, float(np.clip(a[6], 0.0, 1.0)) * 0.08))
            elif out.plan is not None and out.plan.published:
                plan = list(zip(out.plan.points, out.plan.grippers.tolist()))
            else:
                plan = []
                env.command(v.joint_command, v.gripper_command)  # hold
            since_plan = 0
            running = bool(plan)
        if plan:
            q, gripper = plan.pop(0)
            env.command(q, gripper)
            res.points_executed += 1
        else:
            res.starved += 1
        since_plan += 1
        env.step_control()
        step += 1
        res.steps = step
        measured.append(np.asarray(env.robot_state().q, dtype=np.float64).copy())
        if env.episode_collisions:
            res.collision = True
        if env.success:
            res.success = True
            break
    res.jerk_rms = jerk_rms(measured, dt)
    return res


def jerk_rms(measured: list, dt: float) -> float:
    """RMS joint jerk [rad/s^3] of joint positions measured once per control step (nan: too few)."""
    if len(measured) < 4:
        return float("nan")
    jerk = np.diff(np.asarray(measured, dtype=np.float64), n=3, axis=0) / dt**3
    return float(np.sqrt(np.mean(jerk**2)))


def summarize(results: list[EpisodeResult], mode: str, dt: float = 0.2) -> ModeSummary:
    rs = [r for r in results if r.mode == mode]
    lat = np.array([x for r in rs for x in r.latencies_s]) * 1e3
    actions = sum(r.decisions for r in rs)
    halts: dict[str, int] = {}
    for r in rs:
        for k, n in r.halts.items():
            halts[k] = halts.get(k, 0) + n
    tasks = sorted({r.task for r in rs})
    return ModeSummary(
        mode=mode,
        episodes=len(rs),
        success_pct=100.0 * np.mean([r.success for r in rs]),
        collision_pct=100.0 * np.mean([r.collision for r in rs]),
        unsafe_action_pct=100.0 * sum(r.unsafe_actions for r in rs) / max(actions, 1),
        latency_mean_ms=float(lat.mean()) if lat.size else float("nan"),
        latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else float("nan"),
        latency_p95_ms=float(np.percentile(lat, 95)) if lat.size else float("nan"),
        mean_accepted_length=sum(r.emitted for r in rs) / max(sum(r.target_passes for r in rs), 1),
        per_task_success_pct={t: 100.0 * np.mean([r.success for r in rs if r.task == t]) for t in tasks},
        halts=halts,
        plan_latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else float("nan"),
        points_per_plan=sum(r.points_executed for r in rs) / max(actions, 1),
        starved_periods=int(sum(r.starved for r in rs)),
        command_rate_hz=(sum(r.points_executed for r in rs) / max(sum(r.steps for r in rs) * dt, 1e-9)
                         if dt else float("nan")),
        points_cut=int(sum(r.points_cut for r in rs)),
        jerk_rms=float(np.nanmean([r.jerk_rms for r in rs])) if any(np.isfinite(r.jerk_rms) for r in rs)
        else float("nan"),
    )


def _node_overrides(cfg: EvalConfig, mode: str) -> dict:
    """specvla_node parameters of a mode (the ROS back-end's equivalent of _policy_config)."""
    speculative = mode.startswith("spec_")
    node: dict = {"decode": {"mode": "relaxed" if mode == "spec_relaxed" else "greedy",
                             "relax_bins": cfg.relax_bins, "draft_len": cfg.draft_len},
                  "device": cfg.device, "dtype": cfg.dtype, "drafter": cfg.drafter if speculative else "none"}
    if cfg.target_dir:
        node["target_dir"] = str(Path(cfg.target_dir).resolve())
    if not speculative:
        node["draft_dir"] = ""
    elif cfg.draft_dir:
        node["draft_dir"] = str(Path(cfg.draft_dir).resolve())
    return node


def evaluate_ros(cfg: EvalConfig, out_dir: Path, progress: bool = True) -> list[EpisodeResult]:
    """Every (mode, task, episode) with the real nodes in the loop: one graph per mode."""
    from specvla_ros.apps.graph_runner import SimGraph

    results: list[EpisodeResult] = []
    for mode in cfg.modes:
        sim: dict = {"control_period": cfg.control_period_s}
        if cfg.max_steps:
            sim["max_episode_steps"] = cfg.max_steps
        node = {**_node_overrides(cfg, mode), "control_period": cfg.control_period_s}
        with SimGraph(out_dir / f"graph_{mode}", node=node, sim=sim) as graph:
            for task in cfg.tasks:
                for ep in range(cfg.episodes):
                    log = graph.run_episode(task, cfg.seed_base + ep)
                    r = EpisodeResult(mode=mode, task=task, seed=log.seed, success=log.success,
                                      collision=log.collision, steps=log.steps, unsafe_actions=log.unsafe,
                                      decisions=log.verdicts, latencies_s=[x / 1e3 for x in log.decision_ms],
                                      emitted=log.emitted, target_passes=log.target_passes, halts=dict(log.halts),
                                      narrations=list(log.narrations), points_cut=log.points_cut,
                                      # lockstep: the simulator steps once per command, on the plan's first point
                                      points_executed=log.steps,
                                      jerk_rms=jerk_rms(log.joint_positions, cfg.control_period_s))
                    results.append(r)
                    if progress:
                        print(f"[{mode:15s}] {task:5s} ep {ep + 1}/{cfg.episodes} seed {r.seed}: "
                              f"{'success' if r.success else 'fail   '} steps {r.steps:3d} (ros)",
                              file=sys.stderr, flush=True)
    return results


def evaluate(cfg: EvalConfig, progress: bool = True, out_dir: Path | None = None
             ) -> tuple[list[ModeSummary], list[EpisodeResult]]:
    """Run every (mode, task, episode) of ``cfg`` with its back-end; summaries per mode."""
    if cfg.backend == "ros":
        results = evaluate_ros(cfg, Path(out_dir or "out/eval"), progress)
    else:
        results = _evaluate_direct(cfg, progress)
    summaries = [summarize(results, m, cfg.control_period_s) for m in cfg.modes]
    base = next((s for s in summaries if s.mode == "baseline"), None)
    if base is not None:
        for s in summaries:
            s.speedup = base.latency_p50_ms / s.latency_p50_ms if s.latency_p50_ms > 0 else float("nan")
    return summaries, results


def _evaluate_direct(cfg: EvalConfig, progress: bool) -> list[EpisodeResult]:
    from specvla_ros.core.safety.kinematics import ArmKinematics
    from specvla_ros.core.policy import Policy
    from specvla_ros.sim.task_env import TaskEnv

    kin = ArmKinematics.from_urdf()
    env = TaskEnv(task=cfg.tasks[0], seed=cfg.seed_base, control_period_s=cfg.control_period_s)
    results: list[EpisodeResult] = []
    try:
        for mode in cfg.modes:
            policy = Policy(_policy_config(cfg, mode))
            policy.warmup()
            for task in cfg.tasks:
                for ep in range(cfg.episodes):
                    r = run_episode(env, policy, mode, task, cfg.seed_base + ep, cfg.max_steps, kin,
                                    execute_steps=cfg.execute_steps)
                    results.append(r)
                    if progress:
                        print(f"[{mode:15s}] {task:5s} ep {ep + 1}/{cfg.episodes} seed {r.seed}: "
                              f"{'success' if r.success else 'fail   '} steps {r.steps:3d} "
                              f"p50 {1e3 * np.median(r.latencies_s):6.1f} ms"
                              f"{' COLLISION' if r.collision else ''}", file=sys.stderr, flush=True)
            del policy
    finally:
        env.close()
    return results


def exact_matches_baseline(results: list[EpisodeResult]) -> float | None:
    """Fraction of (task, seed) episodes where spec_exact issued the same actions as baseline."""
    base = {(r.task, r.seed): r for r in results if r.mode == "baseline"}
    spec = {(r.task, r.seed): r for r in results if r.mode == "spec_exact"}
    common = sorted(set(base) & set(spec))
    if not common:
        return None
    return float(np.mean([base[k].actions == spec[k].actions for k in common]))


def format_table(summaries: list[ModeSummary]) -> str:
    head = ("| mode | episodes | success % | collision % | unsafe actions % | latency mean ms | "
            "latency p95 ms | accepted length | speedup (p50) | points / plan | starved | jerk rad/s^3 |")
    rows = [head, "|" + "---|" * 12]
    for s in summaries:
        rows.append(f"| {s.mode} | {s.episodes} | {s.success_pct:.1f} | {s.collision_pct:.1f} | "
                    f"{s.unsafe_action_pct:.2f} | {s.latency_mean_ms:.1f} | {s.latency_p95_ms:.1f} | "
                    f"{s.mean_accepted_length:.2f} | {s.speedup:.2f}x | {s.points_per_plan:.2f} | "
                    f"{s.starved_periods} | {s.jerk_rms:.2f} |")
    return "\n".join(rows)


def save_plot(summaries: list[ModeSummary], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.mode for s in summaries]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].bar(names, [s.success_pct for s in summaries], color="tab:green")
    axes[0].set_ylabel("success %")
    axes[0].set_ylim(0, 100)
    axes[1].bar(names, [s.latency_p50_ms for s in summaries], color="tab:blue",
                yerr=[[0] * len(summaries), [s.latency_p95_ms - s.latency_p50_ms for s in summaries]])
    axes[1].set_ylabel("decision latency p50 (p95 bar) [ms]")
    axes[2].bar(names, [s.unsafe_action_pct for s in summaries], color="tab:red")
    axes[2].set_ylabel("unsafe actions %")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="specvla_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=10, help="episodes per task and mode")
    p.add_argument("--tasks", default=",".join(ALL_TASKS))
    p.add_argument("--modes", default=",".join(ALL_MODES))
    p.add_argument("--relax-bins", type=int, default=9, help="r of relaxed acceptance [bins]")
    p.add_argument("--draft-len", type=int, default=4)
    p.add_argument("--target", default=None, help="target checkpoint dir (default: shipped)")
    p.add_argument("--draft", default=None, help="draft checkpoint dir (default: shipped)")
    p.add_argument("--drafter", default="model", choices=("model", "eagle"))
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--horizon", type=int, default=0,
                   help="actions decoded per decision (0 = the model's chunk length; fewer is allowed)")
    p.add_argument("--execute-steps", type=int, default=1,
                   help="plan points executed before the next decision (receding horizon)")
    p.add_argument("--ensemble", action="store_true",
                   help="temporal ensembling of overlapping chunks (blend each plan with earlier plans' predictions)")
    p.add_argument("--ensemble-coeff", type=float, default=0.01,
                   help="ensembling weight decay, w_i = exp(-coeff i), i = 0 the oldest prediction")
    p.add_argument("--seed-base", type=int, default=EVAL_SEED_BASE)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=WEIGHT_DTYPES,
                   help="model weight dtype; float32 keeps speculative exact token-identical to the baseline "
                        "(bfloat16 is faster on AVX512-BF16 CPUs, but its multi-token verify passes round "
                        "differently and exact no longer matches its baseline)")
    p.add_argument("--backend", default="direct", choices=("direct", "ros"),
                   help="direct: Policy.step on the simulator; ros: specvla_sim + specvla_node processes in the loop")
    p.add_argument("--out", default="out/eval", help="directory for results.json, table.md, plot.png")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (measured on 2 shared cores: 2 threads on the main thread "
                        "made a decision ~14x slower than 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    if args.threads < 1:
        print(f"specvla_eval: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    try:
        cfg = EvalConfig(tasks=tuple(t for t in args.tasks.split(",") if t),
                         modes=tuple(m for m in args.modes.split(",") if m), episodes=args.episodes,
                         relax_bins=args.relax_bins, draft_len=args.draft_len, target_dir=args.target,
                         draft_dir=args.draft, drafter=args.drafter, max_steps=args.max_steps,
                         seed_base=args.seed_base, device=args.device, dtype=args.dtype, backend=args.backend,
                         horizon=args.horizon, execute_steps=args.execute_steps, ensemble=args.ensemble,
                         ensemble_coeff=args.ensemble_coeff)
    except ValueError as exc:
        print(f"specvla_eval: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries, results = evaluate(cfg, progress=not args.quiet, out_dir=out)
    payload = {"config": asdict(cfg), "summaries": [asdict(s) for s in summaries],
               "spec_exact_identical_to_baseline": exact_matches_baseline(results),
               "episodes": [{k: v for k, v in asdict(r).items() if k not in ("actions", "narrations")} for r in results]}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    table = format_table(summaries)
    (out / "table.md").write_text(table + "\n")
    save_plot(summaries, out / "plot.png")
    if args.json:
        print(json.dumps(payload))
    else:
        print(table)
        same = payload["spec_exact_identical_to_baseline"]
        if same is not None:
            print(f"spec_exact issued the same actions as baseline in {100 * same:.0f} % of episodes")
        print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'plot.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
