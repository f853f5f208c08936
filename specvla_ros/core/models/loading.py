"""Load any VLA checkpoint dir behind ``VLAModel`` and a drafter for it.

``load_vla`` reads ``config.json`` and dispatches on ``"model_type"`` through a
registry: ``register_model_type(name, loader)``. "specvla_tiny" is built in;
other types are registered by adapter modules, which the registry imports
lazily by name (``_LAZY_ADAPTERS``) so ``load_vla`` works on, e.g., an OpenVLA
dir without the caller importing the adapter first.

Every failure (missing dir, missing or malformed file, weights that do not fit
the config, unknown model_type, a draft made for another target) raises
``ModelLoadError`` naming the file and the problem.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from specvla_ros.core.models.interface import ModelLoadError, VLAModel
from specvla_ros.core.models.checkpoint_io import (
    CONFIG_FILE, DRAFT_MODEL_TYPE, TARGET_MODEL_TYPE, WEIGHTS_FILE, load_weights, read_config,
)
from specvla_ros.core.models.tiny_vla import TinyVLA, TinyVLAConfig

if TYPE_CHECKING:
    from specvla_ros.core.decoding.drafters import Drafter

Loader = Callable[[Path, torch.device, torch.dtype], VLAModel]

_REGISTRY: dict[str, Loader] = {}
#: model_type -> module that calls register_model_type for it when imported.
_LAZY_ADAPTERS: dict[str, str] = {"openvla": "specvla_ros.core.models.openvla"}

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def register_model_type(name: str, loader: Loader) -> None:
    """Make ``load_vla`` handle checkpoints whose config.json says ``"model_type": name``.

    loader(path, device, dtype) -> VLAModel.
    """
    if not name:
        raise ValueError("model_type name must be non-empty")
    _REGISTRY[name] = loader


def registered_model_types() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY_ADAPTERS))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; "cuda" without a GPU -> ValueError."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available (use 'auto' or 'cpu')")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device | None = None) -> torch.dtype:
    """"float32"/"float16"/"bfloat16" (and short forms) -> torch dtype.

    None or "auto": bfloat16 on CUDA when supported, else float32 (fp16 matmuls on CPU are slow).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or str(dtype).lower() == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(set(_DTYPES))} or 'auto', got {dtype!r}")
    return _DTYPES[key]


def _load_tiny(path: Path, device: torch.device, dtype: torch.dtype) -> VLAModel:
    return TinyVLA.from_pretrained(path, device=device, dtype=dtype)


register_model_type(TARGET_MODEL_TYPE, _load_tiny)


def load_vla(path: str | Path, device: str | torch.device = "auto", dtype: str | torch.dtype | None = None) -> VLAModel:
    """Load the target VLA in checkpoint dir ``path`` on ``device`` in ``dtype``."""
    path = Path(path)
    dev = resolve_device(device)
    dt = parse_dtype(dtype, dev)
    config = read_config(path)
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise ModelLoadError(f"{path / CONFIG_FILE}: no \"model_type\" string")
    if model_type == DRAFT_MODEL_TYPE:
        raise ModelLoadError(f"{path / CONFIG_FILE}: this is a draft checkpoint; load it with load_drafter(path, target)")
    if model_type not in _REGISTRY and model_type in _LAZY_ADAPTERS:
        try:
            importlib.import_module(_LAZY_ADAPTERS[model_type])
        except ImportError as exc:
            raise ModelLoadError(f"{path / CONFIG_FILE}: model_type {model_type!r} needs {_LAZY_ADAPTERS[model_type]}, "
                                 f"which failed to import ({exc})") from exc
    loader = _REGISTRY.get(model_type)
    if loader is None:
        raise ModelLoadError(f"{path / CONFIG_FILE}: unknown model_type {model_type!r}; known: {registered_model_types()}")
    try:
        return loader(path, dev, dt)
    except ValueError as exc:  # config validation inside a loader
        raise ModelLoadError(f"{path / CONFIG_FILE}: {exc}") from exc


def load_drafter(
    path: str | Path, target: VLAModel, draft_len: int = 4, max_draft_len: int = 8, adaptive: bool = True
) -> "Drafter":
    """Load the draft checkpoint in ``path`` for ``target`` -> ModelDrafter or EagleDrafter.

    Checks that the draft was made for this target (vocabulary, widths). The free drafts
    (``drafters.CandidateSource``) are switched by ``DecodeConfig``.
    """
    from specvla_ros.core.models.eagle_head import EagleConfig, EagleHead
    from specvla_ros.core.decoding.drafters import EagleDrafter, ModelDrafter

    path = Path(path)
    config = read_config(path)
    cfg_file = path / CONFIG_FILE
    if config.get("model_type") != DRAFT_MODEL_TYPE:
        raise ModelLoadError(f"{cfg_file}: expected \"model_type\": \"{DRAFT_MODEL_TYPE}\", got {config.get('model_type')!r}")
    kind = config.get("draft_kind")
    if config.get("vocab_size") != target.vocab_size:
        raise ModelLoadError(f"{cfg_file}: draft vocab_size {config.get('vocab_size')} != target vocab_size {target.vocab_size}")
    _check_same_tokenizer(path, target)
    try:
        if kind == "model":
            model = TinyVLA.from_pretrained(path, device=target.device, dtype=target.dtype)
            d_vision = getattr(getattr(target, "config", None), "d_vision", None)
            if d_vision is not None and model.config.d_vision != d_vision:
                raise ModelLoadError(f"{cfg_file}: draft d_vision {model.config.d_vision} != target d_vision {d_vision}")
            return ModelDrafter(model, draft_len, max_draft_len, adaptive)
        if kind == "eagle":
            cfg = EagleConfig.from_dict(config)
            target_d = getattr(getattr(target, "config", None), "d_model", None)
            if target_d != cfg.d_model:
                raise ModelLoadError(f"{cfg_file}: EAGLE head width {cfg.d_model} != target d_model {target_d}")
            for attr in ("embed_tokens", "prefix_embeds", "lm_head"):
                if not hasattr(target, attr):
                    raise ModelLoadError(f"{cfg_file}: an EAGLE head needs a target exposing {attr!r}")
            head = EagleHead(cfg)
            load_weights(head, path / WEIGHTS_FILE)
            head = head.to(device=target.device, dtype=target.dtype).eval()
            return EagleDrafter(head, target, draft_len, max_draft_len, adaptive)
    except ValueError as exc:
        raise ModelLoadError(f"{cfg_file}: {exc}") from exc
    raise ModelLoadError(f"{cfg_file}: draft_kind must be 'model' or 'eagle', got {kind!r}")


def _check_same_tokenizer(path: Path, target: VLAModel) -> None:
    tok_path = path / "tokenizer.json"
    if not tok_path.exists():
        return
    from specvla_ros.core.models.text_tokenizer import VLATextTokenizer

    try:
        draft_tok = VLATextTokenizer.load(path)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    probe = "move to the red cube"
    target_tok = target.text_tokenizer
    if draft_tok.eon_token_id != target_tok.eon_token_id or draft_tok.encode(probe) != target_tok.encode(probe):
        raise ModelLoadError(f"{tok_path}: the draft's tokenizer differs from the target's")


__all__ = [
    "ModelLoadError", "load_vla", "load_drafter", "register_model_type", "registered_model_types",
    "resolve_device", "parse_dtype", "TinyVLAConfig",
]
