"""The inference process behind its socket: the decisions are the in-process
Policy's, bit for bit; failures come back as typed errors; one server serves
several robots. Real processes, real sockets, real shared memory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.core.policy import Policy, PolicyConfig
from specvla_ros.core.serving.client import (
    InferenceTimeout,
    InferenceUnavailable,
    PolicyClient,
    ServerOptions,
    SessionOpenError,
)
from specvla_ros.core.serving.frames import SharedFrame
from specvla_ros.core.serving.protocol import MODEL_LOAD
from specvla_ros.core.types import Observation, RobotState, SafetyStatus

Q0 = np.array([0.0, -0.4, 0.0, -2.2, 0.0, 1.9, 0.8])
STATE = RobotState(q=Q0, gripper=0.04)
OPTIONS = ServerOptions(threads=1, start_timeout_s=60.0, open_timeout_s=120.0)


def _config(ckpts, **kw) -> PolicyConfig:
    target, draft, _ = ckpts
    return PolicyConfig(target_dir=str(target), draft_dir=str(draft), device="cpu", **kw)


def _obs(size, seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 256, (*size, 3), dtype=np.uint8), "pick up the red cube",
                       np.r_[Q0, 0.04].astype(np.float32), frame_id=seed + 1)


@pytest.fixture
def client(tiny_checkpoints):
    c = PolicyClient.spawn(_config(tiny_checkpoints), name="test", warmup_steps=1, options=OPTIONS)
    yield c
    c.close()


def test_decisions_equal_the_in_process_policy(client, tiny_checkpoints) -> None:
    local = Policy(_config(tiny_checkpoints))
    local.warmup(n=1)
    assert client.image_size == local.image_size
    assert client.image_resize == local.image_resize == "area"
    assert client.info["target_params"] == local.info["target_params"] and client.server_pid != os.getpid()
    for seed in range(8):
        # repeated frames exercise the vision cache and history drafts; the last two come at a
        # camera's size (resized in the client, in the policy here)
        obs = _obs(client.image_size if seed < 6 else (120, 160), seed % 3 + 10 * (seed >= 6))
        remote, here = client.step(obs, STATE, timeout_s=30.0), local.step(obs, STATE)
        assert remote.narration == here.narration
        np.testing.assert_array_equal(remote.action, here.action)
        assert remote.verdict.status == here.verdict.status
        np.testing.assert_array_equal(remote.verdict.joint_command, here.verdict.joint_command)
        assert remote.stats.emitted == here.stats.emitted and remote.stats.target_passes == here.stats.target_passes


def test_scene_objects_reach_the_servers_gate(client, tiny_checkpoints) -> None:
    from specvla_ros.core.safety.kinematics import ArmKinematics

    tcp, _ = ArmKinematics.from_urdf(None).fk(Q0)
    # a bar across the hand's path: some of the model's moves hit it, staying put does not
    bar = SceneObject("bar", (tcp[0], tcp[1], tcp[2] + 0.05), (0.04, 0.3, 0.04))
    local = Policy(_config(tiny_checkpoints))
    for objects in ([bar], []):
        client.set_scene_objects(objects)
        local.set_scene_objects(objects)
        for seed in range(4):
            obs = _obs(client.image_size, 10 + seed)
            remote, here = client.step(obs, STATE, timeout_s=30.0), local.step(obs, STATE)
            assert (remote.verdict.status, remote.verdict.reason) == (here.verdict.status, here.verdict.reason)
            assert remote.verdict.min_distance == pytest.approx(here.verdict.min_distance, nan_ok=True)


def test_a_late_decision_times_out_and_is_never_mistaken_for_a_later_one(client, tiny_checkpoints) -> None:
    local = Policy(_config(tiny_checkpoints))
    with pytest.raises(InferenceTimeout):
        client.step(_obs(client.image_size, 1), STATE, timeout_s=1e-6)
    # the next request waits for the late reply, drops it, and answers its own frame
    obs = _obs(client.image_size, 2)
    out = client.step(obs, STATE, timeout_s=30.0)
    np.testing.assert_array_equal(out.action, local.step(obs, STATE).action)


def test_bad_input_is_a_hold_not_an_error(client) -> None:
    obs = _obs(client.image_size, 0)
    out = client.step(obs, RobotState(q=np.r_[Q0[:3], 1e9, Q0[4:]]), timeout_s=30.0)
    assert out.verdict.status == SafetyStatus.HALT_BAD_INPUT and out.verdict.joint_command.size == 0
    with pytest.raises(ValueError, match="uint8"):  # another size is resized, another pixel type is not
        client.step(Observation(np.zeros((3, 3, 3), np.float32), "x", obs.proprio), STATE, timeout_s=1.0)
    with pytest.raises(ValueError, match="frame must be"):
        client.step(Observation(np.zeros((*client.image_size, 3), np.float32), "x", obs.proprio), STATE, 1.0)


def test_a_dead_server_is_reported_as_unavailable(client) -> None:
    os.kill(client.server_pid, signal.SIGKILL)
    with pytest.raises(InferenceUnavailable, match="exited with code -9|lost"):
        for _ in range(50):  # the first call may still find the socket open
            client.step(_obs(client.image_size, 0), STATE, timeout_s=5.0)
            time.sleep(0.05)
    assert client.problem is not None


def test_a_stuck_server_is_given_up_and_killed(client) -> None:
    client.STUCK_AFTER_S = 0.5
    os.kill(client.server_pid, signal.SIGSTOP)  # alive, but never answers
    obs = _obs(client.image_size, 0)
    with pytest.raises(InferenceTimeout):
        client.step(obs, STATE, timeout_s=0.2)
    time.sleep(0.6)
    with pytest.raises(InferenceUnavailable, match="stuck"):
        client.step(obs, STATE, timeout_s=0.2)
    assert client.problem is not None
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # killed (a stopped process takes SIGKILL only)
            os.kill(client.server_pid, 0)
            time.sleep(0.05)


def test_a_bad_checkpoint_fails_the_open_with_its_path(tmp_path, tiny_checkpoints) -> None:
    config = PolicyConfig(target_dir=str(tmp_path / "nowhere"), draft_dir=None, device="cpu")
    with pytest.raises(SessionOpenError, match="nowhere") as info:
        PolicyClient.spawn(config, options=OPTIONS)
    assert info.value.kind == MODEL_LOAD


def test_one_server_serves_two_robots_and_refuses_a_wrong_key(tmp_path, tiny_checkpoints) -> None:
    key = os.urandom(32)
    (tmp_path / "key").write_text(key.hex())
    address = str(tmp_path / "policy.sock")
    server = subprocess.Popen([sys.executable, "-m", "specvla_ros.core.serving.server", "--address", address,
                               "--authkey-file", str(tmp_path / "key"), "--threads", "1"])
    try:
        with pytest.raises(SessionOpenError, match="refused the key|listening"):
            PolicyClient.connect(address, os.urandom(32), _config(tiny_checkpoints), timeout_s=60.0)
        greedy = PolicyClient.connect(address, key, _config(tiny_checkpoints), name="arm_a", timeout_s=120.0)
        plain = PolicyClient.connect(address, key, _config(tiny_checkpoints, drafter="none"), name="arm_b",
                                     timeout_s=120.0)
        assert greedy.server_pid == plain.server_pid == server.pid
        for seed in range(3):
            obs = _obs(greedy.image_size, seed)
            a, b = greedy.step(obs, STATE, timeout_s=30.0), plain.step(obs, STATE, timeout_s=30.0)
            # speculative greedy decoding is lossless: both robots get the target's own action
            np.testing.assert_array_equal(a.action, b.action)
            assert b.stats.drafted == 0 and a.stats.drafted > 0
        greedy.close()
        assert plain.step(_obs(plain.image_size, 5), STATE, timeout_s=30.0).stats.emitted > 0  # the other robot goes on
        plain.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    assert server.returncode == 0 and not os.path.exists(address)


def test_shared_frame_round_trip_and_checks() -> None:
    owner = SharedFrame.create((4, 6))
    reader = SharedFrame.attach(owner.name, (4, 6))
    frame = np.arange(72, dtype=np.uint8).reshape(4, 6, 3)
    reader.write(frame)
    np.testing.assert_array_equal(owner.read(), frame)
    with pytest.raises(ValueError, match="frame must be"):
        reader.write(np.zeros((4, 6, 3), np.float32))
    reader.close()
    owner.close()
    with pytest.raises(ValueError):
        ServerOptions(nice=-40)
