"""OpenVLA-compatible action tokenizer.

256 uniform bins over [-1, 1] per dimension; action tokens are the last
``n_bins`` ids of the vocabulary (token = vocab_size - digitize(value));
values are normalised with per-dataset q01/q99 statistics (BOUNDS_Q99), the
gripper dimension is not normalised. Statistics live in a JSON file keyed by
dataset name, in OpenVLA's ``dataset_statistics.json`` layout::

    {"sim_panda": {"action": {"q01": [...], "q99": [...], "mask": [...]}, ...}}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from specvla_ros.core.types import ACTION_DIM

_EPS = 1e-8


@dataclass(frozen=True)
class ActionNormStats:
    """q01/q99 per action dimension; ``mask[i]`` False leaves dim i un-normalised."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        for name in ("q01", "q99", "mask"):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (ACTION_DIM,):
                raise ValueError(f"ActionNormStats.{name} must have shape ({ACTION_DIM},), got {arr.shape}")
        q01 = np.asarray(self.q01, dtype=np.float64)
        q99 = np.asarray(self.q99, dtype=np.float64)
        if not (np.all(np.isfinite(q01)) and np.all(np.isfinite(q99))):
            raise ValueError("ActionNormStats q01/q99 must be finite")
        if np.any(q99 < q01):
            raise ValueError(f"ActionNormStats needs q99 >= q01, got q01={q01} q99={q99}")
        object.__setattr__(self, "q01", q01)
        object.__setattr__(self, "q99", q99)
        object.__setattr__(self, "mask", np.asarray(self.mask, dtype=bool))

    @classmethod
    def identity(cls) -> "ActionNormStats":
        """Stats that leave values in [-1, 1] unchanged."""
        return cls(q01=-np.ones(ACTION_DIM), q99=np.ones(ACTION_DIM), mask=np.array([True] * 6 + [False]))

    @classmethod
    def from_actions(cls, actions: np.ndarray) -> "ActionNormStats":
        """Compute q01/q99 from an (N, 7) array of demonstration actions."""
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
            raise ValueError(f"expected actions of shape (N, {ACTION_DIM}), got {actions.shape}")
        return cls(
            q01=np.quantile(actions, 0.01, axis=0),
            q99=np.quantile(actions, 0.99, axis=0),
            mask=np.array([True] * 6 + [False]),
        )

    def to_json_dict(self, actions: np.ndarray | None = None) -> dict:
        out: dict = {"q01": self.q01.tolist(), "q99": self.q99.tolist(), "mask": self.mask.tolist()}
        if actions is not None:
            a = np.asarray(actions, dtype=np.float64)
            out.update(mean=a.mean(0).tolist(), std=a.std(0).tolist(), min=a.min(0).tolist(), max=a.max(0).tolist())
        return out


def load_norm_stats(path: str | Path, unnorm_key: str | None = None) -> ActionNormStats:
    """Read ``dataset_statistics.json``; with one dataset in the file the key may be omitted."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read normalisation statistics {path}: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object keyed by dataset name")
    if unnorm_key is None:
        if len(data) != 1:
            raise ValueError(f"{path} holds several datasets {sorted(data)}; choose one with unnorm_key")
        unnorm_key = next(iter(data))
    if unnorm_key not in data:
        raise ValueError(f"{path}: unnorm_key {unnorm_key!r} not found; available: {sorted(data)}")
    try:
        action = data[unnorm_key]["action"]
        mask = action.get("mask", [True] * 6 + [False])
        return ActionNormStats(q01=np.array(action["q01"]), q99=np.array(action["q99"]), mask=np.array(mask))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: dataset {unnorm_key!r} lacks action q01/q99 ({exc})") from exc


def save_norm_stats(path: str | Path, stats: dict[str, ActionNormStats], actions: dict[str, np.ndarray] | None = None) -> None:
    actions = actions or {}
    payload = {
        key: {"action": s.to_json_dict(actions.get(key)), "num_transitions": int(len(actions[key])) if key in actions else 0}
        for key, s in stats.items()
    }
    Path(path).write_text(json.dumps(payload, indent=2))


def validate_bin_stride(bin_stride: tuple[int, ...] | list[int], n_bins: int) -> tuple[int, ...]:
    """Empty, or one stride per action dimension dividing n_bins (so every run of s bins is whole);
    returns it as a tuple, empty when every stride is 1."""
    if bin_stride is None or any(not float(s).is_integer() for s in bin_stride):
        raise ValueError(f"bin_stride must be empty or {ACTION_DIM} integer strides, got {bin_stride}")
    stride = tuple(int(s) for s in bin_stride)
    if stride and (len(stride) != ACTION_DIM or any(s < 1 or s > n_bins // 2 or n_bins % s for s in stride)):
        raise ValueError(f"bin_stride must be empty or {ACTION_DIM} strides that divide {n_bins} "
                         f"(at most {n_bins // 2}), got {stride}")
    return stride if any(s > 1 for s in stride) else ()


class ActionTokenizer:
    """Maps 7-DoF actions in robot units to the last ``n_bins`` vocabulary ids and back.

    Args:
        vocab_size: size of the model's vocabulary; action ids are
            ``[vocab_size - n_bins, vocab_size)``.
        stats: normalisation statistics (identity when None).
        n_bins: number of bins (OpenVLA: 256).
        bin_stride: per action dimension, encode onto every s-th bin only (the centre bin of each
            run of s, the upper of the two middle ones for even s: half a fine bin up; empty =
            every bin). A model trained on such labels emits only those bins: a coarser resolution
            where 256 bins are finer than the policy can tell apart. Only arrays of whole actions
            (..., 7) can be encoded then.
    """

    def __init__(self, vocab_size: int, stats: ActionNormStats | None = None, n_bins: int = 256,
                 bin_stride: tuple[int, ...] = ()) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        if vocab_size <= n_bins:
            raise ValueError(f"vocab_size ({vocab_size}) must exceed n_bins ({n_bins})")
        self.bin_stride = validate_bin_stride(bin_stride, n_bins)
        self.vocab_size = int(vocab_size)
        self.n_bins = int(n_bins)
        self.stats = stats or ActionNormStats.identity()
        self.bins = np.linspace(-1.0, 1.0, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def action_token_begin(self) -> int:
        """Smallest action token id."""
        return self.vocab_size - self.n_bins

    # --- normalisation -------------------------------------------------
    def normalize(self, action: np.ndarray) -> np.ndarray:
        """Robot units -> [-1, 1] (BOUNDS_Q99); un-masked dims are only clipped."""
        a = np.asarray(action, dtype=np.float64)
        q01, q99, m = self.stats.q01, self.stats.q99, self.stats.mask
        norm = 2.0 * (a - q01) / (q99 - q01 + _EPS) - 1.0
        return np.clip(np.where(m, norm, a), -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """[-1, 1] -> robot units."""
        n = np.asarray(normalized, dtype=np.float64)
        q01, q99, m = self.stats.q01, self.stats.q99, self.stats.mask
        return np.where(m, 0.5 * (n + 1.0) * (q99 - q01) + q01, n)

    # --- tokens --------------------------------------------------------
    def encode_normalized(self, normalized: np.ndarray) -> np.ndarray:
        """Normalised values in [-1, 1] -> token ids (NaN maps to the centre bin)."""
        n = np.nan_to_num(np.asarray(normalized, dtype=np.float64), nan=0.0)
        discretized = np.digitize(np.clip(n, -1.0, 1.0), self.bins)  # 1..n_bins
        if self.bin_stride:
            if discretized.shape[-1:] != (ACTION_DIM,):
                raise ValueError(f"a tokenizer with bin_stride encodes whole actions (..., {ACTION_DIM}), "
                                 f"got shape {discretized.shape}")
            s = np.asarray(self.bin_stride, dtype=np.int64)
            discretized = np.minimum(((discretized - 1) // s) * s + s // 2, self.n_bins - 1) + 1
        return (self.vocab_size - discretized).astype(np.int64)

    def encode(self, action: np.ndarray) -> np.ndarray:
        """Action in robot units, shape (..., 7) -> token ids of the same shape."""
        return self.encode_normalized(self.normalize(action))

    def decode_normalized(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids -> bin centres in [-1, 1]; out-of-range ids are clipped, never index errors."""
        discretized = self.vocab_size - np.asarray(token_ids, dtype=np.int64)
        idx = np.clip(discretized - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[idx]

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids -> action in robot units."""
        return self.unnormalize(self.decode_normalized(token_ids))

    def is_action_token(self, token_ids: np.ndarray) -> np.ndarray:
        t = np.asarray(token_ids)
        return (t >= self.action_token_begin) & (t < self.vocab_size)

    def token_to_bin(self, token_ids: np.ndarray) -> np.ndarray:
        """Action token id -> bin index 0..n_bins-1 (0 = most negative value)."""
        return (self.vocab_size - 1 - np.asarray(token_ids, dtype=np.int64)).clip(0, self.n_bins - 1)

    def bin_to_token(self, bins: np.ndarray) -> np.ndarray:
        return (self.vocab_size - 1 - np.asarray(bins, dtype=np.int64)).astype(np.int64)

    @staticmethod
    def bin_distance(token_a: np.ndarray, token_b: np.ndarray) -> np.ndarray:
        """Distance in bins between two action tokens (what relaxed acceptance measures)."""
        return np.abs(np.asarray(token_a, dtype=np.int64) - np.asarray(token_b, dtype=np.int64))

    def bin_values(self) -> np.ndarray:
        """Robot-unit value that each bin decodes to, shape (7, n_bins), bin order."""
        tokens = self.bin_to_token(np.arange(self.n_bins))
        norm = self.decode_normalized(tokens)  # (n_bins,)
        return self.unnormalize(np.broadcast_to(norm[None, :], (ACTION_DIM, self.n_bins)).T).T

    def bin_mask_for_interval(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Bins whose decoded value lies in [low[i], high[i]] per dimension -> bool (7, n_bins).

        This is how a safety envelope (an interval per action dimension, robot
        units) becomes the allowed-token mask of the decoder.
        """
        values = self.bin_values()
        low = np.asarray(low, dtype=np.float64)[:, None]
        high = np.asarray(high, dtype=np.float64)[:, None]
        return (values >= low - 1e-12) & (values <= high + 1e-12)
