"""Spatial-softmax keypoint tokens of the TinyVLA vision encoder."""
import numpy as np
import pytest
import torch

from specvla_ros.core.decoding.drafters import ModelDrafter
from specvla_ros.core.models.loading import load_vla
from specvla_ros.core.decoding.decoder import DecodeConfig, SpeculativeDecoder
from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
from specvla_ros.core.models.tiny_vla import PRESETS, SpatialSoftmaxKeypoints, TinyVLA, TinyVLAConfig
from specvla_ros.core.models.testing import make_random_checkpoint, make_random_draft
from specvla_ros.core.types import Observation


class _Spot(torch.nn.Module):
    """Stands in for the conv stem: one heat map, hot at a known cell."""

    def __init__(self, row: int, col: int, size: int = 32) -> None:
        super().__init__()
        self.row, self.col, self.size = row, col, size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = torch.zeros(images.shape[0], 1, self.size, self.size)
        maps[:, 0, self.row, self.col] = 40.0
        return maps


@pytest.mark.parametrize("row,col", [(5, 20), (31, 0), (16, 16)])
def test_soft_argmax_reads_column_as_x_and_row_as_y(row, col):
    kp = SpatialSoftmaxKeypoints(1, 8)
    kp.stem = _Spot(row, col)
    with torch.no_grad():
        coords = kp.coordinates(torch.zeros(2, 3, 128, 128))
    grid = torch.linspace(-1.0, 1.0, 32)
    assert coords.shape == (2, 1, 3)
    assert float(coords[0, 0, 0]) == pytest.approx(float(grid[col]), abs=1e-3)
    assert float(coords[0, 0, 1]) == pytest.approx(float(grid[row]), abs=1e-3)
    assert float(coords[0, 0, 2]) > 0.99  # a sharp peak


def test_keypoint_tokens_follow_an_object_across_the_image():
    """A trained-free check of the whole path: moving a red square moves a red-tuned keypoint."""
    kp = SpatialSoftmaxKeypoints(1, 8)
    with torch.no_grad():
        first = kp.stem[0]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[:, 0] = 1.0 / 16  # every channel = mean red of the 4x4 cell
        first.weight[:, 1:] = -1.0 / 16  # minus green and blue
        mid = kp.stem[2]
        mid.weight.zero_()
        mid.bias.zero_()
        mid.weight[:, :, 1, 1] = torch.eye(mid.weight.shape[0])
        last = kp.stem[4]
        last.weight.fill_(1.0)
        last.bias.zero_()
    xs = []
    for x0 in (10, 60, 110):
        img = torch.full((1, 3, 128, 128), -2.0)  # dark, normalised
        img[:, 0, 40:48, x0 : x0 + 8] = 2.0  # red square
        with torch.no_grad():
            xs.append(float(kp.coordinates(img)[0, 0, 0]))
    assert xs[0] < xs[1] < xs[2]
    assert xs[0] < -0.6 and xs[2] > 0.6


def test_config_counts_keypoint_tokens_and_validates():
    cfg = TinyVLAConfig(**{**PRESETS["test"], "vision_keypoints": 5})
    assert cfg.n_patches == 16 + 5
    with pytest.raises(ValueError, match="vision_keypoints"):
        TinyVLAConfig(**{**PRESETS["test"], "vision_keypoints": -1})


def test_keypoint_model_round_trips_and_decodes_exactly(tmp_path):
    tok = VLATextTokenizer.build()
    cfg = TinyVLAConfig(vocab_size=tok.vocab_size, **{**PRESETS["test"], "vision_keypoints": 4})
    torch.manual_seed(0)
    model = TinyVLA(cfg, tok)
    model.save_pretrained(tmp_path / "t")
    loaded = load_vla(tmp_path / "t", device="cpu")
    img = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    a = model.encode_vision(img).patches
    b = loaded.encode_vision(img).patches
    assert a.shape == (1, 16 + 4, cfg.d_vision)
    torch.testing.assert_close(a, b)
    # a draft built for this target reads its 20 vision tokens; greedy speculative == target greedy
    draft_dir = make_random_draft(tmp_path / "d", tmp_path / "t", kind="model", seed=1)
    draft = TinyVLA.from_pretrained(draft_dir)
    assert draft.config.n_patches == 20
    o = Observation(img, "reach the red cube", np.zeros(8, dtype=np.float32), 1)
    want = SpeculativeDecoder(loaded, None, DecodeConfig()).decode(o).token_ids
    got = SpeculativeDecoder(loaded, ModelDrafter(draft), DecodeConfig()).decode(o).token_ids
    assert got == want


def test_patch_only_checkpoint_still_loads(tmp_path):
    """Checkpoints written before keypoints existed (no vision_keypoints key) load unchanged."""
    path = make_random_checkpoint(tmp_path / "old", preset="test")
    import json
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("vision_keypoints", None)
    (path / "config.json").write_text(json.dumps(cfg))
    model = load_vla(path, device="cpu")
    assert model.config.vision_keypoints == 0
    assert model.vision_encoder.keypoints is None


def test_proprio_keep_hides_the_joints_from_the_model(tmp_path):
    """proprio_keep=(7,): the joints cannot change the output (no copycat shortcut), the gripper can;
    the setting survives save/load and bad indices are refused."""
    tok = VLATextTokenizer.build()
    cfg = TinyVLAConfig(vocab_size=tok.vocab_size, **{**PRESETS["test_kp"], "proprio_keep": (7,)})
    torch.manual_seed(0)
    model = TinyVLA(cfg, tok)
    model.save_pretrained(tmp_path / "m")
    loaded = load_vla(tmp_path / "m", device="cpu")
    assert loaded.config.proprio_keep == (7,)
    img = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    vis = loaded.encode_vision(img)
    base = np.zeros(8, dtype=np.float32)
    joints_moved = base.copy()
    joints_moved[:7] = [0.5, -0.3, 0.2, -2.0, 0.1, 1.5, 0.7]
    gripper_moved = base.copy()
    gripper_moved[7] = 0.08

    def first_logits(p):
        return loaded.prefill(vis, "reach the red cube", p)[1].logits

    torch.testing.assert_close(first_logits(base), first_logits(joints_moved))
    assert not torch.allclose(first_logits(base), first_logits(gripper_moved))
    with pytest.raises(ValueError, match="proprio_keep"):
        TinyVLAConfig(**{**PRESETS["test"], "proprio_keep": (8,)})
