"""Action chunks in the core: the grammar of H actions, speculative decoding of a chunk (exact
equals the target's own greedy chunk; the previous chunk's unexecuted tail as the free draft),
per-step envelopes and the plan the policy returns (every point through the trajectory gate)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
from specvla_ros.core.decoding.drafters import HistorySource, ModelDrafter
from specvla_ros.core.decoding.grammar import OutputGrammar
from specvla_ros.core.models.loading import load_drafter, load_vla
from specvla_ros.core.models.testing import make_random_checkpoint, make_random_draft
from specvla_ros.core.policy import Policy, PolicyConfig
from specvla_ros.core.safety.trajectory import TrajectoryGate
from specvla_ros.core.types import Observation, RobotState, SafetyStatus

H = 4
HOME_Q = np.array([0.0, -0.05, 0.0, -2.35, 0.0, 2.3, np.pi / 4])
PROMPT = "pick up the red cube"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chunk_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("chunk_ckpt")
    target = make_random_checkpoint(root / "target", preset="test", seed=3, chunk_horizon=H)
    draft = make_random_draft(root / "draft", target, kind="model", seed=4)
    eagle = make_random_draft(root / "eagle", target, kind="eagle", seed=5)
    return target, draft, eagle


@pytest.fixture(scope="module")
def target(chunk_ckpts):
    return load_vla(chunk_ckpts[0], device="cpu")


def obs(seed: int, frame_id: int | None = None) -> Observation:
    rng = np.random.default_rng(seed)
    return Observation(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), PROMPT,
                       np.concatenate([HOME_Q, [0.08]]).astype(np.float32), frame_id)


def narrow_mask(target, n_allowed: int, seed: int, per_step: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (H, 7, target.action_tokenizer.n_bins) if per_step else (7, target.action_tokenizer.n_bins)
    mask = np.zeros(shape, dtype=bool)
    for row in mask.reshape(-1, shape[-1]):
        row[rng.choice(row.size, n_allowed, replace=False)] = True
    return mask


# --- grammar --------------------------------------------------------------------------------
def test_grammar_of_a_chunk_counts_h_actions_and_masks_each_step() -> None:
    vocab, n_bins, eon = 40, 16, 5
    text = np.zeros(vocab, dtype=bool)
    text[:10] = True
    mask = np.ones((3, 7, n_bins), dtype=bool)
    mask[2, 4] = False
    mask[2, 4, 7] = True  # step 2, dimension 4: bin 7 only
    g = OutputGrammar(vocab, eon, text, n_bins, max_narration=2, action_bin_mask=mask, horizon=3)
    assert g.n_action_tokens == 21 and g.done_state == g.first_action_state + 21
    state = g.advance(g.initial_state, eon)
    assert g.remaining(state) == 21
    for a in range(21):
        step, dim = g.action_index(state)
        assert (step, dim) == divmod(a, 7)
        allowed = np.flatnonzero(g.allowed[g.row(state)])
        if (step, dim) == (2, 4):
            assert allowed.tolist() == [vocab - 1 - 7]
        else:
            assert allowed.size == n_bins and allowed.min() == vocab - n_bins
        assert not g.is_done(state)
        state = g.advance(state, int(allowed[0]))
    assert g.is_done(state)
    # one (7, n_bins) mask applies to every step; an empty row names its step
    g1 = OutputGrammar(vocab, eon, text, n_bins, 2, np.ones((7, n_bins), dtype=bool), horizon=3)
    assert g1.bias.shape == (2 + 21, vocab)
    bad = np.ones((3, 7, n_bins), dtype=bool)
    bad[1, 6] = False
    with pytest.raises(ValueError, match=r"dimension\(s\) \[6\] at step\(s\) \[1\]"):
        OutputGrammar(vocab, eon, text, n_bins, 2, bad, horizon=3)
    with pytest.raises(ValueError, match="horizon"):
        OutputGrammar(vocab, eon, text, n_bins, 2, None, horizon=0)


# --- the previous chunk as the draft -----------------------------------------------------------
def test_history_moves_the_previous_chunk_by_the_executed_steps() -> None:
    vocab, n_bins, eon = 300, 256, 5
    text = np.zeros(vocab, dtype=bool)
    text[:10] = True
    g = OutputGrammar(vocab, eon, text, n_bins, max_narration=4, horizon=3)
    acts = [[vocab - 1 - (10 * s + d) for d in range(7)] for s in range(3)]  # step s, dim d -> bin 10s + d
    h = HistorySource(eon, narration=True, action_dims=range(7))
    assert h.remember([1, 2, eon, *sum(acts, [])])
    assert h.last_steps == 3
    for shift, steps in ((0, [0, 1, 2]), (1, [1, 2, 2]), (2, [2, 2, 2]), (5, [2, 2, 2])):
        assert h.previous_output(g, shift) == [1, 2, eon, *sum((acts[s] for s in steps), [])], shift
    # candidates at action positions follow the same offset
    h.shift = 1
    state = g.advance(g.advance(g.advance(g.initial_state, 1), 2), eon)
    for a in range(21):
        tok, pos = h.candidate(g, state, [1, 2, eon], [])
        assert tok == acts[min(a // 7 + 1, 2)][a % 7]
        state = g.advance(state, tok)
    # a one-action history moved one step is that action again (the single-step behaviour)
    g1 = OutputGrammar(vocab, eon, text, n_bins, max_narration=4)
    h1 = HistorySource(eon, narration=True, action_dims=range(7))
    h1.remember([1, eon, *acts[0]])
    assert h1.previous_output(g1, 1) == [1, eon, *acts[0]]


def test_history_drafts_only_the_dimensions_it_has_been_matching() -> None:
    """Each finished decision is scored against what the history would have drafted for it; a
    dimension whose tokens keep changing (x here) drops below min_accept and is left to the model,
    the steady ones are still drafted from the history."""
    vocab, n_bins, eon = 300, 256, 5
    text = np.zeros(vocab, dtype=bool)
    text[:10] = True
    g = OutputGrammar(vocab, eon, text, n_bins, max_narration=4, horizon=2)
    h = HistorySource(eon, narration=True, action_dims=range(7), min_accept=0.8)
    h.shift = 1

    def output(i: int) -> list[int]:  # dim 0 moves a bin every decision, the others stay
        return [1, eon] + [vocab - 1 - (i % 2 if d == 0 else 10 + d) for _ in range(2) for d in range(7)]

    state = g.advance(g.advance(g.initial_state, 1), eon)
    assert h.remember(output(0)) and h.candidate(g, state, [1, eon], []) is not None  # unmeasured: drafted
    for i in range(1, 12):
        assert h.remember(output(i))
    assert h.match_rate[0] < 0.1 and np.all(h.match_rate[1:] > 0.99)
    assert h.candidate(g, state, [1, eon], []) is None  # x: the model's
    y_state = g.advance(state, vocab - 1)
    assert h.candidate(g, y_state, [1, eon], [vocab - 1]) == (vocab - 1 - 11, h.last_eon + 1 + 7 + 1)
    h.min_accept = 0.0  # 0: every dimension, as before
    assert h.candidate(g, state, [1, eon], []) is not None


# --- decoding a chunk ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chunk_reference(target):
    base = SpeculativeDecoder(target, None, DecodeConfig())
    return {(seed, masked): base.decode(obs(seed), narrow_mask(target, 2, seed, per_step=True) if masked else None)
            for seed in range(3) for masked in (False, True)}


@pytest.mark.parametrize("kind", ["model", "eagle", "self"])
@pytest.mark.parametrize("mode", ["greedy", "relaxed"])
def test_speculative_chunk_equals_or_stays_near_the_targets_own_chunk(kind, mode, chunk_ckpts, target,
                                                                      chunk_reference) -> None:
    drafter = ModelDrafter(target) if kind == "self" else load_drafter(chunk_ckpts[1 if kind == "model" else 2], target)
    relax = 3 if mode == "relaxed" else 0
    spec = SpeculativeDecoder(target, drafter, DecodeConfig(mode=mode, relax_bins=relax))
    at = target.action_tokenizer
    for seed in range(3):
        for masked in (False, True):
            want = chunk_reference[(seed, masked)]
            mask = narrow_mask(target, 2, seed, per_step=True) if masked else None
            # the same frame twice: the second decision drafts from the first one's chunk
            for shift in (1, 0):
                got = spec.decode(obs(seed), mask, shift=shift)
                assert got.actions.shape == (H, 7) and got.action_tokens.shape == (7 * H,)
                np.testing.assert_array_equal(got.action, got.actions[0])
                if mode == "greedy":
                    assert got.token_ids == want.token_ids, (kind, seed, masked, shift)
                    np.testing.assert_array_equal(got.actions, want.actions)
                else:
                    assert got.narration_ids == want.narration_ids
                    # each action token within r bins of the target's own (masked) choice after the same prefix
                    vis = target.encode_vision(obs(seed).image)
                    cache, _ = target.prefill(vis, PROMPT, obs(seed).proprio)
                    logits = target.forward(torch.tensor(got.token_ids[:-1]), cache).logits[len(got.narration_ids):]
                    logits = logits[:, at.action_token_begin:].float()
                    if mask is not None:  # bin b <-> column n_bins - 1 - b
                        allowed = torch.from_numpy(mask.reshape(7 * H, -1)[:, ::-1].copy())
                        logits = logits.masked_fill(~allowed, float("-inf"))
                    choice = logits.argmax(-1) + at.action_token_begin
                    assert (torch.from_numpy(got.action_tokens) - choice).abs().max() <= relax, (kind, seed)
                if mask is not None:
                    bins = at.token_to_bin(got.action_tokens).reshape(H, 7)
                    assert all(mask[s, d, bins[s, d]] for s in range(H) for d in range(7))
                assert got.stats.chunk_len == H


@pytest.mark.parametrize("cap", [3, 9])
def test_no_verify_pass_checks_more_than_max_proposal_len(cap, chunk_ckpts, target, chunk_reference) -> None:
    """The cap holds for free drafts too (the previous chunk, lookahead) and for the guess verified in
    the prefill pass; greedy output is still exactly the target's."""
    spec = SpeculativeDecoder(target, load_drafter(chunk_ckpts[1], target), DecodeConfig(max_proposal_len=cap))
    for seed in range(3):
        for shift in (1, 0):  # shift 0 on the same frame: the whole previous chunk would be the draft
            got = spec.decode(obs(seed), shift=shift)
            assert got.token_ids == chunk_reference[(seed, False)].token_ids
            # every pass emits at most cap + 1 tokens: the accepted drafts and the target's own
            assert got.stats.drafted <= cap * got.stats.target_passes
            assert got.stats.target_passes >= -(-len(got.token_ids) // (cap + 1))


def test_the_previous_chunk_is_verified_in_the_prefill_pass(chunk_ckpts, target) -> None:
    """Shift 0 on the same frame: the whole previous output is the target's own, accepted in one pass;
    shifted by one step the tail is drafted and greedy output is unchanged."""
    spec = SpeculativeDecoder(target, load_drafter(chunk_ckpts[1], target), DecodeConfig(max_proposal_len=64))
    plain = SpeculativeDecoder(target, None, DecodeConfig())
    first = spec.decode(obs(7))
    same = spec.decode(obs(7), shift=0)
    assert same.token_ids == first.token_ids
    assert same.stats.target_passes == 1
    moved = spec.decode(obs(8), shift=1)
    assert moved.token_ids == plain.decode(obs(8)).token_ids


def test_a_shorter_decode_horizon_is_the_chunks_prefix(target) -> None:
    full = SpeculativeDecoder(target, None, DecodeConfig()).decode(obs(1))
    short = SpeculativeDecoder(target, None, DecodeConfig(horizon=2)).decode(obs(1))
    assert short.actions.shape == (2, 7)
    np.testing.assert_array_equal(short.actions, full.actions[:2])
    with pytest.raises(ValueError, match="exceeds the target's chunk length"):
        SpeculativeDecoder(target, None, DecodeConfig(horizon=H + 1))


# --- the policy's plan -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def chunk_policy(chunk_ckpts) -> Policy:
    return Policy(PolicyConfig(target_dir=str(chunk_ckpts[0]), draft_dir=str(chunk_ckpts[1]), drafter="model",
                               device="cpu"))


def test_policy_plan_is_the_chunk_checked_as_a_path(chunk_policy: Policy) -> None:
    state = RobotState(q=HOME_Q.copy(), gripper=0.08)
    dt = chunk_policy.config.control_period_s
    assert chunk_policy.horizon == H
    mask = chunk_policy.action_mask(state)
    assert mask.shape == (H, 7, chunk_policy.target.action_tokenizer.n_bins)
    for seed in range(3):
        out = chunk_policy.step(obs(seed, frame_id=seed), state)
        assert out.actions.shape == (H, 7)
        # every step's action lies in that step's envelope
        for k in range(H):
            low, high = chunk_policy.gate.envelope(state, dt, 1.0, k)
            assert np.all(out.actions[k] >= low - 1e-9) and np.all(out.actions[k] <= high + 1e-9)
        # the plan is exactly the trajectory gate's answer for the decoded chunk
        again = TrajectoryGate(chunk_policy.gate).check(out.actions, state, dt)
        assert out.plan.published == again.published >= 1
        np.testing.assert_allclose(out.plan.points, again.points, atol=1e-12)
        np.testing.assert_allclose(out.verdict.joint_command, out.plan.points[0], atol=1e-12)
        assert out.plan.planned == H and out.stats.chunk_len == H


def test_policy_plan_holds_on_bad_input_and_envelopes_widen_with_the_step(chunk_policy: Policy) -> None:
    state = RobotState(q=HOME_Q.copy(), gripper=0.08)
    bad = Observation(np.zeros((4, 4), dtype=np.uint8), PROMPT, np.zeros(8, dtype=np.float32))
    out = chunk_policy.step(bad, state)
    assert out.verdict.status == SafetyStatus.HALT_BAD_INPUT
    assert out.plan.is_halt and out.plan.published == 0 and out.plan.hold is out.verdict
    # next to the workspace floor the first step may not go down; later steps may (the arm may
    # have risen meanwhile) but never by more than the speed limit
    low_tcp = RobotState(q=np.array([0.0, 0.45, 0.0, -2.0, 0.0, 2.45, np.pi / 4]), gripper=0.08)
    pos, _ = chunk_policy.gate.kin.fk(low_tcp.q)
    floor = chunk_policy.gate.config.workspace_min[2]
    lo0, _ = chunk_policy.gate.envelope(low_tcp, 0.2, 1.0, 0)
    lo3, _ = chunk_policy.gate.envelope(low_tcp, 0.2, 1.0, 3)
    assert lo0[2] >= min(floor - pos[2], 0.0) - 1e-9
    assert lo3[2] <= lo0[2]
    assert lo3[2] >= -chunk_policy.gate.config.tcp_max_speed * 0.2 - 1e-9


# --- training data ---------------------------------------------------------------------------
def test_chunk_dataset_tokenises_the_expert_chunk(tmp_path) -> None:
    from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
    from specvla_ros.train.collect import CollectConfig, collect
    from specvla_ros.train.dataset import load_demos, make_batch

    collect(CollectConfig(out=tmp_path, episodes=1, tasks=("reach",), chunk_horizon=3, progress=False))
    tok = VLATextTokenizer.build()
    ds = load_demos(tmp_path, tok, chunk_horizon=3)
    assert ds.horizon == 3 and ds.chunks.shape == (len(ds), 3, 7)
    np.testing.assert_allclose(ds.chunks[:, 0], ds.actions, atol=1e-6)  # the chunk starts with the step's action
    from specvla_ros.core.models.action_tokenizer import ActionTokenizer

    at = ActionTokenizer(tok.vocab_size, ds.stats, tok.n_action_tokens)
    pos = ds.action_positions()
    assert pos.shape == (len(ds), 21)
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds.target_ids[i, pos[i]], at.encode(ds.chunks[i]).reshape(-1))
        assert ds.target_ids[i, ds.n_text[i] - 1] == tok.eon_token_id
    batch = make_batch(ds, np.arange(len(ds)))
    assert batch.is_action.sum(1).tolist() == [21] * len(ds)
    with pytest.raises(ValueError, match="action_chunks"):
        load_demos(tmp_path, tok, chunk_horizon=4)

    # a draft distilled for a chunk target learns the whole chunk (its config says so) and loads
    from specvla_ros.train.distill_draft import DraftTrainConfig, distill_draft

    target = make_random_checkpoint(tmp_path / "chunk_target", preset="test", seed=2, chunk_horizon=3)
    summary = distill_draft(DraftTrainConfig(data=[str(tmp_path)], target=str(target), out=str(tmp_path / "d"),
                                             steps=2, batch_size=4, eval_every=2, ckpt_every=2, val_fraction=0.0,
                                             progress=False))
    draft = load_drafter(summary["final_dir"], load_vla(target, device="cpu"))
    assert draft.model.config.chunk_horizon == 3
    assert np.isfinite(summary["last_train"]["loss"])


def test_shipped_chunk_pair_decodes_its_chunk_exactly() -> None:
    """The shipped chunk pair: 8 actions per decision; speculative exact (draft model, the previous
    chunk, lookahead) equals the target's own greedy chunk on consecutive frames."""
    from specvla_ros.core.paths import CHUNK_DRAFT_DIR, CHUNK_TARGET_DIR

    if not (CHUNK_TARGET_DIR / "config.json").is_file():
        pytest.skip("no shipped chunk pair")
    target = load_vla(CHUNK_TARGET_DIR, device="cpu")
    assert target.chunk_horizon == 8
    spec = SpeculativeDecoder(target, load_drafter(CHUNK_DRAFT_DIR, target), DecodeConfig())
    plain = SpeculativeDecoder(target, None, DecodeConfig())
    base = obs(21)
    for k in range(3):  # the same scene, slightly changed each step
        frame = np.clip(base.image.astype(int) + k, 0, 255).astype(np.uint8)
        o = Observation(frame, "reach the red cube", base.proprio, frame_id=k)
        got, want = spec.decode(o, shift=1), plain.decode(o)
        assert got.token_ids == want.token_ids
        assert got.actions.shape == (8, 7)
        assert got.stats.target_passes < want.stats.target_passes
