"""specvla_sim with real rclpy publishers/subscribers, in-process (discovery OFF),
each test on its own ROS_DOMAIN_ID (40-59)."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import rclpy
import yaml
from rclpy.context import Context
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from specvla_msgs.msg import TaskStatus
from specvla_msgs.srv import ResetEpisode
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ros_harness import Collector, Spinner, wait_until
from specvla_ros.core.safety.kinematics import ArmKinematics, ee_delta_to_joint_target, gripper_action_to_opening
from specvla_ros.core.types import PANDA_JOINT_NAMES
from specvla_ros.ros import qos
from specvla_ros.ros import topics
from specvla_ros.ros.sim_node import SimNode, SimNodeConfig, default_config
from specvla_ros.sim.expert import ScriptedExpert
from specvla_ros.sim.tasks import sample_layout


@contextmanager
def sim_graph(domain_id: int, **params) -> Iterator[tuple[SimNode, rclpy.node.Node, Context]]:
    """A SimNode and a test node in one context, spun by one SingleThreadedExecutor."""
    if not 40 <= domain_id <= 59:
        raise ValueError(f"sim node tests use ROS domain ids 40-59, got {domain_id}")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "OFF"
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    sim = SimNode(context=ctx, parameter_overrides=overrides)
    probe = rclpy.create_node("sim_probe", context=ctx)
    spinner = Spinner(ctx, sim, probe)
    try:
        yield sim, probe, ctx
    finally:
        spinner.stop()
        probe.destroy_node()
        sim.destroy_node()
        ctx.try_shutdown()


def _positions(msg: JointState) -> np.ndarray:
    return np.array([msg.position[msg.name.index(n)] for n in PANDA_JOINT_NAMES])


def test_lockstep_publishes_and_follows_commands() -> None:
    with sim_graph(41, lockstep=True, sim_clock=True, task="reach", seed=3, image_width=64, image_height=48) as (sim, probe, _):
        images = Collector(probe, Image, topics.IMAGE, qos.CAMERA)
        joints = Collector(probe, JointState, topics.JOINT_STATES, qos.JOINT_STATES)
        status = Collector(probe, TaskStatus, topics.SIM_STATUS, qos.STATUS)
        instruction = Collector(probe, String, topics.INSTRUCTION, qos.LATCHED)
        clock = Collector(probe, Clock, topics.CLOCK, 10)
        forward = probe.create_publisher(Float64MultiArray, topics.FORWARD, qos.COMMAND)
        gripper = probe.create_publisher(Float64MultiArray, topics.GRIPPER, qos.COMMAND)

        got = instruction.wait_for(timeout=10.0)
        assert got is not None and got[1].data == sample_layout("reach", 3).instruction
        got = images.wait_for(timeout=10.0)
        assert got is not None
        img = got[1]
        assert (img.height, img.width, img.encoding, len(img.data)) == (48, 64, "rgb8", 48 * 64 * 3)
        got = joints.wait_for(timeout=10.0)
        assert got is not None
        msg = got[1]
        assert list(msg.name[:7]) == list(PANDA_JOINT_NAMES)
        assert msg.name[7:] == ["panda_finger_joint1", "panda_finger_joint2"]
        q0 = _positions(msg)
        assert wait_until(lambda: forward.get_subscription_count() > 0 and gripper.get_subscription_count() > 0)

        target = q0 + np.array([0.1, 0.05, 0.0, 0.05, 0.0, 0.0, 0.0])
        t0 = time.monotonic()
        gripper.publish(Float64MultiArray(data=[0.01]))  # finger position: opening 0.02 m
        forward.publish(Float64MultiArray(data=target.tolist()))
        got = status.wait_for(lambda m: m.step == 1, timeout=10.0)
        assert got is not None and not got[1].done and got[1].task == "reach"
        for _ in range(3):  # two more lockstep steps toward the same target
            step = sim.env.steps
            forward.publish(Float64MultiArray(data=target.tolist()))
            assert status.wait_for(lambda m, s=step: m.step == s + 1, timeout=10.0) is not None
        last = joints.wait_for(lambda m: np.allclose(_positions(m), target, atol=0.01), timeout=10.0, after=t0)
        assert last is not None
        opening = last[1].position[7] + last[1].position[8]
        assert abs(opening - 0.02) < 0.005
        # sim time advanced one control period per command, and the clock says so
        assert sim.env.time == pytest.approx(4 * 0.2)
        assert clock.wait_for(lambda m: abs(m.clock.sec + m.clock.nanosec * 1e-9 - 0.8) < 1e-6) is not None


def test_lockstep_resends_an_unchanged_observation_with_its_own_stamps() -> None:
    """Waiting for a command, the lockstep simulator resends the last frame and joint state (one may
    have been lost) with the stamps they were taken with: a frame resent later must not look newer
    to a policy (it would decide again from a world its last command has not moved yet)."""
    with sim_graph(47, lockstep=True, task="reach", seed=5, image_width=32, image_height=32,
                   camera_rate=20.0) as (sim, probe, _):
        images = Collector(probe, Image, topics.IMAGE, qos.CAMERA)
        joints = Collector(probe, JointState, topics.JOINT_STATES, qos.JOINT_STATES)
        assert wait_until(lambda: len(images.msgs) >= 4 and len(joints.msgs) >= 4, timeout=20.0)
        stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in images.msgs}
        assert len(stamps) == 1 and next(iter(stamps)) != (0, 0)
        assert len({(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in joints.msgs}) == 1
        assert len({bytes(m.data) for _, m in images.msgs}) == 1
        # a command steps the world: the next frame is new, with a later stamp
        forward = probe.create_publisher(Float64MultiArray, topics.FORWARD, qos.COMMAND)
        assert wait_until(lambda: forward.get_subscription_count() > 0)
        t0 = time.monotonic()
        forward.publish(Float64MultiArray(data=sim.env.robot_state().q.tolist()))
        got = images.wait_for(lambda m: (m.header.stamp.sec, m.header.stamp.nanosec) not in stamps,
                              timeout=10.0, after=t0)
        assert got is not None and sim.env.steps == 1


def test_trajectory_command_with_reordered_joints_and_bad_commands_ignored() -> None:
    with sim_graph(42, lockstep=True, task="pick", seed=1, image_width=32, image_height=32) as (sim, probe, _):
        status = Collector(probe, TaskStatus, topics.SIM_STATUS, qos.STATUS)
        traj = probe.create_publisher(JointTrajectory, topics.TRAJECTORY, qos.COMMAND)
        forward = probe.create_publisher(Float64MultiArray, topics.FORWARD, qos.COMMAND)
        assert wait_until(lambda: traj.get_subscription_count() > 0 and forward.get_subscription_count() > 0)
        q0 = sim.env.robot_state().q
        forward.publish(Float64MultiArray(data=[0.0, 1.0]))  # wrong length: ignored, no step
        target = q0 + np.array([-0.1, 0.0, 0.1, 0.0, 0.1, 0.0, -0.1])
        names = list(reversed(PANDA_JOINT_NAMES))
        point = JointTrajectoryPoint(positions=[float(target[PANDA_JOINT_NAMES.index(n)]) for n in names])
        for _ in range(3):
            step = sim.env.steps
            traj.publish(JointTrajectory(joint_names=names, points=[point]))
            assert status.wait_for(lambda m, s=step: m.step == s + 1, timeout=10.0) is not None
        assert sim.env.steps == 3  # the malformed command did not step the simulation
        np.testing.assert_allclose(sim.env.robot_state().q, target, atol=0.01)


def test_reset_service_and_expert_closed_loop_over_topics() -> None:
    """Reset to a pick episode over the service, then drive the arm over ROS
    topics with the scripted expert's actions (through the gate's IK): the
    status reports success, no collision, done."""
    with sim_graph(43, lockstep=True, task="reach", seed=0, image_width=32, image_height=32) as (sim, probe, _):
        status = Collector(probe, TaskStatus, topics.SIM_STATUS, qos.STATUS)
        instruction = Collector(probe, String, topics.INSTRUCTION, qos.LATCHED)
        client = probe.create_client(ResetEpisode, topics.SIM_RESET)
        assert client.wait_for_service(timeout_sec=10.0)

        bad = client.call(ResetEpisode.Request(task="juggle", seed=1), timeout_sec=30.0)
        assert bad is not None and not bad.success and "unknown task" in bad.message

        resp = client.call(ResetEpisode.Request(task="pick", seed=9), timeout_sec=30.0)
        assert resp is not None and resp.success
        assert resp.instruction == sample_layout("pick", 9).instruction
        assert instruction.wait_for(lambda m: m.data == resp.instruction, timeout=10.0) is not None
        first = status.wait_for(lambda m: m.episode == 1 and m.task == "pick" and m.step == 0)
        assert first is not None and "raised 0.0 cm (needs > 5.0)" in first[1].progress  # why it is not done yet

        traj = probe.create_publisher(JointTrajectory, topics.TRAJECTORY, qos.COMMAND)
        gripper = probe.create_publisher(Float64MultiArray, topics.GRIPPER, qos.COMMAND)
        assert wait_until(lambda: traj.get_subscription_count() > 0 and gripper.get_subscription_count() > 0)
        kin = ArmKinematics.from_urdf()
        expert = ScriptedExpert(sim.env)
        expert.reset()
        final = None
        for _ in range(sim.env.max_steps):
            step = sim.env.steps
            # lockstep: the simulation waits for our command, so reading its state here is safe
            action, _ = expert.act()
            result = ee_delta_to_joint_target(kin, sim.env.robot_state().q, action)
            gripper.publish(Float64MultiArray(data=[gripper_action_to_opening(float(action[6])) / 2]))
            traj.publish(JointTrajectory(joint_names=list(PANDA_JOINT_NAMES),
                                         points=[JointTrajectoryPoint(positions=result.q.tolist())]))
            got = status.wait_for(lambda m, s=step: m.episode == 1 and m.step == s + 1, timeout=10.0)
            assert got is not None
            final = got[1]
            if final.done:
                break
        assert final is not None and final.done and final.success and not final.collision
        assert final.collision_bodies == []


def test_realtime_mode_runs_the_clock_and_camera() -> None:
    with sim_graph(44, lockstep=False, sim_clock=True, real_time_factor=0.0, task="push", seed=2, image_width=32,
                   image_height=32, camera_rate=20.0) as (sim, probe, _):
        images = Collector(probe, Image, topics.IMAGE, qos.CAMERA)
        clock = Collector(probe, Clock, topics.CLOCK, 10)
        status = Collector(probe, TaskStatus, topics.SIM_STATUS, qos.STATUS)
        # the sim advances by itself: the clock passes 1 s without any command
        assert clock.wait_for(lambda m: m.clock.sec >= 1, timeout=60.0) is not None
        assert status.wait_for(lambda m: m.step >= 5, timeout=60.0) is not None
        assert wait_until(lambda: len(images.msgs) >= 3, timeout=60.0)
        stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in images.msgs]
        assert all(b > a for a, b in zip(stamps, stamps[1:]))  # sim-time stamps move forward


def test_bad_parameters_are_rejected_with_their_name() -> None:
    with pytest.raises(ValueError, match="task"):
        SimNodeConfig(task="juggle")
    with pytest.raises(ValueError, match="camera_rate"):
        SimNodeConfig(camera_rate=0.0)


def test_yaml_section_matches_the_node_defaults() -> None:
    from specvla_ros.ros.params import default_config_path

    doc = yaml.safe_load(default_config_path().read_text())
    section = doc.get("specvla_sim", {}).get("ros__parameters")
    if section is None:
        pytest.skip("config/specvla.yaml has no specvla_sim section yet")
    defaults = default_config()
    assert set(section) <= set(defaults)
    for key, value in section.items():
        assert value == defaults[key], key
    SimNodeConfig(**{**defaults, **section})


def test_scene_objects_published_with_every_camera_frame() -> None:
    from specvla_msgs.msg import SceneObjects

    from specvla_ros.ros import topics

    with sim_graph(46, lockstep=True, task="push", seed=4, image_width=32, image_height=32) as (sim, probe, _):
        objects = Collector(probe, SceneObjects, topics.SCENE_OBJECTS, qos.SCENE_OBJECTS)
        layout = sample_layout("push", 4)
        got = objects.wait_for(lambda m: len(m.objects) == len(layout.objects), timeout=10.0)
        assert got is not None
        msg = got[1]
        assert msg.header.frame_id == "panda_link0"
        names = [o.name for o in msg.objects]
        assert names == [f"{s.color}_{s.shape}" for s in layout.objects]
        assert [o.gripper_may_touch for o in msg.objects] == [True] + [False] * len(layout.distractors)
        for o, spec in zip(msg.objects, layout.objects):
            assert abs(o.center.x - spec.xy[0]) < 0.005 and abs(o.center.y - spec.xy[1]) < 0.005
            assert min(o.size.x, o.size.y, o.size.z) > 0.03
        # a reset publishes the new episode's objects
        client = probe.create_client(ResetEpisode, topics.SIM_RESET)
        assert client.wait_for_service(timeout_sec=10.0)
        t0 = time.monotonic()
        resp = client.call(ResetEpisode.Request(task="pick", seed=2), timeout_sec=30.0)
        assert resp is not None and resp.success
        pick = sample_layout("pick", 2)
        want = [f"{s.color}_{s.shape}" for s in pick.objects]
        assert objects.wait_for(lambda m: [o.name for o in m.objects] == want, timeout=10.0, after=t0) is not None
