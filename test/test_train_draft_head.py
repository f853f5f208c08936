"""EAGLE draft-head training against a frozen target: episodes and bags, loss goes down,
the checkpoint loads with load_drafter and stays lossless, exact resume, CLI, OpenVLA target."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specvla_ros.core.types import PANDA_FINGER_JOINT_NAMES, PANDA_JOINT_NAMES, Observation
from specvla_ros.train.train_draft_head import (
    STATE_FILE, DraftHeadTrainConfig, demo_token_ids, load_bag, load_episode_dir, main, train,
)

INSTRUCTION = "move to the red cube"


def _write_episodes(d: Path, n_eps: int = 2, steps: int = 6, size: int = 64) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for e in range(n_eps):
        np.savez_compressed(
            d / f"episode_{e:05d}.npz",
            images=rng.integers(0, 256, (steps, size, size, 3), dtype=np.uint8),
            proprio=rng.normal(0, 0.3, (steps, 8)).astype(np.float32),
            actions=np.concatenate([rng.uniform(-0.02, 0.02, (steps, 3)), rng.uniform(-0.1, 0.1, (steps, 3)),
                                    rng.integers(0, 2, (steps, 1))], axis=1).astype(np.float32),
            narrations=np.array(["moving to the red cube"] * steps, dtype=str),
            instruction=np.array(INSTRUCTION), task=np.array("reach"), seed=np.array(e),
            success=np.array(True), collision=np.array(False),
        )
    return d


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    return _write_episodes(tmp_path_factory.mktemp("demos") / "demos")


def _cfg(target: Path, data: list[Path], out: Path, **kw) -> DraftHeadTrainConfig:
    base = dict(steps=30, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=10, progress=False, device="cpu")
    base.update(kw)
    return DraftHeadTrainConfig(target=target, data=data, out=out, **base)


def test_training_lowers_the_loss_and_the_drafter_stays_lossless(tiny_checkpoints, episodes, tmp_path):
    from specvla_ros.core.decoding.drafters import EagleDrafter
    from specvla_ros.core.models.loading import load_drafter, load_vla
    from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder

    target_dir = tiny_checkpoints[0]
    summary = train(_cfg(target_dir, [episodes], tmp_path / "eagle", steps=25, max_samples=10, eval_frames=2))
    assert summary["frames"] == 8 and summary["steps"] == 25
    assert summary["final_loss"] < 0.6 * summary["first_loss"]
    ev = summary["eval"]
    assert ev["frames"] == 2 and ev["equal_to_target_greedy"] == 1.0 and 0.0 <= ev["acceptance_rate"] <= 1.0
    out = tmp_path / "eagle"
    assert (out / STATE_FILE).is_file() and (out / "model.safetensors").is_file()
    target = load_vla(target_dir, device="cpu")
    drafter = load_drafter(out, target)
    assert isinstance(drafter, EagleDrafter)
    frames = load_episode_dir(episodes)
    obs = Observation(frames[0].image, frames[0].instruction, frames[0].proprio, frame_id=1)
    ref = SpeculativeDecoder(target, None, DecodeConfig(mode="greedy")).decode(obs)
    res = SpeculativeDecoder(target, drafter, DecodeConfig(mode="greedy")).decode(obs)
    assert res.token_ids == ref.token_ids
    assert res.stats.drafted > 0


def test_demo_tokens_are_narration_eon_and_expert_actions(tiny_checkpoints, episodes):
    from specvla_ros.core.models.loading import load_vla

    target = load_vla(tiny_checkpoints[0], device="cpu")
    frame = load_episode_dir(episodes)[0]
    ids = demo_token_ids(target, frame, max_narration=12)
    tok = target.text_tokenizer
    eon = ids.index(tok.eon_token_id)
    assert tok.decode(ids[:eon]) == "moving to the red cube"
    np.testing.assert_array_equal(ids[eon + 1:], target.action_tokenizer.encode(frame.action))
    assert len(demo_token_ids(target, frame, max_narration=2)) == 2 + 1 + 7


def test_resume_continues_exactly(tiny_checkpoints, episodes, tmp_path):
    from safetensors.torch import load_file

    target_dir = tiny_checkpoints[0]
    straight = tmp_path / "straight"
    train(_cfg(target_dir, [episodes], straight, steps=8, checkpoint_every=4, max_samples=4, batch_size=2))
    # the same run killed right after its step-4 checkpoint, then started again with the same --out
    interrupted = tmp_path / "interrupted"
    cfg = _cfg(target_dir, [episodes], interrupted, steps=8, checkpoint_every=4, max_samples=4, batch_size=2)
    _train_until(cfg, 4)
    summary = train(cfg)
    assert summary["steps"] == 8
    a = load_file(str(straight / "model.safetensors"))
    c = load_file(str(interrupted / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=1e-5, atol=1e-6)
    hist = torch.load(interrupted / STATE_FILE, weights_only=False)["history"]
    assert [h["step"] for h in hist] == list(range(1, 9))
    ref = torch.load(straight / STATE_FILE, weights_only=False)["history"]
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in ref], rtol=1e-5)


def _train_until(cfg: DraftHeadTrainConfig, stop: int) -> None:
    """Run ``cfg`` but stop after ``stop`` steps, as if killed right after a checkpoint."""
    import specvla_ros.train.train_draft_head as mod

    class _Stop(Exception):
        pass

    real = mod._save_state

    def save_then_stop(out, step, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        real(out, step, *args, **kwargs)
        if step >= stop:
            raise _Stop

    mod._save_state = save_then_stop
    try:
        with pytest.raises(_Stop):
            train(cfg)
    finally:
        mod._save_state = real
    assert torch.load(cfg.out / STATE_FILE, weights_only=False)["step"] == stop


# --- rosbags ----------------------------------------------------------------------------

def _write_bag(path: Path, n_frames: int = 3) -> Path:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    T = store.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    Image, String, JointState = T["sensor_msgs/msg/Image"], T["std_msgs/msg/String"], T["sensor_msgs/msg/JointState"]
    rng = np.random.default_rng(1)
    with Writer(path, version=9) as w:
        cam = w.add_connection("/camera/image_raw", Image.__msgtype__, typestore=store)
        ins = w.add_connection("/specvla/instruction", String.__msgtype__, typestore=store)
        js = w.add_connection("/joint_states", JointState.__msgtype__, typestore=store)
        names = [*PANDA_JOINT_NAMES, *PANDA_FINGER_JOINT_NAMES]

        def stamp(ns: int):  # noqa: ANN202
            return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="cam")

        # a frame before any instruction: must be skipped
        img0 = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        w.write(cam, 5, store.serialize_cdr(Image(header=stamp(5), height=16, width=16, encoding="rgb8",
                                                  is_bigendian=0, step=48, data=img0.reshape(-1)), Image.__msgtype__))
        w.write(ins, 10, store.serialize_cdr(String(data=INSTRUCTION), String.__msgtype__))
        for i in range(n_frames):
            t = 100 + 100 * i
            q = np.full(9, 0.1 * i)
            w.write(js, t, store.serialize_cdr(JointState(header=stamp(t), name=names, position=q,
                                                          velocity=np.zeros(0), effort=np.zeros(0)),
                                               JointState.__msgtype__))
            img = np.full((16, 16, 3), [10 * i, 20, 30], dtype=np.uint8)
            bgr = np.ascontiguousarray(img[:, :, ::-1])
            w.write(cam, t + 50, store.serialize_cdr(Image(header=stamp(t + 50), height=16, width=16, encoding="bgr8",
                                                           is_bigendian=0, step=48, data=bgr.reshape(-1)),
                                                     Image.__msgtype__))
    return path


def test_bag_frames_pair_image_instruction_and_joints(tmp_path):
    frames = load_bag(_write_bag(tmp_path / "bag"), "/camera/image_raw", "/specvla/instruction", "/joint_states")
    assert len(frames) == 3
    for i, f in enumerate(frames):
        assert f.instruction == INSTRUCTION and f.action is None
        np.testing.assert_array_equal(f.image[0, 0], [10 * i, 20, 30])  # bgr8 converted to RGB
        np.testing.assert_allclose(f.proprio, [0.1 * i] * 7 + [0.2 * i], rtol=1e-6)
    with pytest.raises(ValueError, match="lacks topic"):
        load_bag(tmp_path / "bag", "/other/camera", "/specvla/instruction", "/joint_states")


def test_bags_train_on_the_targets_own_greedy_tokens(tiny_checkpoints, tmp_path):
    bag = _write_bag(tmp_path / "bag")
    with pytest.raises(ValueError, match="--tokens greedy"):
        train(_cfg(tiny_checkpoints[0], [bag], tmp_path / "a", steps=2, tokens="demo"))
    summary = train(_cfg(tiny_checkpoints[0], [bag], tmp_path / "b", steps=3, batch_size=2, tokens="greedy"))
    assert summary["steps"] == 3 and summary["frames"] == 3


# --- config, CLI ---------------------------------------------------------------------------

@pytest.mark.parametrize("kw, name", [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"), ({"tokens": "x"}, "tokens"),
                                      ({"feature_weight": 0.0, "token_weight": 0.0}, "feature_weight"),
                                      ({"batch_size": 0}, "batch_size"), ({"eval_frames": -1}, "eval_frames")])
def test_config_validation_names_the_bad_value(kw, name, tmp_path):
    with pytest.raises(ValueError, match=name):
        _cfg(tmp_path, [tmp_path], tmp_path / "o", **kw)


def test_cli(tiny_checkpoints, episodes, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["--target", str(tiny_checkpoints[0]), "--data", str(episodes), "--out", str(out), "--steps", "2",
               "--batch-size", "2", "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert main(["--target", str(tiny_checkpoints[0]), "--data", str(tmp_path / "nope"), "--out", str(out),
                 "--no-progress"]) == 2
    assert "no such episode directory" in capsys.readouterr().err


# --- any target: OpenVLA ----------------------------------------------------------------

def test_trains_against_an_openvla_target(episodes, tmp_path):
    from specvla_ros.core.models.loading import load_drafter, load_vla
    from specvla_ros.core.models.openvla_checkpoint import make_random_openvla_checkpoint
    from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder

    ckpt = make_random_openvla_checkpoint(tmp_path / "openvla")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["unnorm_key"] = "sim_panda"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    summary = train(_cfg(ckpt, [episodes], tmp_path / "eagle", steps=10, max_samples=4, batch_size=2))
    assert summary["final_loss"] < summary["first_loss"]
    target = load_vla(ckpt, device="cpu")
    drafter = load_drafter(tmp_path / "eagle", target)
    frame = load_episode_dir(episodes)[1]
    obs = Observation(frame.image, frame.instruction, frame.proprio)
    ref = SpeculativeDecoder(target, None, DecodeConfig()).decode(obs)
    res = SpeculativeDecoder(target, drafter, DecodeConfig()).decode(obs)
    assert res.token_ids == ref.token_ids and res.narration_ids == []
