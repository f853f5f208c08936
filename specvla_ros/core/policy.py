"""One decision: observation + measured state -> (narration, plan, verdict, stats).

The step validates its inputs (a bad input holds, it never raises), computes
the safety envelope from the measured state and hands it to the speculative
decoder as an allowed-bin mask (one per step of an action chunk), decodes the
narration and the chunk of H actions (H = 1 for a one-action model), and runs
the trajectory gate: every point is checked by the full safety gate from the
point before it, and the longest safe prefix is the plan. If the first point is
refused, it decodes once more inside an envelope shrunk by ``redecode_shrink``;
if that fails too, it halts (holds the measured joints). Which path was taken
is counted in ``DecodeStats.safety_path`` / ``redecoded``.

This is the object the ROS node drives; it knows nothing of ROS.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from specvla_ros.core.models.action_tokenizer import ActionTokenizer, load_norm_stats
from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.core.models.checkpoint_io import STATS_FILE
from specvla_ros.core.models.frame_resize import ResizeMethod, resize_frame
from specvla_ros.core.models.interface import ModelLoadError, VLAModel
from specvla_ros.core.chunk_ensemble import ChunkEnsembler, EnsembleConfig
from specvla_ros.core.models.loading import load_drafter, load_vla
from specvla_ros.core.paths import DEFAULT_DRAFT_DIR, DEFAULT_TARGET_DIR
from specvla_ros.core.safety.config import load_safety_config
from specvla_ros.core.safety.gate import SafetyGate
from specvla_ros.core.safety.trajectory import TrajectoryGate, TrajectoryVerdict
from specvla_ros.core.decoding.decoder import DecodeConfig, DecodeResult, SpeculativeDecoder
from specvla_ros.core.types import (
    ACTION_DIM,
    DecodeStats,
    Observation,
    PolicyOutput,
    RobotState,
    SafetyStatus,
    Verdict,
)

DRAFTERS = ("model", "eagle", "none")
_WARMUP_INSTRUCTION = "pick up the red cube"


@dataclass
class PolicyConfig:
    """What the policy loads and how it decides.

    target_dir / draft_dir: checkpoint dirs (draft_dir None or "" = no speculation).
    drafter: "model" (independent draft VLA), "eagle" (EAGLE head) or "none".
    device: "auto" | "cpu" | "cuda[:N]"; dtype: "float32" | "float16" | "bfloat16" | "auto".
    unnorm_key: dataset whose action statistics de-normalise actions (None = the checkpoint's).
    control_period_s: seconds one action lasts (the gate's dt) [s].
    safety_config: safety.yaml path (None = the shipped one).
    safe_envelope: mask the decoder's action bins with the safety envelope.
    redecode_shrink: envelope scale (0, 1] for the one re-decode after a refused action.
    ensemble: blend each chunk with the earlier chunks' predictions for the same steps
        (temporal ensembling, ``core.chunk_ensemble``) before the gate; a hold or a new
        instruction starts afresh. ensemble_coeff: its weight decay (0 = plain mean).
    """

    target_dir: str = str(DEFAULT_TARGET_DIR)
    draft_dir: str | None = str(DEFAULT_DRAFT_DIR)
    drafter: str = "model"
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    device: str = "auto"
    dtype: str = "float32"
    unnorm_key: str | None = None
    control_period_s: float = 0.2
    safety_config: str | None = None
    safe_envelope: bool = True
    redecode_shrink: float = 0.5
    ensemble: bool = False
    ensemble_coeff: float = 0.01

    def __post_init__(self) -> None:
        if self.drafter not in DRAFTERS:
            raise ValueError(f"PolicyConfig.drafter must be one of {DRAFTERS}, got {self.drafter!r}")
        if isinstance(self.decode, dict):
            self.decode = DecodeConfig(**self.decode)
        if not isinstance(self.decode, DecodeConfig):
            raise ValueError(f"PolicyConfig.decode must be a DecodeConfig, got {type(self.decode).__name__}")
        if not self.target_dir:
            raise ValueError("PolicyConfig.target_dir must name a checkpoint directory")
        if not (np.isfinite(self.control_period_s) and self.control_period_s > 0):
            raise ValueError(f"PolicyConfig.control_period_s must be finite and > 0, got {self.control_period_s}")
        if not (0.0 < self.redecode_shrink <= 1.0):
            raise ValueError(f"PolicyConfig.redecode_shrink must be in (0, 1], got {self.redecode_shrink}")
        EnsembleConfig(self.ensemble_coeff)  # validates

    @property
    def speculative(self) -> bool:
        return self.drafter != "none" and bool(self.draft_dir)


class Policy:
    """Speculative-decoding VLA policy behind a safety gate.

    Raises ModelLoadError on bad checkpoint files and ValueError on bad config
    (both with a message naming the file or value).
    """

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.target: VLAModel = load_vla(config.target_dir, config.device, config.dtype)
        if config.unnorm_key:
            self._use_norm_stats(config.unnorm_key)
        self.drafter = None
        if config.speculative:
            self.drafter = load_drafter(config.draft_dir, self.target)  # configured by the decoder
            if self.drafter.kind != config.drafter:
                raise ValueError(f"drafter={config.drafter!r} but {config.draft_dir} holds a {self.drafter.kind!r} draft")
        self.decoder = SpeculativeDecoder(self.target, self.drafter, config.decode)
        self.gate = SafetyGate(load_safety_config(config.safety_config))
        self.trajectory_gate = TrajectoryGate(self.gate)
        if self.gate.action_dim != ACTION_DIM:
            raise ValueError(f"safety action_space {self.gate.config.action_space!r} has {self.gate.action_dim} "
                             f"dimensions; the model emits {ACTION_DIM}")
        self._bin_values = self.target.action_tokenizer.bin_values()
        self._image_size = _model_image_size(self.target)
        self._proprio_dim = getattr(getattr(self.target, "config", None), "proprio_dim", None)
        # the gripper is the last action dimension of ee_delta (7 = 6 + 1); a 7-joint joint-space action has none
        gripper = (ACTION_DIM - 1,) if self.gate.config.action_space == "ee_delta" or self.gate.n < ACTION_DIM else ()
        self.ensembler = (ChunkEnsembler(EnsembleConfig(config.ensemble_coeff, gripper_dims=gripper))
                          if config.ensemble else None)

    # --- properties the node reads -----------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the model's input; ``step`` resizes other frames with ``image_resize``."""
        return self._image_size

    @property
    def horizon(self) -> int:
        """Actions per decision (the decoded chunk's length H)."""
        return self.decoder.horizon

    @property
    def image_resize(self) -> ResizeMethod:
        """How frames of another size are resized for the model (the model's own method)."""
        return self.target.image_resize

    @property
    def info(self) -> dict:
        target_params, target_bytes = _param_stats(self.target)
        draft_module = self.drafter.module if self.drafter is not None else None
        draft_params, draft_bytes = _param_stats(draft_module) if draft_module is not None else (0, 0)
        return {
            "device": str(self.target.device),
            "dtype": str(self.target.dtype).removeprefix("torch."),
            "target_params": target_params,
            "draft_params": draft_params,
            "memory_mb": (target_bytes + draft_bytes) / 2**20,
            "drafter": self.config.drafter if self.drafter is not None else "none",
            "action_space": self.gate.config.action_space,
        }

    # --- control ------------------------------------------------------------------
    def set_scene_objects(self, objects: Sequence[SceneObject], valid_for_s: float | None = None) -> None:
        """Known objects for the gate's collision check (replaces the previous list; empty clears it).

        The caller owns freshness: update every step from perception / the simulator, clear
        when the source goes stale, or pass valid_for_s. See ``SafetyGate.set_scene_objects``.
        """
        self.gate.set_scene_objects(objects, valid_for_s)

    @property
    def scene_objects(self) -> tuple[SceneObject, ...]:
        return self.gate.scene_objects

    def hold(self, state: RobotState, status: SafetyStatus, reason: str) -> Verdict:
        """Hold the measured joints with the given status (stale input, e-stop, deadline, ...)."""
        return self.gate.hold(state, status, reason)

    def warmup(self, n: int = 2) -> float:
        """Run ``n`` decodes on a blank frame (allocations, kernels); returns seconds spent."""
        h, w = self._image_size
        proprio = np.zeros(self._proprio_dim or 8, dtype=np.float32)
        obs = Observation(np.zeros((h, w, 3), dtype=np.uint8), _WARMUP_INSTRUCTION, proprio, frame_id=None)
        t0 = time.perf_counter()
        for _ in range(max(0, int(n))):
            self.decoder.decode(obs)
        return time.perf_counter() - t0

    def step(self, obs: Observation, state: RobotState, shift: int = 1) -> PolicyOutput:
        """Decide the next action chunk. Bad inputs give a HALT_* verdict (hold), never an exception.

        shift: control steps executed since the previous decision (the previous chunk's tail from
            there is this decision's free draft); 0 when no plan has been running since (the arm
            held): nothing of the earlier chunks is blended then.
        """
        t0 = time.perf_counter()
        problem = self._input_problem(obs, state)
        if problem is not None:
            status, reason = problem
            stats = DecodeStats(mode=self.config.decode.mode, safety_path="halted", chunk_len=self.horizon)
            stats.total_time_s = time.perf_counter() - t0
            hold = self.gate.hold(state, status, reason)
            if self.ensembler is not None:
                self.ensembler.reset()
            return PolicyOutput("", np.full(ACTION_DIM, np.nan), hold, stats, plan=TrajectoryVerdict.held(hold, self.horizon, self.gate.n))
        if obs.image.shape[:2] != self._image_size:
            obs = replace(obs, image=resize_frame(obs.image, self._image_size, self.target.image_resize))

        dt = self.config.control_period_s
        if shift == 0 and self.ensembler is not None:
            self.ensembler.reset()
        gate_time = 0.0
        mask = None
        if self.config.safe_envelope:
            tg = time.perf_counter()
            mask = self.action_mask(state, 1.0)
            gate_time += time.perf_counter() - tg
        result = self.decoder.decode(obs, mask, shift)
        actions = self._blend(result.actions, shift, obs.instruction)
        plan = self.trajectory_gate.check(actions, state, dt)
        gate_time += plan.check_time_s
        stats = result.stats
        if not plan.is_halt:
            stats.safety_path = "scaled" if plan.status == SafetyStatus.SCALED else "accepted"
        else:
            # one more try, inside a tighter envelope
            tg = time.perf_counter()
            mask = self.action_mask(state, self.config.redecode_shrink)
            gate_time += time.perf_counter() - tg
            first = plan
            result = self.decoder.decode(obs, mask, shift)
            _merge_stats(stats, result.stats)
            stats.redecoded = 1
            actions = result.actions  # not blended: the earlier chunks may be what made the first plan fail
            plan = self.trajectory_gate.check(actions, state, dt)
            gate_time += plan.check_time_s
            if plan.is_halt:
                stats.safety_path = "halted"
                plan.hold.reason = f"{plan.hold.reason} (after re-decode; first: {first.hold.reason})"
            else:
                stats.safety_path = "redecoded"
        stats.gate_time_s = gate_time
        stats.points_published, stats.points_cut = plan.published, plan.cut
        stats.total_time_s = time.perf_counter() - t0
        verdict = plan.hold if plan.is_halt else plan.verdicts[0]
        if self.ensembler is None:
            return PolicyOutput(result.narration, result.action, verdict, stats, plan=plan, actions=result.actions)
        if plan.is_halt:
            self.ensembler.reset()  # the robot holds: the old plans no longer describe what comes next
        else:
            self.ensembler.push(result.actions, shift, obs.instruction)
        return PolicyOutput(result.narration, actions[0].copy(), verdict, stats, plan=plan, actions=actions)

    def _blend(self, actions: np.ndarray, shift: int, instruction: str) -> np.ndarray:
        """The chunk the gate checks: the decoded one, or its ensemble with earlier chunks."""
        if self.ensembler is None:
            return actions
        return self.ensembler.blend(actions, shift, instruction)

    def action_mask(self, state: RobotState, shrink: float = 1.0) -> np.ndarray:
        """Allowed action bins from the safety envelope: (7, n_bins) for one action, (H, 7, n_bins)
        for a chunk (step k's envelope allows for the k steps before it, ``SafetyGate.envelope``).

        A dimension whose interval holds no bin centre (an interval narrower than a bin
        that misses every centre) allows the single bin nearest to it, so the decoder
        always has a choice; the trajectory gate still checks the result.
        """
        dt = self.config.control_period_s
        masks = [_mask_for_interval(self._bin_values, *self.gate.envelope(state, dt, shrink, k))
                 for k in range(self.horizon)]
        return masks[0] if len(masks) == 1 else np.stack(masks)

    def decode_raw(self, obs: Observation, state: RobotState | None = None, shrink: float = 1.0) -> DecodeResult:
        """Decode without the gate (benchmarks, tests); masked by the envelope when ``state`` is given."""
        mask = self.action_mask(state, shrink) if state is not None else None
        return self.decoder.decode(obs, mask)

    # --- helpers ------------------------------------------------------------------
    def _input_problem(self, obs: Observation, state: RobotState) -> tuple[SafetyStatus, str] | None:
        try:
            q = np.asarray(state.q, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return SafetyStatus.HALT_BAD_INPUT, "joint state is not numeric"
        if q.shape != (self.gate.n,):
            return SafetyStatus.HALT_BAD_INPUT, f"expected {self.gate.n} joint positions, got {q.shape[0]}"
        if not np.all(np.isfinite(q)):
            return SafetyStatus.HALT_NONFINITE, f"measured joint positions not finite: {q}"
        measured = self.gate.measured_problem(q)
        if measured is not None:
            return SafetyStatus.HALT_BAD_INPUT, measured
        img = obs.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            kind = img.dtype if isinstance(img, np.ndarray) else type(img).__name__
            return SafetyStatus.HALT_BAD_INPUT, f"image must be a uint8 array, got {kind}"
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            return SafetyStatus.HALT_BAD_INPUT, f"image must be HxWx3 RGB, got shape {img.shape}"
        try:
            proprio = np.asarray(obs.proprio, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return SafetyStatus.HALT_BAD_INPUT, "proprio is not numeric"
        if self._proprio_dim is not None and proprio.shape != (self._proprio_dim,):
            return SafetyStatus.HALT_BAD_INPUT, f"proprio must have {self._proprio_dim} values, got {proprio.shape[0]}"
        if not np.all(np.isfinite(proprio)):
            return SafetyStatus.HALT_NONFINITE, f"proprio not finite: {proprio}"
        if not isinstance(obs.instruction, str) or not obs.instruction.strip():
            return SafetyStatus.HALT_BAD_INPUT, "instruction is empty"
        unknown_words = getattr(self.target.text_tokenizer, "unknown_words", None)
        if unknown_words is not None:
            unknown = unknown_words(obs.instruction)
            if unknown:
                return SafetyStatus.HALT_BAD_INPUT, f"instruction has words the model does not know: {unknown}"
        return None

    def _use_norm_stats(self, unnorm_key: str) -> None:
        path = Path(self.config.target_dir) / STATS_FILE
        try:
            stats = load_norm_stats(path, unnorm_key)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        old = self.target.action_tokenizer
        self.target.action_tokenizer = ActionTokenizer(old.vocab_size, stats, old.n_bins, old.bin_stride)


def _mask_for_interval(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Bins whose value lies in [low, high] per row; an empty row gets its nearest bin."""
    lo, hi = low[:, None], high[:, None]
    mask = (values >= lo - 1e-12) & (values <= hi + 1e-12)
    empty = ~mask.any(axis=1)
    if np.any(empty):
        gap = np.maximum(np.maximum(lo - values, values - hi), 0.0)
        for i in np.flatnonzero(empty):
            mask[i, int(np.argmin(gap[i]))] = True
    return mask


def _merge_stats(into: DecodeStats, more: DecodeStats) -> None:
    """Add a second decode's counts and times to the step's statistics."""
    for f in fields(DecodeStats):
        a, b = getattr(into, f.name), getattr(more, f.name)
        if (isinstance(a, (int, float)) and not isinstance(a, bool)
                and f.name not in ("redecoded", "chunk_len", "points_published", "points_cut")):
            setattr(into, f.name, a + b)


def _model_image_size(target: VLAModel) -> tuple[int, int]:
    for owner in (target, getattr(target, "config", None)):
        size = getattr(owner, "image_size", None) if owner is not None else None
        if isinstance(size, int):
            return size, size
        if isinstance(size, (tuple, list)) and len(size) == 2:
            return int(size[0]), int(size[1])
    towers = getattr(target, "towers", None)  # OpenVLA adapter: one or more vision towers
    if towers:
        s = int(towers[0].cfg.image_size)
        return s, s
    raise ValueError(f"cannot tell the input image size of {type(target).__name__}")


def _param_stats(module: object) -> tuple[int, int]:
    if not isinstance(module, torch.nn.Module):
        return 0, 0
    params = list(module.parameters()) + list(module.buffers())
    n = sum(p.numel() for p in module.parameters())
    return n, sum(p.numel() * p.element_size() for p in params)
