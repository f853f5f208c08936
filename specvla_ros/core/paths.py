"""Where the shipped models live (filled by the training step; may be absent)."""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = PACKAGE_DIR / "data"
MODELS_DIR = DATA_DIR / "models"
#: Trained target VLA checkpoint dir (config.json, model.safetensors, tokenizer.json, dataset_statistics.json).
DEFAULT_TARGET_DIR = MODELS_DIR / "target"
#: Trained draft checkpoint dir (independent draft model or EAGLE head).
DEFAULT_DRAFT_DIR = MODELS_DIR / "draft"
#: The action-chunk pair (8 actions per decision; not the default: see its model card).
CHUNK_TARGET_DIR = MODELS_DIR / "chunk_target"
CHUNK_DRAFT_DIR = MODELS_DIR / "chunk_draft"


def shipped_models_present() -> bool:
    """True when both default checkpoints exist (have a config.json)."""
    return (DEFAULT_TARGET_DIR / "config.json").is_file() and (DEFAULT_DRAFT_DIR / "config.json").is_file()
