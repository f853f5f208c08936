"""TinyVLA: prefix/forward, cache truncation, teacher forcing, checkpoints, loading errors, devices."""
import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from specvla_ros.core.models import loading as model_loading
from specvla_ros.core.models.interface import KVCache, ModelLoadError, VLAModel
from specvla_ros.core.models.loading import load_drafter, load_vla, parse_dtype, register_model_type, resolve_device
from specvla_ros.core.paths import DEFAULT_DRAFT_DIR, DEFAULT_TARGET_DIR, ONE_ACTION_DRAFT_DIR, ONE_ACTION_TARGET_DIR
from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
from specvla_ros.core.models.tiny_vla import SELECTION_GAIN, TinyVLA, TinyVLAConfig
from specvla_ros.core.models.checkpoint_io import checkpoint_megabytes, count_parameters
from specvla_ros.core.models.testing import make_random_checkpoint, make_random_draft


@pytest.fixture(scope="module")
def target(tiny_checkpoints):
    return load_vla(tiny_checkpoints[0], device="cpu")


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (128, 128, 3), dtype=np.uint8)


def _prefill(model, seed=0, instruction="pick up the red cube"):
    vis = model.encode_vision(_image(seed))
    return model.prefill(vis, instruction, np.linspace(-1, 1, 8).astype(np.float32))


def test_satisfies_protocols(target):
    assert isinstance(target, VLAModel)
    cache, out = _prefill(target)
    assert isinstance(cache, KVCache)
    assert out.logits.shape == (1, target.vocab_size) and out.logits.dtype == torch.float32
    assert out.hidden.shape == (1, target.config.d_model)
    assert len(cache) == target.config.n_patches + 1 + len(target.prompt_ids("pick up the red cube"))


def test_vision_features_shape_and_determinism(target):
    a = target.encode_vision(_image(1)).patches
    b = target.encode_vision(_image(1)).patches
    c = target.encode_vision(_image(2)).patches
    assert a.shape == (1, 16, target.config.d_vision)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_incremental_equals_one_chunk(target):
    tokens = torch.tensor([40, 50, 60, 70, 300, 301])
    cache_a, _ = _prefill(target)
    chunk = target.forward(tokens, cache_a).logits
    cache_b, _ = _prefill(target)
    steps = torch.cat([target.forward(t.view(1), cache_b).logits for t in tokens])
    torch.testing.assert_close(chunk, steps, atol=1e-5, rtol=1e-5)


def test_truncate_and_continue_equals_fresh_forward(target):
    cache, _ = _prefill(target)
    n0 = len(cache)
    target.forward(torch.tensor([11, 12, 13, 14, 15]), cache)  # rejected drafts
    cache.truncate(n0 + 2)  # keep 11, 12
    cont = target.forward(torch.tensor([99, 100]), cache).logits
    fresh_cache, _ = _prefill(target)
    fresh = target.forward(torch.tensor([11, 12, 99, 100]), fresh_cache).logits[2:]
    torch.testing.assert_close(cont, fresh, atol=1e-5, rtol=1e-5)
    assert len(cache) == len(fresh_cache)


def test_truncate_rejects_growing(target):
    cache, _ = _prefill(target)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(len(cache) + 1)


def test_cache_grows_past_reserved_capacity(target):
    cache, _ = _prefill(target)
    n0 = len(cache)
    many = torch.arange(40, 40 + cache.capacity - n0 + 5)
    out = target.forward(many, cache).logits
    fresh_cache, _ = _prefill(target)
    ref = torch.cat([target.forward(many[:10], fresh_cache).logits, target.forward(many[10:], fresh_cache).logits])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def named_target(tmp_path_factory):
    """A keypoint model with the instruction-selected keypoint token (random weights)."""
    model = TinyVLA.from_pretrained(make_random_checkpoint(tmp_path_factory.mktemp("named"), preset="test_kp_named", seed=4))
    with torch.no_grad():  # random selection logits: zero-initialised ones make every token the mean keypoint
        # (logit std 5: the colour word, one of ~12 summed embeddings of std 0.02, then moves the softmax)
        model.keypoint_select.weight.copy_(torch.randn(model.keypoint_select.weight.shape,
                                                       generator=torch.Generator().manual_seed(0)) * 5.0 / SELECTION_GAIN)
    return model


@pytest.mark.parametrize("which", ["target", "named_target"])
def test_forward_train_matches_incremental(which, request):
    """Teacher forcing (left-padded batch) gives the logits of prefill + cached steps, with and
    without the named-keypoint token in the prefix."""
    target = request.getfixturevalue(which)
    rng = np.random.default_rng(0)
    images = np.stack([_image(3), _image(4)])
    instructions = ["pick up the red cube", "push the green block to the target"]  # different prompt lengths
    proprio = rng.normal(size=(2, 8)).astype(np.float32)
    target_ids = torch.tensor([[40, 41, 42, 3, 300, 301], [50, 3, 400, 401, 402, 403]])
    logits, hidden = target.forward_train(images, instructions, proprio, target_ids)
    assert logits.shape == (2, 6, target.vocab_size) and hidden.shape == (2, 6, target.config.d_model)
    for b in range(2):
        vis = target.encode_vision(images[b])
        cache, first = target.prefill(vis, instructions[b], proprio[b])
        rest = target.forward(target_ids[b, :-1], cache)
        inc = torch.cat([first.logits, rest.logits])
        torch.testing.assert_close(logits[b].detach(), inc, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip_and_dtype(target, tmp_path):
    target.save_pretrained(tmp_path / "copy")
    again = load_vla(tmp_path / "copy", device="cpu")
    a, b = _prefill(target)[1].logits, _prefill(again)[1].logits
    torch.testing.assert_close(a, b)
    half = load_vla(tmp_path / "copy", device="cpu", dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    assert _prefill(half)[1].logits.dtype == torch.float32
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["model_type"] == "specvla_tiny"


def test_default_preset_size_budget(tmp_path):
    tdir = make_random_checkpoint(tmp_path / "t", preset="default")
    ddir = make_random_draft(tmp_path / "d", tdir, kind="model")
    edir = make_random_draft(tmp_path / "e", tdir, kind="eagle")
    cfg = TinyVLAConfig.from_dict(json.loads((tdir / "config.json").read_text()))
    assert (cfg.n_layers, cfg.d_model, cfg.n_patches) == (8, 384, 16)
    assert checkpoint_megabytes(tdir) + max(checkpoint_megabytes(ddir), checkpoint_megabytes(edir)) <= 60.0
    model = load_vla(tdir, device="cpu")
    assert model.dtype == torch.float32 and 12e6 < count_parameters(model) < 20e6


# --- loading errors ---------------------------------------------------------------------

def _copy_ckpt(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_missing_dir_and_config(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_vla(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_vla(tmp_path)


def test_broken_files_raise_clear_errors(tiny_checkpoints, tmp_path):
    d = _copy_ckpt(tiny_checkpoints[0], tmp_path / "c1")
    (d / "config.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="config.json.*not valid JSON"):
        load_vla(d)
    d = _copy_ckpt(tiny_checkpoints[0], tmp_path / "c2")
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_vla(d)
    d = _copy_ckpt(tiny_checkpoints[0], tmp_path / "c3")
    cfg = json.loads((d / "config.json").read_text())
    cfg["d_model"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="shapes do not match"):
        load_vla(d)
    d = _copy_ckpt(tiny_checkpoints[0], tmp_path / "c4")
    (d / "dataset_statistics.json").unlink()
    with pytest.raises(ModelLoadError, match="dataset_statistics.json"):
        load_vla(d)
    d = _copy_ckpt(tiny_checkpoints[0], tmp_path / "c5")
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_heads"] = 5
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="n_heads"):
        load_vla(d)


def test_unknown_model_type_and_draft_as_target(tiny_checkpoints, tmp_path):
    d = _copy_ckpt(tiny_checkpoints[0], tmp_path / "u")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mystery"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unknown model_type 'mystery'"):
        load_vla(d)
    with pytest.raises(ModelLoadError, match="draft checkpoint"):
        load_vla(tiny_checkpoints[1])


def test_draft_for_another_target_is_rejected(tiny_checkpoints, tmp_path, target):
    other_t = make_random_checkpoint(tmp_path / "big", preset="default")
    eagle_big = make_random_draft(tmp_path / "eb", other_t, kind="eagle")
    with pytest.raises(ModelLoadError, match="EAGLE head width"):
        load_drafter(eagle_big, target)
    with pytest.raises(ModelLoadError, match="expected"):
        load_drafter(tiny_checkpoints[0], target)


def test_lazy_adapter_registration(tiny_checkpoints, tmp_path, monkeypatch):
    (tmp_path / "fake_vla_adapter.py").write_text(textwrap.dedent("""
        from specvla_ros.core.models.loading import register_model_type
        from specvla_ros.core.models.tiny_vla import TinyVLA
        register_model_type("fake_vla", lambda p, dev, dt: TinyVLA.from_pretrained(p, dev, dt))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(model_loading._LAZY_ADAPTERS, "fake_vla", "fake_vla_adapter")
    monkeypatch.setitem(model_loading._LAZY_ADAPTERS, "broken_vla", "no_such_adapter_module")
    d = _copy_ckpt(tiny_checkpoints[0], tmp_path / "fake")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "fake_vla"
    (d / "config.json").write_text(json.dumps(cfg))
    try:
        # the loader itself reads config.json, which TinyVLAConfig rejects for a foreign type
        with pytest.raises(ModelLoadError, match="model_type"):
            load_vla(d, device="cpu")
        assert "fake_vla" in model_loading._REGISTRY  # the adapter was imported by name
        cfg["model_type"] = "broken_vla"
        (d / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ModelLoadError, match="no_such_adapter_module"):
            load_vla(d, device="cpu")
    finally:
        model_loading._REGISTRY.pop("fake_vla", None)
        sys.modules.pop("fake_vla_adapter", None)


def test_register_model_type_dispatch(tiny_checkpoints, tmp_path):
    calls = []

    def loader(path, device, dtype):
        calls.append((path, device, dtype))
        return TinyVLA.from_pretrained(tiny_checkpoints[0], device, dtype)

    d = tmp_path / "custom"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "custom_vla"}))
    register_model_type("custom_vla", loader)
    try:
        model = load_vla(d, device="cpu", dtype="fp32")
    finally:
        model_loading._REGISTRY.pop("custom_vla")
    assert calls == [(d, torch.device("cpu"), torch.float32)] and isinstance(model, TinyVLA)


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    assert parse_dtype("bf16") == torch.bfloat16 and parse_dtype("float16") == torch.float16
    assert parse_dtype(None, torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        parse_dtype("int8")


def test_config_validation_names_bad_value():
    with pytest.raises(ValueError, match="n_heads"):
        TinyVLAConfig(d_model=64, n_heads=3)
    with pytest.raises(ValueError, match="image_size"):
        TinyVLAConfig(image_size=100)
    with pytest.raises(ValueError, match="unknown config keys"):
        TinyVLAConfig.from_dict({"bogus": 1})


def test_bad_inputs(target):
    with pytest.raises(ValueError, match="HxWx3"):
        target.encode_vision(np.zeros((128, 128), np.uint8))
    vis = target.encode_vision(_image())
    with pytest.raises(ValueError, match="proprio"):
        target.prefill(vis, "pick up the red cube", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        target.prefill(vis, "pick up the red cube", np.full(8, np.nan, np.float32))
    with pytest.raises(ValueError, match="proprio is required"):
        target.prefill(vis, "pick up the red cube", None)
    other = target.encode_vision(np.zeros((64, 96, 3), np.uint8))  # resized to the input size
    assert other.patches.shape == vis.patches.shape


def test_default_paths_point_into_package():
    """The default pair is the chunk pair; the one-action pair ships beside it."""
    assert DEFAULT_TARGET_DIR.parts[-3:] == ("data", "models", "chunk_target")
    assert DEFAULT_DRAFT_DIR.parts[-3:] == ("data", "models", "chunk_draft")
    assert ONE_ACTION_TARGET_DIR.parts[-3:] == ("data", "models", "target")
    assert ONE_ACTION_DRAFT_DIR.parts[-3:] == ("data", "models", "draft")


def test_named_keypoint_token_is_the_selected_keypoint(named_target):
    """The token after the proprio token is named_proj of the keypoint the selection picks; it changes
    with the instruction; a named model refuses vision features without raw keypoints."""
    m = named_target
    vis = m.encode_vision(_image(1))
    prop = np.linspace(-1, 1, 8).astype(np.float32)
    assert vis.keypoints.shape == (1, m.config.vision_keypoints, 3)
    with torch.inference_mode():
        red = m.prefix_embeds(vis, "reach the red cube", prop)
        blue = m.prefix_embeds(vis, "reach the blue cube", prop)
        n_vis = m.config.n_patches
        assert red.shape[1] == n_vis + 2 + len(m.prompt_ids("reach the red cube"))
        torch.testing.assert_close(red[:, :n_vis + 1], blue[:, :n_vis + 1])  # patches and proprio alike
        assert float((red[0, n_vis + 1] - blue[0, n_vis + 1]).abs().max()) > 1e-3  # the named token differs
        # force the selection onto keypoint 2: the token is exactly that keypoint's embedding
        saved = (m.keypoint_select.weight.clone(), m.keypoint_select.bias.clone())
        m.keypoint_select.weight.zero_()
        m.keypoint_select.bias.zero_()
        m.keypoint_select.bias[2] = 50.0
        forced = m.prefix_embeds(vis, "reach the red cube", prop)[0, n_vis + 1]
        torch.testing.assert_close(forced, m.named_proj(vis.keypoints[0, 2]), atol=1e-5, rtol=1e-5)
        m.keypoint_select.weight.copy_(saved[0])
        m.keypoint_select.bias.copy_(saved[1])
    from specvla_ros.core.models.interface import VisionFeatures

    with pytest.raises(ValueError, match="raw keypoints"):
        m.prefill(VisionFeatures(vis.patches), "reach the red cube", prop)
    with pytest.raises(ValueError, match="named_keypoint needs vision_keypoints"):
        TinyVLAConfig(named_keypoint=True, vision_keypoints=0)
    with pytest.raises(ValueError, match="named_relative"):
        TinyVLAConfig(named_keypoint=True, vision_keypoints=4, named_relative=(4,))


def test_named_token_holds_offsets_of_the_relative_keypoints(tmp_path):
    """With named_relative, the token's input is the selected keypoint plus each listed keypoint's
    image offset from it: moving the gripper keypoint changes the token, by exactly that offset."""
    from specvla_ros.core.models.tiny_vla import PRESETS

    tok = VLATextTokenizer.build()
    cfg = TinyVLAConfig(vocab_size=tok.vocab_size, **dict(PRESETS["test_kp_named"], named_relative=(4, 5)))
    torch.manual_seed(0)
    m = TinyVLA(cfg, tok)
    with torch.no_grad():
        m.keypoint_select.bias[1] = 50.0  # select keypoint 1
        kps = torch.rand(1, cfg.vision_keypoints, 3)
        embeds = [m.backbone.embed_tokens(m.prompt_ids("reach the green ball"))]
        token, _ = m.select_keypoint(kps, embeds)
        inputs = torch.cat([kps[0, 1], kps[0, 4, :2] - kps[0, 1, :2], kps[0, 5, :2] - kps[0, 1, :2]])
        torch.testing.assert_close(token[0], m.named_proj(inputs), atol=1e-5, rtol=1e-5)
        kps2 = kps.clone()
        kps2[0, 5, :2] += 0.3
        assert float((m.select_keypoint(kps2, embeds)[0] - token).abs().max()) > 1e-4


def test_selection_loss_teaches_the_colour_word_to_pick_its_keypoint(tmp_path):
    """train_target.selection_loss: a few optimiser steps on the selection layer alone make each
    colour word select its colour-bound keypoint (keypoint c = sim.language.COLOR_NAMES[c])."""
    from specvla_ros.sim.language import COLOR_NAMES
    from specvla_ros.train.train_target import named_colour_index, selection_loss

    m = TinyVLA.from_pretrained(make_random_checkpoint(tmp_path / "m", preset="test_kp_named", seed=5))
    instructions = [f"{task} the {c} {shape}" for c in COLOR_NAMES for task, shape in
                    (("reach", "ball"), ("pick up", "cube"))] + ["push the green block to the target"]
    assert [named_colour_index(s) for s in instructions[:2]] == [0, 0] and named_colour_index("reach it") == -1
    embeds = [m.backbone.embed_tokens(m.prompt_ids(s)).detach() for s in instructions]
    opt = torch.optim.Adam(m.keypoint_select.parameters(), lr=0.005)
    kps = torch.zeros(len(instructions), m.config.vision_keypoints, 3)
    first = None
    for _ in range(200):
        _, logits = m.select_keypoint(kps, embeds)
        loss = selection_loss(logits, instructions)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, logits = m.select_keypoint(kps, embeds)
    assert float(selection_loss(logits, instructions).detach()) < 0.1 * first
    assert logits.argmax(-1).tolist() == [named_colour_index(s) for s in instructions]


@pytest.mark.parametrize("which", ["target", "named_target"])
def test_prefill_with_guess_equals_prefill_then_verify(which, request):
    """One pass over prefix + guessed tokens gives the prefill's output, the verify pass's output
    over the guess, and a cache that continues like the two-pass one."""
    m = request.getfixturevalue(which)
    vis = m.encode_vision(_image(2))
    prop = np.linspace(-1, 1, 8).astype(np.float32)
    guess = [40, 41, 3, 300, 301]
    cache, first = m.prefill(vis, "push the blue block to the target", prop, return_all_hidden=True)
    rest = m.forward(torch.tensor(guess), cache)
    fcache, ffirst, frest = m.prefill_with_guess(vis, "push the blue block to the target", prop, guess,
                                                 return_all_hidden=True)
    torch.testing.assert_close(ffirst.logits, first.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ffirst.hidden, first.hidden, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(frest.logits, rest.logits, atol=1e-4, rtol=1e-4)
    assert len(fcache) == len(cache)
    torch.testing.assert_close(m.forward(torch.tensor([302]), fcache).logits,
                               m.forward(torch.tensor([302]), cache).logits, atol=1e-4, rtol=1e-4)
