"""The output grammar every decode follows: narration, EON, then H actions of 7 tokens.

H (``horizon``) is the action-chunk length: 1 for a one-action model (OpenVLA), H for a
chunk model (the next H control steps). A state is one int: ``s`` in [0, max_narration]
counts narration tokens emitted; ``max_narration + 1 + a`` means ``a`` action tokens
emitted (a = 0..7H, 7H = done). Each state selects one row of an additive bias table
(0 allowed, -inf banned) applied to the logits of the next position, for target and
draft alike:

    row 0          narration position: text tokens or EON (never action tokens)
    row 1          narration cap reached: EON only
    row 2 + a      action position a (step a // 7, dimension a % 7): action tokens whose
                   bin the mask allows (one mask for every step, or one per step)
"""
from __future__ import annotations

import numpy as np
import torch

from specvla_ros.core.types import ACTION_DIM, MAX_CHUNK_HORIZON

ROW_TEXT = 0
ROW_EON = 1
ROW_ACTION0 = 2


class OutputGrammar:
    """Bias table and state machine of the narration + action grammar.

    Args:
        vocab_size: model vocabulary size V.
        eon_token_id: end-of-narration id.
        text_allowed: bool (V,) ids a narration position may emit (EON is added).
        n_bins: action tokens are the last n_bins ids; bin b <-> id V - 1 - b.
        max_narration: narration tokens allowed before EON is forced.
        action_bin_mask: bool (7, n_bins) in bin order, True = allowed, for every step, or
            (horizon, 7, n_bins), one per step; None = all.
        device: where the bias table lives.
        horizon: actions per decision (H >= 1).
    """

    def __init__(
        self,
        vocab_size: int,
        eon_token_id: int,
        text_allowed: np.ndarray,
        n_bins: int,
        max_narration: int,
        action_bin_mask: np.ndarray | None = None,
        device: torch.device | str = "cpu",
        horizon: int = 1,
    ) -> None:
        if max_narration < 0:
            raise ValueError(f"max_narration must be >= 0, got {max_narration}")
        if not 1 <= horizon <= MAX_CHUNK_HORIZON:
            raise ValueError(f"horizon must be in [1, {MAX_CHUNK_HORIZON}], got {horizon}")
        text_allowed = np.asarray(text_allowed, dtype=bool)
        if text_allowed.shape != (vocab_size,):
            raise ValueError(f"text_allowed must have shape ({vocab_size},), got {text_allowed.shape}")
        if action_bin_mask is None:
            action_bin_mask = np.ones((ACTION_DIM, n_bins), dtype=bool)
        action_bin_mask = np.asarray(action_bin_mask, dtype=bool)
        if action_bin_mask.shape == (ACTION_DIM, n_bins):
            action_bin_mask = np.broadcast_to(action_bin_mask, (horizon, ACTION_DIM, n_bins))
        if action_bin_mask.shape != (horizon, ACTION_DIM, n_bins):
            raise ValueError(f"action_bin_mask must have shape ({ACTION_DIM}, {n_bins}) or ({horizon}, {ACTION_DIM}, "
                             f"{n_bins}), got {action_bin_mask.shape}")
        action_bin_mask = action_bin_mask.reshape(horizon * ACTION_DIM, n_bins)
        empty = np.flatnonzero(~action_bin_mask.any(axis=1))
        if empty.size:
            dims = sorted({i % ACTION_DIM for i in empty.tolist()})
            steps = sorted({i // ACTION_DIM for i in empty.tolist()})
            at = f" at step(s) {steps}" if horizon > 1 else ""
            raise ValueError(f"action_bin_mask allows no bin for action dimension(s) {dims}{at}")
        n_action = horizon * ACTION_DIM
        allowed = np.zeros((ROW_ACTION0 + n_action, vocab_size), dtype=bool)
        allowed[ROW_TEXT] = text_allowed
        allowed[ROW_TEXT, vocab_size - n_bins :] = False
        allowed[ROW_TEXT, eon_token_id] = True
        allowed[ROW_EON, eon_token_id] = True
        bins = np.arange(n_bins)
        for a in range(n_action):
            allowed[ROW_ACTION0 + a, vocab_size - 1 - bins[action_bin_mask[a]]] = True
        self.allowed = allowed
        self.bias = torch.where(
            torch.from_numpy(allowed), 0.0, float("-inf")
        ).to(device=device, dtype=torch.float32)  # (2 + 7H, V)
        self.vocab_size = vocab_size
        self.eon_token_id = int(eon_token_id)
        self.n_bins = n_bins
        self.horizon = int(horizon)
        self.n_action_tokens = n_action
        self.max_narration = int(max_narration)
        self.first_action_state = self.max_narration + 1
        self.done_state = self.first_action_state + n_action
        self.action_begin = vocab_size - n_bins

    @property
    def initial_state(self) -> int:
        return 0

    def row(self, state: int) -> int:
        """Bias row for the token emitted in ``state``."""
        if state < self.max_narration:
            return ROW_TEXT
        if state == self.max_narration:
            return ROW_EON
        return ROW_ACTION0 + (state - self.first_action_state)

    def advance(self, state: int, token: int) -> int:
        """State after emitting ``token`` in ``state`` (tokens are assumed allowed)."""
        if state <= self.max_narration:
            return self.first_action_state if token == self.eon_token_id else state + 1
        return state + 1

    def is_text(self, state: int) -> bool:
        return state <= self.max_narration

    def is_done(self, state: int) -> bool:
        return state >= self.done_state

    def remaining(self, state: int) -> int:
        """Most tokens still to emit from ``state`` (exact once in the action part)."""
        if state <= self.max_narration:
            return self.max_narration - state + 1 + self.n_action_tokens
        return self.done_state - state

    def is_action_row(self, row: int) -> bool:
        return row >= ROW_ACTION0

    def action_index(self, state: int) -> tuple[int, int]:
        """(step, dimension) of the action token emitted in ``state`` (an action state)."""
        return divmod(state - self.first_action_state, ACTION_DIM)
