"""Conversions between ROS messages and the numpy/dataclass types of ``core``.

Every input conversion either returns a valid value or raises
``InputError`` with a message fit for a log line and a diagnostic; callers
hold the robot on it. Nothing here touches a node, so it is unit-tested on
real message objects without a ROS graph.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import os

# Bounds what a compressed frame may decode to (read by OpenCV when first used).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(8192 * 8192))

import cv2  # noqa: E402
import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import KeyValue
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.core.models.frame_resize import ResizeMethod, resize_frame
from specvla_ros.core.types import DecodeStats, SafetyStatus, Verdict

@dataclass(frozen=True)
class _Encoding:
    """How one sensor_msgs/Image encoding is laid out and turned into RGB."""

    channels: int  # values per pixel in the message
    depth: int  # bytes per value (1 or 2)
    to_rgb: int | None  # cv2.cvtColor code from the (8-bit) pixels to RGB; None: already RGB
    pixels_per_group: int = 1  # packed YUV 4:2:2 stores two pixels in four bytes


_BAYER = {"rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB,
          "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB}  # OpenCV names the pattern one pixel on

#: Every encoding the node converts (lower case; ROS names plus the OpenCV type aliases drivers use).
ENCODINGS: dict[str, _Encoding] = {
    "rgb8": _Encoding(3, 1, None), "bgr8": _Encoding(3, 1, cv2.COLOR_BGR2RGB),
    "rgba8": _Encoding(4, 1, cv2.COLOR_RGBA2RGB), "bgra8": _Encoding(4, 1, cv2.COLOR_BGRA2RGB),
    "mono8": _Encoding(1, 1, cv2.COLOR_GRAY2RGB),
    "8uc1": _Encoding(1, 1, cv2.COLOR_GRAY2RGB), "8uc3": _Encoding(3, 1, cv2.COLOR_BGR2RGB),
    "8uc4": _Encoding(4, 1, cv2.COLOR_BGRA2RGB),
    "rgb16": _Encoding(3, 2, None), "bgr16": _Encoding(3, 2, cv2.COLOR_BGR2RGB),
    "rgba16": _Encoding(4, 2, cv2.COLOR_RGBA2RGB), "bgra16": _Encoding(4, 2, cv2.COLOR_BGRA2RGB),
    "mono16": _Encoding(1, 2, cv2.COLOR_GRAY2RGB),
    **{f"bayer_{p}8": _Encoding(1, 1, code) for p, code in _BAYER.items()},
    **{f"bayer_{p}16": _Encoding(1, 2, code) for p, code in _BAYER.items()},
    "yuv422": _Encoding(2, 1, cv2.COLOR_YUV2RGB_UYVY, 2), "uyvy": _Encoding(2, 1, cv2.COLOR_YUV2RGB_UYVY, 2),
    "yuv422_yuy2": _Encoding(2, 1, cv2.COLOR_YUV2RGB_YUY2, 2), "yuyv": _Encoding(2, 1, cv2.COLOR_YUV2RGB_YUY2, 2),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(ENCODINGS)
#: Depth, float and signed images: not a camera picture the model can read.
_NOT_COLOUR = re.compile(r"(8s|16u|16s|32s|32f|64f)c[1-4]")
#: Larger frames are refused before any copy (a 16k x 16k frame would be 768 MB).
MAX_IMAGE_PIXELS = 8192 * 8192


class InputError(ValueError):
    """An input message cannot be used; the message says which field and why."""


# --------------------------------------------------------------------------- images


def _encoding(name: str) -> _Encoding:
    enc = ENCODINGS.get(name.strip().lower())
    if enc is not None:
        return enc
    if _NOT_COLOUR.fullmatch(name.strip().lower()):
        raise InputError(f"camera encoding '{name}' not supported: a depth, float or signed image, not a camera "
                         f"picture (the model reads 8- or 16-bit colour, grey, Bayer or YUV 4:2:2)")
    raise InputError(f"camera encoding '{name}' not supported (use one of {', '.join(SUPPORTED_ENCODINGS)})")


def image_to_rgb(msg: Image, size_hw: tuple[int, int], resize: ResizeMethod = "area") -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB at ``size_hw``, resized with the model's method
    (``resize``, see ``frame_resize``) when the camera's size differs (see ``_image_to_rgb``).

    Raises:
        InputError: for anything that cannot be converted, whatever failed inside.
    """
    try:
        return resize_frame(_image_to_rgb(msg), size_hw, resize)
    except InputError:
        raise
    except (cv2.error, MemoryError, ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"camera image ({msg.encoding} {msg.width}x{msg.height}) could not be converted: "
                         f"{type(exc).__name__}: {exc}") from exc


def _image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB at the camera's size.

    Reads every field a driver sets: the encoding (``ENCODINGS``), row padding in
    ``step``, ``is_bigendian`` for 16-bit data (scaled to 8 bits). No cv_bridge:
    its conversions changed behaviour with numpy versions.

    Raises:
        InputError: unsupported encoding, empty or huge image, or data/step inconsistent with the size.
    """
    enc = _encoding(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if width == 0 or height == 0:
        raise InputError(f"camera image is empty ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"camera image {width}x{height} is larger than {MAX_IMAGE_PIXELS} pixels")
    if enc.pixels_per_group > 1 and width % enc.pixels_per_group:
        raise InputError(f"camera image ({msg.encoding}) needs an even width, got {width}")
    row = width * enc.channels * enc.depth
    if step < row:
        raise InputError(f"camera image step {step} < width*bytes per pixel {row} ({msg.encoding} {width}x{height})")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < step * height:
        raise InputError(f"camera image has {data.size} bytes, expected step*height = {step * height}")
    rows = data[: step * height].reshape(height, step)[:, :row]
    if enc.depth == 2:
        values = np.ascontiguousarray(rows).view(">u2" if msg.is_bigendian else "<u2")
        rows = (values >> 8).astype(np.uint8)  # keep the 8 most significant bits
    channels = enc.channels if enc.pixels_per_group == 1 else 2
    pixels = np.ascontiguousarray(rows).reshape(height, width, channels)
    try:
        if enc.to_rgb is None:
            rgb = pixels
        elif channels == 1:
            rgb = cv2.cvtColor(pixels[:, :, 0], enc.to_rgb)
        else:
            rgb = cv2.cvtColor(pixels, enc.to_rgb)
    except cv2.error as exc:
        raise InputError(f"camera image ({msg.encoding} {width}x{height}) could not be converted: {exc}") from exc
    return rgb


def compressed_to_rgb(msg: CompressedImage, size_hw: tuple[int, int], resize: ResizeMethod = "area") -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png, 8 or 16 bit) -> HxWx3 uint8 RGB at ``size_hw``
    (resized with ``resize`` when the size differs).

    Raises:
        InputError: the data does not decode to a 1-, 3- or 4-channel image.
    """
    if len(msg.data) == 0:
        raise InputError("compressed camera image is empty")
    try:
        img = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except (cv2.error, MemoryError) as exc:
        raise InputError(f"compressed camera image ({msg.format}) could not be decoded: {exc}") from exc
    if img is None or img.size == 0:
        raise InputError(f"compressed camera image ({msg.format}) could not be decoded")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.shape[0] * img.shape[1] > MAX_IMAGE_PIXELS:
        raise InputError(f"compressed camera image {img.shape[1]}x{img.shape[0]} is larger than "
                         f"{MAX_IMAGE_PIXELS} pixels")
    if img.dtype != np.uint8:
        raise InputError(f"compressed camera image ({msg.format}) decodes to {img.dtype}, expected 8 or 16 bit")
    # OpenCV decodes to BGR(A) or grey.
    codes = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    channels = 1 if img.ndim == 2 else img.shape[2]
    code = codes.get(channels)
    if code is None:
        raise InputError(f"compressed camera image has {channels} channels, expected 1, 3 or 4")
    try:
        return resize_frame(cv2.cvtColor(img, code), size_hw, resize)
    except (cv2.error, MemoryError) as exc:
        raise InputError(f"compressed camera image ({msg.format}) could not be converted: {exc}") from exc


def rgb_to_image(rgb: np.ndarray, stamp: Time | None = None, frame_id: str = "camera") -> Image:
    """HxWx3 uint8 RGB -> sensor_msgs/Image rgb8 (used by tests and benchmarks).

    Built directly: cv_bridge's cv2_to_imgmsg goes through a deprecated numpy call.
    """
    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 array, got shape {arr.shape}")
    h, w = arr.shape[:2]
    return Image(header=Header(stamp=stamp or Time(), frame_id=frame_id), height=h, width=w, encoding="rgb8",
                 is_bigendian=0, step=w * 3, data=arr.tobytes())


def stamp_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def seconds_to_duration(seconds: float) -> Duration:
    whole = int(math.floor(seconds))
    return Duration(sec=whole, nanosec=int(round((seconds - whole) * 1e9)) % 1_000_000_000)


# --------------------------------------------------------------------------- joint states


@dataclass
class JointSample:
    """Newest reading of one joint (merged across JointState messages)."""

    position: float
    velocity: float | None
    received: float  # monotonic seconds at arrival


def merge_joint_state(store: dict[str, JointSample], msg: JointState, received: float) -> None:
    """Record every named joint of ``msg`` in ``store`` (drivers may split arm and gripper).

    Cheap on purpose: it runs inside the subscription callback. A malformed
    message (more names than positions) stores NaN so the check reports it.
    """
    n_pos, n_vel = len(msg.position), len(msg.velocity)
    for i, name in enumerate(msg.name):
        pos = float(msg.position[i]) if i < n_pos else math.nan
        vel = float(msg.velocity[i]) if n_vel == len(msg.name) else None
        store[name] = JointSample(pos, vel, received)


def joint_vector(store: Mapping[str, JointSample], names: Sequence[str], now: float,
                 max_age: float) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Positions (and velocities when all are known) of ``names`` in that order.

    Returns (q, dq or None, age of the oldest sample [s]).

    Raises:
        InputError: a joint was never received or its position is not finite.
    """
    missing = [n for n in names if n not in store]
    if missing:
        raise InputError(f"joint_states lacks joint(s) {', '.join(missing)}")
    q = np.array([store[n].position for n in names], dtype=np.float64)
    bad = [n for n, v in zip(names, q) if not math.isfinite(v)]
    if bad:
        raise InputError(f"joint_states has non-finite position for {', '.join(bad)}")
    vels = [store[n].velocity for n in names]
    dq = None
    if all(v is not None and math.isfinite(v) for v in vels):
        dq = np.array(vels, dtype=np.float64)
    age = max(now - store[n].received for n in names)
    return q, dq, age


# --------------------------------------------------------------------------- commands


def joint_trajectory(joint_names: Sequence[str], positions: np.ndarray, period_s: float) -> JointTrajectory:
    """Trajectory through ``positions``: (n,) one point, or (m, n) a plan of m points, point k
    reached (k + 1) * ``period_s`` from now (the controller interpolates between them).

    The header stamp stays zero: joint_trajectory_controller then starts it on
    arrival, independent of clock offsets between machines.
    """
    pts = np.asarray(positions, dtype=np.float64)
    pts = pts[None] if pts.ndim == 1 else pts
    points = [JointTrajectoryPoint(positions=[float(p) for p in row], time_from_start=seconds_to_duration((k + 1) * period_s))
              for k, row in enumerate(pts)]
    return JointTrajectory(joint_names=list(joint_names), points=points)


def position_array(values: Sequence[float] | np.ndarray) -> Float64MultiArray:
    return Float64MultiArray(data=[float(v) for v in values])


def gripper_command(opening_m: float) -> Float64MultiArray:
    """Gripper opening [m] -> target of one finger joint (the other mimics it)."""
    return Float64MultiArray(data=[float(opening_m) / 2.0])


# --------------------------------------------------------------------------- status messages


def verdict_to_msg(verdict: Verdict, header: Header):  # -> specvla_msgs.msg.SafetyVerdict
    from specvla_msgs.msg import SafetyVerdict

    status = SafetyStatus(verdict.status)
    return SafetyVerdict(
        header=header,
        status=int(status.value),
        status_name=status.name,
        reason=verdict.reason,
        raw_action=[float(v) for v in np.asarray(verdict.raw_action, dtype=np.float64).ravel()],
        joint_command=[float(v) for v in np.asarray(verdict.joint_command, dtype=np.float64).ravel()],
        gripper_command=float(verdict.gripper_command),
        scale=float(verdict.scale),
        min_distance=float(verdict.min_distance),
        tcp_speed=float(verdict.tcp_speed),
        worst_joint_margin=float(verdict.worst_joint_margin),
        check_time=float(verdict.check_time_s),
    )


def stats_to_msg(stats: DecodeStats, header: Header):  # -> specvla_msgs.msg.SpecDecodeStats
    from specvla_msgs.msg import SpecDecodeStats

    def u32(v: int) -> int:
        return max(0, min(int(v), 2**32 - 1))

    return SpecDecodeStats(
        header=header,
        mode=str(stats.mode),
        drafted=u32(stats.drafted),
        accepted=u32(stats.accepted),
        emitted=u32(stats.emitted),
        target_passes=u32(stats.target_passes),
        draft_passes=u32(stats.draft_passes),
        mean_accepted_length=float(stats.mean_accepted_length),
        vision_time=float(stats.vision_time_s),
        prefill_time=float(stats.prefill_time_s),
        draft_time=float(stats.draft_time_s),
        verify_time=float(stats.verify_time_s),
        gate_time=float(stats.gate_time_s),
        total_time=float(stats.total_time_s),
        vision_cached=bool(stats.vision_cached),
        safety_path=str(stats.safety_path),
        chunk_len=u32(stats.chunk_len),
        points_published=u32(stats.points_published),
        points_cut=u32(stats.points_cut),
    )


def key_values(values: Mapping[str, object]) -> list[KeyValue]:
    return [KeyValue(key=str(k), value=f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()]


# --------------------------------------------------------------------------- scene objects


def scene_objects_to_msg(objects: Sequence[SceneObject], header: Header):  # -> specvla_msgs.msg.SceneObjects
    """Known objects -> specvla_msgs/SceneObjects (boxes in header.frame_id)."""
    from geometry_msgs.msg import Point, Vector3
    from specvla_msgs.msg import SceneObject as SceneObjectMsg
    from specvla_msgs.msg import SceneObjects

    return SceneObjects(header=header, objects=[
        SceneObjectMsg(name=o.name, center=Point(x=o.center[0], y=o.center[1], z=o.center[2]),
                       size=Vector3(x=o.size[0], y=o.size[1], z=o.size[2]), gripper_may_touch=o.gripper_may_touch)
        for o in objects])


def scene_objects_from_msg(msg, frame_id: str) -> tuple[list[SceneObject], list[str]]:
    """specvla_msgs/SceneObjects -> (valid objects, one problem line per dropped object).

    Raises:
        InputError: the message is not in ``frame_id`` (the whole set is unusable; nothing
            here transforms between frames).
    """
    if msg.header.frame_id != frame_id:
        raise InputError(f"scene objects in frame '{msg.header.frame_id}', expected '{frame_id}' "
                         "(publish them in the robot base frame)")
    objects: list[SceneObject] = []
    problems: list[str] = []
    for i, o in enumerate(msg.objects):
        try:
            objects.append(SceneObject(o.name, (o.center.x, o.center.y, o.center.z), (o.size.x, o.size.y, o.size.z),
                                       bool(o.gripper_may_touch)))
        except ValueError as exc:
            problems.append(f"objects[{i}] dropped: {exc}")
    return objects, problems
