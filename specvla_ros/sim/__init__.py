"""specvla_ros.sim: the MuJoCo Panda workcell, its tasks and the scripted expert.

MuJoCo picks its GL back-end when first imported; without a display GLFW
fails, so default to headless EGL (set MUJOCO_GL=osmesa or glfw to override).
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
