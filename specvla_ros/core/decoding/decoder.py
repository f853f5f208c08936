"""Speculative decoder: one loop for every accept rule.

Per decision (``SpeculativeDecoder.decode``), in stages:

    vision:  target.encode_vision(image)         # cached per Observation.frame_id, shared with the draft
    prefill: target.prefill(vision, ...)         # the first token comes from the prefix's last logits
             (or prefill_with_guess: the previous decision's output verified in the same pass);
             drafter.begin(...)
    rounds:  until the grammar is done (narration, EON, exactly 7 action tokens per action of the chunk):
               drafts, q = drafter.propose(k)        # k = drafter's adaptive length, capped by what is left
               out = target.forward([last, *drafts]) # ONE verify pass: logits (k+1, V)
               n, next = rule(out.logits + grammar bias, drafts, q)
               target cache.truncate(kept)           # roll back rejected positions, no recompute
               drafter.accept(n, next, out.hidden); drafter.update(n, k)
    result:  drafter.finish(); tokens -> narration, action

Accept rules (``DecodeConfig.mode``):
- "greedy": accept while draft == masked target argmax; emit the target's token at the
  first mismatch (or a bonus token when all match). Token-identical to target-only greedy.
- "sample": Leviathan/Chen rejection rule on masked, temperature-scaled distributions;
  reproduces the target's distribution.
- "relaxed": greedy, but at action positions a draft within ``relax_bins`` bins of the
  target's argmax is accepted (text positions stay exact). r = 0 is greedy.

The allowed-token mask (grammar rows plus ``action_bin_mask``) is applied to the
target's logits before any rule and to the draft's, so accepted, resampled and
bonus tokens always lie inside it. ``drafter=None`` runs the target-only
autoregressive baseline through the same loop (k = 0).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from specvla_ros.core.decoding.drafters import DraftContext, Drafter, DraftSettings
from specvla_ros.core.models.interface import KVCache, StepOutput, VisionFeatures, VLAModel
from specvla_ros.core.decoding.grammar import OutputGrammar
from specvla_ros.core.types import ACTION_DIM, MAX_CHUNK_HORIZON, DecodeStats, Observation

MODES = ("greedy", "sample", "relaxed")


@dataclass
class DecodeConfig:
    """How the decoder accepts draft tokens and how long drafts and narrations are."""

    mode: str = "greedy"
    relax_bins: int = 0
    draft_len: int = 4
    max_draft_len: int = 8
    adaptive_draft: bool = True
    # most tokens one target pass verifies, free drafts included (and the previous output guessed in
    # the prefill pass): a verify pass costs more with every token, and past the first wrong one the
    # rest of a long proposal is paid for and thrown away
    max_proposal_len: int = 64
    # Free drafts (no model pass; greedy output stays exactly the target's and sampling keeps its
    # distribution). True switches a source on, False off, None keeps the drafter's own setting.
    history_actions: bool | None = True  # propose the previous decision's action tokens; in greedy and
    #   relaxed mode also verify its whole output in the target's prefill pass
    lookahead: bool | None = True  # past a rejected draft, the target's own predictions from that pass
    whole_narration: bool | None = True  # the draft model drafts the narration through [EON] in one proposal
    # history_actions drafts an action dimension only while the previous decision's tokens have
    # matched the target's at least this often there (measured per dimension, running); the draft
    # model drafts the others. 0 = every dimension always (None keeps the drafter's own setting)
    history_min_accept: float | None = 0.8
    history_narration: bool | None = None  # propose the rest of the previous decision's narration
    max_narration_tokens: int = 12
    # actions decoded per decision: 0 = the target's own chunk length (``VLAModel.chunk_horizon``);
    # fewer is allowed (a causal model's first h actions do not depend on the later ones)
    horizon: int = 0
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"DecodeConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.relax_bins < 0:
            raise ValueError(f"DecodeConfig.relax_bins must be >= 0, got {self.relax_bins}")
        if self.max_draft_len < 1:
            raise ValueError(f"DecodeConfig.max_draft_len must be >= 1, got {self.max_draft_len}")
        if not 1 <= self.draft_len <= self.max_draft_len:
            raise ValueError(f"DecodeConfig.draft_len must be in [1, max_draft_len={self.max_draft_len}], got {self.draft_len}")
        if self.max_proposal_len < 1:
            raise ValueError(f"DecodeConfig.max_proposal_len must be >= 1, got {self.max_proposal_len}")
        if self.max_narration_tokens < 0:
            raise ValueError(f"DecodeConfig.max_narration_tokens must be >= 0, got {self.max_narration_tokens}")
        if not 0 <= self.horizon <= MAX_CHUNK_HORIZON:
            raise ValueError(f"DecodeConfig.horizon must be in [0, {MAX_CHUNK_HORIZON}] (0 = the model's), got {self.horizon}")
        if not (self.temperature > 0.0 and np.isfinite(self.temperature)):
            raise ValueError(f"DecodeConfig.temperature must be a finite number > 0, got {self.temperature}")
        self.draft_settings()  # validates the source flags

    def draft_settings(self) -> DraftSettings:
        """What the drafter is configured with (once, when the decoder is built)."""
        return DraftSettings(draft_len=self.draft_len, max_draft_len=self.max_draft_len, adaptive=self.adaptive_draft,
                             max_proposal_len=self.max_proposal_len,
                             history_narration=self.history_narration, history_actions=self.history_actions,
                             lookahead=self.lookahead, whole_narration=self.whole_narration,
                             history_min_accept=self.history_min_accept)

    @property
    def prefill_guess(self) -> bool:
        """Verify the previous output in the prefill pass (sampling would need its q: greedy, relaxed only)."""
        return self.history_actions is True and self.mode in ("greedy", "relaxed")


@dataclass
class DecodeResult:
    """One decision: narration text and ids, H x 7 action tokens, the actions in robot units, stats."""

    narration: str
    narration_ids: list[int]
    action_tokens: np.ndarray  # (7H,) int64
    actions: np.ndarray  # (H, 7) float64, robot units: the chunk, one action per control step
    stats: DecodeStats
    token_ids: list[int]  # everything emitted: narration, EON, 7H action tokens

    @property
    def action(self) -> np.ndarray:
        """(7,) the chunk's first action."""
        return self.actions[0]


@dataclass
class _Run:
    """The state of one decision while it is decoded."""

    grammar: OutputGrammar
    stats: DecodeStats
    t_start: float
    t_mark: float = 0.0
    cache: KVCache | None = None
    tokens: list[int] = field(default_factory=list)
    state: int = 0

    def __post_init__(self) -> None:
        self.state = self.grammar.initial_state


@dataclass
class _Verified:
    """Draft tokens a target pass has already verified (the guess in the prefill pass) and its output."""

    drafts: list[int]
    output: StepOutput


# --- accept rules (pure functions; tested directly) ----------------------------------------

def greedy_accept(
    logits: torch.Tensor, drafts: torch.Tensor, relax_positions: torch.Tensor | None = None, relax_bins: int = 0
) -> tuple[int, int]:
    """Exact (or relaxed) greedy verification.

    logits: (k+1, V) masked target logits at [last, *drafts]; drafts: (k,) int64.
    relax_positions: (k,) bool, True where |draft - argmax| <= relax_bins also accepts
    (action positions; adjacent action ids are adjacent bins).
    Returns (n_accepted, next_token) with next_token = target argmax at position n.
    """
    target = logits.argmax(dim=-1)
    k = drafts.shape[0]
    if k == 0:
        return 0, int(target[0])
    match = drafts == target[:k]
    if relax_positions is not None and relax_bins > 0:
        match |= relax_positions & ((drafts - target[:k]).abs() <= relax_bins)
    n = int(match.to(torch.int32).cumprod(0).sum())
    return n, int(target[n])


def rejection_accept(
    p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Leviathan/Chen speculative sampling.

    p: (k+1, V) target probabilities at [last, *drafts]; q: (k, V) draft probabilities
    the drafts were sampled from; drafts: (k,) int64. Draft i is accepted with
    probability min(1, p_i(x)/q_i(x)); at the first rejection the token is sampled from
    norm(max(0, p_n - q_n)); when all k are accepted a bonus token is sampled from p_k.
    Returns (n_accepted, next_token).
    """
    k = drafts.shape[0]
    if k:
        idx = torch.arange(k, device=p.device)
        p_d = p[idx, drafts]
        q_d = q[idx, drafts]
        u = torch.rand(k, generator=generator, device=p.device, dtype=p.dtype)
        accepted = u * q_d < p_d  # u < p/q without dividing by a zero q
        n = int(accepted.to(torch.int32).cumprod(0).sum())
    else:
        n = 0
    if n < k:
        residual = (p[n] - q[n]).clamp_(min=0.0)
        total = residual.sum()
        dist = residual / total if float(total) > 0.0 else p[n]
    else:
        dist = p[n]
    return n, int(torch.multinomial(dist, 1, generator=generator))


# --- the decoder ---------------------------------------------------------------------------

def text_allowed_mask(target: VLAModel) -> np.ndarray:
    """Ids a narration position may emit: the tokenizer's text ids."""
    vocab = target.vocab_size
    allowed = np.zeros(vocab, dtype=bool)
    allowed[np.asarray(target.text_tokenizer.text_token_ids(), dtype=np.int64)] = True
    return allowed


class SpeculativeDecoder:
    """Decodes narration + 7 action tokens from one observation (see the module docstring).

    Args:
        target: the verifying VLA.
        drafter: proposes tokens; None = target-only autoregressive baseline.
        config: accept rule, draft lengths, narration cap, sampling settings.
    """

    def __init__(self, target: VLAModel, drafter: Drafter | None, config: DecodeConfig | None = None) -> None:
        self.target = target
        self.drafter = drafter
        self.config = config or DecodeConfig()
        if drafter is not None:
            drafter.configure(self.config.draft_settings())
        self.generator = torch.Generator(device=target.device)
        self.generator.manual_seed(self.config.seed)
        self._text_allowed = text_allowed_mask(target)
        model_h = int(target.chunk_horizon)
        if self.config.horizon > model_h:
            raise ValueError(f"DecodeConfig.horizon {self.config.horizon} exceeds the target's chunk length {model_h}")
        self.horizon = self.config.horizon or model_h
        self._default_grammar = self._make_grammar(None)
        self._vision_cache: tuple[int, VisionFeatures] | None = None
        n_rows = self._default_grammar.bias.shape[0]
        self._is_action_row = torch.tensor([self._default_grammar.is_action_row(r) for r in range(n_rows)],
                                           device=target.device)
        self._cuda = target.device.type == "cuda"

    def _make_grammar(self, action_bin_mask: np.ndarray | None) -> OutputGrammar:
        at = self.target.action_tokenizer
        return OutputGrammar(
            self.target.vocab_size, self.target.text_tokenizer.eon_token_id, self._text_allowed, at.n_bins,
            self.config.max_narration_tokens, action_bin_mask, self.target.device, self.horizon,
        )

    def _clock(self) -> float:
        if self._cuda:  # kernels run asynchronously: time only what has finished
            torch.cuda.synchronize(self.target.device)
        return time.perf_counter()

    def vision_features(self, obs: Observation) -> tuple[VisionFeatures, bool]:
        """Features of ``obs.image``, computed once per ``obs.frame_id`` -> (features, was_cached)."""
        cached = self._vision_cache
        if obs.frame_id is not None and cached is not None and cached[0] == obs.frame_id:
            return cached[1], True
        feats = self.target.encode_vision(obs.image)
        feats.frame_id = obs.frame_id
        self._vision_cache = (obs.frame_id, feats) if obs.frame_id is not None else None
        return feats, False

    @torch.inference_mode()
    def decode(self, obs: Observation, action_bin_mask: np.ndarray | None = None, shift: int = 1) -> DecodeResult:
        """Observation -> narration + H actions (raises ValueError on an empty mask row).

        action_bin_mask: (7, n_bins) for every step or (H, 7, n_bins) per step; None = all bins.
        shift: control steps executed since the previous decision: the previous chunk's tail from
            there is this decision's free draft (``HistorySource``).
        """
        if shift < 0:
            raise ValueError(f"shift must be >= 0 control steps, got {shift}")
        grammar = self._default_grammar if action_bin_mask is None else self._make_grammar(action_bin_mask)
        run = _Run(grammar=grammar, stats=DecodeStats(mode=self.config.mode), t_start=self._clock())
        vision = self._vision_stage(obs, run)
        verified = self._prefill_stage(obs, vision, run, shift)
        while not grammar.is_done(run.state):
            self._round(run, verified)
            verified = None
        return self._result_stage(run)

    def _vision_stage(self, obs: Observation, run: _Run) -> VisionFeatures:
        vision, run.stats.vision_cached = self.vision_features(obs)
        run.t_mark = self._clock()
        run.stats.vision_time_s = run.t_mark - run.t_start
        return vision

    def _prefill_stage(self, obs: Observation, vision: VisionFeatures, run: _Run, shift: int) -> _Verified | None:
        """Run the prefix (with the previous output as a guess when the target and mode allow it), emit
        the first token and start the drafter -> the guess tokens verified in this pass, if any."""
        drafter, grammar, stats = self.drafter, run.grammar, run.stats
        need_hidden = drafter is not None and drafter.needs_target_hidden
        guess = (drafter.previous_output(grammar, shift)[: self.config.max_proposal_len]
                 if drafter is not None and self.config.prefill_guess and self.target.can_prefill_with_guess else [])
        if guess:
            run.cache, out, guess_out = self.target.prefill_with_guess(
                vision, obs.instruction, obs.proprio, guess, return_all_hidden=need_hidden)
        else:
            run.cache, out = self.target.prefill(vision, obs.instruction, obs.proprio, return_all_hidden=need_hidden)
        first = self._first_token(out.logits[-1] + grammar.bias[grammar.row(run.state)])
        run.tokens = [first]
        run.state = grammar.advance(run.state, first)
        stats.target_passes = 1
        verified = None
        if guess and guess[0] == first and len(guess) > 1:
            verified = _Verified(guess[1:], guess_out)
        elif guess:  # the guess went wrong at once: keep the prefix only
            run.cache.truncate(len(run.cache) - len(guess))
        t_pre = self._clock()
        stats.prefill_time_s = t_pre - run.t_mark
        if drafter is not None:
            drafter.begin(DraftContext(self.target, vision, obs.instruction, obs.proprio, first,
                                       out.hidden if need_hidden else None,
                                       verified.drafts if verified is not None else [], shift))
            stats.draft_time_s += self._clock() - t_pre
        return verified

    def _first_token(self, logits: torch.Tensor) -> int:
        if self.config.mode == "sample":
            return int(torch.multinomial(torch.softmax(logits / self.config.temperature, -1), 1,
                                         generator=self.generator))
        return int(logits.argmax())

    def _round(self, run: _Run, verified: _Verified | None) -> None:
        """One draft + verify + accept round (drafts verified in the prefill pass need no new pass)."""
        drafter, grammar, stats = self.drafter, run.grammar, run.stats
        q = None
        if verified is not None:
            drafts, out = verified.drafts, verified.output
        else:
            k = min(drafter.num_draft_tokens, grammar.remaining(run.state)) if drafter is not None else 0
            drafts = []
            t0 = self._clock()
            if k > 0:
                drafts, q = drafter.propose(k, grammar, run.state, self.config.mode == "sample",
                                            self.config.temperature, self.generator)
                cap = self.config.max_proposal_len
                if len(drafts) > cap:  # a drafter that ignores the cap: verify no more than it allows
                    drafts, q = drafts[:cap], (q[:cap] if q is not None else None)
            t1 = self._clock()
            stats.draft_time_s += t1 - t0
            out = self.target.forward(torch.tensor([run.tokens[-1], *drafts], dtype=torch.long,
                                                   device=self.target.device), run.cache)
            stats.verify_time_s += self._clock() - t1
            stats.target_passes += 1
        n, next_token, states = self._verify(run, drafts, q, out.logits)
        # keep [last, drafts[:n]] in the target cache; the next token is fed next round
        run.cache.truncate(len(run.cache) - (len(drafts) - n))
        run.tokens.extend(drafts[:n])
        run.state = states[n]
        if next_token is not None:
            run.tokens.append(next_token)
            run.state = grammar.advance(run.state, next_token)
        stats.drafted += len(drafts)
        stats.accepted += n
        if drafter is not None:
            drafter.accept(n, next_token, out.hidden)
            drafter.update(n, len(drafts))

    def _verify(self, run: _Run, drafts: list[int], q: torch.Tensor | None,
                logits: torch.Tensor) -> tuple[int, int | None, list[int]]:
        """The accept rule over the k+1 verified positions -> (accepted, next token or None when the
        drafts completed the grammar, grammar state after each draft)."""
        grammar, cfg = run.grammar, self.config
        states = [run.state]
        for d in drafts:
            states.append(grammar.advance(states[-1], d))
        n_draft = len(drafts)
        # a position after the grammar's end is never used; give it any valid row
        rows = [grammar.row(min(st, grammar.done_state - 1)) for st in states]
        logits = logits + grammar.bias[rows]
        draft_t = torch.tensor(drafts, dtype=torch.long, device=logits.device)
        if cfg.mode == "sample":
            p = torch.softmax(logits / cfg.temperature, dim=-1)
            n, nxt = rejection_accept(p, q if q is not None else p[:0], draft_t, self.generator)
        else:
            relax = cfg.relax_bins if cfg.mode == "relaxed" else 0
            relax_pos = self._is_action_row[rows[:n_draft]] if relax > 0 and n_draft else None
            n, nxt = greedy_accept(logits, draft_t, relax_pos, relax)
        finished = n == n_draft and grammar.is_done(states[n_draft])
        return n, None if finished else nxt, states

    def _result_stage(self, run: _Run) -> DecodeResult:
        stats = run.stats
        if self.drafter is not None:
            self.drafter.finish()
            stats.draft_passes = self.drafter.passes
        stats.total_time_s = self._clock() - run.t_start
        stats.emitted = len(run.tokens)
        # overhead: everything that is not a model call (rules, bookkeeping, output assembly)
        stats.overhead_time_s = max(0.0, stats.total_time_s - stats.vision_time_s - stats.prefill_time_s
                                    - stats.draft_time_s - stats.verify_time_s)
        return self._result(run.tokens, run.grammar, stats)

    def _result(self, tokens: list[int], grammar: OutputGrammar, stats: DecodeStats) -> DecodeResult:
        # last line of defence: only NaN logits can slip a token past the bias table
        state = grammar.initial_state
        for i, tok in enumerate(tokens):
            if grammar.is_done(state) or not grammar.allowed[grammar.row(state), tok]:
                raise RuntimeError(f"decoded token {tok} at position {i} violates the output grammar/mask "
                                   "(the model produced non-finite logits?)")
            state = grammar.advance(state, tok)
        eon = grammar.eon_token_id
        cut = tokens.index(eon)
        narration_ids = tokens[:cut]
        action_tokens = np.asarray(tokens[cut + 1 : cut + 1 + grammar.n_action_tokens], dtype=np.int64)
        actions = self.target.action_tokenizer.decode(action_tokens.reshape(grammar.horizon, ACTION_DIM))
        stats.chunk_len = grammar.horizon
        return DecodeResult(
            narration=self.target.text_tokenizer.decode(narration_ids),
            narration_ids=narration_ids,
            action_tokens=action_tokens,
            actions=np.asarray(actions, dtype=np.float64).reshape(grammar.horizon, ACTION_DIM),
            stats=stats,
            token_ids=list(tokens),
        )
