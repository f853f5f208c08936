"""Temporal ensembling of overlapping action chunks (ACT's; LeRobot's ``ACTTemporalEnsembler``).

A policy that plans a chunk of H actions every control step has, for the step about to run,
up to H predictions: this decision's first action, the previous decision's second, and so on.
Ensembling executes their weighted mean, w_i = exp(-coeff * i) with i = 0 the oldest
prediction (coeff 0: the plain mean; larger: newer predictions count more), which smooths the
motion and averages out one decision's mistake. Every later step of the plan is blended the same
way from the predictions that reach it.

Actions are the robot's per-step motions (ee_delta: the TCP's motion during that step), so the
mean is a mean of motions for the same step. The gripper dimension is not averaged: the
expert's gripper labels switch, a mean would only delay the switch; it is the newest chunk's.
And only predictions that agree with the newest chunk on the gripper (open or closed at that
step) are blended: one made before a grasp or a release planned the other phase's motion (down
to the object, not up with it), and averaging it in delays the new phase.
The blend is made before the trajectory gate, which checks the result like any other plan.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


#: Gripper actions below this are "closing/closed", above "open" (the action is 0..1).
_GRIPPER_SPLIT = 0.5


@dataclass(frozen=True)
class EnsembleConfig:
    """coeff: weight decay per prediction, w_i = exp(-coeff * i), i = 0 the oldest [1], >= 0.
    gripper_dims: action dimensions taken from the newest chunk instead of averaged (the last one,
    the gripper, for the 7-dim ee_delta action)."""

    coeff: float = 0.01
    gripper_dims: tuple[int, ...] = (6,)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.coeff) and self.coeff >= 0.0):
            raise ValueError(f"EnsembleConfig.coeff must be finite and >= 0, got {self.coeff}")
        if any(not isinstance(d, int) or d < 0 for d in self.gripper_dims):
            raise ValueError(f"EnsembleConfig.gripper_dims must be non-negative ints, got {self.gripper_dims}")


class ChunkEnsembler:
    """Keeps the chunks still covering future steps and blends a new chunk with them.

    ``blend`` is pure (the policy may re-decode and blend again); ``push`` records the chunk that
    was used; ``reset`` forgets everything (a hold, a new instruction: old plans no longer apply).
    """

    def __init__(self, config: EnsembleConfig) -> None:
        self.config = config
        self._chunks: list[tuple[np.ndarray, int]] = []  # (chunk (H, D), steps since it was decided), oldest first
        self._key: str | None = None

    def reset(self) -> None:
        self._chunks = []
        self._key = None

    @property
    def buffered(self) -> int:
        """Chunks kept (each still covers a future step)."""
        return len(self._chunks)

    def _aged(self, shift: int, key: str) -> list[tuple[np.ndarray, int]]:
        if key != self._key:
            return []
        aged = [(c, age + shift) for c, age in self._chunks]
        return [(c, age) for c, age in aged if age < c.shape[0]]

    def blend(self, chunk: np.ndarray, shift: int, key: str) -> np.ndarray:
        """The ensembled plan for this decision's steps (shape of ``chunk``, (H, D)).

        shift: control steps executed since the previous decision; key: what the chunks must share
        to be blended (the instruction).
        """
        new = np.asarray(chunk, dtype=np.float64)
        if new.ndim != 2:
            raise ValueError(f"a chunk must be (H, action_dim), got shape {new.shape}")
        if shift < 0:
            raise ValueError(f"shift must be >= 0, got {shift}")
        older = self._aged(shift, key)
        if not older:
            return new.copy()
        out = new.copy()
        keep = [d for d in self.config.gripper_dims if d < new.shape[1]]
        for k in range(new.shape[0]):
            preds = [c[age + k] for c, age in older if age + k < c.shape[0] and c.shape[1] == new.shape[1]]
            if keep:  # the same gripper phase as the newest chunk at this step
                closed = new[k, keep] < _GRIPPER_SPLIT
                preds = [p for p in preds if np.array_equal(p[keep] < _GRIPPER_SPLIT, closed)]
            if not preds:
                continue
            preds.append(new[k])  # the newest last: oldest first, as the weights count
            w = np.exp(-self.config.coeff * np.arange(len(preds)))
            out[k] = (w[:, None] * np.stack(preds)).sum(0) / w.sum()
            out[k, keep] = new[k, keep]
        return out

    def push(self, chunk: np.ndarray, shift: int, key: str) -> None:
        """Record this decision's chunk (the raw decoded one: each prediction counts once)."""
        self._chunks = [*self._aged(shift, key), (np.asarray(chunk, dtype=np.float64).copy(), 0)]
        self._key = key


__all__ = ["ChunkEnsembler", "EnsembleConfig"]
