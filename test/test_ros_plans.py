"""specvla_node executing action-chunk plans, with real rclpy publishers and subscriptions and the
real Policy on a random chunk checkpoint (H = 4): one multi-point JointTrajectory per plan, the
forward_position stream of a plan's points at their times, replanning only when few points are
left, and an e-stop that replaces a running plan at once."""
from __future__ import annotations

import time

import numpy as np
import pytest
from std_msgs.msg import Bool
from trajectory_msgs.msg import JointTrajectory

from ros_harness import Collector
from specvla_ros.core.models.testing import make_random_checkpoint, make_random_draft
from specvla_ros.core.safety.config import load_safety_config
from specvla_ros.core.types import SafetyStatus
from specvla_ros.ros import qos
import test_ros_node
from test_ros_node import PERIOD, WAIT, decided, first_status, is_hold, start

make_graph = test_ros_node.make_graph  # the node + feeder + observers fixture

H = 4


@pytest.fixture(scope="module")
def chunk_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunk_node")
    target = make_random_checkpoint(root / "target", preset="test", seed=11, chunk_horizon=H)
    draft = make_random_draft(root / "draft", target, kind="model", seed=12)
    return {"target_dir": str(target), "draft_dir": str(draft), "inference.backend": "in_process"}


def duration_s(d) -> float:
    return d.sec + 1e-9 * d.nanosec


def test_each_plan_is_one_multipoint_trajectory_inside_the_limits(make_graph, chunk_dirs) -> None:
    g = make_graph(25, **chunk_dirs)
    plans = Collector(g.probe, JointTrajectory, "/specvla_node/plan", qos.STATUS)
    start(g)
    hit = g.commands.wait_for(lambda c: len(c.points) > 1, timeout=WAIT)
    assert hit is not None, "no multi-point plan published"
    t_cmd, cmd = hit
    limits = load_safety_config(None).joint_limits
    assert 1 < len(cmd.points) <= H
    for k, point in enumerate(cmd.points):
        assert duration_s(point.time_from_start) == pytest.approx((k + 1) * PERIOD)
        q = np.asarray(point.positions)
        assert np.all(q >= limits.min_position) and np.all(q <= limits.max_position)
    # the plan topic carries the same points, stamped with the camera frame of the decision
    plan = plans.wait_for(lambda p: [list(x.positions) for x in p.points] == [list(x.positions) for x in cmd.points],
                          timeout=WAIT)
    assert plan is not None and plan[1].header.stamp.sec > 0
    # replan every period (replan_below 0): each decision replaces the plan
    n0 = len(g.commands.msgs)
    assert g.commands.wait_for(lambda c: True, timeout=WAIT, after=t_cmd + 1e-6)
    assert len(g.commands.msgs) > n0


def test_a_running_plan_is_replaced_by_the_estop_hold(make_graph, chunk_dirs) -> None:
    g = make_graph(26, replan_below=1, **chunk_dirs)
    start(g)
    hit = g.commands.wait_for(lambda c: len(c.points) > 1, timeout=WAIT)
    assert hit is not None
    t_press = time.monotonic()
    g.feeder.estop_pub.publish(Bool(data=True))
    first_status(g, SafetyStatus.HALT_ESTOP, after=t_press)
    after = g.commands.wait_for(lambda c: True, timeout=WAIT, after=t_press)
    assert after is not None
    # the first command after the press holds (one point at the measured joints, or an empty
    # trajectory), and no plan point goes out while latched
    assert is_hold(after[1]) and len(after[1].points) <= 1
    g.verdicts.wait_for(lambda v: True, timeout=WAIT, after=time.monotonic() + 3 * PERIOD)
    assert all(is_hold(c) and len(c.points) <= 1 for c in g.commands.since(t_press))


def test_forward_position_streams_the_plan_point_by_point(make_graph, chunk_dirs) -> None:
    """replan_below 1: a plan of H points is streamed one point per control period; the node plans
    again when one point is left, so between two decisions the stream sends the plan's points in order."""
    g = make_graph(27, command_interface="forward_position", replan_below=1, **chunk_dirs)
    plans = Collector(g.probe, JointTrajectory, "/specvla_node/plan", qos.STATUS)
    start(g)
    first = plans.wait_for(lambda p: len(p.points) == H, timeout=WAIT)
    assert first is not None, "no full plan"
    t_plan, plan = first
    points = np.array([p.positions for p in plan.points])
    nxt = plans.wait_for(lambda p: True, timeout=WAIT, after=t_plan + 1e-6)
    assert nxt is not None
    cmds = [(t, np.asarray(c.data)) for t, c in g.commands.msgs]
    # point 0 goes out with the decision (just before the plan message) ...
    i0 = max(i for i, (t, q) in enumerate(cmds) if t <= t_plan and np.abs(q - points[0]).max() < 1e-9)
    # ... then the stream sends points 1..H-1, one per control period, in order, and nothing in between
    following = [q for _, q in cmds[i0 + 1 : i0 + H]]
    assert len(following) == H - 1
    for k, q in enumerate(following, start=1):
        np.testing.assert_allclose(q, points[k], atol=1e-9, err_msg=f"point {k}")


def test_interpolated_stream_ends_on_the_plans_last_point(make_graph, chunk_dirs) -> None:
    """command_rate above the control rate: between points the stream interpolates along the plan, and
    when no new plan comes the last point itself is sent (the controller then holds it)."""
    g = make_graph(28, command_interface="forward_position", replan_below=1, command_rate=20.0, **chunk_dirs)
    node = g.policy
    node._plan_due = lambda inputs, frame: node._plan is None  # one plan only: watch it run out
    plans = Collector(g.probe, JointTrajectory, "/specvla_node/plan", qos.STATUS)
    start(g)
    first = plans.wait_for(lambda p: len(p.points) > 1, timeout=WAIT)
    assert first is not None, "no plan"
    t_plan, plan = first
    points = np.array([p.positions for p in plan.points])
    last = g.commands.wait_for(lambda c: np.abs(np.asarray(c.data) - points[-1]).max() < 1e-9, timeout=WAIT,
                               after=t_plan)
    assert last is not None, "the plan's last point was never sent"
    cmds = [np.asarray(c.data) for t, c in g.commands.msgs if t_plan - 0.05 <= t <= last[0]]
    assert len(cmds) > len(points)  # more messages than points: interpolated
    # every streamed position lies on the plan's path, between consecutive points
    for q in cmds:
        assert any(np.all(q >= np.minimum(a, b) - 1e-9) and np.all(q <= np.maximum(a, b) + 1e-9)
                   for a, b in zip(points[:-1], points[1:]))
    assert len(plans.msgs) == 1


def test_a_decision_begun_before_an_estop_press_and_release_is_dropped(make_graph, chunk_dirs) -> None:
    """The e-stop is pressed and released while a decision is being made: that plan was decided on the
    state before the stop and never reaches the controller; the node decides again."""
    from std_msgs.msg import Bool as BoolMsg

    g = make_graph(29, **chunk_dirs)
    start(g)
    assert g.commands.wait_for(lambda c: len(c.points) > 1, timeout=WAIT)
    backend = g.policy.backend
    real_step = backend.step
    pressed = {"done": False}

    def step_with_estop(obs, state, timeout_s, shift=1):
        out = real_step(obs, state, timeout_s, shift)
        if not pressed["done"]:
            pressed["done"] = True
            g.policy._on_estop(BoolMsg(data=True))
            g.policy._on_estop(BoolMsg(data=False))
        return out

    backend.step = step_with_estop
    t0 = time.monotonic()
    hit = g.verdicts.wait_for(lambda v: "decided before the last emergency stop" in v.reason, timeout=WAIT, after=t0)
    assert hit is not None
    t_drop = hit[0]
    # the plan of that decision never went out: the command published with the dropped verdict holds
    cmds = [c for t, c in g.commands.msgs if t0 <= t <= t_drop]
    assert cmds and all(is_hold(c) and len(c.points) <= 1 for c in cmds[-1:])
    # and the node decides again afterwards
    assert g.commands.wait_for(lambda c: len(c.points) > 1, timeout=WAIT, after=t_drop)


def test_no_second_plan_from_the_same_camera_frame(make_graph, chunk_dirs) -> None:
    """Planning every period, but a camera that resends one frame (same stamp): the node plans once
    from it and lets that plan run (planning again would restart it and repeat its first steps);
    the next new frame is planned from at once."""
    g = make_graph(29, check_camera_stamp=False, **chunk_dirs)
    g.feeder.restamp = False
    g.feeder.image.header.stamp.sec, g.feeder.image.header.stamp.nanosec = 1000, 0
    plans = Collector(g.probe, JointTrajectory, "/specvla_node/plan", qos.STATUS)
    start(g)
    first = plans.wait_for(lambda p: True, timeout=WAIT)
    assert first is not None, "no plan"
    time.sleep(6 * PERIOD)  # six control periods, the same frame arriving all along
    assert len(plans.msgs) == 1, f"{len(plans.msgs)} plans from one frame"
    assert all(decided(v) for v in g.verdicts.since(first[0])), "the plan was not left to run"
    g.feeder.image.header.stamp.sec = 1001  # a new frame
    t_new = time.monotonic()
    second = plans.wait_for(lambda p: p.header.stamp.sec == 1001, timeout=WAIT, after=t_new)
    assert second is not None, "no plan from the new frame"


def test_a_new_instruction_is_planned_from_a_newer_frame(make_graph, chunk_dirs) -> None:
    """An instruction that changes is acted on from the first camera frame received after it (the frame
    before may show a scene it does not refer to, as at a simulator's reset); a decision still running
    for the old instruction is not published."""
    g = make_graph(30, **chunk_dirs)
    plans = Collector(g.probe, JointTrajectory, "/specvla_node/plan", qos.STATUS)
    start(g)
    assert plans.wait_for(lambda p: True, timeout=WAIT) is not None
    frame = g.feeder.image
    g.feeder.image = None  # the camera pauses (joint states go on)
    time.sleep(0.1)
    g.feeder.instruct("push the blue block to the target")
    t_instr = time.monotonic()
    time.sleep(0.3)  # under max_input_age: no hold for a stale frame yet, and no plan either
    late = [p for t, p in plans.msgs if t >= t_instr + 0.05]
    assert late == [], "planned for the new instruction from a frame older than it"
    g.feeder.image = frame
    assert plans.wait_for(lambda p: True, timeout=WAIT, after=t_instr + 0.3) is not None
