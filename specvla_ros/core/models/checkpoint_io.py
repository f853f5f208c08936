"""The project's checkpoint directory layout and its file I/O.

    config.json                 the model's config dataclass (``model_type`` says which)
    model.safetensors           weights, stored in float32 / float16 / bfloat16
    tokenizer.json              the text tokenizer
    dataset_statistics.json     OpenVLA-layout action statistics (targets only)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from specvla_ros.core.models.interface import ModelLoadError, read_json_object

TARGET_MODEL_TYPE = "specvla_tiny"
DRAFT_MODEL_TYPE = "specvla_draft"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "dataset_statistics.json"
STORAGE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                           "bfloat16": torch.bfloat16}


def save_checkpoint(module: nn.Module, out_dir: str | Path, config: dict, model_type: str,
                    storage_dtype: str = "float32") -> Path:
    """Write ``config.json`` and ``model.safetensors`` (weights cast to ``storage_dtype``) into ``out_dir``."""
    from safetensors.torch import save_file

    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got {storage_dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    sd = {k: v.detach().to("cpu", STORAGE_DTYPES[storage_dtype]).contiguous() for k, v in module.state_dict().items()}
    save_file(sd, str(out / WEIGHTS_FILE), metadata={"format": "pt", "model_type": model_type})
    return out


def read_config(ckpt_dir: Path) -> dict:
    """config.json of a checkpoint dir as a dict (ModelLoadError if missing or not JSON)."""
    path = Path(ckpt_dir) / CONFIG_FILE
    if not Path(ckpt_dir).is_dir():
        raise ModelLoadError(f"{ckpt_dir}: checkpoint directory does not exist")
    return read_json_object(path, " (every checkpoint dir needs a config.json)")


def load_weights(module: nn.Module, path: Path) -> None:
    """Load safetensors into ``module`` strictly; ModelLoadError names the file and the mismatch."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise ModelLoadError(f"{path}: missing weights file")
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read safetensors ({exc})") from exc
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ModelLoadError(f"{path}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise ModelLoadError(f"{path}: tensor shapes do not match the config: {bad[:3]}")
    sd = {k: v.to(own[k].dtype) for k, v in sd.items()}
    if not all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()):
        raise ModelLoadError(f"{path}: weights contain NaN or Inf")
    module.load_state_dict(sd, strict=True)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def checkpoint_megabytes(ckpt_dir: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(ckpt_dir).iterdir() if p.is_file()) / 1e6
