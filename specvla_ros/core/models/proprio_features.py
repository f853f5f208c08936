"""Proprioception features a TinyVLA reads: the raw joint vector or the Panda's TCP pose.

Behaviour cloning on raw joint angles has to learn forward kinematics from a few
thousand demonstrations before it can relate the hand to an object it sees, and
the joints leak the expert's path (the copycat shortcut). ``panda_tcp`` computes
the TCP pose inside the model, differentiably and batched, from the same 8-value
proprio vector (7 joint positions [rad] + gripper opening [m]) every caller
already sends, so the node, the datasets and the bags stay unchanged.

The chain is the shipped URDF's (``data/robots/panda.urdf``): every arm joint
turns about its own z axis after a fixed translation and a +-90 deg roll; the
TCP (``panda_hand_tcp``) is 0.107 + 0.1034 m along the flange z, turned -45 deg.
``test_proprio_features`` checks it against Pinocchio on that URDF.
"""
from __future__ import annotations

import math

import torch

from specvla_ros.core.safety.kinematics import GRIPPER_MAX_OPENING

#: (translation xyz [m], roll [rad]) of each arm joint's origin in its parent link.
_PANDA_JOINT_ORIGINS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((0.0, 0.0, 0.333), 0.0),
    ((0.0, 0.0, 0.0), -math.pi / 2),
    ((0.0, -0.316, 0.0), math.pi / 2),
    ((0.0825, 0.0, 0.0), math.pi / 2),
    ((-0.0825, 0.384, 0.0), -math.pi / 2),
    ((0.0, 0.0, 0.0), math.pi / 2),
    ((0.088, 0.0, 0.0), math.pi / 2),
)
_FLANGE_TO_TCP_Z = 0.107 + 0.1034  # [m] link7 -> link8 -> hand TCP, all along z
_HAND_YAW = -math.pi / 4

#: Scaling of the TCP position to about [-1, 1] over the task workspace (sim.tasks).
TCP_CENTRE = (0.49, 0.0, 0.15)  # [m]
TCP_SCALE = (0.13, 0.22, 0.15)  # [m]
#: Fingers down, closing along the base y axis: the orientation the tasks keep.
_DOWN = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))

FEATURE_KINDS = ("raw", "panda_tcp")
#: features per kind: raw = the 8 inputs; panda_tcp = xyz (3) + tilt from fingers-down (3) + gripper (1)
FEATURE_DIMS = {"raw": 8, "panda_tcp": 7}


def _rot_x(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float64)


def _rot_z_batch(q: torch.Tensor) -> torch.Tensor:
    """(B,) angles -> (B, 3, 3) rotations about z."""
    c, s = torch.cos(q), torch.sin(q)
    zero, one = torch.zeros_like(q), torch.ones_like(q)
    return torch.stack([torch.stack([c, -s, zero], -1), torch.stack([s, c, zero], -1),
                        torch.stack([zero, zero, one], -1)], -2)


def panda_tcp_pose(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward kinematics: joint positions (B, 7) [rad] -> TCP position (B, 3) [m], rotation (B, 3, 3)."""
    dtype = q.dtype
    b = q.shape[0]
    rot = torch.eye(3, dtype=dtype, device=q.device).expand(b, 3, 3)
    pos = torch.zeros(b, 3, dtype=dtype, device=q.device)
    for i, (xyz, roll) in enumerate(_PANDA_JOINT_ORIGINS):
        pos = pos + rot @ torch.tensor(xyz, dtype=dtype, device=q.device)
        rot = rot @ _rot_x(roll).to(dtype=dtype, device=q.device) @ _rot_z_batch(q[:, i])
    pos = pos + rot[:, :, 2] * _FLANGE_TO_TCP_Z
    hand = _rot_z_batch(torch.full((1,), _HAND_YAW, dtype=dtype, device=q.device))[0]
    return pos, rot @ hand


def _zyx(r: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> (roll, pitch, yaw) with r = Rz(yaw) Ry(pitch) Rx(roll) (the expert's convention)."""
    pitch = -torch.asin(r[:, 2, 0].clamp(-1.0, 1.0))
    roll = torch.atan2(r[:, 2, 1], r[:, 2, 2])
    yaw = torch.atan2(r[:, 1, 0], r[:, 0, 0])
    return torch.stack([roll, pitch, yaw], dim=-1)


def panda_tcp_features(proprio: torch.Tensor) -> torch.Tensor:
    """(B, 8) joints [rad] + gripper [m] -> (B, 7): scaled TCP xyz, the rotation back to fingers-down
    (what the expert's rotation action corrects, [rad]) and the gripper opening scaled to [-1, 1]."""
    q = proprio[:, :7].double()  # float64: bf16 FK would put the TCP centimetres off
    pos, rot = panda_tcp_pose(q)
    centre = torch.tensor(TCP_CENTRE, dtype=q.dtype, device=q.device)
    scale = torch.tensor(TCP_SCALE, dtype=q.dtype, device=q.device)
    down = torch.tensor(_DOWN, dtype=q.dtype, device=q.device)
    tilt = _zyx(down @ rot.transpose(1, 2))
    grip = proprio[:, 7:8].double() * (2.0 / GRIPPER_MAX_OPENING) - 1.0
    return torch.cat([(pos - centre) / scale, tilt, grip], dim=-1).to(proprio.dtype)


def proprio_features(kind: str, proprio: torch.Tensor) -> torch.Tensor:
    """Features of kind ``kind`` (one of FEATURE_KINDS) from the (B, 8) proprio vector."""
    if kind == "raw":
        return proprio
    if kind == "panda_tcp":
        return panda_tcp_features(proprio)
    raise ValueError(f"unknown proprio feature kind {kind!r}; expected one of {FEATURE_KINDS}")
