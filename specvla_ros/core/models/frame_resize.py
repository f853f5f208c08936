"""Resizing camera frames to a model's input size, the way the model was trained to see them.

A model declares its method (``VLAModel.image_resize``); the node, the policy server
and the model's own vision encoder all resize with this module, so a 640x480 camera
gives the model the same pixels wherever the resize happens.

- ``"pil_bicubic"``: Pillow's bicubic resampling on the uint8 RGB image, what
  OpenVLA's image processor does (torchvision's resize of a PIL image calls
  ``Image.resize(..., BICUBIC)``); the result is uint8, normalisation comes after.
- ``"area"``: OpenCV's pixel-area average when shrinking (no aliasing), bilinear when
  growing; for models trained on frames rendered at their own input size.
"""
from __future__ import annotations

from typing import Literal, get_args

import cv2
import numpy as np
from PIL import Image

ResizeMethod = Literal["area", "pil_bicubic"]
RESIZE_METHODS: tuple[str, ...] = get_args(ResizeMethod)


def check_resize_method(method: str) -> ResizeMethod:
    """``method`` if it is a known resize method, else ValueError naming the known ones."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown image resize method {method!r} (known: {', '.join(RESIZE_METHODS)})")
    return method  # type: ignore[return-value]


def resize_frame(rgb: np.ndarray, size_hw: tuple[int, int], method: ResizeMethod) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (h, w, 3) with ``method``; a frame already (h, w) is returned as is."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {h}x{w}")
    frame = np.asarray(rgb)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame.shape} {frame.dtype}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"empty frame {frame.shape}")
    if frame.shape[:2] == (h, w):
        return np.ascontiguousarray(frame)
    if method == "pil_bicubic":
        return np.array(Image.fromarray(np.ascontiguousarray(frame), "RGB").resize((w, h), Image.Resampling.BICUBIC))
    if method == "area":
        shrinking = frame.shape[0] >= h and frame.shape[1] >= w
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    raise ValueError(f"unknown image resize method {method!r} (known: {', '.join(RESIZE_METHODS)})")


__all__ = ["ResizeMethod", "RESIZE_METHODS", "check_resize_method", "resize_frame"]
