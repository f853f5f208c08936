"""Collect scripted-expert demonstrations in the simulator.

Every expert action is executed the way the deployed node executes a model's
action: ``ee_delta_to_joint_target`` (the IK the safety gate uses) turns it into
a joint target for the arm's position servo. Training and deployment therefore
see the same action semantics.

Output: ``DIR/episode_XXXXX.npz`` (images (T,H,W,3) uint8, proprio (T,8)
float32 = 7 joints + gripper opening [m], actions (T,7) float32, narrations (T,)
str, instruction, task, seed, success, collision) and
``DIR/dataset_statistics.json`` with the action q01/q99 under ``sim_panda``.

    python -m specvla_ros.train.collect --out DIR --episodes N [--tasks reach,push,pick] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specvla_ros.core.models.checkpoint_io import STATS_FILE
from specvla_ros.core.types import MAX_CHUNK_HORIZON
from specvla_ros.sim.language import CLOSE, HOLD  # no mujoco import: --help stays fast

DATASET_KEY = "sim_panda"


@dataclass
class CollectConfig:
    """What to collect."""

    out: Path
    episodes: int
    tasks: tuple[str, ...] = ("reach", "push", "pick")
    seed: int = 0  # episode i uses layout seed (seed + i)
    image_size: tuple[int, int] = (128, 128)  # (height, width) [px]
    hold_steps: int = 2  # "holding still" steps recorded once the task is settled (success with a margin)
    keep_failures: bool = False  # also write episodes the expert failed
    # DART-style: executed TCP translation gets Gaussian noise of this std [m]
    # while the clean expert action is recorded, so the data shows recoveries
    exec_noise_m: float = 0.004
    # up to this many first steps execute a random 4 cm move (biased down) instead of the
    # expert's while the expert's action is recorded: the data then holds states the policy
    # drifts into (low but not at the object) with the right label, not only the expert's path
    detour_steps: int = 0
    # DAgger: a trained target checkpoint drives the arm (through the deployed Policy and its
    # safety gate) while the expert's action is recorded, so the data holds the states the
    # policy itself reaches; each step the expert drives instead with probability policy_beta.
    # Policy episodes are written whether or not they succeed (their labels are the expert's).
    policy_dir: str | None = None
    policy_beta: float = 0.3
    # the driving policy's draft model (speculative exact decoding: the same actions, faster);
    # None = the target decodes alone
    policy_draft_dir: str | None = None
    # action-chunk labels: at every state also record the expert's next chunk_horizon actions
    # (the expert rolled forward in the simulation from that state, then put back)
    chunk_horizon: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        from specvla_ros.sim.language import TASKS

        self.out = Path(self.out)
        if not 0.0 <= self.policy_beta <= 1.0:
            raise ValueError(f"policy_beta must be in [0, 1], got {self.policy_beta}")
        if self.policy_dir is not None and not Path(self.policy_dir).is_dir():
            raise ValueError(f"policy_dir {self.policy_dir} is not a checkpoint directory")
        if self.policy_draft_dir is not None:
            if self.policy_dir is None:
                raise ValueError("policy_draft_dir needs policy_dir")
            if not Path(self.policy_draft_dir).is_dir():
                raise ValueError(f"policy_draft_dir {self.policy_draft_dir} is not a checkpoint directory")
        if self.detour_steps < 0:
            raise ValueError(f"detour_steps must be >= 0, got {self.detour_steps}")
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ValueError(f"tasks {self.tasks!r} must be a non-empty subset of {TASKS}")
        if self.hold_steps < 0:
            raise ValueError(f"hold_steps must be >= 0, got {self.hold_steps}")
        if not 0.0 <= self.exec_noise_m <= 0.02:
            raise ValueError(f"exec_noise_m must be in [0, 0.02] m, got {self.exec_noise_m}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 1 <= self.chunk_horizon <= MAX_CHUNK_HORIZON:
            raise ValueError(f"chunk_horizon must be in [1, {MAX_CHUNK_HORIZON}], got {self.chunk_horizon}")


@dataclass
class Episode:
    """One recorded demonstration (observation t is what the expert saw before action t)."""

    images: list[np.ndarray] = field(default_factory=list)
    proprio: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    narrations: list[str] = field(default_factory=list)
    ik_failures: int = 0
    policy_steps: int = 0  # steps the learned policy drove (DAgger)
    action_chunks: list[np.ndarray] = field(default_factory=list)  # (H, 7) per step when chunk_horizon > 1


def proprio_vector(env) -> np.ndarray:  # noqa: ANN001 - TaskEnv, imported lazily
    """7 joint positions [rad] then the gripper opening [m], float32."""
    state = env.robot_state()
    return np.concatenate([state.q, [state.gripper]]).astype(np.float32)


def execute_ee_delta(env, kin, action: np.ndarray):  # noqa: ANN001, ANN201
    """Send one ee_delta action to the simulated arm through the gate's IK; returns the IKResult."""
    from specvla_ros.core.safety.kinematics import ee_delta_to_joint_target, gripper_action_to_opening

    result = ee_delta_to_joint_target(kin, env.robot_state().q, action)
    env.command(result.q, gripper_action_to_opening(float(action[6])))
    env.step_control()
    return result


MAX_EXEC_STEP_M = 0.045  # [m] executed translation cap (the gate allows 0.05 per step)
NOISE_FLOOR_Z = 0.06  # [m] TCP height below which execution noise never pushes down


def policy_drives(env, policy, image: np.ndarray):  # noqa: ANN001, ANN201 - TaskEnv, Policy -> PolicyOutput
    """One control step commanded by the deployed Policy (model, envelope mask, safety gate), given
    the table's objects as specvla_node gives them; returns the policy's output."""
    from specvla_ros.core.types import Observation
    from specvla_ros.sim.known_objects import task_scene_objects

    policy.set_scene_objects(task_scene_objects(env))
    out = policy.step(Observation(image, env.instruction, proprio_vector(env), frame_id=env.steps),
                      env.robot_state())
    env.command(out.verdict.joint_command, out.verdict.gripper_command)
    env.step_control()
    return out


def _expert_drives(env, kin, action: np.ndarray, narration: str, rng: np.random.Generator,  # noqa: ANN001
                   exec_noise_m: float, detour: bool):  # noqa: ANN202 - IKResult
    """One control step executing the expert's action, with execution noise or as a random detour."""
    executed = np.asarray(action, dtype=np.float64).copy()
    if exec_noise_m > 0 and narration not in (HOLD, CLOSE):
        noise = rng.normal(0.0, exec_noise_m, size=3)
        if env.tcp_pose()[0][2] < NOISE_FLOOR_Z:
            noise[2] = abs(noise[2])  # near the table noise may only lift the fingers
        executed[:3] += noise
        norm = float(np.linalg.norm(executed[:3]))
        if norm > MAX_EXEC_STEP_M:
            executed[:3] *= MAX_EXEC_STEP_M / norm
    if detour:
        direction = rng.normal(size=3) + np.array([0.0, 0.0, -0.7])
        executed[:3] = MAX_EXEC_STEP_M * direction / np.linalg.norm(direction)
        executed[3:6] = 0.0
    return execute_ee_delta(env, kin, executed)


def run_episode(env, expert, kin, hold_steps: int = 2, record_images: bool = True,  # noqa: ANN001
                exec_noise_m: float = 0.0, detour_steps: int = 0, policy=None,  # noqa: ANN001
                policy_beta: float = 0.0, chunk_horizon: int = 1) -> Episode:
    """Roll out the expert from the env's current reset until it has held still (``TaskEnv.settled``:
    success with a margin) for hold_steps steps or the step budget runs out. With exec_noise_m > 0 the
    executed translation is perturbed (seeded by the episode's seed); the recorded
    action stays the expert's. With a ``policy`` (core.policy.Policy) the policy drives
    each step with probability 1 - policy_beta while the expert's action is recorded. With
    ``chunk_horizon`` > 1 each step also records the expert's next actions from that state
    (``expert_chunk``), whoever drives."""
    ep = Episode()
    rng = np.random.default_rng([env.seed, 7919])
    held = 0
    n_detour = int(rng.integers(1, detour_steps + 1)) if detour_steps > 0 else 0
    expert.reset()
    while env.steps < env.max_steps:
        if chunk_horizon > 1:
            from specvla_ros.sim.expert import expert_chunk

            ep.action_chunks.append(expert_chunk(env, expert, chunk_horizon, kin))
        action, narration = expert.act()
        image = env.render() if record_images or policy is not None else None
        if record_images:
            ep.images.append(image)
        ep.proprio.append(proprio_vector(env))
        ep.actions.append(np.asarray(action, dtype=np.float32))
        ep.narrations.append(narration)
        if policy is not None and rng.random() >= policy_beta:
            policy_drives(env, policy, image)
            ep.policy_steps += 1
        else:
            ep.ik_failures += int(not _expert_drives(env, kin, action, narration, rng, exec_noise_m,
                                                     detour=env.steps < n_detour).success)
        if env.settled:
            if held >= hold_steps:
                break
            held += 1
    return ep


def save_episode(path: Path, ep: Episode, env) -> None:  # noqa: ANN001
    np.savez_compressed(
        path,
        images=np.stack(ep.images).astype(np.uint8),
        proprio=np.stack(ep.proprio).astype(np.float32),
        actions=np.stack(ep.actions).astype(np.float32),
        narrations=np.array(ep.narrations, dtype=str),
        instruction=np.array(env.instruction),
        task=np.array(env.task),
        seed=np.array(env.seed, dtype=np.int64),
        success=np.array(bool(env.success_ever)),
        collision=np.array(bool(env.episode_collisions)),
        policy_driven=np.array(ep.policy_steps > 0),
        **({"action_chunks": np.stack(ep.action_chunks).astype(np.float32)} if ep.action_chunks else {}),
    )


def write_statistics(out: Path, actions: np.ndarray, proprio: np.ndarray, n_episodes: int,
                     per_task: dict) -> None:
    from specvla_ros.core.models.action_tokenizer import ActionNormStats, save_norm_stats

    path = out / STATS_FILE
    save_norm_stats(path, {DATASET_KEY: ActionNormStats.from_actions(actions)}, {DATASET_KEY: actions})
    data = json.loads(path.read_text())
    data[DATASET_KEY]["num_trajectories"] = int(n_episodes)
    data[DATASET_KEY]["proprio"] = {
        "mean": proprio.mean(0).tolist(), "std": proprio.std(0).tolist(),
        "q01": np.quantile(proprio, 0.01, axis=0).tolist(), "q99": np.quantile(proprio, 0.99, axis=0).tolist(),
    }
    data[DATASET_KEY]["expert"] = per_task
    path.write_text(json.dumps(data, indent=2))


def collect(cfg: CollectConfig) -> dict:
    """Collect cfg.episodes episodes, cycling through cfg.tasks; returns a summary."""
    from tqdm import tqdm

    from specvla_ros.core.safety.kinematics import ArmKinematics
    from specvla_ros.sim.expert import ScriptedExpert
    from specvla_ros.sim.task_env import TaskEnv

    cfg.out.mkdir(parents=True, exist_ok=True)
    kin = ArmKinematics.from_urdf()
    env = TaskEnv(cfg.tasks[0], seed=cfg.seed, image_size=cfg.image_size)
    expert = ScriptedExpert(env)
    policy = None
    if cfg.policy_dir is not None:
        from specvla_ros.core.policy import Policy, PolicyConfig

        draft = cfg.policy_draft_dir
        policy = Policy(PolicyConfig(target_dir=str(cfg.policy_dir), draft_dir=draft,
                                     drafter="model" if draft else "none", device="cpu",
                                     control_period_s=env.config.control_period_s))
    all_actions, all_proprio = [], []
    per_task = {t: {"episodes": 0, "success": 0, "collision": 0, "steps": 0} for t in cfg.tasks}
    written = ik_failures = 0
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.episodes), desc="collect", unit="ep", disable=not cfg.progress)
    for i in bar:
        task = cfg.tasks[i % len(cfg.tasks)]
        env.reset(seed=cfg.seed + i, task=task)
        ep = run_episode(env, expert, kin, hold_steps=cfg.hold_steps, exec_noise_m=cfg.exec_noise_m,
                         detour_steps=cfg.detour_steps, policy=policy, policy_beta=cfg.policy_beta,
                         chunk_horizon=cfg.chunk_horizon)
        ik_failures += ep.ik_failures
        stats = per_task[task]
        stats["episodes"] += 1
        stats["success"] += int(env.success_ever)
        stats["collision"] += int(bool(env.episode_collisions))
        stats["steps"] += len(ep.actions)
        if env.success_ever or cfg.keep_failures or policy is not None:
            save_episode(cfg.out / f"episode_{written:05d}.npz", ep, env)
            written += 1
            all_actions.append(np.stack(ep.actions))
            all_proprio.append(np.stack(ep.proprio))
        done = sum(s["episodes"] for s in per_task.values())
        ok = sum(s["success"] for s in per_task.values())
        bar.set_postfix(success=f"{ok / done:.0%}", written=written)
    env.close()
    if written == 0:
        raise RuntimeError("the expert succeeded in no episode; nothing written")
    for stats in per_task.values():
        n = max(stats["episodes"], 1)
        stats["success_rate"] = stats["success"] / n
        stats["mean_steps"] = stats["steps"] / n
    write_statistics(cfg.out, np.concatenate(all_actions), np.concatenate(all_proprio), written, per_task)
    return {"written": written, "episodes": cfg.episodes, "per_task": per_task, "ik_failures": ik_failures,
            "transitions": int(sum(len(a) for a in all_actions)), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes to run")
    parser.add_argument("--tasks", default="reach,push,pick", help="comma-separated task families (cycled)")
    parser.add_argument("--seed", type=int, default=0, help="layout seed of the first episode")
    parser.add_argument("--image-size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    parser.add_argument("--hold-steps", type=int, default=2, help="holding-still steps recorded once the task is settled (success with a margin)")
    parser.add_argument("--exec-noise", type=float, default=0.004,
                        help="std of the noise on executed TCP translation [m] (0 = none)")
    parser.add_argument("--detour-steps", type=int, default=0,
                        help="up to this many first steps execute random moves (expert actions recorded)")
    parser.add_argument("--policy", default=None,
                        help="DAgger: this target checkpoint drives (expert actions recorded)")
    parser.add_argument("--policy-draft", default=None,
                        help="with --policy: its draft model (exact speculative decoding, same actions)")
    parser.add_argument("--policy-beta", type=float, default=0.3,
                        help="with --policy: probability per step that the expert drives instead")
    parser.add_argument("--chunk-horizon", type=int, default=1,
                        help="also record the expert's next H actions at every step (action-chunk labels)")
    parser.add_argument("--keep-failures", action="store_true", help="also write failed episodes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        cfg = CollectConfig(out=args.out, episodes=args.episodes,
                            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
                            seed=args.seed, image_size=tuple(args.image_size), hold_steps=args.hold_steps,
                            keep_failures=args.keep_failures, exec_noise_m=args.exec_noise,
                            detour_steps=args.detour_steps, policy_dir=args.policy, policy_draft_dir=args.policy_draft,
                            policy_beta=args.policy_beta, chunk_horizon=args.chunk_horizon,
                            progress=not args.no_progress)
    except ValueError as exc:
        parser.error(str(exc))
    summary = collect(cfg)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
