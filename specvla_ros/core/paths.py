"""Where the shipped models live (filled by the training step; may be absent)."""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = PACKAGE_DIR / "data"
MODELS_DIR = DATA_DIR / "models"
#: The action-chunk pair: 8 actions per decision (target VLA checkpoint: config.json, model.safetensors,
#: tokenizer.json, dataset_statistics.json; its draft model).
CHUNK_TARGET_DIR = MODELS_DIR / "chunk_target"
CHUNK_DRAFT_DIR = MODELS_DIR / "chunk_draft"
#: The one-action pair (one action per decision), shipped beside it.
ONE_ACTION_TARGET_DIR = MODELS_DIR / "target"
ONE_ACTION_DRAFT_DIR = MODELS_DIR / "draft"
#: The default pair: chunks, which do better in closed loop (see the model cards).
DEFAULT_TARGET_DIR = CHUNK_TARGET_DIR
DEFAULT_DRAFT_DIR = CHUNK_DRAFT_DIR


def shipped_models_present() -> bool:
    """True when both default checkpoints exist (have a config.json)."""
    return (DEFAULT_TARGET_DIR / "config.json").is_file() and (DEFAULT_DRAFT_DIR / "config.json").is_file()
