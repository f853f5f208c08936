"""Drafters: propose k tokens for the target to verify in one pass.

Shaped like transformers' ``CandidateGenerator`` (``get_candidates`` ->
``propose``, ``update_candidate_strategy`` -> ``update``). One decision runs:

    drafter.configure(settings)               # once, from DecodeConfig.draft_settings()
    per decision:
        guess = drafter.previous_output(grammar)  # optional: verified in the target's prefill pass
        drafter.begin(ctx)                    # after the prefill chose the first token (ctx.verified_guess)
        loop:
            tokens, probs = drafter.propose(k, grammar, state, sample, temperature, generator)
            ... target verifies [last, *tokens] ...
            drafter.accept(n_accepted, next_token, target_hidden)   # roll own cache back
            drafter.update(n_accepted, len(tokens))                 # adapt k
        drafter.finish()                      # the output becomes the history of the next decision

Both drafters follow the same output grammar (bias rows) as the target, so
every proposed token is allowed where it stands.

Implementations:
- ``ModelDrafter``: an independent small causal VLA (a ``TinyVLA`` without
  vision encoder) reading the target's vision features through its own projector.
- ``EagleDrafter``: an EAGLE-style head, one LLaMA decoder layer whose input at
  position j is ``fc([embed(x_j), h_{j-1}])`` with ``h`` the target's last hidden
  state (post-norm); it predicts ``h_j`` and uses the target's LM head.

Free candidate sources, no model cost (``CandidateSource``: ``LookaheadSource``, ``HistorySource``;
switched by ``DraftSettings``):
the previous decision's output — the rest of its narration when this decision has begun
the same way (``reuse_narration``, on by default) and its action tokens of chosen
dimensions (``reuse_action_dims``, none by default) — and lookahead (the target's own
predictions past a rejected draft). Greedy output stays exactly the target's.

The EAGLE head itself (a model, with its training API) is ``models.eagle_head``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from specvla_ros.core.decoding.grammar import OutputGrammar
from specvla_ros.core.models.eagle_head import EagleHead
from specvla_ros.core.models.interface import VisionFeatures, VLAModel
from specvla_ros.core.models.kv_cache import CACHE_MARGIN, StaticKVCache
from specvla_ros.core.models.tiny_vla import TinyVLA
from specvla_ros.core.types import ACTION_DIM


@dataclass
class DraftContext:
    """What a drafter needs to start a decision.

    target: the target model (EAGLE reads its embeddings and LM head).
    vision: the frame's shared vision features.
    first_token: the token the target's prefill chose (already emitted).
    target_prefix_hidden: (P, d) target hidden states of the whole prefix (EAGLE only).
    verified_guess: the ``previous_output`` tokens after the first one, verified in the prefill
        pass: ``accept`` follows as after a ``propose`` that drafted them.
    history_shift: control steps executed since the previous decision (where its chunk's
        unexecuted tail starts).
    """

    target: VLAModel
    vision: VisionFeatures
    instruction: str
    proprio: np.ndarray
    first_token: int
    target_prefix_hidden: torch.Tensor | None = None
    verified_guess: list[int] = field(default_factory=list)
    history_shift: int = 1


@dataclass(frozen=True)
class DraftSettings:
    """How a drafter drafts, from ``DecodeConfig.draft_settings()``: its draft length rule and its
    free candidate sources. A source flag True switches the source on, False off, None keeps
    the drafter's own setting."""

    draft_len: int = 4
    max_draft_len: int = 8
    adaptive: bool = True
    max_proposal_len: int = 64  # tokens per proposal, free ones included
    history_narration: bool | None = None  # propose the rest of the previous decision's narration
    history_actions: bool | None = None  # propose the previous decision's action tokens (every dimension)
    lookahead: bool | None = None  # propose the target's own predictions past a rejected draft
    whole_narration: bool | None = None  # the model drafts a narration through [EON] in one proposal
    # an action dimension is drafted from the previous decision only while that draft's measured
    # match rate for it is at least this (0: always); the model drafts it otherwise
    history_min_accept: float | None = None

    def __post_init__(self) -> None:
        if self.max_draft_len < 1 or not 1 <= self.draft_len <= self.max_draft_len:
            raise ValueError(f"draft_len must be in [1, max_draft_len={self.max_draft_len}], got {self.draft_len}")
        if self.max_proposal_len < 1:
            raise ValueError(f"max_proposal_len must be >= 1, got {self.max_proposal_len}")
        if self.history_min_accept is not None and not 0.0 <= self.history_min_accept <= 1.0:
            raise ValueError(f"DraftSettings.history_min_accept must be in [0, 1] or None, got {self.history_min_accept}")
        for name in ("history_narration", "history_actions", "lookahead", "whole_narration"):
            if getattr(self, name) not in (True, False, None):
                raise ValueError(f"DraftSettings.{name} must be true, false or None, got {getattr(self, name)!r}")


@runtime_checkable
class Drafter(Protocol):
    """Proposes draft tokens; see the module docstring for the call order."""

    kind: str  # "model", "eagle", ... (reports)
    num_draft_tokens: int  # current k
    max_draft_len: int
    needs_target_hidden: bool  # the decoder must pass full prefix hidden states in DraftContext
    passes: int  # draft forward passes run since begin()
    reused: int  # tokens proposed from the previous decision since begin()
    looked_ahead: int  # tokens proposed from the target's lookahead since begin()

    @property
    def module(self) -> torch.nn.Module | None:
        """The network that drafts (parameter counts), or None."""
        ...

    def configure(self, settings: DraftSettings) -> None:
        """Apply the draft length rule and switch the free sources (see ``DraftSettings``)."""
        ...

    def previous_output(self, grammar: OutputGrammar, shift: int = 1) -> list[int]:
        """The previous decision's whole output moved ``shift`` control steps on (its chunk's unexecuted
        tail first) as far as ``grammar`` allows it ([] when the drafter keeps no history or narration
        reuse is off): a guess the target can verify in its prefill pass."""
        ...

    def begin(self, ctx: DraftContext) -> None: ...

    def propose(
        self, k: int, grammar: OutputGrammar, state: int, sample: bool, temperature: float,
        generator: torch.Generator | None,
    ) -> tuple[list[int], torch.Tensor | None]:
        """Up to k tokens (fewer if the grammar ends) and, when sampling, their
        distributions q (n, V) float32 (masked by the grammar, temperature applied)."""
        ...

    def accept(self, n_accepted: int, next_token: int | None, target_hidden: torch.Tensor) -> None:
        """The target kept ``n_accepted`` drafts then emitted ``next_token`` (None: decode finished).
        target_hidden: (n_fed, d) target hidden states of the verify pass [last, *drafts]."""
        ...

    def update(self, num_accepted: int, num_proposed: int) -> None: ...

    def finish(self) -> None:
        """The decision is complete: its output becomes the next decision's history."""
        ...


class AdaptiveDraftLength:
    """transformers' heuristic: k += 2 after a fully accepted draft, k -= 1 otherwise, in [1, max]."""

    def __init__(self, draft_len: int, max_draft_len: int, adaptive: bool) -> None:
        self.set_length(DraftSettings(draft_len=draft_len, max_draft_len=max_draft_len, adaptive=adaptive))

    def set_length(self, settings: DraftSettings) -> None:
        self.initial = settings.draft_len
        self.num_draft_tokens = settings.draft_len
        self.max_draft_len = settings.max_draft_len
        self.max_proposal_len = settings.max_proposal_len
        self.adaptive = settings.adaptive

    def update(self, num_accepted: int, num_proposed: int) -> None:
        if not self.adaptive or num_proposed == 0:
            return
        if num_accepted >= num_proposed:
            self.num_draft_tokens = min(self.num_draft_tokens + 2, self.max_draft_len)
        else:
            self.num_draft_tokens = max(1, self.num_draft_tokens - 1)


def _action_dims(dims: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(d) for d in dims}))
    if any(not 0 <= d < ACTION_DIM for d in out):
        raise ValueError(f"reuse_action_dims must lie in [0, {ACTION_DIM}), got {list(dims)}")
    return out


def _pick(
    logits: torch.Tensor, bias: torch.Tensor, sample: bool, temperature: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked argmax or sample from (V,) logits -> (token (1,) int64, q (V,) or None)."""
    masked = logits.float() + bias
    if not sample:
        return masked.argmax(-1, keepdim=True), None
    q = torch.softmax(masked / temperature, dim=-1)
    return torch.multinomial(q, 1, generator=generator), q


class CandidateSource(Protocol):
    """A free source of draft tokens (no model pass) consulted at every draft position, in order,
    before the drafter's model. Verification is unchanged, so greedy output stays exactly the
    target's; in sampling mode its tokens carry a one-hot q (rejection sampling stays exact)."""

    proposed: int  # tokens proposed since the decision began

    def start(self) -> None:
        """A new decision begins."""
        ...

    def start_proposal(self) -> None:
        """A new proposal begins."""
        ...

    def candidate(self, grammar: OutputGrammar, state: int, committed: list[int],
                  drafts: list) -> tuple[int, int | torch.Tensor] | None:
        """(token, feature) for the position after ``committed + drafts`` in grammar ``state``, or None.
        feature: what a feature-reading draft (EAGLE) feeds with the token (``SourcedDrafter._queue``)."""
        ...


class LookaheadSource:
    """The target's own (masked argmax) predictions at the positions after a rejected draft, from the
    verify pass that rejected it (Jacobi-style: made after a wrong token, they still often hold, as
    action dimensions depend more on the image than on each other). They serve the proposal right
    after that pass only; the feature is the target hidden state that made the prediction."""

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self.proposed = 0
        # (logits (m, V), target hidden states (m, d)) past the last rejection, for the next proposal ...
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._active: tuple[torch.Tensor, torch.Tensor] | None = None  # ... and those the current one uses

    def start(self) -> None:
        self.proposed = 0
        self._pending = self._active = None

    def observe_verify(self, n_accepted: int, next_token: int | None, n_drafts: int, target_hidden: torch.Tensor,
                       lm_head: torch.nn.Module | None) -> None:
        """Keep the target's hidden states past a rejection: they predict the positions drafted next."""
        self._pending = None
        if self.enabled and lm_head is not None and next_token is not None and n_accepted < n_drafts:
            hidden = target_hidden[n_accepted + 1 : n_drafts + 1]
            self._pending = (lm_head(hidden).float(), hidden)

    def start_proposal(self) -> None:
        self._active, self._pending = self._pending, None

    def candidate(self, grammar: OutputGrammar, state: int, committed: list[int],
                  drafts: list) -> tuple[int, torch.Tensor] | None:
        j = len(drafts)
        if self._active is None or j >= self._active[0].shape[0]:
            return None
        logits, hidden = self._active
        tok = int((logits[j] + grammar.bias[grammar.row(state)]).argmax(-1, keepdim=True))
        self.proposed += 1
        return tok, hidden[j : j + 1]


#: Weight of the newest decision in the running match rate of each action dimension's history draft.
_MATCH_RATE_WEIGHT = 0.2


class HistorySource:
    """The previous decision's output. At 10 Hz the robot says the same phrase for many frames in a
    row: with ``narration`` the rest of last decision's phrase (through [EON]) is proposed whenever
    the tokens emitted so far match its start; the action tokens of ``action_dims`` (0..6: x, y, z,
    roll, pitch, yaw, gripper) are proposed from last decision's actions moved to this decision's time
    (``shift``, set per decision: the control steps executed since the previous decision): step i
    of this chunk is drafted as step i + shift of the previous one (its unexecuted tail), and steps
    past its end repeat its last action. With one action per decision and shift 1 that is last
    decision's action (the target's consecutive actions often repeat a bin). The feature is the
    token's index in last decision's sequence. ``previous_output`` is the whole of it, for the
    target's prefill pass.

    A dimension whose tokens change from decision to decision (a bin or two of replanning) makes a
    poor free draft: one wrong token wastes the rest of the proposal. So each finished decision is
    scored against what this source would have drafted for it (free: no model runs), per
    dimension, into a running match rate (``match_rate``), and a dimension is drafted here only
    while its rate is at least ``min_accept`` (the model drafts it otherwise; 0: always here)."""

    def __init__(self, eon_token_id: int, narration: bool = True, action_dims: Sequence[int] = (),
                 min_accept: float = 0.0) -> None:
        self.eon_token_id = int(eon_token_id)
        self.narration = narration
        self.action_dims = _action_dims(action_dims)
        self.min_accept = float(min_accept)
        self.match_rate = np.ones(ACTION_DIM)  # optimistic until measured
        self.proposed = 0
        self.shift = 1
        self.last_seq: list[int] = []  # previous finished decision: narration, [EON], 7H action tokens
        self.last_eon = -1  # index of [EON] in last_seq
        self.last_steps = 0  # actions in last_seq

    def start(self) -> None:
        self.proposed = 0

    def start_proposal(self) -> None:
        pass

    def remember(self, output: list[int]) -> bool:
        """Keep a finished decision's tokens as the history; -> whether ``output`` was a whole decision."""
        if self.eon_token_id in output:
            eon = output.index(self.eon_token_id)
            n_action = len(output) - eon - 1
            if n_action > 0 and n_action % ACTION_DIM == 0:
                self._score(output[eon + 1 :])
                self.last_seq, self.last_eon, self.last_steps = list(output), eon, n_action // ACTION_DIM
                return True
        return False

    def _score(self, action_tokens: list[int]) -> None:
        """Fold how well the history (before it is replaced) drafted these action tokens into the
        per-dimension match rates."""
        if not self.last_seq:
            return
        got = np.asarray(action_tokens, dtype=np.int64).reshape(-1, ACTION_DIM)
        drafted = np.array([[self.last_seq[self._action_pos(step, dim, self.shift)] for dim in range(ACTION_DIM)]
                            for step in range(got.shape[0])], dtype=np.int64)
        matched = (got == drafted).mean(axis=0)
        self.match_rate += _MATCH_RATE_WEIGHT * (matched - self.match_rate)

    def drafts_dim(self, dim: int) -> bool:
        """Whether action dimension ``dim`` is drafted from the history now."""
        return dim in self.action_dims and self.match_rate[dim] >= self.min_accept

    def _action_pos(self, step: int, dim: int, shift: int) -> int:
        """Index in last_seq of the token drafted for (step, dim) of a decision ``shift`` steps later."""
        return self.last_eon + 1 + min(step + shift, self.last_steps - 1) * ACTION_DIM + dim

    def previous_output(self, grammar: OutputGrammar, shift: int = 1) -> list[int]:
        """The previous decision's whole output moved ``shift`` steps on, as far as this grammar allows
        it; [] without narration reuse or history."""
        if not self.narration or not self.last_seq:
            return []
        state, out = grammar.initial_state, []
        seq = self.last_seq[: self.last_eon + 1]
        seq += [self.last_seq[self._action_pos(*divmod(a, ACTION_DIM), shift)] for a in range(grammar.n_action_tokens)]
        for tok in seq:
            if grammar.is_done(state) or not bool(torch.isfinite(grammar.bias[grammar.row(state), tok])):
                break
            out.append(tok)
            state = grammar.advance(state, tok)
        return out

    def candidate(self, grammar: OutputGrammar, state: int, committed: list[int],
                  drafts: list) -> tuple[int, int] | None:
        last = self.last_seq
        if not last:
            return None
        if grammar.is_text(state):
            pos = len(committed) + len(drafts)
            if not (self.narration and pos <= self.last_eon and committed == last[: len(committed)]
                    and drafts == last[len(committed) : pos]):
                return None
        else:
            step, dim = grammar.action_index(state)
            if not self.drafts_dim(dim):
                return None
            pos = self._action_pos(step, dim, self.shift)
        tok = last[pos]
        # the grammar may differ from last frame's (e.g. a shorter narration cap or a mask): stop where it objects
        if not bool(torch.isfinite(grammar.bias[grammar.row(state), tok])):
            return None
        self.proposed += 1
        return tok, pos


class SourcedDrafter(AdaptiveDraftLength):
    """A draft model behind the free candidate sources (lookahead, then history): at every position
    the first source with a candidate proposes it; the model drafts the others (at most k model
    tokens per proposal; free tokens do not count). With ``whole_narration`` the model drafts a
    narration through [EON] in one proposal (k then limits its action tokens only): its narration
    drafts are nearly always right, and a model pass costs a fraction of a target pass.

    A subclass keeps ``self._committed`` (this decision's emitted tokens) and ``self._drafts``
    (its last proposal), calls ``_start_decision`` in ``begin`` and ``_note_verify`` in
    ``accept``, and drafts through ``_draft`` with two hooks: ``_queue(token, feature)`` (a
    token the model must read before its next prediction, with the source's feature, None for
    a model token) and ``_model_logits()`` (read the queue, -> (V,) logits of the next position).
    """

    def _init_sources(self, eon_token_id: int, reuse_narration: bool, reuse_action_dims: Sequence[int] = (),
                      lookahead: bool = False) -> None:
        self.history = HistorySource(eon_token_id, reuse_narration, reuse_action_dims)
        self.lookahead_source = LookaheadSource(lookahead)
        self.sources: tuple[CandidateSource, ...] = (self.lookahead_source, self.history)
        self.whole_narration = False  # the model drafts the narration through [EON] regardless of k
        self._committed: list[int] = []

    # the free sources' switches, as the drafter's own settings
    @property
    def reuse_narration(self) -> bool:
        return self.history.narration

    @reuse_narration.setter
    def reuse_narration(self, on: bool) -> None:
        self.history.narration = on

    @property
    def reuse_action_dims(self) -> tuple[int, ...]:
        return self.history.action_dims

    @reuse_action_dims.setter
    def reuse_action_dims(self, dims: Sequence[int]) -> None:
        self.history.action_dims = _action_dims(dims)

    @property
    def lookahead(self) -> bool:
        return self.lookahead_source.enabled

    @lookahead.setter
    def lookahead(self, on: bool) -> None:
        self.lookahead_source.enabled = on

    @property
    def reused(self) -> int:
        return self.history.proposed

    @property
    def looked_ahead(self) -> int:
        return self.lookahead_source.proposed

    def configure(self, settings: DraftSettings) -> None:
        """Draft length rule and free sources from ``settings`` (None keeps this drafter's own)."""
        self.set_length(settings)
        if settings.history_narration is not None:
            self.reuse_narration = settings.history_narration
        if settings.history_actions is not None:
            self.reuse_action_dims = tuple(range(ACTION_DIM)) if settings.history_actions else ()
        if settings.lookahead is not None:
            self.lookahead = settings.lookahead
        if settings.whole_narration is not None:
            self.whole_narration = settings.whole_narration
        if settings.history_min_accept is not None:
            self.history.min_accept = settings.history_min_accept

    def previous_output(self, grammar: OutputGrammar, shift: int = 1) -> list[int]:
        return self.history.previous_output(grammar, shift)

    def finish(self) -> None:
        self._roll_history()

    def _roll_history(self) -> bool:
        """This decision's output becomes the history; -> whether it was a whole decision."""
        kept = self.history.remember(self._committed)
        self._committed = []
        return kept

    def _start_decision(self, ctx: DraftContext) -> None:
        self._roll_history()  # a decision that did not finish leaves no history
        self._committed = [int(ctx.first_token)]
        self.history.shift = int(ctx.history_shift)
        for source in self.sources:
            source.start()

    def _adopt_guess(self, ctx: DraftContext) -> None:
        """The guess past the first token was verified in the prefill pass: ``accept`` follows as after
        a ``propose`` that drafted it."""
        self._drafts, self._n_spec = list(ctx.verified_guess), 0
        self.history.proposed += len(ctx.verified_guess)

    def _note_verify(self, n_accepted: int, next_token: int | None, target_hidden: torch.Tensor,
                     lm_head: torch.nn.Module | None) -> None:
        self.lookahead_source.observe_verify(n_accepted, next_token, len(self._drafts), target_hidden, lm_head)

    @torch.inference_mode()
    def propose(
        self, k: int, grammar: OutputGrammar, state: int, sample: bool, temperature: float,
        generator: torch.Generator | None,
    ) -> tuple[list[int], torch.Tensor | None]:
        """Up to k model tokens (k >= 1) and any free tokens around them, and, when sampling,
        their distributions (n, V); see ``Drafter``."""
        if self._ctx is None:
            raise RuntimeError(f"{type(self).__name__}.propose called before begin()")
        self._start_feed()
        self._n_spec = 0
        self._drafts, q = self._draft(k, grammar, state, sample, temperature, generator)
        return self._drafts, q

    def _ready(self, ctx: DraftContext) -> None:
        """The end of every ``begin``: no proposal yet, the start length, the verified guess adopted."""
        self._drafts, self._n_spec = [], 0
        self.num_draft_tokens = self.initial
        if ctx.verified_guess:
            self._adopt_guess(ctx)

    def _start_feed(self) -> None:
        """A proposal begins: queue what the model has not read yet."""
        raise NotImplementedError

    def _queue(self, token, feature: int | torch.Tensor | None) -> None:  # noqa: ANN001 - int or (1,) tensor
        raise NotImplementedError

    def _model_logits(self) -> torch.Tensor:
        raise NotImplementedError

    def _draft(self, k: int, grammar: OutputGrammar, state: int, sample: bool, temperature: float,
               generator: torch.Generator | None) -> tuple[list[int], torch.Tensor | None]:
        """Free tokens where a source has one, model tokens elsewhere (at most k), until the grammar ends
        or the next position needs a model token past k -> (drafts, q (n, V) when sampling)."""
        drafts: list = []  # ints (free tokens, model text tokens) or (1,) tensors (model action tokens)
        probs: list[torch.Tensor] = []
        n_model = 0
        vocab = grammar.bias.shape[-1]
        for source in self.sources:
            source.start_proposal()
        while not grammar.is_done(state) and len(drafts) < self.max_proposal_len:
            free = None
            for source in self.sources:
                free = source.candidate(grammar, state, self._committed, drafts)
                if free is not None:
                    break
            if free is not None:
                tok, feature = free
                if sample:  # a deterministic proposal: q is one-hot, so rejection sampling stays exact
                    q = torch.zeros(vocab, device=grammar.bias.device)
                    q[tok] = 1.0
                    probs.append(q)
                self._queue(tok, feature)
            else:
                if n_model >= k and not (self.whole_narration and grammar.is_text(state)):
                    break
                logits = self._model_logits()
                tok_t, q = _pick(logits, grammar.bias[grammar.row(state)], sample, temperature, generator)
                if q is not None:
                    probs.append(q)
                n_model += 1
                # only narration positions need the token's value (grammar, history match)
                tok = int(tok_t) if grammar.is_text(state) else tok_t
                self._queue(tok_t, None)
            drafts.append(tok)
            state = grammar.advance(state, tok if isinstance(tok, int) else -1)
        out = [t if isinstance(t, int) else int(t) for t in drafts]
        return out, (torch.stack(probs) if probs else None)


def _ids(tokens: list, device: torch.device) -> torch.Tensor:
    """(n,) int64 ids from ints and/or (1,) tensors."""
    if all(isinstance(t, int) for t in tokens):
        return torch.tensor(tokens, dtype=torch.long, device=device)
    return torch.cat([t.reshape(1) if isinstance(t, torch.Tensor) else torch.tensor([t], device=device)
                      for t in tokens]).to(device=device, dtype=torch.long)


class ModelDrafter(SourcedDrafter):
    """Independent small VLA drafting from the target's shared vision features.

    With ``reuse_narration`` / ``reuse_action_dims`` positions are first drafted from the
    previous decision (``HistorySource``); the model drafts everything else. Tokens it has
    not read yet (committed ones, history tokens) are read in one pass before its next
    prediction.
    """

    kind = "model"
    needs_target_hidden = False

    def __init__(self, model: TinyVLA, draft_len: int = 4, max_draft_len: int = 8, adaptive: bool = True,
                 reuse_narration: bool = True, reuse_action_dims: Sequence[int] = (), lookahead: bool = False) -> None:
        super().__init__(draft_len, max_draft_len, adaptive)
        self.model = model
        self._init_sources(model.text_tokenizer.eon_token_id, reuse_narration, reuse_action_dims, lookahead)
        self._target_lm_head = None  # the target's LM head (lookahead), from begin()
        self._ctx: DraftContext | None = None
        self.cache: StaticKVCache | None = None
        self.passes = 0
        self._prefix_len = 0
        self._n_fed = 0  # committed tokens whose keys/values the cache holds
        self._drafts: list[int] = []
        self._n_spec = 0  # drafts fed speculatively in the last propose
        self._feed: list = []  # tokens the model reads before its next prediction
        self._feed_committed = 0  # how many of them (at the front) are committed tokens

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def begin(self, ctx: DraftContext) -> None:
        self._start_decision(ctx)
        self._target_lm_head = ctx.target.lm_head
        self._ctx = ctx
        self.cache = None  # the prefix is run when the model is first needed (history may draft it all)
        self._prefix_len = 0
        self._n_fed = 0
        self.passes = 0
        self._ready(ctx)

    def _start_feed(self) -> None:
        self._feed = list(self._committed[self._n_fed :])
        self._feed_committed = len(self._feed)

    def _queue(self, token, feature: int | torch.Tensor | None) -> None:  # noqa: ANN001
        self._feed.append(token)

    def _model_logits(self) -> torch.Tensor:
        if self.cache is None:
            ctx = self._ctx
            self.cache, _ = self.model.prefill(ctx.vision, ctx.instruction, ctx.proprio)
            self._prefix_len = len(self.cache)
            self.passes += 1
        logits = self.model.forward(_ids(self._feed, self.model.device), self.cache).logits[-1]
        self.passes += 1
        self._n_fed += self._feed_committed
        self._n_spec += len(self._feed) - self._feed_committed
        self._feed, self._feed_committed = [], 0
        return logits

    def accept(self, n_accepted: int, next_token: int | None, target_hidden: torch.Tensor) -> None:
        self._note_verify(n_accepted, next_token, target_hidden, self._target_lm_head)
        kept = min(n_accepted, self._n_spec)  # the cache holds the first _n_spec drafts
        self._n_fed += kept
        if self.cache is not None:
            self.cache.truncate(self._prefix_len + self._n_fed)
        self._committed.extend(self._drafts[:n_accepted])
        if next_token is not None:
            self._committed.append(int(next_token))
        self._drafts, self._n_spec = [], 0


class EagleDrafter(SourcedDrafter):
    """EAGLE-style drafting from the target's hidden states, embeddings and LM head.

    The target must expose ``embed_tokens(ids)``, ``prefix_embeds(vision, instruction, proprio)``
    and ``lm_head`` (TinyVLA does).

    With ``reuse_narration`` / ``reuse_action_dims`` positions are first drafted from the
    previous decision (``HistorySource``); the head drafts everything else, reading the
    history tokens in one pass before its next prediction. A history token is fed with the
    target's hidden state of the previous decision at the same place in the sequence (same
    phrase or action dimension, next frame: close to this frame's, which the target has not
    computed yet). Those positions are speculative like any draft and are fed again with
    this frame's target features once verified, so only the drafts depend on the stand-ins.
    """

    kind = "eagle"
    needs_target_hidden = True

    @property
    def module(self) -> torch.nn.Module:
        return self.head

    def __init__(self, head: EagleHead, target: TinyVLA, draft_len: int = 4, max_draft_len: int = 8,
                 adaptive: bool = True, reuse_narration: bool = True, reuse_action_dims: Sequence[int] = (),
                 lookahead: bool = False) -> None:
        super().__init__(draft_len, max_draft_len, adaptive)
        self._init_sources(target.text_tokenizer.eon_token_id, reuse_narration, reuse_action_dims, lookahead)
        self.head = head
        self.target = target
        self.cache: StaticKVCache | None = None
        self.passes = 0
        self._pending: list[int] = []  # committed tokens the head has not read (with target features)
        self._pending_feats: list[torch.Tensor] = []
        self._feats: list[torch.Tensor] = []  # (n, d) chunks: the head's input feature of each committed token
        self._last_feats: torch.Tensor | None = None  # (len(history.last_seq), d): the same for the last decision
        self._drafts: list[int] = []
        self._n_spec = 0  # drafts fed speculatively in the last propose
        self._feed: list = []  # tokens the head reads before its next prediction ...
        self._feed_feats: list[torch.Tensor] = []  # ... and their (n, d) input features
        self._feed_drafts = 0  # how many of the fed tokens are drafts (the rest: pending committed ones)
        self._g: torch.Tensor | None = None  # (1, d) the head's last predicted hidden state
        self._ctx: DraftContext | None = None

    @torch.inference_mode()
    def begin(self, ctx: DraftContext) -> None:
        if ctx.target_prefix_hidden is None:
            raise ValueError("EagleDrafter needs the target's prefix hidden states (target_prefix_hidden)")
        self._start_decision(ctx)
        self._ctx = ctx
        self.cache = None  # the prefix is run when the head is first needed (history may draft it all)
        hidden = ctx.target_prefix_hidden.to(self.head.dtype)
        self.passes = 0
        self._pending = [int(ctx.first_token)]
        self._pending_feats = [hidden[-1:]]
        self._feats = [hidden[-1:]]
        self._ready(ctx)

    def _start_feed(self) -> None:
        self._feed, self._feed_feats, self._feed_drafts = list(self._pending), list(self._pending_feats), 0

    def _roll_history(self) -> bool:
        kept = super()._roll_history()
        if kept:
            self._last_feats = torch.cat(self._feats, dim=0)
        self._feats = []
        return kept

    def _queue(self, token, feature: int | torch.Tensor | None) -> None:  # noqa: ANN001
        self._feed.append(token)
        # a head token's feature is the prediction it came from, a lookahead token's the target hidden
        # state that predicted it, a history token's last decision's at the same place
        if feature is None:
            feature = self._g
        elif isinstance(feature, int):
            feature = self._last_feats[feature : feature + 1]
        self._feed_feats.append(feature)
        self._feed_drafts += 1

    def _model_logits(self) -> torch.Tensor:
        if self.cache is None:
            ctx = self._ctx
            embeds = self.target.prefix_embeds(ctx.vision, ctx.instruction, ctx.proprio)[0]  # (P, d)
            hidden = ctx.target_prefix_hidden.to(embeds.dtype)
            prev = torch.cat([hidden.new_zeros(1, hidden.shape[1]), hidden[:-1]], dim=0)
            self.cache = self.head.new_cache(embeds.shape[0] + CACHE_MARGIN)
            self.head.step(embeds, prev, self.cache)
            self.passes += 1
        if self._feed:
            ids = _ids(self._feed, self.head.fc.weight.device)
            self._g = self.head.step(self.target.embed_tokens(ids), torch.cat(self._feed_feats, dim=0), self.cache)[-1:]
            self.passes += 1
            if len(self._feed) > self._feed_drafts:  # the pending committed tokens are read now
                self._pending, self._pending_feats = [], []
            self._n_spec += self._feed_drafts
            self._feed, self._feed_feats, self._feed_drafts = [], [], 0
        return self.target.lm_head(self._g)[0]

    def accept(self, n_accepted: int, next_token: int | None, target_hidden: torch.Tensor) -> None:
        self._note_verify(n_accepted, next_token, target_hidden, self.target.lm_head)
        # speculative positions were fed with draft (or stand-in) features: drop them, refeed with the target's
        if self.cache is not None:
            self.cache.truncate(len(self.cache) - self._n_spec)
        new = self._drafts[:n_accepted] + ([int(next_token)] if next_token is not None else [])
        self._pending.extend(new)
        self._committed.extend(new)
        self._pending_feats.append(target_hidden[: len(new)])
        self._feats.append(target_hidden[: len(new)])
        self._drafts, self._n_spec = [], 0
