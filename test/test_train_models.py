"""Training: demo dataset, target behaviour cloning, draft distillation (model and EAGLE), CLI.

Runs a few optimiser steps of the "test" preset on three real expert episodes
(one per task) collected once per module; checks that losses drop, that the
checkpoints load behind the project's loaders with the dataset's statistics,
that a run resumes, and that the trained pair decodes losslessly.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from specvla_ros.core.models.action_tokenizer import load_norm_stats
from specvla_ros.core.models.loading import load_drafter, load_vla
from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
from specvla_ros.core.models.tiny_vla import TinyVLA
from specvla_ros.core.types import ACTION_DIM, Observation
from specvla_ros.train.collect import CollectConfig, collect
from specvla_ros.train.dataset import DATASET_KEY, IGNORE, STATS_FILE, epoch_batches, load_demos, make_batch
from specvla_ros.train.distill_draft import DraftTrainConfig, distill_draft
from specvla_ros.train.train_target import TargetTrainConfig, lr_factor, train_target


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos")
    collect(CollectConfig(out=out, episodes=3, seed=7, image_size=(64, 64), progress=False))
    return out


@pytest.fixture(scope="module")
def tok():
    return VLATextTokenizer.build()


@pytest.fixture(scope="module")
def trained_target(demos, tmp_path_factory):
    out = tmp_path_factory.mktemp("target_run")
    cfg = TargetTrainConfig(data=[str(demos)], out=str(out), preset="test", steps=40, batch_size=8, lr=3e-3,
                            warmup_steps=0, val_fraction=0.0, eval_every=20, ckpt_every=20, progress=False)
    return out, train_target(cfg)


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_dataset_targets_are_narration_eon_actions(demos, tok) -> None:
    ds = load_demos(demos, tok)
    assert ds.n_episodes == 3 and len(ds) == ds.images.shape[0] == ds.target_ids.shape[0]
    at_begin = tok.vocab_size - tok.n_action_tokens
    from specvla_ros.core.models.action_tokenizer import ActionTokenizer

    at = ActionTokenizer(tok.vocab_size, ds.stats)
    for i in (0, len(ds) // 2, len(ds) - 1):
        row, n = ds.target_ids[i], int(ds.n_text[i])
        assert row[n - 1] == tok.eon_token_id and np.all(row[: n - 1] < at_begin)
        acts = row[n : n + ACTION_DIM]
        assert np.all(acts >= at_begin)
        assert np.all(row[n + ACTION_DIM :] == tok.pad_token_id)
        # decoded tokens reproduce the expert's action to within one bin (normalised units)
        err = np.abs(at.normalize(at.decode(acts)) - at.normalize(ds.actions[i]))
        assert np.all(err <= 2.0 / 255 + 1e-6)
    stats = load_norm_stats(demos / STATS_FILE, DATASET_KEY)
    np.testing.assert_allclose(ds.stats.q01, stats.q01)
    train, val = ds.split(0.34, seed=0)
    assert set(ds.episode[train]).isdisjoint(ds.episode[val]) and len(train) + len(val) == len(ds)
    b = make_batch(ds, np.arange(4), np.random.default_rng(0), jitter=0.1)
    assert b.images.shape == (4, 64, 64, 3) and 0.0 <= float(b.images.min()) and float(b.images.max()) <= 1.0
    assert int(b.is_action.sum()) == 4 * ACTION_DIM and bool((b.labels[b.target_ids == tok.pad_token_id] == IGNORE).all())
    batches = list(epoch_batches(np.arange(10), 4, np.random.default_rng(0)))
    assert [len(x) for x in batches] == [4, 4]


def test_target_loss_drops_and_checkpoint_loads(trained_target, demos) -> None:
    out, summary = trained_target
    log = _log(out)
    first = np.mean([r["train_loss"] for r in log[:3]])
    last = np.mean([r["train_loss"] for r in log[-3:]])
    assert last < first - 0.5, (first, last)
    model = load_vla(out / "final", device="cpu", dtype="float32")
    # the checkpoint carries the dataset's statistics, so de-normalisation matches training
    np.testing.assert_allclose(model.action_tokenizer.stats.q99,
                               load_norm_stats(demos / STATS_FILE, DATASET_KEY).q99, rtol=1e-6)
    assert json.loads((out / "final" / STATS_FILE).read_text()) == json.loads((demos / STATS_FILE).read_text())
    assert summary["steps"] == 40 and (out / "latest" / "config.json").is_file()


def test_target_run_resumes(trained_target, demos, tmp_path) -> None:
    import shutil

    out, _ = trained_target
    run = tmp_path / "resume"
    shutil.copytree(out, run)
    cfg = TargetTrainConfig(data=[str(demos)], out=str(run), preset="test", steps=44, batch_size=8, lr=3e-3,
                            warmup_steps=0, val_fraction=0.0, eval_every=20, ckpt_every=20, progress=False)
    summary = train_target(cfg)
    assert summary["steps"] == 44
    assert [r["step"] for r in _log(run)][-4:] == [41, 42, 43, 44]


@pytest.mark.parametrize("kind", ["model", "eagle"])
def test_draft_distillation_improves_agreement_and_decodes_losslessly(trained_target, demos, tmp_path, kind) -> None:
    target_dir = trained_target[0] / "final"
    cfg = DraftTrainConfig(data=[str(demos)], target=str(target_dir), out=str(tmp_path / kind), kind=kind,
                           steps=25, batch_size=8, lr=3e-3, warmup_steps=0, val_fraction=0.34, eval_every=25,
                           ckpt_every=25, progress=False)
    summary = distill_draft(cfg)
    assert summary["safety_loss"] is True
    assert summary["val"]["loss"] < summary["val_before"]["loss"]
    target = load_vla(target_dir, device="cpu", dtype="float32")
    drafter = load_drafter(summary["final_dir"], target)
    ds = load_demos(demos, target.text_tokenizer)
    obs = Observation(ds.images[3], ds.instructions[ds.instr_idx[3]], ds.proprio[3], frame_id=1)
    base = SpeculativeDecoder(target, None, DecodeConfig()).decode(obs)
    spec = SpeculativeDecoder(target, drafter, DecodeConfig()).decode(obs)
    assert spec.token_ids == base.token_ids  # greedy speculative decoding is exact


def test_translation_bin_stride_trains_on_coarse_bins_and_the_checkpoint_says_so(demos, tmp_path) -> None:
    cfg = TargetTrainConfig(data=[str(demos)], out=str(tmp_path / "coarse"), preset="test", steps=4, batch_size=8,
                            warmup_steps=0, val_fraction=0.0, eval_every=4, ckpt_every=4, progress=False,
                            translation_bin_stride=8)
    train_target(cfg)
    saved = json.loads((tmp_path / "coarse" / "final" / "config.json").read_text())
    assert saved["action_bin_stride"] == [8, 8, 8, 1, 1, 1, 1]
    model = load_vla(tmp_path / "coarse" / "final", device="cpu", dtype="float32")
    assert model.action_tokenizer.bin_stride == (8, 8, 8, 1, 1, 1, 1)
    # the labels it trained on (and its draft distils on): x, y, z on every 8th bin, the rest as before
    tok = model.text_tokenizer
    coarse = load_demos(demos, tok, bin_stride=model.action_tokenizer.bin_stride)
    fine = load_demos(demos, tok)
    first = tok.vocab_size - tok.n_action_tokens
    rows = np.arange(len(coarse))
    c = coarse.target_ids[rows[:, None], coarse.n_text[:, None] + np.arange(ACTION_DIM)]
    f = fine.target_ids[rows[:, None], fine.n_text[:, None] + np.arange(ACTION_DIM)]
    cbins, fbins = tok.vocab_size - 1 - c, tok.vocab_size - 1 - f
    assert np.all(c >= first) and np.all(cbins[:, :3] % 8 == 4) and np.all(np.abs(cbins - fbins)[:, :3] <= 4)
    np.testing.assert_array_equal(c[:, 3:], f[:, 3:])
    assert not np.array_equal(c[:, :3], f[:, :3])
    # a run resumed with another stride would mix two label sets
    with pytest.raises(ValueError, match="translation_bin_stride 8, not 1"):
        train_target(TargetTrainConfig(**{**cfg.__dict__, "translation_bin_stride": 1, "steps": 6}))
    # its draft learns the same bins, and says so; a dataset on other bins is refused
    dcfg = DraftTrainConfig(data=[str(demos)], target=str(tmp_path / "coarse" / "final"), out=str(tmp_path / "d"),
                            steps=2, batch_size=8, warmup_steps=0, val_fraction=0.34, eval_every=2, ckpt_every=2,
                            progress=False, safety_weight=0.0)
    with pytest.raises(ValueError, match="the draft must learn the target's bins"):
        distill_draft(dcfg, ds=fine)
    summary = distill_draft(dcfg)
    draft_cfg = json.loads((tmp_path / "d" / "final" / "config.json").read_text())
    assert summary["steps"] == 2 and draft_cfg["action_bin_stride"] == [8, 8, 8, 1, 1, 1, 1]


def test_configs_reject_bad_values(tmp_path) -> None:
    with pytest.raises(ValueError, match="translation_bin_stride"):
        TargetTrainConfig(data=["d"], out="o", translation_bin_stride=0)
    with pytest.raises(ValueError, match="translation_bin_stride"):
        TargetTrainConfig(data=["d"], out="o", translation_bin_stride=3)  # runs of 3 do not tile 256 bins
    with pytest.raises(ValueError, match="preset"):
        TargetTrainConfig(data=["d"], out="o", preset="huge")
    with pytest.raises(ValueError, match="action_weight"):
        TargetTrainConfig(data=["d"], out="o", action_weight=0.0)
    with pytest.raises(ValueError, match="data"):
        TargetTrainConfig(out="o")
    with pytest.raises(ValueError, match="kind"):
        DraftTrainConfig(data=["d"], target="t", out="o", kind="medusa")
    with pytest.raises(ValueError, match="safety_weight"):
        DraftTrainConfig(data=["d"], target="t", out="o", safety_weight=-1.0)
    with pytest.raises(ValueError, match="does not exist"):
        load_demos(tmp_path / "missing", VLATextTokenizer.build())


def test_lr_schedule_warms_up_and_anneals() -> None:
    assert lr_factor(0.0, 0, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(0.0, 20, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(1.0, 20, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(2.0, 20, 10, 0.1) == pytest.approx(0.1)  # past the time budget: the floor


def test_cli_help_and_bad_args(capsys) -> None:
    from specvla_ros.train.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "specvla_train" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["target", "--data", "x", "--out", "y", "--preset", "huge"])
    torch.set_num_threads(1)


def test_keypoint_target_pretrains_its_keypoints_and_its_draft_continues(demos, tmp_path) -> None:
    """A keypoint preset: the stem is first fitted to the object positions (loss drops), the run
    finishes and loads, and a draft distilled for it can be continued with init_from."""
    cfg = TargetTrainConfig(data=[str(demos)], out=str(tmp_path / "t"), preset="test_kp", steps=6, batch_size=8,
                            lr=3e-3, warmup_steps=0, val_fraction=0.0, eval_every=6, ckpt_every=6,
                            keypoint_pretrain_steps=80, progress=False)
    summary = train_target(cfg)
    kp = summary["keypoint_pretraining"]
    assert kp["step"] == 80 and kp["train_obj"] < 0.7 * kp["train_obj_before"], kp
    target = load_vla(tmp_path / "t" / "final", device="cpu", dtype="float32")
    assert target.config.vision_keypoints == 4
    first = distill_draft(DraftTrainConfig(data=[str(demos)], target=str(tmp_path / "t" / "final"),
                                           out=str(tmp_path / "d1"), steps=4, batch_size=8, warmup_steps=0,
                                           val_fraction=0.0, eval_every=4, ckpt_every=4, progress=False))
    second = distill_draft(DraftTrainConfig(data=[str(demos)], target=str(tmp_path / "t" / "final"),
                                            out=str(tmp_path / "d2"), steps=2, batch_size=8, warmup_steps=0,
                                            val_fraction=0.0, eval_every=2, ckpt_every=2, progress=False,
                                            init_from=first["final_dir"]))
    drafter = load_drafter(second["final_dir"], target)
    ds = load_demos(demos, target.text_tokenizer)
    obs = Observation(ds.images[2], ds.instructions[ds.instr_idx[2]], ds.proprio[2], frame_id=1)
    base = SpeculativeDecoder(target, None, DecodeConfig()).decode(obs)
    assert SpeculativeDecoder(target, drafter, DecodeConfig()).decode(obs).token_ids == base.token_ids
    with pytest.raises(ValueError, match="keypoint_pretrain"):
        TargetTrainConfig(data=["d"], out="o", keypoint_pretrain_steps=-1)


def test_expected_bin_error_measures_distance_and_pulls_toward_the_label() -> None:
    """The regression term grows with how far the predicted mass sits from the label, and its
    gradient moves the expected bin toward it (cross-entropy alone cannot tell near from far)."""
    from specvla_ros.train.train_target import expected_bin_error

    vocab, n_bins = 300, 256
    first = vocab - n_bins
    labels = torch.tensor([[first + 100]])
    act = torch.tensor([[True]])

    def peaked(at: int) -> torch.Tensor:
        logits = torch.full((1, 1, vocab), -30.0)
        logits[0, 0, first + at] = 30.0
        return logits

    near, far = expected_bin_error(peaked(102), labels, act, n_bins), expected_bin_error(peaked(180), labels, act, n_bins)
    assert float(near) == pytest.approx(2.0, abs=1e-3) and float(far) == pytest.approx(80.0, abs=1e-3)
    logits = torch.zeros(1, 1, vocab, requires_grad=True)  # uniform: expected bin 127.5, label 100
    expected_bin_error(logits, labels, act, n_bins).backward()
    step = logits - 1.0 * logits.grad
    assert float(expected_bin_error(step.detach(), labels, act, n_bins)) < 27.5
    assert float(expected_bin_error(peaked(5), labels, torch.tensor([[False]]), n_bins)) == 0.0


def test_colour_keypoints_bind_one_keypoint_per_colour(demos, tmp_path) -> None:
    """colour_keypoints: keypoint c is pulled onto colour c's object in the image (moving any other
    keypoint changes nothing), and pretraining lowers that loss."""
    from specvla_ros.train.train_target import AuxHeads

    heads = AuxHeads(n_patches=20, d_vision=32, d_model=64, n_keypoints=7, colour_keypoints=True, cells=32)
    px = torch.rand(2, 4, 2) * 2 - 1
    tcp_px = torch.rand(2, 2) * 2 - 1
    aux = {"objects": torch.ones(2, 4, 3), "valid": torch.ones(2, dtype=torch.bool), "objects_px": px,
           "goal_px": torch.rand(2, 2) * 2 - 1, "has_goal": torch.zeros(2, dtype=torch.bool), "tcp_px": tcp_px}
    on_target = torch.cat([torch.cat([px * 32 / 31, torch.zeros(2, 4, 1)], -1), torch.rand(2, 3, 3)], 1)
    on_target[:, 5, :2] = tcp_px * 32 / 31  # keypoint 5 follows the gripper
    assert float(heads.vision_loss(on_target, aux)[1]) == pytest.approx(0.0, abs=1e-10)
    moved = on_target.clone()
    moved[:, 4] = 0.0  # no push target in these samples: keypoint 4 is free, and so is keypoint 6
    moved[:, 6] = 0.0
    assert float(heads.vision_loss(moved, aux)[1]) == pytest.approx(0.0, abs=1e-10)
    moved[:, 2, :2] += 0.3  # colour 2's own keypoint
    # (0.3^2 + 0.3^2) in each of 2 samples, averaged over the 8 (sample, colour) pairs present
    assert float(heads.vision_loss(moved, aux)[1]) == pytest.approx(0.045, rel=1e-4)
    moved[:, 5, 1] += 0.2  # the gripper keypoint: 0.2^2 in every sample
    assert float(heads.vision_loss(moved, aux)[1]) == pytest.approx(0.045 + 0.04, rel=1e-4)
    # with a push target, keypoint 4 (the first after the colours) is pulled onto it
    aux["has_goal"] = torch.tensor([True, False])
    on_goal = on_target.clone()
    on_goal[0, 4, :2] = aux["goal_px"][0] * 32 / 31
    assert float(heads.vision_loss(on_goal, aux)[1]) == pytest.approx(0.0, abs=1e-10)
    on_goal[0, 4, 0] += 0.5
    assert float(heads.vision_loss(on_goal, aux)[1]) == pytest.approx(0.25, rel=1e-4)
    # goal_weight scales the push target's term alone
    weighted = AuxHeads(n_patches=20, d_vision=32, d_model=64, n_keypoints=7, colour_keypoints=True, cells=32,
                        goal_weight=3.0)
    assert float(weighted.vision_loss(on_goal, aux)[1]) == pytest.approx(0.75, rel=1e-4)
    with pytest.raises(ValueError, match="colour_keypoints"):
        AuxHeads(n_patches=20, d_vision=32, d_model=64, n_keypoints=2, colour_keypoints=True)

    cfg = TargetTrainConfig(data=[str(demos)], out=str(tmp_path / "t"), preset="test_kp", steps=4, batch_size=8,
                            lr=3e-3, warmup_steps=0, val_fraction=0.0, eval_every=4, ckpt_every=4,
                            keypoint_pretrain_steps=60, colour_keypoints=True, progress=False)
    kp = train_target(cfg)["keypoint_pretraining"]
    assert kp["train_obj"] < 0.7 * kp["train_obj_before"], kp

    # freeze_keypoint_stem: continuing that run, the decoder trains and the stem stays as it was
    before = TinyVLA.from_pretrained(tmp_path / "t" / "final")
    frozen = TargetTrainConfig(data=[str(demos)], out=str(tmp_path / "f"), preset="test_kp", steps=4, batch_size=8,
                               lr=3e-3, warmup_steps=0, val_fraction=0.0, eval_every=4, ckpt_every=4,
                               colour_keypoints=True, init_from=str(tmp_path / "t" / "final"),
                               freeze_keypoint_stem=True, progress=False)
    after = TinyVLA.from_pretrained(train_target(frozen)["final_dir"])
    old, new = before.state_dict(), after.state_dict()
    stem = [k for k in old if ".keypoints.stem." in k or k.endswith(".keypoints.log_temperature")]
    assert stem and all(torch.equal(old[k], new[k]) for k in stem)
    assert not torch.equal(old["lm_head.weight"], new["lm_head.weight"])
    with pytest.raises(ValueError, match="stem would stay random"):
        TargetTrainConfig(data=["d"], out="o", preset="test_kp", freeze_keypoint_stem=True, fresh_keypoints=True)
    with pytest.raises(ValueError, match="keypoint_goal_weight"):
        TargetTrainConfig(data=["d"], out="o", keypoint_goal_weight=-1.0)
    with pytest.raises(ValueError, match="freeze_keypoint_stem needs a keypoint preset"):
        TargetTrainConfig(data=["d"], out="o", preset="test", freeze_keypoint_stem=True)


def test_projection_puts_each_object_on_its_colour_in_the_camera_image() -> None:
    """scene.project_to_image (the colour keypoints' targets) lands on the object's pixels."""
    from specvla_ros.sim.task_env import TaskEnv
    from specvla_ros.sim.scene import project_to_image

    env = TaskEnv("reach", seed=5, image_size=(128, 128))
    try:
        image = env.render().astype(int)
        for obj in env.layout.objects:
            u = project_to_image(np.array([obj.xy[0], obj.xy[1], obj.rest_z]))
            col, row = ((u + 1) / 2 * 128).astype(int)
            pixel = image[row, col]
            assert int(np.argmax(pixel)) == {"red": 0, "green": 1, "blue": 2}.get(obj.color, 0), (obj.color, pixel)
            if obj.color == "yellow":
                assert pixel[0] > 150 and pixel[1] > 150 and pixel[2] < 100
    finally:
        env.close()


def test_named_aux_weight_scales_the_named_object_terms_only() -> None:
    """The decoder head's named-object terms (absolute and relative to the TCP) scale with
    named_weight; the TCP term does not; a bad weight is refused by the config."""
    from specvla_ros.train.train_target import AuxHeads

    torch.manual_seed(0)
    aux = {"objects": torch.zeros(3, 4, 3), "valid": torch.ones(3, dtype=torch.bool),
           "named": torch.rand(3, 2), "tcp": torch.rand(3, 3), "objects_px": torch.zeros(3, 4, 2)}
    coords, hidden = torch.rand(3, 4, 3), torch.rand(3, 64)
    one = AuxHeads(n_patches=20, d_vision=32, d_model=64, n_keypoints=4, named_weight=1.0)
    five = AuxHeads(n_patches=20, d_vision=32, d_model=64, n_keypoints=4, named_weight=5.0)
    five.load_state_dict(one.state_dict())
    with torch.no_grad():
        dec = one.decoder(hidden)
        l_tcp = ((dec[:, 2:5] - aux["tcp"]) ** 2).sum(-1).mean()
        base = one.vision_loss(coords, aux)[0]
        named_one = one.loss(coords, hidden, aux)[0] - base - l_tcp
        named_five = five.loss(coords, hidden, aux)[0] - base - l_tcp
    assert float(named_one) > 0
    assert float(named_five) == pytest.approx(5 * float(named_one), rel=1e-4)
    with pytest.raises(ValueError, match="named_aux_weight"):
        TargetTrainConfig(data=["d"], out="o", named_aux_weight=-1.0)


def test_reset_keypoint_identity_redraws_only_the_identities(demos, tmp_path) -> None:
    """--reset-keypoint-identity after init_from: the identity embeddings are re-drawn at
    IDENTITY_STD while the rest of the keypoint stem keeps the checkpoint's weights."""
    from specvla_ros.core.models.tiny_vla import IDENTITY_STD, TinyVLA
    from specvla_ros.core.models.testing import make_random_checkpoint

    model = TinyVLA.from_pretrained(make_random_checkpoint(tmp_path / "rand", preset="test_kp", seed=3))
    with torch.no_grad():
        model.vision_encoder.keypoints.identity.mul_(0.04)  # as small as before the change
    src = tmp_path / "src"
    model.save_pretrained(src)
    assert float(TinyVLA.from_pretrained(src).vision_encoder.keypoints.identity.detach().std()) < 0.1 * IDENTITY_STD
    cfg = TargetTrainConfig(data=[str(demos)], out=str(tmp_path / "t"), preset="test_kp", steps=1, batch_size=4,
                            lr=1e-9, warmup_steps=0, val_fraction=0.0, eval_every=1, ckpt_every=1,
                            init_from=str(src), reset_keypoint_identity=True, progress=False)
    train_target(cfg)
    new = load_vla(tmp_path / "t" / "final", device="cpu", dtype="float32").vision_encoder.keypoints
    ref = TinyVLA.from_pretrained(src).vision_encoder.keypoints
    assert float(new.identity.detach().std()) == pytest.approx(IDENTITY_STD, rel=0.2)
    torch.testing.assert_close(new.stem[0].weight, ref.stem[0].weight.float(), atol=1e-3, rtol=1e-3)


def test_named_keypoint_target_trains_from_a_keypoint_checkpoint(demos, tmp_path) -> None:
    """A named-keypoint preset starts from a plain keypoint checkpoint (only the selection and the
    named projection start fresh), trains with the selection loss, and its checkpoint decodes with
    a distilled draft token-identically."""
    from specvla_ros.core.models.tiny_vla import PRESETS, TinyVLA, TinyVLAConfig
    from specvla_ros.core.models.testing import default_norm_stats

    src = tmp_path / "src"  # the named preset's geometry without the named token
    tok = VLATextTokenizer.build()
    plain = TinyVLAConfig(vocab_size=tok.vocab_size, **dict(PRESETS["test_kp_named"], named_keypoint=False))
    TinyVLA(plain, tok, default_norm_stats()).save_pretrained(src)
    cfg = TargetTrainConfig(data=[str(demos)], out=str(tmp_path / "t"), preset="test_kp_named", steps=30, batch_size=8,
                            lr=3e-3, warmup_steps=0, val_fraction=0.0, eval_every=30, ckpt_every=30,
                            init_from=str(src), colour_keypoints=True, progress=False)
    train_target(cfg)
    log = [json.loads(line) for line in (tmp_path / "t" / "train_log.jsonl").read_text().splitlines()]
    sel = [r["train_aux_select"] for r in log]
    assert len(sel) == 30 and np.mean(sel[-5:]) < 0.7 * np.mean(sel[:5]), sel
    dcfg = DraftTrainConfig(data=[str(demos)], target=str(tmp_path / "t" / "final"), out=str(tmp_path / "d"),
                            kind="model", preset="match", steps=3, batch_size=4, eval_every=3, ckpt_every=3,
                            progress=False)
    distill_draft(dcfg)
    target = load_vla(tmp_path / "t" / "final", device="cpu", dtype="float32")
    assert target.config.named_keypoint
    drafter = load_drafter(tmp_path / "d" / "final", target)
    base, spec = SpeculativeDecoder(target, None, DecodeConfig()), SpeculativeDecoder(target, drafter, DecodeConfig())
    rng = np.random.default_rng(1)
    for i in range(3):
        obs = Observation(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "pick up the blue cube",
                          rng.normal(size=8).astype(np.float32) * 0.3, frame_id=i)
        assert spec.decode(obs).token_ids == base.decode(obs).token_ids


def test_bf16_autocast_is_used_only_where_the_cpu_has_it() -> None:
    from specvla_ros.train.cpu_features import native_bf16, resolve_bf16

    amd = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert not native_bf16(amd) and native_bf16(sapphire)
    assert not native_bf16("model name\t: avx512_bf16 in a name, not a flag\n")
    assert resolve_bf16("on") and not resolve_bf16("off") and resolve_bf16("auto") == native_bf16()
    with pytest.raises(ValueError, match="bf16"):
        resolve_bf16("maybe")
