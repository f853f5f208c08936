"""The typed messages between a policy client and the inference server.

One connection carries one session: ``OpenSession`` first (answered by
``SessionOpened`` or ``Failure``), then any number of ``StepRequest`` (each
answered by a ``StepReply`` or a ``Failure`` with the same ``seq``) and
``SetSceneObjects`` (no answer), and ``CloseSession`` last. Frames do not
travel in these messages: the client writes them into the session's shared
memory (``frames``) before it sends the request that names them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.core.types import PolicyOutput, RobotState

#: Bumped on any incompatible change; a server refuses sessions of another version.
PROTOCOL_VERSION = 3

#: Failure kinds (``Failure.kind``).
MODEL_LOAD, CONFIG, STEP, PROTOCOL = "model_load", "config", "step", "protocol"


@dataclass(frozen=True)
class OpenSession:
    """Load a policy for one robot.

    name: the robot / node name (for the server's log).
    config: a ``specvla_ros.core.policy.PolicyConfig``.
    warmup_steps: decisions run on a blank frame after loading.
    """

    name: str
    config: Any
    warmup_steps: int = 2
    protocol: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class SessionOpened:
    """The session's policy is loaded.

    frames: name of the shared-memory block holding one HxWx3 uint8 frame.
    image_size: (H, W) of the frames in the block; the client resizes others with ``image_resize``.
    image_resize: the model's resize method (``frame_resize.ResizeMethod``).
    info: the policy's description (device, dtype, parameter counts, ...).
    """

    frames: str
    image_size: tuple[int, int]
    image_resize: str
    info: dict[str, Any]
    load_s: float
    warmup_s: float
    server_pid: int


@dataclass(frozen=True)
class StepRequest:
    """Decide on the frame now in shared memory (the client wrote it before sending this)."""

    seq: int
    frame_id: int | None
    instruction: str
    proprio: np.ndarray
    state: RobotState
    shift: int = 1  # control steps executed since the previous decision (``Policy.step``)


@dataclass(frozen=True)
class StepReply:
    """What ``Policy.step`` returned; ``server_time_s`` is receipt to reply inside the server."""

    seq: int
    output: PolicyOutput
    server_time_s: float


@dataclass(frozen=True)
class SetSceneObjects:
    """Replace the gate's known scene objects (empty clears them)."""

    objects: tuple[SceneObject, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class CloseSession:
    """The client is done; the server frees the session's policy and frames."""


@dataclass(frozen=True)
class Failure:
    """A request could not be served. ``seq`` is the step's, or -1 for session-level failures."""

    kind: str
    message: str
    seq: int = -1
