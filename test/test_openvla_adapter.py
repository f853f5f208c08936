"""OpenVLA adapter: loading the published layout, vision towers vs timm semantics,
incremental decoding, speculative == greedy, OpenVLA's de-tokenisation, broken files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from specvla_ros.core.models.action_tokenizer import ActionNormStats, ActionTokenizer
from specvla_ros.core.models.interface import ModelLoadError, VLAModel
from specvla_ros.core.models.openvla import INDEX_FILE, OpenVLA, load_openvla
from specvla_ros.core.models.openvla_checkpoint import OPENVLA_TINY, make_random_openvla_checkpoint
from specvla_ros.core.types import Observation

INSTRUCTION = "pick up the cube"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_random_openvla_checkpoint(tmp_path_factory.mktemp("openvla") / "tiny", OPENVLA_TINY, seed=0)


@pytest.fixture(scope="module")
def model(ckpt) -> OpenVLA:
    return load_openvla(ckpt, "cpu", unnorm_key="sim_panda", warmup=False)


@pytest.fixture()
def broken(ckpt, tmp_path) -> Path:
    out = tmp_path / "broken"
    shutil.copytree(ckpt, out)
    return out


def _image(seed: int = 0, size: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# --- loading -----------------------------------------------------------------------------

def test_published_layout_loads_behind_the_interface(ckpt, model):
    index = json.loads((ckpt / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) == 3  # really sharded
    assert isinstance(model, VLAModel)
    cfg = json.loads((ckpt / "config.json").read_text())
    # OpenVLA's de-tokenisation vocabulary: text_config.vocab_size - pad_to_multiple_of
    assert model.vocab_size == cfg["text_config"]["vocab_size"] - cfg["pad_to_multiple_of"] == 576
    assert model.lm_head.weight.shape == (576, 64)  # padding rows dropped
    assert model.config.n_patches == 4 and model.config.d_vision == 32 + 48
    assert model.towers[0].cfg.reg_tokens == 4 and model.towers[0].cfg.class_token
    assert not model.towers[1].cfg.class_token
    # second-to-last block is the output: later blocks are not built
    assert len(model.towers[0].blocks) == 2 and len(model.towers[1].blocks) == 2
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.image_size == 28
    stats = cfg["norm_stats"]["sim_panda"]["action"]
    np.testing.assert_allclose(model.action_tokenizer.stats.q99, stats["q99"])


def test_prompt_is_openvlas_and_eon_is_the_empty_piece(model):
    tok = model.text_tokenizer
    ids = tok.prompt_ids("Pick up the cube")
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids) == "In: What action should the robot take to pick up the cube?\nOut:"
    assert tok.tokenizer.id_to_token(tok.eon_token_id) == "\u2581"
    assert ids[-1] != tok.eon_token_id
    assert tok.text_token_ids() == []  # no narration: the grammar forces EON first


def test_load_vla_dispatches_on_model_type(ckpt, tmp_path):
    from specvla_ros.core.models.loading import load_vla

    d = tmp_path / "single"
    shutil.copytree(ckpt, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["unnorm_key"] = "bridge_orig"
    (d / "config.json").write_text(json.dumps(cfg))
    m = load_vla(d, device="cpu")
    assert isinstance(m, OpenVLA) and m.unnorm_key == "bridge_orig"
    np.testing.assert_allclose(m.action_tokenizer.stats.q01[:3], -0.02)


def test_bf16_dtype_parameter(ckpt):
    m = load_openvla(ckpt, "cpu", dtype=torch.bfloat16, unnorm_key="sim_panda", warmup=True)
    assert m.dtype == torch.bfloat16 and m.llm.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    cache, out = m.prefill(m.encode_vision(_image()), INSTRUCTION)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    assert m.llm.model.rotary_emb.inv_freq.dtype == torch.float32


# --- vision: our towers against a direct transcription of timm's forward -----------------

def _timm_reference_features(ckpt: Path, image: np.ndarray) -> torch.Tensor:
    """timm get_intermediate_layers(n={depth-2}) of both towers, from the raw checkpoint tensors."""
    from safetensors.torch import load_file

    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(ckpt.glob("model-*.safetensors")):
        sd.update({k: v.float() for k, v in load_file(str(shard)).items()})
    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    feats = []
    for t, prefix in enumerate(("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")):
        w = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        x = (x - torch.tensor(pre["means"][t])[:, None, None]) / torch.tensor(pre["stds"][t])[:, None, None]
        x = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
        prefix_tokens = []
        if "cls_token" in w:
            prefix_tokens.append(w["cls_token"])
        if "reg_token" in w:
            prefix_tokens.append(w["reg_token"])
        x = torch.cat(prefix_tokens + [x + w["pos_embed"]], dim=1)  # DINOv2-reg / SigLIP: no_embed_class layout
        depth = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
        d = x.shape[-1]
        heads = 16
        outputs = []
        for i in range(depth):  # timm runs every block and keeps index depth - 2
            b = f"blocks.{i}."
            h = F.layer_norm(x, (d,), w[b + "norm1.weight"], w[b + "norm1.bias"], eps=1e-6)
            qkv = F.linear(h, w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"]).reshape(1, -1, 3, heads, d // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1) @ v
            a = F.linear(att.transpose(1, 2).reshape(1, -1, d), w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
            x = x + a * w.get(b + "ls1.scale_factor", torch.ones(d))
            h = F.layer_norm(x, (d,), w[b + "norm2.weight"], w[b + "norm2.bias"], eps=1e-6)
            m = F.linear(F.gelu(F.linear(h, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"])),
                         w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])
            x = x + m * w.get(b + "ls2.scale_factor", torch.ones(d))
            outputs.append(x)
        n_prefix = sum(p.shape[1] for p in prefix_tokens)
        feats.append(outputs[depth - 2][:, n_prefix:])
    return torch.cat(feats, dim=-1)


def test_vision_features_match_timm_semantics(ckpt, model):
    img = _image(3)
    ours = model.encode_vision(img).patches
    ref = _timm_reference_features(ckpt, img)
    assert ours.shape == ref.shape == (1, 4, 80)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_prefix_puts_patches_after_bos(model):
    vis = model.encode_vision(_image(1))
    emb = model.prefix_embeds(vis, INSTRUCTION)
    ids = model.prompt_ids(INSTRUCTION)
    assert emb.shape == (1, len(ids) + 4, 64)
    torch.testing.assert_close(emb[0, 0], model.embed_tokens(ids[:1])[0])
    torch.testing.assert_close(emb[0, 1:5], model.projector(vis.patches)[0])
    torch.testing.assert_close(emb[0, 5:], model.embed_tokens(ids[1:]))


def test_resized_frames_are_accepted(model):
    big = np.repeat(np.repeat(_image(2), 2, axis=0), 2, axis=1)  # 56x56 -> resized to 28
    feats = model.encode_vision(big).patches
    assert feats.shape == (1, 4, 80) and torch.isfinite(feats).all()
    with pytest.raises(ValueError, match="uint8"):
        model.encode_vision(big.astype(np.float32))


@torch.inference_mode()
def test_camera_frames_of_any_size_are_preprocessed_as_openvlas_processor(model):
    """Pillow bicubic on the uint8 frame (``frame_resize``, checked against the published
    algorithm in test_frame_resize), then /255 and each tower's mean/std."""
    from specvla_ros.core.models.frame_resize import resize_frame
    from specvla_ros.core.models.vision_vit import preprocess_image

    assert model.image_resize == "pil_bicubic"
    frame = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # a 4:3 camera
    small = resize_frame(frame, (28, 28), "pil_bicubic")
    for mean, std in model.norms:
        expected = (torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255.0
                    - torch.tensor(mean)[None, :, None, None]) / torch.tensor(std)[None, :, None, None]
        assert torch.equal(preprocess_image(frame, 28, mean, std), expected)
        assert torch.equal(preprocess_image(torch.from_numpy(frame), 28, mean, std), expected)
    assert torch.equal(model.encode_vision(frame).patches, model.encode_vision(small).patches)


# --- decoder: incremental forward and truncation vs a fresh full forward ------------------

@torch.inference_mode()
def test_incremental_forward_and_truncation_match_full_forward(model):
    vis = model.encode_vision(_image(4))
    prefix = model.prefix_embeds(vis, INSTRUCTION)
    cache, out = model.prefill(vis, INSTRUCTION, return_all_hidden=True)
    p = prefix.shape[1]
    assert len(cache) == p and out.hidden.shape == (p, 64) and out.logits.shape == (1, 576)
    a = torch.tensor([259, 400, 401, 402, 403])
    model.forward(a, cache)
    assert len(cache) == p + 5
    cache.truncate(p + 2)  # keep EON and one action token, drop three rejected drafts
    b = torch.tensor([500, 501, 502])
    inc = model.forward(b, cache)
    assert len(cache) == p + 5
    seq = torch.cat([prefix, model.embed_tokens(torch.cat([a[:2], b]))[None]], dim=1)
    full = model.llm(inputs_embeds=seq, use_cache=False).logits[0, -3:].float()  # transformers' own forward
    torch.testing.assert_close(inc.logits, full, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        cache.truncate(len(cache) + 1)


# --- speculative decoding == the adapter's own greedy decoding ---------------------------

def _eagle_for(model: OpenVLA, seed: int):
    from specvla_ros.core.models.eagle_head import EagleConfig, EagleHead
    from specvla_ros.core.decoding.drafters import EagleDrafter

    g = model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = EagleHead(EagleConfig(vocab_size=g.vocab_size, d_model=g.d_model, n_heads=g.n_heads,
                                     n_kv_heads=g.n_kv_heads, intermediate_size=g.intermediate_size,
                                     rope_theta=g.rope_theta, max_positions=g.max_positions))
    return EagleDrafter(head, model, draft_len=3, max_draft_len=6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_speculative_equals_greedy(model, seed):
    from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
    from specvla_ros.core.types import Observation

    img = _image(10 + seed)
    ref_tokens, ref_action = model.greedy_action(img, INSTRUCTION)
    obs = Observation(image=img, instruction=INSTRUCTION, proprio=np.zeros(8, np.float32), frame_id=seed)
    base = SpeculativeDecoder(model, None, DecodeConfig(mode="greedy")).decode(obs)
    spec = SpeculativeDecoder(model, _eagle_for(model, seed), DecodeConfig(mode="greedy", draft_len=3)).decode(obs)
    for res in (base, spec):
        assert res.narration_ids == [] and res.token_ids[0] == model.text_tokenizer.eon_token_id
        np.testing.assert_array_equal(res.action_tokens, ref_tokens)
        np.testing.assert_allclose(res.action, ref_action)
    assert base.stats.target_passes == 8  # EON from the prefill, then one pass per action token
    assert spec.stats.drafted > 0


def test_relaxed_mode_stays_within_the_bin_tolerance(model):
    from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
    from specvla_ros.core.types import Observation

    obs = Observation(image=_image(20), instruction=INSTRUCTION, proprio=np.zeros(8, np.float32))
    res = SpeculativeDecoder(model, _eagle_for(model, 5), DecodeConfig(mode="relaxed", relax_bins=3)).decode(obs)
    assert res.action_tokens.shape == (7,)
    assert model.action_tokenizer.is_action_token(res.action_tokens).all()


# --- OpenVLA's published de-tokenisation on hand-computed cases --------------------------

def test_action_detokenisation_matches_openvla_hand_computed():
    # OpenVLA-7B: vocab_size = 32064 - 64 = 32000; bins = linspace(-1, 1, 256)
    # token 31999 -> 32000 - 31999 = 1 -> index 0 -> centre (-1 + (-1 + 2/255)) / 2 = -1 + 1/255
    # token 31872 -> 128 -> index 127 -> centre -1 + 255/255 = 0.0
    # token 31744 -> 256 -> index clipped to 254 -> centre 1 - 1/255
    # token 31000 (not an action id) -> 1000 -> clipped to 254
    stats = ActionNormStats(q01=np.array([-0.02, -0.02, -0.02, -0.1, -0.1, -0.1, 0.0]),
                            q99=np.array([0.03, 0.03, 0.03, 0.1, 0.1, 0.1, 1.0]), mask=np.array([True] * 6 + [False]))
    at = ActionTokenizer(32000, stats)
    tokens = np.array([31999, 31872, 31744, 31000, 31872, 31999, 31744])
    norm = np.array([-1 + 1 / 255, 0.0, 1 - 1 / 255, 1 - 1 / 255, 0.0, -1 + 1 / 255, 1 - 1 / 255])
    np.testing.assert_allclose(at.decode_normalized(tokens), norm, atol=1e-12)
    # un-normalise: 0.5 (n + 1)(q99 - q01) + q01 on masked dims, the gripper passes through
    expected = np.array([
        0.5 * (1 / 255) * 0.05 - 0.02,  # -0.019902
        0.5 * 1.0 * 0.05 - 0.02,  # 0.005
        0.5 * (2 - 1 / 255) * 0.05 - 0.02,  # 0.029902
        0.5 * (2 - 1 / 255) * 0.2 - 0.1,  # droll: range 0.2 -> 0.099608
        0.0,  # 0.5 * 1 * 0.2 - 0.1
        0.5 * (1 / 255) * 0.2 - 0.1,
        1 - 1 / 255,  # gripper: not normalised
    ])
    np.testing.assert_allclose(at.decode(tokens), expected, atol=1e-12)
    np.testing.assert_allclose(expected[:3], [-0.0199019608, 0.005, 0.0299019608], atol=1e-9)


def test_adapter_detokenises_with_the_checkpoint_statistics(model):
    # tiny checkpoint: vocab 576, sim_panda q01 = -0.04 (x3) / -0.2 (x3), q99 = 0.06 / 0.2
    at = model.action_tokenizer
    assert at.action_token_begin == 320
    tokens = np.array([575, 448, 320, 575, 448, 320, 448])
    n = np.array([-1 + 1 / 255, 0.0, 1 - 1 / 255])
    expected = np.concatenate([0.5 * (n + 1) * 0.1 - 0.04, 0.5 * (n + 1) * 0.4 - 0.2, [0.0]])
    np.testing.assert_allclose(at.decode(tokens), expected, atol=1e-12)


# --- broken checkpoints -> ModelLoadError naming the file ---------------------------------

def _shards(d: Path) -> list[Path]:
    return sorted(d.glob("model-*.safetensors"))


def test_missing_shard(broken):
    victim = _shards(broken)[1]
    victim.unlink()
    with pytest.raises(ModelLoadError, match=victim.name + ".*missing"):
        load_openvla(broken, "cpu", unnorm_key="sim_panda", warmup=False)


def test_bad_index_json(broken):
    (broken / INDEX_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match=INDEX_FILE + ".*JSON"):
        load_openvla(broken, "cpu", unnorm_key="sim_panda", warmup=False)


def test_index_without_weight_map(broken):
    (broken / INDEX_FILE).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ModelLoadError, match="weight_map"):
        load_openvla(broken, "cpu", unnorm_key="sim_panda", warmup=False)


def test_index_lists_a_key_the_shard_lacks(broken):
    index = json.loads((broken / INDEX_FILE).read_text())
    index["weight_map"]["language_model.model.extra.weight"] = _shards(broken)[0].name
    (broken / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=_shards(broken)[0].name + ".*lacks"):
        load_openvla(broken, "cpu", unnorm_key="sim_panda", warmup=False)


def test_weight_missing_from_every_shard(broken):
    from safetensors.torch import load_file, save_file

    index = json.loads((broken / INDEX_FILE).read_text())
    key = "language_model.model.norm.weight"
    shard = broken / index["weight_map"].pop(key)
    sd = load_file(str(shard))
    del sd[key]
    save_file(sd, str(shard))
    (broken / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="missing.*llm.model.norm.weight"):
        load_openvla(broken, "cpu", unnorm_key="sim_panda", warmup=False)


def test_truncated_shard(broken):
    victim = _shards(broken)[2]
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=victim.name):
        load_openvla(broken, "cpu", unnorm_key="sim_panda", warmup=False)


def test_missing_and_ambiguous_unnorm_key(broken):
    with pytest.raises(ModelLoadError, match="unnorm_key 'libero_spatial' not found.*bridge_orig.*sim_panda"):
        load_openvla(broken, "cpu", unnorm_key="libero_spatial", warmup=False)
    with pytest.raises(ModelLoadError, match="config.json.*several datasets"):
        load_openvla(broken, "cpu", warmup=False)


def test_config_that_does_not_fit_the_weights(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 96
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="mlp.*shape"):
        load_openvla(broken, "cpu", unnorm_key="sim_panda", warmup=False)


def test_missing_tokenizer(broken):
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json.*missing"):
        load_openvla(broken, "cpu", unnorm_key="sim_panda", warmup=False)


# --- static cache (the GPU path with CUDA graphs uses the same computation) ---------------

@torch.inference_mode()
def test_static_cache_matches_dynamic_cache(ckpt):
    from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
    from specvla_ros.core.types import Observation

    m = load_openvla(ckpt, "cpu", unnorm_key="sim_panda", warmup=False)
    vis = m.encode_vision(_image(6))
    steps = [torch.tensor([259, 400, 401, 402]), torch.tensor([500, 501])]

    def run() -> list:
        cache, out = m.prefill(vis, INSTRUCTION, return_all_hidden=True)
        outs = [out, m.forward(steps[0], cache)]
        cache.truncate(len(cache) - 2)
        outs.append(m.forward(steps[1], cache))
        return outs + [len(cache)]

    dynamic = run()
    obs = Observation(image=_image(7), instruction=INSTRUCTION, proprio=np.zeros(8, np.float32))
    ref = SpeculativeDecoder(m, _eagle_for(m, 3), DecodeConfig()).decode(obs)
    m.enable_static_cache(capacity=64)
    static = run()
    assert static[-1] == dynamic[-1]
    for a, b in zip(dynamic[:-1], static[:-1]):
        torch.testing.assert_close(b.logits, a.logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.hidden, a.hidden, rtol=1e-4, atol=1e-4)
    res = SpeculativeDecoder(m, _eagle_for(m, 3), DecodeConfig()).decode(obs)
    assert res.token_ids == ref.token_ids
    old = m.new_cache()
    m.new_cache()
    with pytest.raises(RuntimeError, match="superseded"):
        len(old)
    with pytest.raises(ValueError, match="capacity"):
        c, _ = m.prefill(vis, INSTRUCTION)
        m.forward(torch.arange(320, 320 + 64), c)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        m.enable_static_cache(capacity=64, cuda_graphs=True)


def test_backbone_fields_default_from_the_backbone_id(broken):
    cfg = json.loads((broken / "config.json").read_text())
    for key in ("timm_model_ids", "use_fused_vision_backbone"):
        del cfg[key]  # Prismatic derives both from vision_backbone_id
    (broken / "config.json").write_text(json.dumps(cfg))
    m = load_openvla(broken, "cpu", unnorm_key="sim_panda", warmup=False)
    assert len(m.towers) == 2 and m.towers[0].cfg.reg_tokens == 4


# --- load_vla without a dataset choice, and the Policy (safety gate) on top ---------------

def test_load_vla_defers_an_ambiguous_dataset_choice(ckpt):
    from specvla_ros.core.models.loading import load_vla
    from specvla_ros.core.models.openvla import PendingStatsActionTokenizer
    from specvla_ros.core.decoding.decoder import SpeculativeDecoder
    from specvla_ros.core.types import Observation

    m = load_vla(ckpt, device="cpu")  # two datasets, no unnorm_key: loads, but cannot de-normalise yet
    assert isinstance(m.action_tokenizer, PendingStatsActionTokenizer) and m.unnorm_key is None
    assert m.action_tokenizer.token_to_bin(np.array([575])).tolist() == [0]
    obs = Observation(image=_image(8), instruction=INSTRUCTION, proprio=np.zeros(8, np.float32))
    with pytest.raises(ModelLoadError, match="several datasets.*unnorm_key"):
        SpeculativeDecoder(m, None).decode(obs)


def test_policy_drives_openvla_through_the_safety_gate(ckpt):
    from specvla_ros.core.policy import Policy, PolicyConfig
    from specvla_ros.core.decoding.decoder import DecodeConfig
    from specvla_ros.core.types import RobotState

    policy = Policy(PolicyConfig(target_dir=str(ckpt), draft_dir=None, drafter="none", unnorm_key="sim_panda",
                                 device="cpu", decode=DecodeConfig()))
    np.testing.assert_allclose(policy.target.action_tokenizer.stats.q99[:3], 0.06)
    q = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
    obs = Observation(image=_image(9), instruction=INSTRUCTION, proprio=np.zeros(8, np.float32), frame_id=1)
    out = policy.step(obs, RobotState(q=q, gripper=0.04))
    assert out.narration == "" and out.stats.emitted >= 8
    assert out.verdict.joint_command.shape == (7,) and np.all(np.isfinite(out.verdict.joint_command))
    if not out.verdict.is_halt:
        assert np.all(np.isfinite(out.action))
    # a 640x480-style camera frame: the policy resizes it as OpenVLA's processor would
    from specvla_ros.core.models.frame_resize import resize_frame

    assert policy.image_resize == "pil_bicubic"
    camera = np.random.default_rng(11).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    big = policy.step(Observation(camera, INSTRUCTION, np.zeros(8, np.float32), frame_id=2), RobotState(q=q))
    small = policy.step(Observation(resize_frame(camera, (28, 28), "pil_bicubic"), INSTRUCTION,
                                    np.zeros(8, np.float32), frame_id=3), RobotState(q=q))
    np.testing.assert_array_equal(big.action, small.action)
    assert big.verdict.status == small.verdict.status


@torch.inference_mode()
def test_graph_replay_bookkeeping_on_cpu(ckpt):
    """The CUDA-graph branch (static inputs copied in, outputs cloned out, length advanced) with a
    stand-in graph that recomputes on replay: decoding must not change (the capture itself needs a GPU)."""
    from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder

    m = load_openvla(ckpt, "cpu", unnorm_key="sim_panda", warmup=False)
    obs = Observation(image=_image(11), instruction=INSTRUCTION, proprio=np.zeros(8, np.float32))
    ref = SpeculativeDecoder(m, _eagle_for(m, 4), DecodeConfig(draft_len=2)).decode(obs)
    m.enable_static_cache(capacity=64)
    runner = m._static
    replays: list[int] = []

    class StandInGraph:
        def __init__(self, x, pos, hidden, logits):  # noqa: ANN001
            self.io = (x, pos, hidden, logits)

        def replay(self) -> None:
            x, pos, hidden, logits = self.io
            h, lg = runner._compute(x, pos, False)
            hidden.copy_(h)
            logits.copy_(lg)
            replays.append(x.shape[1])

    d = m.config.d_model
    for n in range(1, 10):
        x, pos = torch.zeros(1, n, d), torch.zeros(n, dtype=torch.long)
        hidden, logits = torch.zeros(n, d), torch.zeros(n, m.vocab_size)
        runner._graphs[n] = (StandInGraph(x, pos, hidden, logits), x, pos, hidden, logits)
    res = SpeculativeDecoder(m, _eagle_for(m, 4), DecodeConfig(draft_len=2)).decode(obs)
    assert replays and res.token_ids == ref.token_ids
