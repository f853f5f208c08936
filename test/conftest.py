"""Shared test set-up: keep ROS logs out of $HOME and threads predictable."""
import os
import tempfile

os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="specvla_roslog_"))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
