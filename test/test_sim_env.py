"""TaskEnv: real MuJoCo physics and rendering of the Panda workcell."""
from __future__ import annotations

import numpy as np
import pytest

from specvla_ros.core.types import RobotState
from specvla_ros.sim import scene
from specvla_ros.sim.language import TASKS
from specvla_ros.sim.task_env import TaskEnv, TaskEnvConfig
from specvla_ros.sim.tasks import MAX_STEPS, sample_layout


@pytest.fixture(scope="module")
def env() -> TaskEnv:
    e = TaskEnv("reach", seed=0, image_size=(96, 128))
    yield e
    e.close()


def test_render_shape_dtype_and_content(env: TaskEnv) -> None:
    env.reset(seed=1, task="reach")
    img = env.render()
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8
    # a real scene, not a blank buffer: many distinct colours, table pixels dominate
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    # the named object's colour is visible (red channel dominant pixels for a red object)
    assert img.std() > 10


def test_object_colour_is_rendered(env: TaskEnv) -> None:
    env.reset(seed=0, task="pick")
    color = env.layout.target.color
    img = env.render().astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    masks = {"red": (r > 150) & (g < 80) & (b < 80), "green": (g > 120) & (r < 90) & (b < 90),
             "blue": (b > 150) & (r < 80) & (g < 110), "yellow": (r > 150) & (g > 130) & (b < 70)}
    assert masks[color].sum() >= 4


def test_reset_is_deterministic_for_a_seed(env: TaskEnv) -> None:
    def rollout(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        env.reset(seed=seed, task="push")
        q = env.robot_state().q + np.array([0.2, 0.1, -0.1, 0.1, 0.0, 0.0, 0.0])
        env.command(q, 0.0)
        for _ in range(3):
            env.step_control()
        return env.robot_state().q, env.target_position(), env.render()

    q1, p1, im1 = rollout(7)
    rollout(8)  # something different in between
    q2, p2, im2 = rollout(7)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(im1, im2)


def test_layouts_differ_between_seeds_and_match_the_instruction() -> None:
    layouts = [sample_layout("pick", s) for s in range(10)]
    assert len({lay.target.xy for lay in layouts}) == 10
    for lay in layouts:
        assert lay.instruction == f"pick up the {lay.target.color} {lay.target.shape}"
        colors = [o.color for o in lay.objects]
        assert len(colors) == len(set(colors)) >= 3  # colour names the object uniquely
        xy = np.array([o.xy for o in lay.objects])
        dists = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy))
        assert dists.min() >= 0.1 - 1e-9


def test_joint_servo_tracks_a_command(env: TaskEnv) -> None:
    env.reset(seed=2, task="reach")
    q0 = env.robot_state().q
    target = q0 + np.array([0.15, -0.1, 0.1, 0.1, -0.1, 0.1, 0.2])
    env.command(target, 0.02)
    for _ in range(3):
        env.step_control()
    state = env.robot_state()
    assert isinstance(state, RobotState)
    np.testing.assert_allclose(state.q, target, atol=0.01)
    assert abs(state.gripper - 0.02) < 0.004
    assert env.steps == 3 and env.time == pytest.approx(0.6)


def test_rejects_bad_commands(env: TaskEnv) -> None:
    with pytest.raises(ValueError, match="q_target"):
        env.command(np.zeros(6), 0.04)
    with pytest.raises(ValueError, match="q_target"):
        env.command(np.full(7, np.nan), 0.04)
    with pytest.raises(ValueError, match="image_size"):
        TaskEnvConfig(image_size=(0, 128))
    with pytest.raises(ValueError, match="unknown task"):
        env.reset(seed=0, task="dance")


def test_table_collision_is_detected(env: TaskEnv) -> None:
    env.reset(seed=0, task="reach")
    assert env.collisions == []
    q = env.robot_state().q
    q[1] = 0.9  # shoulder forward: the hand goes through the table top
    env.command(q, 0.08)
    env.step_control()
    assert any("table" in pair for pair in env.collisions)
    assert any("table" in pair for pair in env.episode_collisions)


def test_resting_arm_has_no_collisions(env: TaskEnv) -> None:
    for task in TASKS:
        env.reset(seed=3, task=task)
        env.command(env.robot_state().q, 0.0)  # closing the fingers: finger-finger is fine
        for _ in range(3):
            env.step_control()
        assert env.collisions == [], task


def test_do_nothing_fails_every_task(env: TaskEnv) -> None:
    for task in TASKS:
        env.reset(seed=4, task=task)
        hold = env.robot_state().q
        for _ in range(5):
            env.command(hold, 0.08)
            env.step_control()
        assert not env.success and not env.success_ever, task


def test_success_is_judged_from_object_state(env: TaskEnv) -> None:
    import mujoco

    env.reset(seed=5, task="pick")
    assert not env.success
    slot = list(scene.COLORS).index(env.layout.target.color)
    adr = int(env.ids.slot_qpos[slot])
    env.data.qpos[adr + 2] += 0.1  # the cube is up in the air
    mujoco.mj_forward(env.model, env.data)
    assert env.success

    env.reset(seed=5, task="push")
    assert not env.success
    slot = list(scene.COLORS).index(env.layout.target.color)
    adr = int(env.ids.slot_qpos[slot])
    env.data.qpos[adr:adr + 2] = env.layout.goal_xy
    mujoco.mj_forward(env.model, env.data)
    assert env.success


def test_success_report_gives_the_measurement_against_its_threshold() -> None:
    from specvla_ros.sim.tasks import reach_point, success_report

    pick = sample_layout("pick", 3)
    rest = np.array([*pick.target.xy, pick.target.rest_z])
    name = pick.target.phrase
    assert success_report(pick, np.zeros(3), rest + [0, 0, 0.012]) == f"{name} raised 1.2 cm (needs > 5.0)"
    push = sample_layout("push", 3)
    at = np.array([push.goal_xy[0] + 0.03, push.goal_xy[1] + 0.04, push.target.rest_z])  # 5 cm away
    assert success_report(push, np.zeros(3), at).endswith("5.0 cm from the target centre (needs < 3.5)")
    assert "off the table" in success_report(push, np.zeros(3), at + [0, 0, 0.02])
    reach = sample_layout("reach", 3)
    obj = np.array([*reach.target.xy, reach.target.rest_z])
    tcp = reach_point(obj, reach.target) + [0.0, 0.0, 0.045]
    assert success_report(reach, tcp, obj).startswith("gripper 4.5 cm from the point above the ")


def test_step_budgets_are_short() -> None:
    assert MAX_STEPS["reach"] <= 30 and MAX_STEPS["push"] <= 60 and MAX_STEPS["pick"] <= 60
