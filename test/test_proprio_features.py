"""proprio_features: the in-model Panda TCP pose matches Pinocchio on the shipped URDF, and a
"panda_tcp" TinyVLA reads the pose (not the raw joints) through save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from specvla_ros.core.safety.kinematics import ArmKinematics
from specvla_ros.core.models.loading import load_vla
from specvla_ros.core.models.proprio_features import (
    TCP_CENTRE, TCP_SCALE, panda_tcp_features, panda_tcp_pose, proprio_features,
)
from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
from specvla_ros.core.models.tiny_vla import PRESETS, TinyVLA, TinyVLAConfig
from specvla_ros.sim.expert import DOWN, zyx_from_matrix


def test_tcp_pose_matches_pinocchio_on_the_shipped_urdf() -> None:
    kin = ArmKinematics.from_urdf()
    q = np.random.default_rng(0).uniform(kin.lower, kin.upper, size=(16, 7))
    pos, rot = panda_tcp_pose(torch.from_numpy(q))
    for i in range(len(q)):
        p_ref, r_ref = kin.fk(q[i])
        np.testing.assert_allclose(pos[i].numpy(), p_ref, atol=1e-9)
        np.testing.assert_allclose(rot[i].numpy(), r_ref, atol=1e-9)


def test_features_are_the_scaled_position_the_tilt_the_expert_corrects_and_the_gripper() -> None:
    kin = ArmKinematics.from_urdf()
    q = np.array([0.1, 0.3, -0.2, -2.2, 0.1, 2.4, 0.6])
    proprio = torch.tensor([[*q, 0.04]], dtype=torch.float32)
    feats = panda_tcp_features(proprio)[0].numpy()
    p_ref, r_ref = kin.fk(q)
    np.testing.assert_allclose(feats[:3], (p_ref - np.array(TCP_CENTRE)) / np.array(TCP_SCALE), atol=1e-5)
    np.testing.assert_allclose(feats[3:6], zyx_from_matrix(DOWN @ r_ref.T), atol=1e-5)
    assert feats[6] == pytest.approx(0.0, abs=1e-6)  # half open -> 0 on [-1, 1]
    assert feats.dtype == np.float32
    with pytest.raises(ValueError, match="unknown proprio feature"):
        proprio_features("joints_squared", proprio)


def test_a_tcp_model_sees_the_pose_not_the_joint_angles(tmp_path) -> None:
    """Two joint vectors with the same TCP pose (joint 7 turned by a full turn is the same pose)
    give the same output; moving the TCP changes it; the setting survives save/load."""
    tok = VLATextTokenizer.build()
    cfg = TinyVLAConfig(vocab_size=tok.vocab_size, **{**PRESETS["test_kp"], "proprio_features": "panda_tcp"})
    torch.manual_seed(0)
    TinyVLA(cfg, tok).save_pretrained(tmp_path / "m")
    model = load_vla(tmp_path / "m", device="cpu")
    assert model.config.proprio_features == "panda_tcp"
    vis = model.encode_vision(np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    base = np.array([0.0, 0.2, 0.0, -2.0, 0.0, 2.2, -2.0, 0.04], dtype=np.float32)
    same_pose = base.copy()
    same_pose[6] += 2 * np.pi
    moved = base.copy()
    moved[0] += 0.4

    def first_logits(p: np.ndarray) -> torch.Tensor:
        return model.prefill(vis, "reach the red cube", p)[1].logits

    torch.testing.assert_close(first_logits(base), first_logits(same_pose), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(first_logits(base), first_logits(moved), atol=1e-3)
    with pytest.raises(ValueError, match="proprio_features"):
        TinyVLAConfig(**{**PRESETS["test"], "proprio_features": "tcp"})
    with pytest.raises(ValueError, match="panda_tcp"):
        TinyVLAConfig(**{**PRESETS["test"], "proprio_features": "panda_tcp", "proprio_keep": (7,)})
