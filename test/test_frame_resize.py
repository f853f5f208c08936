"""Frames of any camera size reach the model as its reference preprocessing would give them.

``pil_bicubic`` (OpenVLA) is checked against expectations made here by hand: a worked
4 -> 2 pixel example, and an independent NumPy transcription of Pillow's published
fixed-point bicubic resampling (separable, horizontal pass first, 22-bit coefficients,
round-half-up, clip to 0..255) on frames of common camera sizes.
"""
from __future__ import annotations

import numpy as np
import pytest

from specvla_ros.core.models.frame_resize import RESIZE_METHODS, check_resize_method, resize_frame

PRECISION_BITS = 32 - 8 - 2


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _coefficients(in_size: int, out_size: int) -> list[tuple[int, np.ndarray]]:
    """(first input pixel, integer weights) per output pixel."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)  # antialiasing: the kernel widens when shrinking
    support = 2.0 * filter_scale
    rows = []
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C
        hi = min(int(center + support + 0.5), in_size)
        w = [_bicubic((x + lo - center + 0.5) / filter_scale) for x in range(hi - lo)]
        total = 0.0
        for v in w:  # summed in order, as the reference does
            total += v
        w = [v / total for v in w] if total != 0.0 else w
        k = np.array([int(v * (1 << PRECISION_BITS) + (0.5 if v >= 0 else -0.5)) for v in w], dtype=np.int64)
        rows.append((lo, k))
    return rows


def _pass(img: np.ndarray, out_size: int) -> np.ndarray:
    """Resample axis 1 of (rows, cols, 3) uint8 to ``out_size``; uint8 result."""
    out = np.empty((img.shape[0], out_size, img.shape[2]), dtype=np.uint8)
    src = img.astype(np.int64)
    for xx, (lo, k) in enumerate(_coefficients(img.shape[1], out_size)):
        acc = (1 << (PRECISION_BITS - 1)) + np.tensordot(src[:, lo:lo + len(k), :], k, axes=([1], [0]))
        out[:, xx, :] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return out


def reference_pil_bicubic(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    out = rgb
    if out.shape[1] != w:
        out = _pass(out, w)
    if out.shape[0] != h:
        out = _pass(out.transpose(1, 0, 2), h).transpose(1, 0, 2)
    return np.ascontiguousarray(out)


def _frame(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients, hard edges and noise: every part of the kernel matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x // 7 + y // 5) % 2) * 255], -1)
    noise = rng.integers(-40, 41, size=(h, w, 3))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def test_worked_example_four_pixels_to_two() -> None:
    # Shrinking 4 -> 2: scale 2, kernel support 4 input pixels. Output 0 has centre 1.0;
    # input pixels 0..3 sit at offsets -0.5, 0.5, 1.5, 2.5 -> kernel at -0.25, 0.25, 0.75, 1.25:
    # weights 0.8671875, 0.8671875, 0.2265625, -0.0703125 (sum 1.890625).
    # Row [0, 0, 255, 255]: (0.2265625 - 0.0703125) * 255 / 1.890625 = 21.07 -> 21; output 1 mirrors it.
    row = np.array([[[0, 0, 0], [0, 0, 0], [255, 255, 255], [255, 255, 255]]], dtype=np.uint8)
    out = resize_frame(row, (1, 2), "pil_bicubic")
    assert out[0, :, 0].tolist() == [21, 234]
    assert reference_pil_bicubic(row, (1, 2))[0, :, 0].tolist() == [21, 234]


@pytest.mark.parametrize("hw, size", [((480, 640), (224, 224)), ((720, 1280), (224, 224)), ((240, 320), (224, 224)),
                                      ((120, 160), (224, 224)), ((224, 300), (224, 224)), ((37, 53), (28, 28))])
def test_pil_bicubic_matches_the_published_algorithm_exactly(hw: tuple[int, int], size: tuple[int, int]) -> None:
    frame = _frame(*hw, seed=hw[0])
    out = resize_frame(frame, size, "pil_bicubic")
    assert out.dtype == np.uint8 and out.shape == size + (3,)
    np.testing.assert_array_equal(out, reference_pil_bicubic(frame, size))


def test_pil_bicubic_differs_from_float_resampling() -> None:
    """The rounding matters: torch's antialiased bicubic on floats gives other pixels."""
    import torch
    import torch.nn.functional as F

    frame = _frame(480, 640, seed=1)
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0
    torch_px = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    torch_u8 = (torch_px.clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
    pil = resize_frame(frame, (224, 224), "pil_bicubic").astype(np.float64)
    assert np.abs(torch_u8 - pil).max() >= 2


def test_frames_at_the_input_size_are_untouched_and_constant_frames_stay_constant() -> None:
    frame = _frame(224, 224, seed=3)
    for method in RESIZE_METHODS:
        np.testing.assert_array_equal(resize_frame(frame, (224, 224), method), frame)
        flat = np.full((480, 640, 3), 137, dtype=np.uint8)
        assert (resize_frame(flat, (224, 224), method) == 137).all()


def test_area_is_the_pixel_average_when_shrinking_by_an_integer_factor() -> None:
    frame = _frame(64, 64, seed=4)
    expected = frame.reshape(32, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))
    out = resize_frame(frame, (32, 32), "area")
    assert np.abs(out - expected).max() <= 0.5 + 1e-9


def test_bad_frames_and_methods_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        resize_frame(np.zeros((4, 4, 3), np.float32), (2, 2), "area")
    with pytest.raises(ValueError, match="HxWx3"):
        resize_frame(np.zeros((4, 4), np.uint8), (2, 2), "area")
    with pytest.raises(ValueError, match="empty"):
        resize_frame(np.zeros((0, 4, 3), np.uint8), (2, 2), "pil_bicubic")
    with pytest.raises(ValueError, match="positive"):
        resize_frame(np.zeros((4, 4, 3), np.uint8), (0, 2), "area")
    with pytest.raises(ValueError, match="known: area, pil_bicubic"):
        check_resize_method("lanczos")
