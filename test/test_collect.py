"""collect: writes valid demonstration episodes and normalisation statistics."""
from __future__ import annotations

import json

import numpy as np
import pytest

from specvla_ros.core.models.action_tokenizer import load_norm_stats
from specvla_ros.sim.language import task_language_corpus
from specvla_ros.train.collect import DATASET_KEY, STATS_FILE, CollectConfig, collect, main


def test_collect_writes_valid_episodes(tmp_path) -> None:
    out = tmp_path / "demos"
    summary = collect(CollectConfig(out=out, episodes=3, seed=100, image_size=(64, 64), progress=False))
    files = sorted(out.glob("episode_*.npz"))
    assert [f.name for f in files] == ["episode_00000.npz", "episode_00001.npz", "episode_00002.npz"]
    assert summary["written"] == 3
    corpus = set(task_language_corpus())
    tasks = []
    for f in files:
        z = np.load(f)
        t = len(z["actions"])
        assert z["images"].shape == (t, 64, 64, 3) and z["images"].dtype == np.uint8
        assert z["proprio"].shape == (t, 8) and z["proprio"].dtype == np.float32
        assert z["actions"].shape == (t, 7) and z["actions"].dtype == np.float32
        assert z["narrations"].shape == (t,) and set(z["narrations"].tolist()) <= corpus
        assert str(z["instruction"]) in corpus
        assert bool(z["success"]) and not bool(z["collision"])
        assert 0.0 <= z["proprio"][:, 7].min() and z["proprio"][:, 7].max() <= 0.0801
        tasks.append(str(z["task"]))
        assert int(z["seed"]) >= 100
    assert tasks == ["reach", "push", "pick"]  # balanced, cycled
    stats = load_norm_stats(out / STATS_FILE, DATASET_KEY)
    assert np.all(stats.q99 >= stats.q01) and stats.mask.tolist() == [True] * 6 + [False]
    data = json.loads((out / STATS_FILE).read_text())[DATASET_KEY]
    assert data["num_trajectories"] == 3 and len(data["proprio"]["mean"]) == 8


def test_collect_is_deterministic(tmp_path) -> None:
    for name in ("a", "b"):
        collect(CollectConfig(out=tmp_path / name, episodes=1, tasks=("push",), seed=5,
                              image_size=(32, 32), progress=False))
    a, b = np.load(tmp_path / "a" / "episode_00000.npz"), np.load(tmp_path / "b" / "episode_00000.npz")
    np.testing.assert_array_equal(a["actions"], b["actions"])
    np.testing.assert_array_equal(a["images"], b["images"])


def test_config_rejects_bad_values(tmp_path) -> None:
    with pytest.raises(ValueError, match="episodes"):
        CollectConfig(out=tmp_path, episodes=0)
    with pytest.raises(ValueError, match="tasks"):
        CollectConfig(out=tmp_path, episodes=1, tasks=("fly",))
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--episodes", "2", "--tasks", "fly"])


def test_detours_leave_the_expert_path_but_record_expert_labels() -> None:
    """detour_steps: the first steps execute random moves, so later states differ from the
    expert's own path, while every recorded action is still the expert's for that state."""
    from specvla_ros.core.safety.kinematics import ArmKinematics
    from specvla_ros.sim.expert import ScriptedExpert
    from specvla_ros.sim.task_env import TaskEnv
    from specvla_ros.train.collect import run_episode

    env = TaskEnv("reach", seed=3, image_size=(64, 64))
    expert, kin = ScriptedExpert(env), ArmKinematics.from_urdf()
    try:
        env.reset(seed=3, task="reach")
        plain = run_episode(env, expert, kin, record_images=False)
        env.reset(seed=3, task="reach")
        detour = run_episode(env, expert, kin, record_images=False, detour_steps=4)
        assert env.success_ever  # the expert recovers from the detour
    finally:
        env.close()
    np.testing.assert_allclose(plain.actions[0], detour.actions[0])  # same start, same expert label
    assert np.abs(plain.proprio[2] - detour.proprio[2]).max() > 1e-3  # the detour moved the arm elsewhere
    assert detour.narrations[0].startswith("moving to")
    with pytest.raises(ValueError, match="detour_steps"):
        CollectConfig(out="x", episodes=1, detour_steps=-1)


def test_dagger_policy_drives_and_the_expert_labels(tiny_checkpoints, tmp_path) -> None:
    """policy_dir: a (random) target drives through the deployed Policy and its gate; the episode is
    written although it fails, and every recorded action is the expert's label for that state."""
    from specvla_ros.core.safety.kinematics import ArmKinematics
    from specvla_ros.sim.tasks import reach_point
    from specvla_ros.sim.expert import MAX_STEP_M
    from specvla_ros.sim.task_env import TaskEnv

    target, _, _ = tiny_checkpoints
    out = tmp_path / "dagger"
    summary = collect(CollectConfig(out=out, episodes=1, tasks=("reach",), seed=7, policy_dir=str(target),
                                    policy_beta=0.0, progress=False))
    z = np.load(out / "episode_00000.npz")
    assert summary["written"] == 1 and not bool(z["success"])  # a random policy fails; kept anyway
    assert bool(z["policy_driven"])  # so load_demos keeps it
    assert len(z["actions"]) == 30  # reach's step limit: the policy drove every step
    # reach labels are stateless: the step toward the hover point from the recorded joints
    kin, env = ArmKinematics.from_urdf(), TaskEnv("reach", seed=7, image_size=(32, 32))
    goal = reach_point(env.target_position(), env.layout.target)
    env.close()
    for q, action in zip(z["proprio"][:, :7], z["actions"]):
        delta = goal - kin.fk(q.astype(np.float64))[0]
        expected = delta * min(1.0, MAX_STEP_M / np.linalg.norm(delta))
        np.testing.assert_allclose(action[:3], expected, atol=2e-3)  # the object may settle slightly
    assert np.ptp(z["proprio"][:, :7], axis=0).max() > 1e-3  # the arm moved under the policy
    with pytest.raises(ValueError, match="policy_beta"):
        CollectConfig(out="x", episodes=1, policy_beta=1.5)
    with pytest.raises(ValueError, match="policy_dir"):
        CollectConfig(out="x", episodes=1, policy_dir=str(tmp_path / "missing"))


def test_chunk_labels_are_the_experts_next_actions(tmp_path) -> None:
    """With chunk_horizon H every step also records the expert's next H actions from that state;
    without execution noise the expert then takes exactly them, so chunk t continues as the
    recorded actions t, t+1, ... (while the episode lasts)."""
    out = tmp_path / "chunks"
    collect(CollectConfig(out=out, episodes=2, tasks=("pick",), seed=40, image_size=(32, 32), exec_noise_m=0.0,
                          chunk_horizon=3, progress=False))
    for path in sorted(out.glob("episode_*.npz")):
        ep = np.load(path)
        actions, chunks = ep["actions"], ep["action_chunks"]
        assert chunks.shape == (len(actions), 3, 7) and chunks.dtype == np.float32
        for t in range(len(actions)):
            n = min(3, len(actions) - t)
            np.testing.assert_array_equal(chunks[t, :n], actions[t : t + n])
    with pytest.raises(ValueError, match="chunk_horizon"):
        CollectConfig(out=tmp_path / "x", episodes=1, chunk_horizon=0)
