"""Known scene objects in the safety gate: a box refuses a command that passes
without it, the task's object may be touched by the gripper only, lists
replace each other and expire, bad objects are refused with a clear message,
and the simulator's objects (the one conversion the sim node and the direct
evaluation share) stop the arm before it hits a distractor."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from specvla_ros.core.safety import gate as safety_gate_module
from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.core.safety.kinematics import ArmKinematics
from specvla_ros.core.safety.config import SafetyConfig, load_safety_config
from specvla_ros.core.safety.gate import SafetyGate
from specvla_ros.core.types import RobotState, SafetyStatus

HOME_Q = np.array([0.0, -0.05, 0.0, -2.35, 0.0, 2.3, np.pi / 4])  # TCP (0.496, 0, 0.248), fingers down
DT = 0.2
DOWN = np.array([0.0, 0.0, -0.04, 0.0, 0.0, 0.0, 1.0])  # 4 cm down in one step (0.2 m/s), fingers open
# 10 cm wide, its top 2.5 cm under the open fingertips: the step down drives the fingers 1 cm into it
BLOCK = dict(center=(0.496, 0.0, 0.20), size=(0.1, 0.1, 0.04))
# a tower under the hand reaching up to just below link7: the hand may touch it, link7 may not
TOWER = dict(center=(0.496, 0.0, 0.15), size=(0.06, 0.06, 0.30))


@pytest.fixture(scope="module")
def kin() -> ArmKinematics:
    return ArmKinematics.from_urdf()


@pytest.fixture
def gate(kin: ArmKinematics) -> SafetyGate:
    # what is detected: the gate halts instead of sliding (the slide has its own tests)
    return SafetyGate(load_safety_config(slide_along_obstacles=False), kin)


def _state(q: np.ndarray = HOME_Q) -> RobotState:
    return RobotState(q=np.asarray(q, dtype=float), gripper=0.08)


def test_object_in_the_way_refuses_a_command_that_passes_without_it(gate: SafetyGate) -> None:
    assert gate.check(DOWN, _state(), DT).status == SafetyStatus.OK
    gate.set_scene_objects([SceneObject("block", **BLOCK)])
    v = gate.check(DOWN, _state(), DT)
    assert v.status == SafetyStatus.HALT_COLLISION, v.reason
    assert "'block'" in v.reason and "finger" in v.reason
    assert v.min_distance < 0.0  # the fingers would be inside it
    np.testing.assert_array_equal(v.joint_command, HOME_Q)  # a hold
    # a shorter step that stays clear of it is fine, and moving away always is
    assert gate.check(DOWN * [1, 1, 0.25, 1, 1, 1, 1], _state(), DT).status == SafetyStatus.OK
    assert gate.check(-DOWN * [1, 1, 1, 1, 1, 1, -1], _state(), DT).status == SafetyStatus.OK
    gate.clear_scene_objects()
    assert gate.scene_objects == ()
    assert gate.check(DOWN, _state(), DT).status == SafetyStatus.OK


def test_gripper_may_touch_the_task_object_but_the_forearm_may_not(gate: SafetyGate) -> None:
    gate.set_scene_objects([SceneObject("cube", **BLOCK, gripper_may_touch=True)])
    v = gate.check(DOWN, _state(), DT)
    assert v.status == SafetyStatus.OK, v.reason
    # the same object, taller: the fingers and hand may enter it, link7 may not
    gate.set_scene_objects([SceneObject("tower", **TOWER, gripper_may_touch=True)])
    v = gate.check(DOWN, _state(), DT)
    assert v.status == SafetyStatus.HALT_COLLISION, v.reason
    assert "panda_link7" in v.reason and "'tower'" in v.reason
    # pairs of the gripper links with the task object are not even computed
    d = gate.scene.distances(HOME_Q)
    assert d.object_pair[0] not in gate.config.gripper_links


def test_a_new_list_replaces_the_old_one(gate: SafetyGate) -> None:
    far = SceneObject("far_ball", (0.4, 0.3, 0.022), (0.044, 0.044, 0.044))
    gate.set_scene_objects([SceneObject("block", **BLOCK)])
    gate.set_scene_objects([far])
    assert gate.scene_objects == (far,)
    v = gate.check(DOWN, _state(), DT)
    assert v.status == SafetyStatus.OK and math.isfinite(v.min_distance)
    assert gate.scene.distances(HOME_Q).object_pair[1] == "far_ball"
    # the pool does not keep a stale box in a slot a shorter list leaves empty
    gate.set_scene_objects([far, SceneObject("block", **BLOCK)])
    assert gate.check(DOWN, _state(), DT).status == SafetyStatus.HALT_COLLISION
    gate.set_scene_objects([far])
    assert gate.check(DOWN, _state(), DT).status == SafetyStatus.OK


def test_more_objects_than_slots_grow_the_pool(kin: ArmKinematics) -> None:
    gate = SafetyGate(load_safety_config(scene_object_slots=2, slide_along_obstacles=False), kin)
    assert gate.scene.object_slots == 2
    many = [SceneObject(f"ball{i}", (0.3 + 0.05 * i, -0.3, 0.022), (0.044,) * 3) for i in range(5)]
    gate.set_scene_objects([*many, SceneObject("block", **BLOCK)])  # the one in the way comes last
    assert gate.scene.object_slots >= 6
    assert gate.check(DOWN, _state(), DT).status == SafetyStatus.HALT_COLLISION


def test_objects_given_a_validity_expire(gate: SafetyGate, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(safety_gate_module.time, "monotonic", lambda: now[0])
    gate.set_scene_objects([SceneObject("block", **BLOCK)], valid_for_s=0.5)
    assert gate.check(DOWN, _state(), DT).status == SafetyStatus.HALT_COLLISION
    now[0] += 0.6
    assert gate.check(DOWN, _state(), DT).status == SafetyStatus.OK
    assert gate.scene_objects == () and gate.objects_expired == 1
    with pytest.raises(ValueError, match="valid_for_s"):
        gate.set_scene_objects([], valid_for_s=float("nan"))


def test_wrong_entries_are_refused_and_the_previous_list_stays(gate: SafetyGate) -> None:
    block = SceneObject("block", **BLOCK)
    gate.set_scene_objects([block])
    with pytest.raises(TypeError, match="SceneObject"):
        gate.set_scene_objects([block, {"name": "dict"}])  # type: ignore[list-item]
    assert gate.scene_objects == (block,)
    assert gate.check(DOWN, _state(), DT).status == SafetyStatus.HALT_COLLISION


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="", center=(0.5, 0, 0), size=(0.1, 0.1, 0.1)), "non-empty name"),
    (dict(name="a", center=(float("nan"), 0, 0), size=(0.1, 0.1, 0.1)), "not finite"),
    (dict(name="a", center=(0.5, 0, float("inf")), size=(0.1, 0.1, 0.1)), "not finite"),
    (dict(name="a", center=(0.5, 0, 0), size=(0.1, -0.1, 0.1)), "must be finite, > 0"),
    (dict(name="a", center=(0.5, 0, 0), size=(0.1, 0.0, 0.1)), "must be finite, > 0"),
    (dict(name="a", center=(0.5, 0, 0), size=(0.1, 0.1, 50.0)), "must be finite, > 0"),
    (dict(name="a", center=(0.5, 0), size=(0.1, 0.1, 0.1)), "3 values"),
    (dict(name="a", center=(0.5, "x", 0), size=(0.1, 0.1, 0.1)), "3 numbers"),
])
def test_scene_object_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SceneObject(**kwargs)


def test_config_settings_are_validated_and_loaded(kin: ArmKinematics, tmp_path: Path) -> None:
    base = load_safety_config()
    assert base.min_object_distance == pytest.approx(0.002)
    assert base.gripper_links == ("panda_hand", "panda_leftfinger", "panda_rightfinger")
    jl = base.joint_limits
    with pytest.raises(ValueError, match="min_object_distance"):
        SafetyConfig(joint_limits=jl, min_object_distance=-0.01)
    with pytest.raises(ValueError, match="scene_object_slots"):
        SafetyConfig(joint_limits=jl, scene_object_slots=-1)
    with pytest.raises(ValueError, match="gripper_links"):
        SafetyGate(SafetyConfig(joint_limits=jl, gripper_links=("panda_claw",)), kin)
    assert base.slide_along_obstacles is True
    text = Path(base.source).read_text().replace("min_object_distance: 0.002", "min_object_distance: 0.03")
    text = text.replace("slide_along_obstacles: true", "slide_along_obstacles: false")
    (tmp_path / "safety.yaml").write_text(text)
    (tmp_path / "panda_joint_limits.yaml").write_text((Path(base.source).parent / "panda_joint_limits.yaml").read_text())
    cfg = load_safety_config(tmp_path / "safety.yaml")
    assert cfg.min_object_distance == pytest.approx(0.03) and cfg.slide_along_obstacles is False
    # a larger margin refuses what the default allows: the hand 10 cm above a box top
    gate = SafetyGate(cfg, kin)
    gate.set_scene_objects([SceneObject("block", (0.496, 0.0, 0.185), (0.1, 0.1, 0.04))])
    assert SafetyGate(base, kin).check(DOWN * [1, 1, 0.5, 1, 1, 1, 1], _state(), DT).status == SafetyStatus.OK
    assert gate.check(DOWN * [1, 1, 0.5, 1, 1, 1, 1], _state(), DT).status == SafetyStatus.HALT_COLLISION


def test_without_collision_checking_objects_are_kept_but_not_checked(kin: ArmKinematics) -> None:
    gate = SafetyGate(load_safety_config(collision_enabled=False), kin)
    gate.set_scene_objects([SceneObject("block", **BLOCK)])
    assert len(gate.scene_objects) == 1
    assert gate.check(DOWN, _state(), DT).status == SafetyStatus.OK


# --------------------------------------------------------------------------- the simulator's objects


@pytest.fixture(scope="module")
def env():
    pytest.importorskip("mujoco")
    from specvla_ros.sim.task_env import TaskEnv

    env = TaskEnv("push", seed=4, image_size=(16, 16))
    yield env
    env.close()


def test_task_scene_objects_match_the_layout(env) -> None:
    from specvla_ros.sim.known_objects import task_scene_objects

    env.reset(seed=4, task="push")
    objects = task_scene_objects(env)
    layout = env.layout
    assert [o.name for o in objects] == [f"{s.color}_{s.shape}" for s in layout.objects]
    assert [o.gripper_may_touch for o in objects] == [True] + [False] * len(layout.distractors)
    for o, spec in zip(objects, layout.objects):
        np.testing.assert_allclose(o.center[:2], spec.xy, atol=0.005)
        assert o.center[2] == pytest.approx(spec.rest_z, abs=0.003)
        half = 0.022 if spec.shape in ("cube", "ball") else 0.032
        assert max(o.size) == pytest.approx(2 * half, abs=0.003)  # resting upright: its own box


def _hover_over_a_distractor(env, kin: ArmKinematics, seed: int, height: float):
    """A push layout with the closed gripper brought to ``height`` [m] above its first distractor
    (contacts so far forgotten); -> that distractor."""
    env.reset(seed=seed, task="push")
    victim = env.layout.distractors[0]
    _, R = kin.fk(HOME_Q)
    above = kin.ik(np.array([victim.xy[0], victim.xy[1], height]), R, env.robot_state().q)
    assert above.success
    env.command(above.q, 0.0)
    for _ in range(5):
        env.step_control()
    env.episode_collisions.clear()
    return victim


def test_gate_with_the_sim_objects_stops_the_arm_before_a_distractor(env, kin: ArmKinematics) -> None:
    """Drive the closed gripper down onto a distractor: without objects the gate
    lets it through and the simulator records the collision; with them it holds
    first (the gate's fingers are locked open: the box between them catches it)."""
    from specvla_ros.sim.known_objects import task_scene_objects

    outcomes = {}
    for with_objects in (False, True):
        victim = _hover_over_a_distractor(env, kin, seed=4, height=0.16)
        gate = SafetyGate(load_safety_config(slide_along_obstacles=False), kin)
        statuses = []
        for _ in range(6):
            gate.set_scene_objects(task_scene_objects(env) if with_objects else [])
            v = gate.check(DOWN * [1, 1, 1, 1, 1, 1, 0], env.robot_state(), DT)  # gripper closed
            statuses.append(v.status)
            env.command(v.joint_command, v.gripper_command)
            env.step_control()
        label = f"{victim.color}_{victim.shape}"
        outcomes[with_objects] = (statuses, any(label in pair for pair in env.episode_collisions))
    statuses, hit = outcomes[False]
    assert hit and SafetyStatus.HALT_COLLISION not in statuses, outcomes
    statuses, hit = outcomes[True]
    assert not hit and SafetyStatus.HALT_COLLISION in statuses, outcomes


def test_space_between_the_locked_open_fingers_counts_against_objects(kin: ArmKinematics) -> None:
    # a 4.4 cm cube fits between the model's open fingers (8 cm); the real gripper may be closed
    cube = SceneObject("cube", (0.496, 0.0, 0.19), (0.044, 0.044, 0.044))
    gate = SafetyGate(load_safety_config(slide_along_obstacles=False), kin)
    gate.set_scene_objects([cube])
    v = gate.check(DOWN, _state(), DT)
    assert v.status == SafetyStatus.HALT_COLLISION and "panda_finger_gap" in v.reason, v.reason
    no_gap = SafetyGate(load_safety_config(finger_links=()), kin)
    no_gap.set_scene_objects([cube])
    assert no_gap.check(DOWN, _state(), DT).status == SafetyStatus.OK
    # the table is unaffected by the gap box: the same pairs as before
    assert gate.scene.distances(HOME_Q).obstacle == pytest.approx(no_gap.scene.distances(HOME_Q).obstacle)


def test_with_the_slide_the_arm_gets_around_a_distractor_without_touching_it(env, kin: ArmKinematics) -> None:
    """Asked to move down and sideways from above a distractor (gripper closed), the halting gate
    stops the arm on top of it for good; the sliding gate moves it along the top, past the edge and
    down beside it -- in most layouts: the slide is local, and a hand wedged between two objects can
    still be held -- and the simulator records no contact with it either way."""
    from specvla_ros.sim.known_objects import task_scene_objects

    around = 0
    seeds = range(5, 11)
    for seed in seeds:
        for slide in (False, True):
            victim = _hover_over_a_distractor(env, kin, seed=seed, height=0.12)
            gate = SafetyGate(load_safety_config(slide_along_obstacles=slide), kin)
            label = f"{victim.color}_{victim.shape}"
            top = max(o.center[2] + o.size[2] / 2 for o in task_scene_objects(env) if o.name == label)
            statuses = []
            for _ in range(14):
                gate.set_scene_objects(task_scene_objects(env))
                v = gate.check(np.array([0.0, 0.02, -0.03, 0.0, 0.0, 0.0, 0.0]), env.robot_state(), DT)
                statuses.append(v.status)
                env.command(v.joint_command, v.gripper_command)
                env.step_control()
            tcp = kin.fk(env.robot_state().q)[0]
            assert not any(label in pair for pair in env.episode_collisions), (seed, slide, env.episode_collisions)
            if not slide:
                assert statuses[-1] == SafetyStatus.HALT_COLLISION and tcp[2] > top, (seed, statuses)
            elif tcp[2] < top and SafetyStatus.HALT_COLLISION not in statuses:
                around += 1  # past the edge and down beside it, never held by a collision
    assert around >= len(seeds) - 1, around


def test_a_step_whose_ends_are_clear_but_whose_path_crosses_an_object_is_caught(kin: ArmKinematics) -> None:
    """Joint 1 turns 0.7 rad in one step: the fingers sweep an arc through a cube that is far from
    both ends. The controller interpolates the joints, so the path is checked, not only the target;
    a slid command's whole path keeps the margin too (a sweep this long is more than the path
    sampling takes: it cannot be shown clear, so it holds)."""
    dt = 0.5
    overrides = dict(action_space="joint_delta", action_low=(-1.0,) * 7, action_high=(1.0,) * 7,
                     tcp_max_speed=2.0, tcp_max_angular_speed=10.0)
    r = float(np.linalg.norm(kin.fk(HOME_Q)[0][:2]))
    cube = SceneObject("cube", (r * np.cos(0.35), r * np.sin(0.35), 0.25), (0.03, 0.03, 0.03))
    action = np.array([0.7, 0, 0, 0, 0, 0, 0])
    halting = SafetyGate(load_safety_config(slide_along_obstacles=False, **overrides), kin)
    halting.set_scene_objects([cube])
    lim = halting.config.min_object_distance
    assert halting.scene.distances(HOME_Q).object > 0.05 and halting.scene.distances(HOME_Q + action).object > 0.05
    v = halting.check(action, _state(), dt)
    assert v.status == SafetyStatus.HALT_COLLISION and "way to the target" in v.reason, v.reason
    # sliding: whatever it commands keeps the margin along the whole interpolated path
    sliding = SafetyGate(load_safety_config(**overrides), kin)
    sliding.set_scene_objects([cube])
    for turn in (0.3, 0.4, 0.5, 0.6, 0.7):
        v = sliding.check(np.array([turn, 0, 0, 0, 0, 0, 0]), _state(), dt)
        if v.is_halt:
            assert v.status == SafetyStatus.HALT_COLLISION, v.reason
            continue
        path = [HOME_Q + t * (v.joint_command - HOME_Q) for t in np.linspace(0.0, 1.0, 81)]
        assert min(sliding.scene.distances(q).object for q in path) >= lim - 5e-4, (turn, v.reason)


def test_an_object_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="from the base"):
        SceneObject("far", (1e300, 0.0, 0.0), (0.05, 0.05, 0.05))
    with pytest.raises(ValueError, match="from the base"):
        SceneObject("far", (11.0, 0.0, 0.0), (0.05, 0.05, 0.05))
