"""Replay regression harness: a real PolicyNode (tiny random checkpoints) fed
from a real bag in lockstep on sim time; outputs aligned to camera frames and
compared with a golden bag message by message.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bag_helpers import T0_NS, image_msg, serialize, stamp_msg, string_msg

from specvla_ros.ros import topics
from specvla_ros.ros.bag import cli as bag_cli
from specvla_ros.ros.bag.regression import (
    METADATA_KEY,
    OUTPUT_TYPES,
    ReplayConfig,
    compare,
    load_outputs,
    replay,
    write_outputs,
)
from specvla_ros.ros.bag.io import BagError, bag_info, open_bag, write_bag
from specvla_ros.ros.bag.types import make_typestore

pytestmark = pytest.mark.timeout(240)
FRAMES = 4
SHIPPED = Path(__file__).parent / "data" / "bags"


def _joint_state(ns: int, k: int):
    from sensor_msgs.msg import JointState

    msg = JointState()
    stamp_msg(msg.header, ns)
    msg.name = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
    msg.position = [0.0, -0.4 + 0.02 * k, 0.0, -2.1, 0.0, 1.7, 0.8, 0.02, 0.02]
    msg.velocity = [0.0] * 9
    msg.effort = [0.0] * 9
    return msg


def _input_messages(with_joints: bool = True) -> list[tuple[str, str, int, bytes]]:
    msgs = [("/specvla/instruction", "std_msgs/msg/String", T0_NS, serialize(string_msg("pick up the red cube")))]
    for k in range(FRAMES):
        t = T0_NS + (k + 1) * 100_000_000
        if with_joints:
            msgs.append(("/joint_states", "sensor_msgs/msg/JointState", t, serialize(_joint_state(t, k))))
        msgs.append(("/camera/image_raw", "sensor_msgs/msg/Image", t + 1000, serialize(image_msg(t, 64, 64, seed=k))))
    return msgs


@pytest.fixture(scope="module")
def golden_run(tiny_checkpoints, tmp_path_factory):
    """One replay of a synthetic input bag, written as the golden bag."""
    target, draft, _ = tiny_checkpoints
    root = tmp_path_factory.mktemp("regress")
    input_bag = write_bag(root / "inputs", _input_messages())
    models = f"{target}:{draft}"
    result = replay(ReplayConfig(input_bag=input_bag, models=models, domain_id=70))
    golden = write_outputs(result, root / "golden", input_bag)
    return input_bag, golden, models, result


def test_replay_answers_every_frame_once_with_aligned_outputs(golden_run) -> None:
    input_bag, golden, _, result = golden_run
    assert result.stale_ticks == 0
    frame_stamps = [T0_NS + (k + 1) * 100_000_000 for k in range(FRAMES)]
    assert [f.frame_stamp_ns for f in result.frames] == frame_stamps
    for frame in result.frames:
        sent = [t for t, _ in frame.messages]
        # Commands go out before the verdict, stats and narration after it.
        assert sent.count(topics.resolved(topics.SAFETY)) == 1 and sent.count(topics.NARRATION) == 1
        assert sent.index(topics.GRIPPER) < sent.index(topics.resolved(topics.SAFETY)) < sent.index(topics.NARRATION)
    loaded = load_outputs(golden)
    assert loaded.meta["settings"]["mode"] == "greedy" and len(loaded.meta["frames"]) == FRAMES
    for stamp, per_topic in loaded.frames.items():
        (verdict,) = per_topic[topics.resolved(topics.SAFETY)]
        assert verdict.header.stamp.sec * 10**9 + verdict.header.stamp.nanosec == stamp  # the frame it answers
    assert {t.name for t in bag_info(golden).topics} >= {topics.resolved(topics.SAFETY), topics.NARRATION, topics.GRIPPER}


def test_second_replay_matches_golden_exactly_via_cli(golden_run, tmp_path, capsys) -> None:
    input_bag, golden, models, _ = golden_run
    report_path = tmp_path / "report.json"
    rc = bag_cli.main(["regress", str(input_bag), "--golden", str(golden), "--models", models,
                       "--report", str(report_path), "--output", str(tmp_path / "candidate")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"regression PASSED: {FRAMES} frames" in out
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["differences"] == [] and report["messages_compared"] == 5 * FRAMES
    assert bag_info(tmp_path / "candidate").message_count == 5 * FRAMES


def _tampered_copy(golden: Path, out: Path, edit) -> Path:
    """Copy an output bag, letting `edit(frame_index, topic, msg)` change or drop (return None) messages."""
    store = make_typestore(OUTPUT_TYPES.values())
    loaded = load_outputs(golden)
    with open_bag(golden) as reader:
        custom = reader.storage.metadata.custom
        rows = [(c.topic, c.msgtype, t, raw) for c, t, raw in reader.messages()]
    messages = []
    for topic, msgtype, t, raw in rows:
        frame = next(loaded.index[t - s] for s in range(16) if t - s in loaded.index)
        msg = edit(frame, topic, store.deserialize_cdr(raw, msgtype))
        if msg is not None:
            messages.append((topic, msgtype, t, store.serialize_cdr(msg, msgtype)))
    return write_bag(out, messages, typestore=store, custom_data={METADATA_KEY: custom[METADATA_KEY]})


def test_compare_reports_each_difference_message_by_message(golden_run, tmp_path) -> None:
    _, golden, _, _ = golden_run

    def edit(frame: int, topic: str, msg):
        if frame == 1 and topic == topics.TRAJECTORY:
            positions = msg.points[0].positions.copy()  # rosbags arrays are read-only views
            positions[2] += 0.01
            msg.points[0].positions = positions
        elif frame == 2 and topic == topics.NARRATION:
            msg.data = "something else"
        elif frame == 3 and topic == topics.resolved(topics.SAFETY):
            msg.status, msg.status_name = 13, "HALT_COLLISION"
        elif frame == 0 and topic == topics.GRIPPER:
            return None
        return msg

    candidate = _tampered_copy(golden, tmp_path / "tampered", edit)
    report = compare(golden, candidate)
    found = {(d.frame, d.topic, d.field) for d in report.differences}
    assert found == {
        (0, topics.GRIPPER, "message count"),
        (1, topics.TRAJECTORY, "points[0].positions"),
        (2, topics.NARRATION, "data"),
        (3, topics.resolved(topics.SAFETY), "status"),
        (3, topics.resolved(topics.SAFETY), "status_name"),
    }
    assert not report.ok
    text = report.format()
    assert "regression FAILED" in text and "'something else'" in text
    json.dumps(report.to_dict())  # the JSON report serialises (NaNs included)

    # Relaxed comparison: the 0.01 rad nudge is within tolerance, the rest still differs.
    relaxed = compare(golden, candidate, action_tolerance=0.02, exact=False)
    assert {(d.frame, d.field) for d in relaxed.differences} == {
        (0, "message count"), (2, "data"), (3, "status"), (3, "status_name")}
    stricter = compare(golden, candidate, action_tolerance=0.005, exact=False)
    assert (1, "points[0].positions") in {(d.frame, d.field) for d in stricter.differences}


def test_exact_comparison_ignores_rounding_but_not_a_bin(golden_run, tmp_path) -> None:
    """Greedy bags compare exactly: the same tokens on another CPU give joint commands that differ
    in the last bits (IK, floating point), which pass; a change far below one action bin does not."""
    _, golden, _, _ = golden_run

    def nudge(by: float):
        def edit(frame: int, topic: str, msg):
            if frame == 1 and topic == topics.TRAJECTORY:
                positions = msg.points[0].positions.copy()
                positions[2] += by
                msg.points[0].positions = positions
            return msg
        return edit

    assert compare(golden, _tampered_copy(golden, tmp_path / "rounding", nudge(1e-13))).ok
    report = compare(golden, _tampered_copy(golden, tmp_path / "micro", nudge(1e-6)))
    assert {(d.frame, d.field) for d in report.differences} == {(1, "points[0].positions")}


def test_input_bag_without_joint_states_is_a_clear_error(tmp_path, capsys) -> None:
    bag = write_bag(tmp_path / "no_joints", _input_messages(with_joints=False), storage="sqlite3")
    with pytest.raises(BagError, match="lacks /joint_states"):
        replay(ReplayConfig(input_bag=bag, models="random"))
    rc = bag_cli.main(["regress", str(bag), "--golden", str(tmp_path / "new_golden"), "--update"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "lacks /joint_states" in err and "Traceback" not in err


def test_golden_that_is_not_an_output_bag_is_rejected(tmp_path) -> None:
    bag = write_bag(tmp_path / "plain", _input_messages())
    with pytest.raises(BagError, match="not a regression output bag"):
        compare(bag, bag)


@pytest.mark.skipif(not (SHIPPED / "sim_inputs").is_dir(), reason="shipped bags not generated yet")
@pytest.mark.parametrize("golden_name,domain", [("sim_golden", 71), ("sim_golden_relaxed", 72),
                                                ("sim_golden_chunk", 73)])
def test_shipped_input_bag_reproduces_shipped_golden(tmp_path, golden_name: str, domain: int) -> None:
    """Bags recorded from specvla_sim; greedy compared exactly, relaxed within tolerance; the chunk
    golden's commands are multi-point plans, compared point by point."""
    golden = SHIPPED / golden_name
    settings = load_outputs(golden).meta["settings"]
    config = ReplayConfig(input_bag=SHIPPED / "sim_inputs", models=settings["models"], mode=settings["mode"],
                          drafter=settings["drafter"], relax_bins=settings["relax_bins"],
                          params=settings.get("params", {}), domain_id=domain)
    result = replay(config)
    if result.settings["fingerprint"] != settings["fingerprint"]:
        pytest.skip("the golden bag was made with other model weights; regenerate: scripts/make_test_bags.py --golden-only")
    candidate = write_outputs(result, tmp_path / "candidate", config.input_bag)
    report = compare(golden, candidate)
    assert report.ok, report.format()
    assert report.frames_compared == len(result.frames) == 20
    assert report.mode == settings["mode"]
    if golden_name == "sim_golden_chunk":
        plans = [m for per_topic in load_outputs(golden).frames.values() for m in per_topic.get(topics.TRAJECTORY, [])]
        assert plans and max(len(p.points) for p in plans) > 1


def test_out_of_order_camera_stamps_still_align(tiny_checkpoints, tmp_path) -> None:
    """Header stamps that go backwards (a camera driver with jitter) are answered frame by frame;
    the camera was recorded under another name and is remapped to the node's input."""
    target, draft, _ = tiny_checkpoints
    header_order = [1, 3, 2, 4]  # frame k carries the stamp of slot header_order[k]
    msgs = [("/specvla/instruction", "std_msgs/msg/String", T0_NS, serialize(string_msg("push the blue block")))]
    for k, slot in enumerate(header_order):
        t = T0_NS + (k + 1) * 100_000_000
        stamp = T0_NS + slot * 100_000_000
        msgs.append(("/joint_states", "sensor_msgs/msg/JointState", t, serialize(_joint_state(t, k))))
        msgs.append(("/wrist/image_raw", "sensor_msgs/msg/Image", t + 1000, serialize(image_msg(stamp, 64, 64, seed=k))))
    bag = write_bag(tmp_path / "jitter", msgs, storage="sqlite3")
    with pytest.raises(BagError, match="lacks /camera/image_raw"):
        replay(ReplayConfig(input_bag=bag, models=f"{target}:{draft}"))
    result = replay(ReplayConfig(input_bag=bag, models=f"{target}:{draft}", domain_id=76,
                                 remap={"/wrist/image_raw": "/camera/image_raw"}))
    assert [f.frame_stamp_ns for f in result.frames] == [T0_NS + s * 100_000_000 for s in header_order]
    assert [f.index for f in result.frames] == [0, 1, 2, 3] and result.stale_ticks == 0
    out = write_outputs(result, tmp_path / "out", bag, storage="sqlite3")
    loaded = load_outputs(out)
    for stamp, per_topic in loaded.frames.items():
        (verdict,) = per_topic[topics.resolved(topics.SAFETY)]
        assert verdict.header.stamp.sec * 10**9 + verdict.header.stamp.nanosec == stamp
    assert {loaded.index[T0_NS + s * 100_000_000] for s in header_order} == {0, 1, 2, 3}
    assert compare(out, out).ok
