"""Policy: real random-weight checkpoints, the real speculative decoder and the
real gate. Bad inputs hold; decoded actions stay inside the safety envelope;
each safety path (accepted, scaled, re-decoded, halted) is taken and counted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specvla_ros.core.models.interface import ModelLoadError
from specvla_ros.core.policy import Policy, PolicyConfig
from specvla_ros.core.safety.config import default_safety_config_path
from specvla_ros.core.decoding.decoder import DecodeConfig
from specvla_ros.core.types import Observation, RobotState, SafetyStatus

HOME_Q = np.array([0.0, -0.05, 0.0, -2.35, 0.0, 2.3, np.pi / 4])  # TCP (0.496, 0, 0.248)
INSTRUCTION = "pick up the red cube"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _safety_yaml(tmp: Path, **changes: object) -> str:
    """The shipped safety.yaml with ``changes`` merged into its ``safety:`` mapping."""
    src = default_safety_config_path()
    data = yaml.safe_load(src.read_text())
    data["safety"]["joint_limits_file"] = str(src.parent / data["safety"]["joint_limits_file"])
    for key, value in changes.items():
        if isinstance(value, dict):
            data["safety"].setdefault(key, {}).update(value)
        else:
            data["safety"][key] = value
    path = tmp / f"safety_{abs(hash(repr(sorted(changes.items())))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _policy(ckpts, tmp: Path | None = None, safety: dict | None = None, **kw: object) -> Policy:
    target, draft, _ = ckpts
    cfg = dict(target_dir=str(target), draft_dir=str(draft), drafter="model", device="cpu")
    cfg.update(kw)
    if safety is not None and tmp is not None:
        cfg["safety_config"] = _safety_yaml(tmp, **safety)
    return Policy(PolicyConfig(**cfg))


def _obs(policy: Policy, seed: int = 0, q: np.ndarray = HOME_Q, **kw: object) -> Observation:
    h, w = policy.image_size
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    proprio = np.concatenate([q, [0.08]]).astype(np.float32)
    fields = dict(image=img, instruction=INSTRUCTION, proprio=proprio, frame_id=seed)
    fields.update(kw)
    return Observation(**fields)  # type: ignore[arg-type]


def _state(q: np.ndarray = HOME_Q) -> RobotState:
    return RobotState(q=np.asarray(q, dtype=float), gripper=0.08)


@pytest.fixture(scope="module")
def policy(tiny_checkpoints) -> Policy:
    return _policy(tiny_checkpoints)


# --- construction and properties --------------------------------------------------
def test_policy_reports_what_it_loaded(policy: Policy) -> None:
    info = policy.info
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["target_params"] > info["draft_params"] > 0
    assert info["memory_mb"] > 0
    assert policy.image_size == (policy.target.config.image_size,) * 2
    assert policy.warmup(1) > 0.0


def test_unnorm_key_selects_the_dataset_statistics(tiny_checkpoints) -> None:
    target, _, _ = tiny_checkpoints
    pol = Policy(PolicyConfig(target_dir=str(target), draft_dir=None, drafter="none", device="cpu",
                              unnorm_key="sim_panda"))
    stats = pol.target.action_tokenizer.stats
    assert stats.q99[0] > stats.q01[0]
    out = pol.step(_obs(pol, seed=2), _state())
    assert np.all(np.isfinite(out.action))


def test_bad_config_and_files_raise_clear_errors(tiny_checkpoints, tmp_path: Path) -> None:
    target, draft, eagle = tiny_checkpoints
    with pytest.raises(ValueError, match="drafter"):
        PolicyConfig(target_dir=str(target), drafter="medusa")
    with pytest.raises(ValueError, match="redecode_shrink"):
        PolicyConfig(target_dir=str(target), redecode_shrink=0.0)
    with pytest.raises(ValueError, match="control_period_s"):
        PolicyConfig(target_dir=str(target), control_period_s=-0.1)
    with pytest.raises(ModelLoadError, match="nowhere"):
        Policy(PolicyConfig(target_dir=str(tmp_path / "nowhere"), draft_dir=None, device="cpu"))
    with pytest.raises(ValueError, match="eagle"):
        Policy(PolicyConfig(target_dir=str(target), draft_dir=str(draft), drafter="eagle", device="cpu"))
    with pytest.raises(ModelLoadError, match="no_such_dataset"):
        Policy(PolicyConfig(target_dir=str(target), draft_dir=None, unnorm_key="no_such_dataset", device="cpu"))
    with pytest.raises(ValueError, match="safety"):
        Policy(PolicyConfig(target_dir=str(target), draft_dir=None, device="cpu",
                            safety_config=str(tmp_path / "safety_missing.yaml")))


# --- bad inputs hold, never raise ---------------------------------------------------
def _bad_inputs(policy: Policy):
    h, w = policy.image_size
    nan_q = HOME_Q.copy()
    nan_q[3] = np.nan
    ok = _obs(policy)
    yield "nan proprio", _obs(policy, proprio=np.full(8, np.nan, dtype=np.float32)), _state(), SafetyStatus.HALT_NONFINITE
    yield "inf proprio", _obs(policy, proprio=np.r_[HOME_Q, np.inf].astype(np.float32)), _state(), SafetyStatus.HALT_NONFINITE
    yield "nan joints", ok, RobotState(q=nan_q), SafetyStatus.HALT_NONFINITE
    yield "short joints", ok, RobotState(q=HOME_Q[:5]), SafetyStatus.HALT_BAD_INPUT
    # a broken encoder or wrong units: finite, nowhere near the arm's range
    yield "absurd joints", ok, RobotState(q=np.r_[HOME_Q[:2], 1e9, HOME_Q[3:]]), SafetyStatus.HALT_BAD_INPUT
    yield "image rgba", _obs(policy, image=np.zeros((h, w, 4), np.uint8)), _state(), SafetyStatus.HALT_BAD_INPUT
    yield "image empty", _obs(policy, image=np.zeros((0, w, 3), np.uint8)), _state(), SafetyStatus.HALT_BAD_INPUT
    yield "image gray", _obs(policy, image=np.zeros((h, w), np.uint8)), _state(), SafetyStatus.HALT_BAD_INPUT
    yield "image float", _obs(policy, image=np.zeros((h, w, 3), np.float32)), _state(), SafetyStatus.HALT_BAD_INPUT
    yield "image none", _obs(policy, image=None), _state(), SafetyStatus.HALT_BAD_INPUT
    yield "proprio size", _obs(policy, proprio=np.zeros(3, np.float32)), _state(), SafetyStatus.HALT_BAD_INPUT
    yield "unknown words", _obs(policy, instruction="pick up the zorblax"), _state(), SafetyStatus.HALT_BAD_INPUT
    yield "empty instruction", _obs(policy, instruction="   "), _state(), SafetyStatus.HALT_BAD_INPUT


def test_bad_inputs_hold_instead_of_raising(policy: Policy) -> None:
    for name, obs, state, status in _bad_inputs(policy):
        out = policy.step(obs, state)
        assert out.verdict.status == status, (name, out.verdict.reason)
        q = np.asarray(state.q, dtype=float)
        if q.shape == HOME_Q.shape and np.all(np.abs(q) < 10):
            np.testing.assert_array_equal(out.verdict.joint_command, q)  # hold the measured joints
        else:  # unusable measurement: nothing to command, not even a hold at it
            assert out.verdict.joint_command.size == 0, name
        assert np.all(np.isnan(out.action)), name
        assert out.stats.safety_path == "halted"
    out = policy.step(_obs(policy, instruction="pick up the zorblax"), _state())
    assert "zorblax" in out.verdict.reason


def test_frames_of_another_size_are_resized_with_the_models_method(policy: Policy) -> None:
    from specvla_ros.core.models.frame_resize import resize_frame

    camera = np.random.default_rng(8).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    big = policy.step(_obs(policy, image=camera, frame_id=100), _state())  # distinct ids: no vision cache hit
    small = policy.step(_obs(policy, image=resize_frame(camera, policy.image_size, policy.image_resize), frame_id=101),
                        _state())
    assert not big.verdict.is_halt
    np.testing.assert_array_equal(big.action, small.action)
    assert big.narration == small.narration


def test_hold_commands_the_measured_joints(policy: Policy) -> None:
    v = policy.hold(_state(), SafetyStatus.HALT_STALE_INPUT, "image 0.5 s old")
    assert v.status == SafetyStatus.HALT_STALE_INPUT
    np.testing.assert_array_equal(v.joint_command, HOME_Q)


def test_hold_never_commands_positions_outside_the_joint_limits(policy: Policy) -> None:
    gate = policy.gate
    tol = gate.config.joint_state_tolerance
    # read slightly past a limit (within the tolerance): hold at the limit itself
    q = HOME_Q.copy()
    q[0] = gate.upper[0] + 0.5 * tol
    v = policy.hold(RobotState(q=q), SafetyStatus.HALT_STALE_INPUT, "stale")
    assert v.joint_command[0] == gate.upper[0]
    np.testing.assert_array_equal(v.joint_command[1:], HOME_Q[1:])
    # further outside than the tolerance: the reading is bad input and nothing is commanded
    q[0] = gate.upper[0] + 2 * tol
    assert "panda_joint1" in gate.measured_problem(q)
    assert policy.hold(RobotState(q=q), SafetyStatus.HALT_BAD_INPUT, "bad").joint_command.size == 0
    out = policy.step(_obs(policy), RobotState(q=q))
    assert out.verdict.status == SafetyStatus.HALT_BAD_INPUT and "outside the limits" in out.verdict.reason
    assert out.verdict.joint_command.size == 0


# --- a normal step ------------------------------------------------------------------
def test_step_returns_a_gated_action_inside_the_envelope(policy: Policy) -> None:
    out = policy.step(_obs(policy, seed=3), _state())
    assert out.verdict.status in (SafetyStatus.OK, SafetyStatus.SCALED)
    assert out.stats.safety_path in ("accepted", "scaled")
    assert out.stats.redecoded == 0
    assert out.stats.gate_time_s > 0 and out.stats.total_time_s >= out.stats.gate_time_s
    assert out.stats.target_passes >= 1 and out.stats.emitted >= 8
    low, high = policy.gate.envelope(_state(), policy.config.control_period_s)
    assert np.all(out.action >= low - 1e-9) and np.all(out.action <= high + 1e-9)
    # the command is exactly what the gate makes of the action
    again = policy.gate.check(out.action, _state(), policy.config.control_period_s)
    np.testing.assert_allclose(out.verdict.joint_command, again.joint_command, atol=1e-9)
    assert isinstance(out.narration, str)


def test_speculative_greedy_equals_target_only_greedy(tiny_checkpoints) -> None:
    spec = _policy(tiny_checkpoints)
    plain = _policy(tiny_checkpoints, drafter="none")
    assert plain.info["draft_params"] == 0
    for seed in range(3):
        a = spec.step(_obs(spec, seed=seed), _state())
        b = plain.step(_obs(plain, seed=seed), _state())
        np.testing.assert_array_equal(a.action, b.action)
        assert a.narration == b.narration


def test_eagle_drafter_policy_steps(tiny_checkpoints) -> None:
    target, _, eagle = tiny_checkpoints
    pol = Policy(PolicyConfig(target_dir=str(target), draft_dir=str(eagle), drafter="eagle", device="cpu"))
    out = pol.step(_obs(pol, seed=1), _state())
    assert not np.any(np.isnan(out.action))
    assert out.stats.safety_path in ("accepted", "scaled", "redecoded", "halted")


# --- safety-aware decoding: the mask holds for random weights and inputs ---------------
_POOL_TARGETS = [
    np.array([0.5, 0.0, 0.02]),  # near the workspace floor: dz may only be small downward
    np.array([0.7, 0.0, 0.25]),  # near the far x face
    np.array([0.5, 0.29, 0.3]),  # near the +y face
    np.array([0.5, 0.0, 0.248]),  # home
]


def _near_boundary_states(policy: Policy) -> list[np.ndarray]:
    kin = policy.gate.kin
    _, R = kin.fk(HOME_Q)
    out = []
    for p in _POOL_TARGETS:
        res = kin.ik(p, R, HOME_Q)
        assert res.success
        out.append(res.q)
    return out


@pytest.fixture(scope="module")
def slow_policies(tiny_checkpoints, tmp_path_factory) -> dict[str, Policy]:
    """Policies with a 0.05 m/s TCP limit and a smaller workspace (the envelope then cuts
    into the model's range)."""
    tmp = tmp_path_factory.mktemp("safety")
    out = {}
    for mode in ("greedy", "sample", "relaxed"):
        dec = DecodeConfig(mode=mode, relax_bins=9 if mode == "relaxed" else 0, seed=3)
        out[mode] = _policy(tiny_checkpoints, tmp, safety={"tcp_max_speed": 0.05, "tcp_max_angular_speed": 0.3, "speed_envelope": "inscribed",
                                                                 "workspace": {"max": [0.705, 0.295, 0.6]}},
                            decode=dec)
    return out


@settings(max_examples=24, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mode=st.sampled_from(["greedy", "sample", "relaxed"]), seed=st.integers(0, 10_000),
       which=st.integers(0, len(_POOL_TARGETS) - 1), shrink=st.sampled_from([1.0, 0.5, 0.2]))
def test_decoded_actions_never_leave_the_envelope(slow_policies, mode: str, seed: int, which: int,
                                                  shrink: float) -> None:
    pol = slow_policies[mode]
    q = _near_boundary_states(pol)[which]
    state = _state(q)
    low, high = pol.gate.envelope(state, pol.config.control_period_s, shrink)
    mask = pol.action_mask(state, shrink)
    assert mask.any(axis=1).all()
    res = pol.decode_raw(_obs(pol, seed=seed, q=q), state, shrink)
    values = pol.target.action_tokenizer.bin_values()
    exact = (values >= low[:, None] - 1e-12) & (values <= high[:, None] + 1e-12)
    for i in range(7):
        if exact[i].any():  # the interval holds a bin: the action must be inside it
            assert low[i] - 1e-9 <= res.action[i] <= high[i] + 1e-9, (i, res.action, low, high)
        else:  # no bin fits: the single nearest bin is the only choice
            assert res.action[i] == values[i][mask[i]][0]
    # and the gate never finds a separable-limit violation in it
    v = pol.gate.check(res.action, state, pol.config.control_period_s)
    assert v.status != SafetyStatus.HALT_WORKSPACE, v.reason
    assert "TCP speed" not in v.reason and "raw action" not in v.reason, v.reason


def test_the_mask_binds_for_these_settings(slow_policies) -> None:
    """Guard for the property test above: the envelope really excludes bins the model could pick."""
    pol = slow_policies["greedy"]
    mask = pol.action_mask(_state(_near_boundary_states(pol)[0]), 1.0)
    assert (~mask[:6]).sum(axis=1).min() > 0
    assert mask[:6].sum(axis=1).min() > 0


# --- the four safety paths ----------------------------------------------------------
def _unmasked_action(ckpts, seed: int) -> np.ndarray:
    pol = _policy(ckpts, safe_envelope=False)
    return pol.decode_raw(_obs(pol, seed=seed)).action


def test_path_scaled(tiny_checkpoints, tmp_path: Path) -> None:
    a = _unmasked_action(tiny_checkpoints, seed=5)
    speed = np.linalg.norm(a[:3]) / 0.2
    assert speed > 0.01
    pol = _policy(tiny_checkpoints, tmp_path, safety={"tcp_max_speed": float(speed / 2)}, safe_envelope=False)
    out = pol.step(_obs(pol, seed=5), _state())
    np.testing.assert_array_equal(out.action, a)
    assert out.verdict.status == SafetyStatus.SCALED, out.verdict.reason
    assert out.stats.safety_path == "scaled" and out.stats.redecoded == 0


def test_path_redecoded(tiny_checkpoints, tmp_path: Path) -> None:
    a = _unmasked_action(tiny_checkpoints, seed=6)
    i = int(np.argmax(np.abs(a[:3])))
    assert abs(a[i]) > 1e-3
    p0 = np.array([0.4959, 0.0, 0.248])
    wmin, wmax = [0.2, -0.45, 0.01], [0.8, 0.45, 0.6]
    # a workspace face halfway along the model's largest translation
    (wmax if a[i] > 0 else wmin)[i] = float(p0[i] + a[i] / 2)
    pol = _policy(tiny_checkpoints, tmp_path, safety={"workspace": {"min": wmin, "max": wmax}},
                  safe_envelope=False)
    first = pol.gate.check(a, _state(), 0.2)
    assert first.status == SafetyStatus.HALT_WORKSPACE
    out = pol.step(_obs(pol, seed=6), _state())
    assert out.stats.redecoded == 1
    assert out.stats.safety_path == "redecoded", out.verdict.reason
    assert not out.verdict.is_halt
    assert abs(out.action[i]) < abs(a[i])  # the re-decode stayed inside the shrunk envelope
    assert out.stats.target_passes > 2  # both decodes counted


def test_path_halted(tiny_checkpoints, tmp_path: Path) -> None:
    # one IK iteration at a 1e-9 m tolerance: every motion fails IK, twice
    pol = _policy(tiny_checkpoints, tmp_path, safety={"ik": {"max_iterations": 1, "position_tolerance": 1e-9}})
    out = pol.step(_obs(pol, seed=7), _state())
    assert out.verdict.status == SafetyStatus.HALT_IK, out.verdict.reason
    assert out.stats.safety_path == "halted" and out.stats.redecoded == 1
    assert "after re-decode" in out.verdict.reason
    np.testing.assert_array_equal(out.verdict.joint_command, HOME_Q)


def test_path_accepted(policy: Policy) -> None:
    out = policy.step(_obs(policy, seed=8), _state())
    assert out.verdict.status == SafetyStatus.OK, out.verdict.reason
    assert out.stats.safety_path == "accepted"
