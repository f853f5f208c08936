"""What the node needs from wherever the policy runs: a declared interface and
the in-process implementation (the out-of-process one is ``PolicyClient``)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.core.models.frame_resize import ResizeMethod
from specvla_ros.core.types import Observation, PolicyOutput, RobotState


@runtime_checkable
class PolicyBackend(Protocol):
    """A loaded policy the control loop drives.

    ``step`` raises ``InferenceError`` (or a subclass: ``InferenceTimeout``,
    ``InferenceUnavailable``) when it cannot decide; bad observations give a
    HALT_* verdict, as ``Policy.step`` does.
    """

    @property
    def image_size(self) -> tuple[int, int]: ...

    @property
    def image_resize(self) -> ResizeMethod:
        """How the model wants frames of another size resized (``frame_resize``)."""
        ...

    @property
    def info(self) -> dict[str, Any]: ...

    @property
    def problem(self) -> str | None:
        """Why the backend cannot serve (e.g. its process exited), or None."""
        ...

    def step(self, obs: Observation, state: RobotState, timeout_s: float, shift: int = 1) -> PolicyOutput:
        """``Policy.step``; shift: control steps executed since the previous decision."""
        ...

    def set_scene_objects(self, objects: Sequence[SceneObject]) -> None: ...

    def close(self) -> None: ...


class InProcessPolicy:
    """A ``Policy`` on the caller's thread. ``timeout_s`` is not enforced (the caller checks the deadline).

    For embedding and debugging: in a process whose other threads are busy (a ROS
    executor at sensor rates) every torch op waits for the GIL again.
    """

    def __init__(self, config: Any, warmup_steps: int = 2) -> None:
        import time

        from specvla_ros.core.policy import Policy

        t0 = time.perf_counter()
        self.policy = Policy(config)
        self.load_s = time.perf_counter() - t0
        self.warmup_s = self.policy.warmup(n=warmup_steps) if warmup_steps > 0 else 0.0

    @property
    def image_size(self) -> tuple[int, int]:
        return self.policy.image_size

    @property
    def image_resize(self) -> ResizeMethod:
        return self.policy.image_resize

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.policy.info)

    @property
    def problem(self) -> str | None:
        return None

    def step(self, obs: Observation, state: RobotState, timeout_s: float, shift: int = 1) -> PolicyOutput:
        return self.policy.step(obs, state, shift)

    def set_scene_objects(self, objects: Sequence[SceneObject]) -> None:
        self.policy.set_scene_objects(objects)

    def close(self) -> None:
        self.policy = None  # type: ignore[assignment]
