"""The one interface every VLA model sits behind (shipped tiny model, OpenVLA,
any transformers causal LM with a vision prefix), and the drafter interface.

A decision runs as:

    vision = target.encode_vision(image)            # once per frame, shared with the draft
    cache, out = target.prefill(vision, instruction, proprio)
    out = target.forward(new_tokens, cache)         # logits + hidden states for new tokens
    cache.truncate(n)                               # roll back rejected tokens, no recompute

Token ids follow one vocabulary: text ids, an end-of-narration id (EON) and,
as the last ``n_bins`` ids, the action tokens of ``ActionTokenizer``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from specvla_ros.core.models.action_tokenizer import ActionTokenizer
from specvla_ros.core.models.frame_resize import ResizeMethod


class ModelLoadError(RuntimeError):
    """A checkpoint directory is missing, incomplete or inconsistent (message says which file and why)."""


def read_json_object(path: Path, missing_hint: str = "") -> dict:
    """A checkpoint's JSON file as a dict; ModelLoadError naming the file if missing or malformed."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: missing{missing_hint}") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


@runtime_checkable
class KVCache(Protocol):
    """Key/value cache of one sequence. ``len(cache)`` counts every position held (prefix included)."""

    def __len__(self) -> int: ...

    def truncate(self, length: int) -> None:
        """Drop every position at index >= length; the kept part is not recomputed."""
        ...


@dataclass
class VisionFeatures:
    """Output of the shared vision encoder for one frame.

    patches: (1, n_patches, d_vision) on the model's device.
    frame_id: the frame these belong to (None: not cacheable).
    keypoints: (1, K, 3) raw keypoints (x, y, peak) of a keypoint model, else None.
    """

    patches: torch.Tensor
    frame_id: int | None = None
    keypoints: torch.Tensor | None = None


@dataclass
class StepOutput:
    """Model outputs for the n positions just fed.

    logits: (n, vocab_size) float32.
    hidden: (n, d_model) last-layer hidden states (after the final norm, before the LM head).
    """

    logits: torch.Tensor
    hidden: torch.Tensor


@runtime_checkable
class TextTokenizer(Protocol):
    vocab_size: int
    eon_token_id: int  # ends the narration; 7 action tokens follow it

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def text_token_ids(self) -> list[int]:
        """Ids a narration position may emit (EON and action ids excluded; empty: no narration)."""
        ...


@runtime_checkable
class VLAModel(Protocol):
    """A vision-language-action model with an incremental, truncatable decoder."""

    text_tokenizer: TextTokenizer
    action_tokenizer: ActionTokenizer
    device: torch.device
    dtype: torch.dtype
    #: How frames of another size are brought to the model's input size (``frame_resize``).
    image_resize: ResizeMethod
    #: Whether ``prefill_with_guess`` works (one pass over the prefix and guessed output tokens).
    can_prefill_with_guess: bool

    @property
    def chunk_horizon(self) -> int:
        """Actions the model emits per decision (its action-chunk length H; 1 = one action)."""
        ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def lm_head(self) -> torch.nn.Module:
        """Hidden states (..., d) -> logits (..., vocab_size) (lookahead and EAGLE drafts read it)."""
        ...

    def encode_vision(self, image: np.ndarray) -> VisionFeatures:
        """HxWx3 uint8 RGB (model input size) -> patch features; computed once per frame."""
        ...

    def prefill(self, vision: VisionFeatures, instruction: str, proprio: np.ndarray,
                return_all_hidden: bool = False) -> tuple[KVCache, StepOutput]:
        """Build the prefix (vision tokens, prompt, proprioception) and run it.

        Returns a fresh cache holding the prefix and the outputs of its LAST position
        (n = 1), whose logits predict the first generated token; with ``return_all_hidden``
        the hidden states of every prefix position (an EAGLE head reads them).
        """
        ...

    def prefill_with_guess(self, vision: VisionFeatures, instruction: str, proprio: np.ndarray, guess: list[int],
                           return_all_hidden: bool = False) -> tuple[KVCache, StepOutput, StepOutput]:
        """``prefill`` and a verify pass over ``guess`` in one pass -> (cache, prefix output, guess output).

        Only called when ``can_prefill_with_guess``.
        """
        ...

    def forward(self, tokens: torch.Tensor, cache: KVCache) -> StepOutput:
        """Feed ``tokens`` (shape (n,), int64) after what ``cache`` holds; the cache grows by n."""
        ...
