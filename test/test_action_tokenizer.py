import json

import numpy as np
import pytest

from specvla_ros.core.models.action_tokenizer import ActionNormStats, ActionTokenizer, load_norm_stats, save_norm_stats

VOCAB = 1000


def test_encode_matches_openvla_formula():
    tok = ActionTokenizer(VOCAB)
    bins = np.linspace(-1, 1, 256)
    for v in [-1.0, -0.999, -0.5, 0.0, 0.3, 0.999, 1.0]:
        expected = VOCAB - np.digitize(v, bins)
        got = tok.encode_normalized(np.array([v]))[0]
        assert got == expected
    # decode(OpenVLA): bin_centers[clip(vocab - id - 1, 0, 254)]
    centers = (bins[:-1] + bins[1:]) / 2
    for tid in [VOCAB - 1, VOCAB - 2, VOCAB - 128, VOCAB - 256]:
        assert tok.decode_normalized(np.array([tid]))[0] == centers[np.clip(VOCAB - tid - 1, 0, 254)]


def test_action_tokens_are_last_256_ids():
    tok = ActionTokenizer(VOCAB)
    ids = tok.encode_normalized(np.linspace(-1, 1, 5000))
    assert ids.min() == VOCAB - 256 and ids.max() == VOCAB - 1
    assert tok.action_token_begin == VOCAB - 256
    assert tok.is_action_token(ids).all()
    assert not tok.is_action_token(np.array([0, VOCAB - 257, VOCAB])).any()


def test_round_trip_within_half_bin():
    rng = np.random.default_rng(0)
    stats = ActionNormStats(q01=np.array([-0.02] * 3 + [-0.1] * 3 + [0.0]), q99=np.array([0.02] * 3 + [0.1] * 3 + [1.0]), mask=np.array([True] * 6 + [False]))
    tok = ActionTokenizer(VOCAB, stats)
    a = rng.uniform(stats.q01, stats.q99, size=(500, 7))
    back = tok.decode(tok.encode(a))
    bin_width = (stats.q99 - stats.q01) / 255.0
    bin_width[6] = 2.0 / 255.0
    assert np.all(np.abs(back - a) <= bin_width + 1e-9)


def test_clipping_and_nan_never_leave_action_range():
    tok = ActionTokenizer(VOCAB)
    ids = tok.encode(np.array([[1e9, -1e9, np.nan, np.inf, -np.inf, 0.0, 5.0]]))
    assert tok.is_action_token(ids).all()
    # out-of-range ids decode to a valid bin centre
    vals = tok.decode_normalized(np.array([0, 5, VOCAB + 3, -7]))
    assert np.all(np.abs(vals) <= 1.0)


def test_gripper_not_normalised():
    stats = ActionNormStats(q01=np.full(7, -5.0), q99=np.full(7, 5.0), mask=np.array([True] * 6 + [False]))
    tok = ActionTokenizer(VOCAB, stats)
    n = tok.normalize(np.array([5.0, -5.0, 0, 0, 0, 0, 0.5]))
    assert n[0] == pytest.approx(1.0) and n[1] == pytest.approx(-1.0)
    assert n[6] == pytest.approx(0.5)


def test_bin_edges():
    tok = ActionTokenizer(VOCAB)
    edges = np.linspace(-1, 1, 256)
    # a value exactly on an edge falls into the bin starting there
    for i in [1, 100, 254]:
        assert tok.encode_normalized(np.array([edges[i]]))[0] == VOCAB - (i + 1)
        assert tok.encode_normalized(np.array([np.nextafter(edges[i], -2)]))[0] == VOCAB - i


def test_bin_distance_and_bins():
    tok = ActionTokenizer(VOCAB)
    a, b = tok.bin_to_token(np.array([10, 200])), tok.bin_to_token(np.array([13, 190]))
    assert list(tok.bin_distance(a, b)) == [3, 10]
    assert list(tok.token_to_bin(a)) == [10, 200]
    # bin order is increasing in value
    vals = tok.bin_values()
    assert vals.shape == (7, 256) and np.all(np.diff(vals[0]) >= 0)


def test_interval_mask():
    tok = ActionTokenizer(VOCAB)
    mask = tok.bin_mask_for_interval(np.full(7, -0.5), np.full(7, 0.25))
    vals = tok.bin_values()
    assert mask.shape == (7, 256)
    assert np.all(vals[mask] >= -0.5) and np.all(vals[mask] <= 0.25)
    assert mask.sum(1).min() > 0


def test_stats_json_round_trip(tmp_path):
    acts = np.random.default_rng(1).normal(size=(200, 7))
    s = ActionNormStats.from_actions(acts)
    p = tmp_path / "dataset_statistics.json"
    save_norm_stats(p, {"sim_panda": s}, {"sim_panda": acts})
    loaded = load_norm_stats(p)
    np.testing.assert_allclose(loaded.q01, s.q01)
    assert json.loads(p.read_text())["sim_panda"]["num_transitions"] == 200
    with pytest.raises(ValueError, match="unnorm_key"):
        load_norm_stats(p, "bridge_orig")


def test_bad_stats_rejected(tmp_path):
    with pytest.raises(ValueError):
        ActionNormStats(q01=np.ones(7), q99=np.zeros(7), mask=np.ones(7, bool))
    with pytest.raises(ValueError):
        ActionNormStats(q01=np.ones(6), q99=np.ones(6), mask=np.ones(6, bool))
    bad = tmp_path / "s.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_norm_stats(bad)


def test_bin_stride_encodes_translations_onto_every_sth_bin():
    stride = (8, 8, 8, 1, 1, 1, 1)
    coarse, fine = ActionTokenizer(VOCAB, None, 256, stride), ActionTokenizer(VOCAB)
    x = np.random.default_rng(3).uniform(-1.0, 1.0, (2000, 7))
    x[0, :3], x[1, :3] = -1.0, 1.0  # the range's ends stay inside the action ids
    cb, fb = coarse.token_to_bin(coarse.encode_normalized(x)), fine.token_to_bin(fine.encode_normalized(x))
    assert np.all(cb[:, :3] % 8 == 4) and np.all(np.abs(cb[:, :3] - fb[:, :3]) <= 4)
    np.testing.assert_array_equal(cb[:, 3:], fb[:, 3:])  # stride 1 leaves a dimension as it was
    assert coarse.is_action_token(coarse.encode_normalized(x)).all()
    # decoding is unchanged: a coarse model's bins mean what they always meant
    ids = fine.encode_normalized(x)
    np.testing.assert_array_equal(coarse.decode_normalized(ids), fine.decode_normalized(ids))
    assert ActionTokenizer(VOCAB, None, 256, (1,) * 7).bin_stride == ()


def test_bin_stride_snaps_action_chunks_and_refuses_flattened_ones():
    tok = ActionTokenizer(VOCAB, None, 256, (8, 8, 8, 1, 1, 1, 1))
    chunk = np.random.default_rng(4).uniform(-1.0, 1.0, (3, 8, 7))  # (N, H, 7): a batch of 8-action chunks
    bins = tok.token_to_bin(tok.encode_normalized(chunk))
    assert bins.shape == (3, 8, 7) and np.all(bins[..., :3] % 8 == 4)
    with pytest.raises(ValueError, match="whole actions"):
        tok.encode_normalized(chunk.reshape(3, 56))  # flattened: which value is x would be a guess


@pytest.mark.parametrize("stride", [(8, 8, 8), (0, 1, 1, 1, 1, 1, 1), (256, 1, 1, 1, 1, 1, 1),
                                    (3, 1, 1, 1, 1, 1, 1), (8.5, 1, 1, 1, 1, 1, 1)])
def test_bad_bin_stride_rejected(stride):
    with pytest.raises(ValueError, match="bin_stride"):
        ActionTokenizer(VOCAB, None, 256, stride)
