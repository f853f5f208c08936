"""Message <-> numpy conversions on real message objects (no ROS graph)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image, JointState

from specvla_ros.core.types import DecodeStats, SafetyStatus, Verdict
from specvla_ros.ros import conversions as conv
from std_msgs.msg import Header

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _img(arr: np.ndarray, enc: str, pad: int = 0) -> Image:
    h, w = arr.shape[:2]
    rows = arr.reshape(h, -1)
    if pad:
        rows = np.pad(rows, ((0, 0), (0, pad)))
    return Image(height=h, width=w, encoding=enc, step=rows.shape[1], data=rows.tobytes())


@pytest.mark.parametrize("enc,arr", [
    ("rgb8", RGB),
    ("bgr8", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR)),
    ("rgba8", cv2.cvtColor(RGB, cv2.COLOR_RGB2RGBA)),
])
def test_colour_encodings_convert_to_rgb(enc: str, arr: np.ndarray) -> None:
    out = conv.image_to_rgb(_img(arr, enc), (48, 64))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, RGB)


def test_mono8_with_row_padding_becomes_grey_rgb_and_resizes() -> None:
    grey = RGB[:, :, 1].copy()
    out = conv.image_to_rgb(_img(grey, "mono8", pad=7), (48, 64))
    np.testing.assert_array_equal(out[:, :, 0], grey)
    np.testing.assert_array_equal(out[:, :, 2], grey)
    small = conv.image_to_rgb(_img(grey, "mono8"), (24, 32))
    assert small.shape == (24, 32, 3)


def test_resize_to_model_input() -> None:
    out = conv.image_to_rgb(_img(RGB, "rgb8"), (128, 128))
    assert out.shape == (128, 128, 3)
    # a flat colour stays that colour through resizing
    flat = np.full((30, 40, 3), (10, 200, 30), np.uint8)
    np.testing.assert_array_equal(conv.image_to_rgb(_img(flat, "rgb8"), (8, 8))[4, 4], [10, 200, 30])


@pytest.mark.parametrize("method", ["area", "pil_bicubic"])
def test_camera_frames_are_resized_with_the_models_method(method: str) -> None:
    """Colour conversion first at the camera's size, then the model's resize (OpenVLA: Pillow bicubic)."""
    from specvla_ros.core.models.frame_resize import resize_frame

    camera = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    expected = resize_frame(camera, (56, 56), method)  # type: ignore[arg-type]
    bgr = _img(cv2.cvtColor(camera, cv2.COLOR_RGB2BGR), "bgr8", pad=5)
    np.testing.assert_array_equal(conv.image_to_rgb(bgr, (56, 56), method), expected)  # type: ignore[arg-type]
    ok, png = cv2.imencode(".png", cv2.cvtColor(camera, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format="png", data=png.tobytes())
    np.testing.assert_array_equal(conv.compressed_to_rgb(msg, (56, 56), method), expected)  # type: ignore[arg-type]


def _img16(arr16: np.ndarray, enc: str, big_endian: bool) -> Image:
    h, w = arr16.shape[:2]
    data = arr16.astype(">u2" if big_endian else "<u2").tobytes()
    return Image(height=h, width=w, encoding=enc, is_bigendian=int(big_endian), step=len(data) // h, data=data)


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("enc,order", [("rgb16", [0, 1, 2]), ("bgr16", [2, 1, 0]), ("rgba16", [0, 1, 2, 3])])
def test_16_bit_colour_honours_byte_order_and_keeps_the_high_byte(enc: str, order: list[int], big_endian: bool) -> None:
    # low bytes differ from the high ones, so a swapped byte order shows
    rgba = np.concatenate([RGB, np.full((48, 64, 1), 255, np.uint8)], axis=2)
    arr16 = (rgba[:, :, order].astype(np.uint16) << 8) | 0x5A
    out = conv.image_to_rgb(_img16(arr16, enc, big_endian), (48, 64))
    np.testing.assert_array_equal(out, RGB)


def test_mono16_and_bgra8_and_opencv_aliases() -> None:
    grey = RGB[:, :, 0]
    out = conv.image_to_rgb(_img16((grey.astype(np.uint16) << 8) | 0xFF, "mono16", True), (48, 64))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    bgra = np.concatenate([RGB[:, :, ::-1], np.zeros((48, 64, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(conv.image_to_rgb(_img(bgra, "bgra8"), (48, 64)), RGB)
    np.testing.assert_array_equal(conv.image_to_rgb(_img(RGB[:, :, ::-1].copy(), "8UC3"), (48, 64)), RGB)


@pytest.mark.parametrize("pattern,offsets", [
    ("rggb", {"R": (0, 0), "G": (0, 1), "G2": (1, 0), "B": (1, 1)}),
    ("bggr", {"B": (0, 0), "G": (0, 1), "G2": (1, 0), "R": (1, 1)}),
    ("gbrg", {"G": (0, 0), "B": (0, 1), "R": (1, 0), "G2": (1, 1)}),
    ("grbg", {"G": (0, 0), "R": (0, 1), "B": (1, 0), "G2": (1, 1)}),
])
def test_bayer_mosaics_of_a_flat_colour_demosaic_to_that_colour(pattern: str, offsets: dict) -> None:
    colour = {"R": 200, "G": 90, "G2": 90, "B": 20}
    mosaic = np.zeros((16, 16), np.uint8)
    for name, (dy, dx) in offsets.items():
        mosaic[dy::2, dx::2] = colour[name]
    out = conv.image_to_rgb(_img(mosaic, f"bayer_{pattern}8"), (16, 16))
    np.testing.assert_array_equal(out[4:12, 4:12].reshape(-1, 3), np.tile([200, 90, 20], (64, 1)))
    out16 = conv.image_to_rgb(_img16(mosaic.astype(np.uint16) << 8, f"bayer_{pattern}16", False), (16, 16))
    np.testing.assert_array_equal(out16[4:12, 4:12], out[4:12, 4:12])


@pytest.mark.parametrize("enc", ["yuv422", "yuv422_yuy2"])
def test_packed_yuv422_of_a_flat_colour(enc: str) -> None:
    y, u, v = 120, 90, 170
    # BT.601 studio range, what camera drivers put in 4:2:2
    c, d, e = 1.164 * (y - 16), u - 128, v - 128
    expected = np.round([c + 1.596 * e, c - 0.813 * e - 0.391 * d, c + 2.018 * d])
    group = [u, y, v, y] if enc == "yuv422" else [y, u, y, v]  # UYVY / YUYV
    rows = np.tile(np.array(group, np.uint8), (6, 4))  # 6 rows of 8 pixels
    msg = Image(height=6, width=8, encoding=enc, step=16, data=rows.tobytes())
    out = conv.image_to_rgb(msg, (6, 8))
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("msg,needle", [
    (Image(height=4, width=4, encoding="16UC1", step=8, data=bytes(32)), "depth"),
    (Image(height=4, width=4, encoding="32FC1", step=16, data=bytes(64)), "depth"),
    (Image(height=4, width=4, encoding="nv24", step=8, data=bytes(32)), "not supported"),
    (Image(height=4, width=4, encoding="", step=12, data=bytes(48)), "not supported"),
    (Image(height=4, width=3, encoding="yuv422", step=6, data=bytes(24)), "even width"),
    (Image(height=0, width=4, encoding="rgb8", step=12, data=b""), "empty"),
    (Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(20)), "bytes"),
    (Image(height=4, width=4, encoding="rgb8", step=5, data=bytes(48)), "step"),
    (Image(height=4, width=4, encoding="rgb16", step=12, data=bytes(48)), "step"),
    (Image(height=100_000, width=100_000, encoding="mono8", step=100_000, data=bytes(16)), "larger than"),
])
def test_bad_images_raise_input_error(msg: Image, needle: str) -> None:
    with pytest.raises(conv.InputError, match=needle):
        conv.image_to_rgb(msg, (8, 8))


def test_any_image_message_converts_or_raises_input_error() -> None:
    """Random field combinations (what a buggy or hostile driver can send): never another exception."""
    rng = np.random.default_rng(7)
    encodings = list(conv.ENCODINGS) + ["16UC1", "32FC1", "jpeg", "RGB8", "Mono8", "bayer_xyzw8"]
    converted = 0
    for _ in range(600):
        h, w = (int(v) for v in rng.integers(0, 9, 2))
        step = int(rng.integers(0, 40))
        data = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        msg = Image(height=h, width=w, encoding=str(rng.choice(encodings)), is_bigendian=int(rng.integers(0, 2)),
                    step=step, data=data)
        try:
            out = conv.image_to_rgb(msg, (4, 6))
        except conv.InputError:
            continue
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8
        converted += 1
    assert converted > 20  # the sweep reached the conversion paths, not only the refusals


def test_compressed_png_jpeg_16_bit_and_garbage() -> None:
    bgr = cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR)
    png = CompressedImage(format="png", data=cv2.imencode(".png", bgr)[1].tobytes())
    np.testing.assert_array_equal(conv.compressed_to_rgb(png, (48, 64)), RGB)
    flat = np.full((32, 32, 3), (30, 140, 220), np.uint8)
    jpeg = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", flat[:, :, ::-1])[1].tobytes())
    assert np.abs(conv.compressed_to_rgb(jpeg, (32, 32)).astype(int) - flat).max() <= 3
    grey16 = (RGB[:, :, 0].astype(np.uint16) << 8) | 7
    png16 = CompressedImage(format="png", data=cv2.imencode(".png", grey16)[1].tobytes())
    np.testing.assert_array_equal(conv.compressed_to_rgb(png16, (48, 64))[:, :, 1], RGB[:, :, 0])
    with pytest.raises(conv.InputError):
        conv.compressed_to_rgb(CompressedImage(format="jpeg", data=b"not an image at all"), (8, 8))
    with pytest.raises(conv.InputError, match="empty"):
        conv.compressed_to_rgb(CompressedImage(format="jpeg"), (8, 8))


def test_rgb_to_image_round_trip() -> None:
    np.testing.assert_array_equal(conv.image_to_rgb(conv.rgb_to_image(RGB), (48, 64)), RGB)


def test_joint_states_merge_by_name_across_messages() -> None:
    store: dict[str, conv.JointSample] = {}
    arm = [f"panda_joint{i}" for i in range(1, 8)]
    # reversed order, gripper in its own message, extra joints ignored
    conv.merge_joint_state(store, JointState(name=arm[::-1] + ["other"], position=[float(i) for i in range(8)],
                                             velocity=[0.5] * 8), received=10.0)
    conv.merge_joint_state(store, JointState(name=["panda_finger_joint1", "panda_finger_joint2"],
                                             position=[0.01, 0.02]), received=10.2)
    q, dq, age = conv.joint_vector(store, arm, now=10.3, max_age=1.0)
    np.testing.assert_allclose(q, [6, 5, 4, 3, 2, 1, 0])
    assert dq is not None and np.allclose(dq, 0.5)
    assert age == pytest.approx(0.3)
    g, gdq, _ = conv.joint_vector(store, ["panda_finger_joint1", "panda_finger_joint2"], now=10.3, max_age=1.0)
    assert g.sum() == pytest.approx(0.03) and gdq is None


def test_joint_states_missing_or_nonfinite_raise() -> None:
    store: dict[str, conv.JointSample] = {}
    conv.merge_joint_state(store, JointState(name=["a", "b"], position=[0.0, math.nan]), received=0.0)
    with pytest.raises(conv.InputError, match="lacks joint.*c"):
        conv.joint_vector(store, ["a", "c"], now=0.0, max_age=1.0)
    with pytest.raises(conv.InputError, match="non-finite.*b"):
        conv.joint_vector(store, ["a", "b"], now=0.0, max_age=1.0)
    # more names than positions: the unpaired joint is reported, not silently zero
    conv.merge_joint_state(store, JointState(name=["x", "y"], position=[1.0]), received=0.0)
    with pytest.raises(conv.InputError, match="y"):
        conv.joint_vector(store, ["x", "y"], now=0.0, max_age=1.0)


def test_command_messages() -> None:
    q = np.linspace(-1, 1, 7)
    traj = conv.joint_trajectory(["j%d" % i for i in range(7)], q, 0.2)
    assert len(traj.points) == 1 and traj.points[0].positions.tolist() == pytest.approx(q.tolist())
    assert (traj.points[0].time_from_start.sec, traj.points[0].time_from_start.nanosec) == (0, 200_000_000)
    assert traj.header.stamp.sec == 0  # start on arrival
    assert conv.seconds_to_duration(1.5).sec == 1 and conv.seconds_to_duration(1.5).nanosec == 500_000_000
    assert conv.gripper_command(0.08).data.tolist() == [0.04]
    assert conv.position_array(q).data.tolist() == pytest.approx(q.tolist())


def test_verdict_and_stats_messages() -> None:
    pytest.importorskip("specvla_msgs.msg")
    verdict = Verdict(SafetyStatus.SCALED, "tcp speed scaled", joint_command=np.zeros(7), gripper_command=0.04,
                      raw_action=np.arange(7.0), scale=0.5, tcp_speed=0.25, check_time_s=1e-4)
    msg = conv.verdict_to_msg(verdict, Header())
    assert (msg.status, msg.status_name, msg.scale) == (1, "SCALED", 0.5)
    assert msg.raw_action.tolist() == list(range(7)) and math.isnan(msg.min_distance)
    stats = DecodeStats(mode="relaxed", drafted=10, accepted=7, emitted=12, target_passes=4, total_time_s=0.03,
                        vision_cached=True, safety_path="accepted")
    smsg = conv.stats_to_msg(stats, Header())
    assert (smsg.accepted, smsg.mean_accepted_length, smsg.vision_cached) == (7, 3.0, True)
