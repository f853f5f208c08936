"""Randomly initialised checkpoints in the shipped layouts, for tests and benchmarks
(the trained ones come from ``specvla_ros.train``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from specvla_ros.core.models.action_tokenizer import ActionNormStats
from specvla_ros.core.models.checkpoint_io import DRAFT_MODEL_TYPE, read_config
from specvla_ros.core.models.eagle_head import EagleConfig, EagleHead
from specvla_ros.core.models.text_tokenizer import VLATextTokenizer
from specvla_ros.core.models.tiny_vla import DRAFT_PRESETS, PRESETS, TinyVLA, TinyVLAConfig


def default_norm_stats() -> ActionNormStats:
    """Plausible statistics for the simulated Panda: +-2 cm, +-0.1 rad per step, gripper 0..1."""
    return ActionNormStats(
        q01=np.array([-0.02] * 3 + [-0.1] * 3 + [0.0]),
        q99=np.array([0.02] * 3 + [0.1] * 3 + [1.0]),
        mask=np.array([True] * 6 + [False]),
    )


def _resolve_preset(preset: str, table: dict[str, dict]) -> dict:
    if preset not in table:
        raise ValueError(f"preset must be one of {sorted(table)}, got {preset!r}")
    return dict(table[preset])


def make_random_checkpoint(out_dir: str | Path, preset: str = "test", seed: int = 0, storage_dtype: str | None = None,
                           chunk_horizon: int = 1) -> Path:
    """Build a randomly initialised target of ``preset`` (emitting ``chunk_horizon`` actions per
    decision) and save it to ``out_dir`` (returned)."""
    geometry = _resolve_preset(preset, PRESETS)
    tok = VLATextTokenizer.build()
    cfg = TinyVLAConfig(vocab_size=tok.vocab_size, chunk_horizon=chunk_horizon, **geometry)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyVLA(cfg, tok, default_norm_stats())
    model.save_pretrained(out_dir, storage_dtype or ("float16" if preset == "default" else "float32"))
    return Path(out_dir)


def make_random_draft(
    out_dir: str | Path, target_dir: str | Path, kind: str = "model", seed: int = 0, preset: str | None = None,
    storage_dtype: str | None = None,
) -> Path:
    """Build a random drafter for the target in ``target_dir``: kind "model" (1-layer VLA) or "eagle"."""
    target_cfg = TinyVLAConfig.from_dict(read_config(Path(target_dir)))
    tok = VLATextTokenizer.load(target_dir)
    if preset is None:
        preset = "default" if target_cfg.d_model >= 256 else "test"
    storage = storage_dtype or ("float16" if preset == "default" else "float32")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "model":
            geometry = _resolve_preset(preset, DRAFT_PRESETS)
            cfg = TinyVLAConfig(
                model_type=DRAFT_MODEL_TYPE, draft_kind="model", vocab_size=tok.vocab_size,
                has_vision_encoder=False, d_vision=target_cfg.d_vision, image_size=target_cfg.image_size,
                patch_size=target_cfg.patch_size, patch_pool=target_cfg.patch_pool, vision_layers=0,
                vision_keypoints=target_cfg.vision_keypoints, proprio_keep=target_cfg.proprio_keep,
                proprio_features=target_cfg.proprio_features, named_keypoint=target_cfg.named_keypoint,
                named_relative=target_cfg.named_relative,
                prompt_template=target_cfg.prompt_template, **geometry,
            )
            TinyVLA(cfg, tok).save_pretrained(out_dir, storage)
        elif kind == "eagle":
            cfg = EagleConfig(vocab_size=tok.vocab_size, d_model=target_cfg.d_model, n_heads=target_cfg.n_heads,
                              n_kv_heads=target_cfg.n_kv_heads, intermediate_size=target_cfg.intermediate_size,
                              rope_theta=target_cfg.rope_theta, max_positions=target_cfg.max_positions)
            EagleHead(cfg).save_pretrained(out_dir, tok, storage)
        else:
            raise ValueError(f"draft kind must be 'model' or 'eagle', got {kind!r}")
    return Path(out_dir)
