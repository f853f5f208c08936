"""Temporal ensembling of overlapping chunks: the blend rule (weights, the gripper, what is never
blended) and the policy using it before the trajectory gate."""
from __future__ import annotations

import numpy as np
import pytest

from specvla_ros.core.chunk_ensemble import ChunkEnsembler, EnsembleConfig
from specvla_ros.core.models.testing import make_random_checkpoint
from specvla_ros.core.policy import Policy, PolicyConfig
from specvla_ros.core.types import Observation, RobotState

H = 4
HOME_Q = np.array([0.0, -0.05, 0.0, -2.35, 0.0, 2.3, np.pi / 4])
PROMPT = "pick up the red cube"


def _chunk(seed: int, h: int = H) -> np.ndarray:
    c = np.random.default_rng(seed).uniform(-0.02, 0.02, (h, 7))
    c[:, 6] = np.random.default_rng(seed + 100).uniform(0.5, 1, h)  # open (one gripper phase), not all alike
    return c


def test_blend_is_the_weighted_mean_of_every_prediction_for_a_step() -> None:
    coeff = 0.5
    ens = ChunkEnsembler(EnsembleConfig(coeff))
    a, b, c = _chunk(1), _chunk(2), _chunk(3)
    np.testing.assert_array_equal(ens.blend(a, 0, PROMPT), a)  # nothing earlier: the chunk itself
    ens.push(a, 0, PROMPT)
    ens.push(b, 1, PROMPT)
    out = ens.blend(c, 1, PROMPT)
    w = np.exp(-coeff * np.arange(3))  # oldest first: a, b, c
    # step 0 of c is step 2 of a and step 1 of b; step 2 of c only b's step 3; step 3 is c's alone
    np.testing.assert_allclose(out[0, :6], (w[0] * a[2, :6] + w[1] * b[1, :6] + w[2] * c[0, :6]) / w.sum())
    np.testing.assert_allclose(out[2, :6], (w[0] * b[3, :6] + w[1] * c[2, :6]) / w[:2].sum())
    np.testing.assert_array_equal(out[3], c[3])
    np.testing.assert_array_equal(out[:, 6], c[:, 6])  # the gripper is the newest chunk's
    # coeff 0: the plain mean
    flat = ChunkEnsembler(EnsembleConfig(0.0))
    flat.push(a, 0, PROMPT)
    np.testing.assert_allclose(flat.blend(b, 1, PROMPT)[0, :6], (a[1, :6] + b[0, :6]) / 2)


def test_consistent_chunks_are_left_as_they_are() -> None:
    path = _chunk(7, h=H + 3)
    ens = ChunkEnsembler(EnsembleConfig(0.01))
    for t in range(3):
        chunk = path[t:t + H]
        np.testing.assert_allclose(ens.blend(chunk, 1 if t else 0, PROMPT), chunk, atol=1e-15)
        ens.push(chunk, 1 if t else 0, PROMPT)


def test_nothing_stale_is_blended() -> None:
    ens = ChunkEnsembler(EnsembleConfig(0.01))
    a, b = _chunk(1), _chunk(2)
    ens.push(a, 0, PROMPT)
    np.testing.assert_array_equal(ens.blend(b, H, PROMPT), b)  # every step of a already ran
    np.testing.assert_array_equal(ens.blend(b, 1, "push the blue block"), b)  # another instruction
    ens.reset()
    np.testing.assert_array_equal(ens.blend(b, 1, PROMPT), b)
    ens.push(a, 0, PROMPT)
    ens.push(b, 2, PROMPT)
    assert ens.buffered == 2
    ens.push(b, H - 1, PROMPT)  # a has aged out, the first b too (2 + 3 > H - 1)
    assert ens.buffered == 2
    with pytest.raises(ValueError, match="coeff"):
        EnsembleConfig(-1.0)
    with pytest.raises(ValueError, match="shift"):
        ens.blend(a, -1, PROMPT)


@pytest.fixture(scope="module")
def chunk_target(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("ens") / "target", preset="test", seed=3, chunk_horizon=H)


def _obs(seed: int) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), PROMPT,
                       np.concatenate([HOME_Q, [0.08]]).astype(np.float32), seed)


@pytest.mark.usefixtures("one_torch_thread")
def test_the_policy_blends_before_the_gate_and_starts_afresh_after_a_hold(chunk_target) -> None:
    plain = Policy(PolicyConfig(target_dir=str(chunk_target), draft_dir=None, drafter="none", device="cpu"))
    blended = Policy(PolicyConfig(target_dir=str(chunk_target), draft_dir=None, drafter="none", device="cpu",
                                  ensemble=True, ensemble_coeff=0.0))
    state = RobotState(q=HOME_Q, gripper=0.08)
    raw = [plain.step(_obs(s), state, shift=0 if s == 0 else 1).actions for s in range(2)]
    first = blended.step(_obs(0), state, shift=0)
    np.testing.assert_array_equal(first.actions, raw[0])
    second = blended.step(_obs(1), state, shift=1)
    expected = raw[1].copy()
    for k in range(H - 1):  # blended where both chunks agree on the gripper's phase at that step
        if (raw[0][k + 1, 6] < 0.5) == (raw[1][k, 6] < 0.5):
            expected[k, :6] = (raw[0][k + 1, :6] + raw[1][k, :6]) / 2
    np.testing.assert_allclose(second.actions, expected, atol=1e-12)
    np.testing.assert_allclose(second.action, expected[0], atol=1e-12)
    # what the gate checked is the blend: its first point is the blended first action's target
    assert second.plan is not None and second.plan.verdicts
    np.testing.assert_allclose(second.plan.verdicts[0].raw_action, expected[0], atol=1e-12)
    # shift 0 (the arm held): nothing earlier is blended
    third = blended.step(_obs(2), state, shift=0)
    np.testing.assert_array_equal(third.actions, plain.step(_obs(2), state, shift=0).actions)


def test_predictions_from_the_other_gripper_phase_are_not_blended() -> None:
    """A chunk decided before the grasp planned the way down; once the newest chunk closes the
    gripper at a step, only predictions that close it there too are averaged."""
    ens = ChunkEnsembler(EnsembleConfig(0.0))
    before = _chunk(1)
    before[:, 6] = 1.0  # open all along: still approaching
    after = _chunk(2)
    after[:, 6] = [1.0, 0.0, 0.0, 0.0]  # closes from step 1 on
    ens.push(before, 0, PROMPT)
    out = ens.blend(after, 1, PROMPT)
    np.testing.assert_allclose(out[0, :6], (before[1, :6] + after[0, :6]) / 2)  # both open at step 0
    np.testing.assert_array_equal(out[1:], after[1:])  # the grasp's steps: the newest chunk alone
