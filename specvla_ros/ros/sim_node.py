"""specvla_sim: the MuJoCo Panda workcell as a ROS 2 node that behaves like a real
arm behind ros2_control.

Publishes the camera (sensor_msgs/Image rgb8, sensor-data QoS), /joint_states,
/clock (sim_clock), the episode's TaskStatus, the task instruction (latched)
and, with every camera frame, the objects on the table as
specvla_msgs/SceneObjects boxes in the robot base frame (the task's object
marked gripper_may_touch: what a perception pipeline would report); accepts joint_trajectory_controller, forward_position_controller and
gripper commands; resets on the ~/reset service (specvla_msgs/ResetEpisode).

Threading: one simulation thread owns the TaskEnv (MuJoCo's GL context belongs
to the thread that made it) and does all physics, rendering and publishing;
ROS callbacks only store the newest command or queue a reset request.

Modes:
- real time (lockstep false): physics advances continuously at
  real_time_factor x wall time under the latest command, like a real arm.
- lockstep: physics advances one control period per received arm command, so a
  slow policy on a slow CPU is evaluated as if it ran at the control rate.
"""
from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import rclpy
from rclpy._rclpy_pybind11 import RCLError
from builtin_interfaces.msg import Time as TimeMsg
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, Header, String
from trajectory_msgs.msg import JointTrajectory

from specvla_ros.core.types import PANDA_FINGER_JOINT_NAMES, PANDA_JOINT_NAMES
from specvla_ros.ros import qos
from specvla_ros.ros.params import (
    BOOL, DOUBLE, INT, STRING, ParamSpec, default_config_path, descriptor, load_node_params,
)
from specvla_ros.sim.language import TASKS
from specvla_ros.ros import topics

NODE_NAME = "specvla_sim"

#: Parameters; their defaults are the specvla_sim: section of config/specvla.yaml (``sim_defaults``).
SIM_SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("task", STRING, "task family of the first episode (restart; later ones via ~/reset)",
              choices=TASKS),
    ParamSpec("seed", INT, "layout seed of the first episode (restart)", min=0),
    ParamSpec("image_width", INT, "camera image width [px] (restart)", min=8, max=640),
    ParamSpec("image_height", INT, "camera image height [px] (restart)", min=8, max=480),
    ParamSpec("camera_rate", DOUBLE, "camera publishing rate in sim time [Hz] (restart)",
              min=0.5, max=60.0),
    ParamSpec("joint_state_rate", DOUBLE, "/joint_states publishing rate in sim time [Hz] (restart)",
              min=1.0, max=500.0),
    ParamSpec("physics_rate", DOUBLE, "rate the real-time loop advances physics at [Hz]; each "
              "iteration runs 1/physics_rate s of 2 ms MuJoCo steps (restart)", min=10.0, max=500.0),
    ParamSpec("real_time_factor", DOUBLE, "sim seconds per wall second in real-time mode; "
              "0 = as fast as the CPU allows (restart)", min=0.0, max=100.0),
    ParamSpec("lockstep", BOOL, "advance physics one control_period per received arm command "
              "instead of in real time (restart)"),
    ParamSpec("control_period", DOUBLE, "sim time per control step [s]: lockstep advance per "
              "command; step counting in real time (restart)", min=0.01, max=2.0),
    ParamSpec("lockstep_gripper_wait", DOUBLE, "lockstep: after an arm command, wait this long "
              "for the step's gripper command before stepping [s] (restart)", min=0.0, max=1.0),
    ParamSpec("max_episode_steps", INT, "control steps after which an episode is done; "
              "0 = the task's default budget (restart)", min=0, max=100000),
    ParamSpec("publish_instruction", BOOL, "publish the task instruction on /specvla/instruction "
              "(latched) at every reset (restart)"),
    ParamSpec("sim_clock", BOOL, "publish the simulation time on /clock (run other nodes with "
              "use_sim_time) and stamp messages with it; off = wall-clock stamps (restart)"),
    ParamSpec("status_rate", DOUBLE, "task status publishing rate in sim time [Hz] (restart)",
              min=0.5, max=100.0),
    ParamSpec("camera_frame_id", STRING, "frame_id of the camera images (restart)"),
)


@lru_cache(maxsize=1)
def sim_defaults() -> dict[str, Any]:
    """The simulator's parameter defaults: the specvla_sim: section of the shipped config/specvla.yaml.

    Raises:
        ValueError: the section lacks a parameter, has an unknown one, or a default breaks its spec.
    """
    path = default_config_path()
    values = load_node_params(path, NODE_NAME)
    names = {spec.name for spec in SIM_SPECS}
    problems = [f"missing {n}" for n in sorted(names - set(values))]
    problems += [f"unknown parameter {n}" for n in sorted(set(values) - names)]
    problems += [r for spec in SIM_SPECS if spec.name in values and (r := spec.check(values[spec.name]))]
    if problems:
        raise ValueError(f"{path} (specvla_sim): " + "; ".join(problems))
    return {spec.name: float(values[spec.name]) if spec.type == DOUBLE else values[spec.name] for spec in SIM_SPECS}


def _default(name: str) -> Any:
    return field(default_factory=lambda: sim_defaults()[name])


@dataclass
class SimNodeConfig:
    """Validated parameter values of the node (see SIM_SPECS for meanings and units; defaults from the YAML)."""

    task: str = _default("task")
    seed: int = _default("seed")
    image_width: int = _default("image_width")
    image_height: int = _default("image_height")
    camera_rate: float = _default("camera_rate")
    joint_state_rate: float = _default("joint_state_rate")
    physics_rate: float = _default("physics_rate")
    real_time_factor: float = _default("real_time_factor")
    lockstep: bool = _default("lockstep")
    control_period: float = _default("control_period")
    lockstep_gripper_wait: float = _default("lockstep_gripper_wait")
    max_episode_steps: int = _default("max_episode_steps")
    publish_instruction: bool = _default("publish_instruction")
    sim_clock: bool = _default("sim_clock")
    status_rate: float = _default("status_rate")
    camera_frame_id: str = _default("camera_frame_id")

    def __post_init__(self) -> None:
        for spec in SIM_SPECS:
            value = getattr(self, spec.name)
            if spec.type == DOUBLE and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, spec.name, value)
            problem = spec.check(value)
            if problem:
                raise ValueError(problem)


def default_config() -> dict[str, Any]:
    return dict(sim_defaults())


def _stamp(seconds: float) -> TimeMsg:
    sec = int(math.floor(seconds))
    return TimeMsg(sec=sec, nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


class SimNode(Node):
    """The simulated arm, camera and task judge."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        values = {}
        for spec in SIM_SPECS:
            if not self.has_parameter(spec.name):
                self.declare_parameter(spec.name, sim_defaults()[spec.name], descriptor(spec))
            values[spec.name] = self.get_parameter(spec.name).value
        self.cfg = SimNodeConfig(**values)  # raises ValueError naming a bad value
        cam_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                             durability=DurabilityPolicy.VOLATILE)
        # reliable publishers reach reliable and best-effort subscribers alike
        state_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE)
        over = qos.OVERRIDES
        self._pub_image = self.create_publisher(Image, topics.IMAGE, cam_qos, qos_overriding_options=over)
        self._pub_joints = self.create_publisher(JointState, topics.JOINT_STATES, state_qos,
                                                 qos_overriding_options=over)
        self._pub_clock = (self.create_publisher(Clock, topics.CLOCK, state_qos) if self.cfg.sim_clock else None)
        from specvla_msgs.msg import SceneObjects, TaskStatus
        from specvla_msgs.srv import ResetEpisode

        self._pub_objects = self.create_publisher(SceneObjects, topics.SCENE_OBJECTS, state_qos,
                                                  qos_overriding_options=over)

        self._TaskStatus = TaskStatus
        self._pub_status = self.create_publisher(TaskStatus, topics.SIM_STATUS, qos.STATUS, qos_overriding_options=over)
        self._pub_instruction = (self.create_publisher(String, topics.INSTRUCTION, qos.LATCHED,
                                                       qos_overriding_options=over)
                                 if self.cfg.publish_instruction else None)
        self._lock = threading.Lock()
        self._arm_cmd: np.ndarray | None = None
        self._arm_traj: tuple[np.ndarray, np.ndarray, float | None] | None = None
        self._grip_cmd: float | None = None
        self._hold_requested = False
        self._arm_seq = 0  # arm commands received (lockstep steps on each new one)
        self._last_joints: JointState | None = None  # the observation last published (lockstep resends it)
        self._last_image: Image | None = None
        self._last_objects: Any = None
        self._grip_seq = 0
        self._wake = threading.Condition(self._lock)
        self._resets: queue.Queue = queue.Queue()
        self.create_subscription(JointTrajectory, topics.TRAJECTORY, self._on_trajectory, qos.COMMAND,
                                 qos_overriding_options=over)
        self.create_subscription(Float64MultiArray, topics.FORWARD, self._on_forward, qos.COMMAND,
                                 qos_overriding_options=over)
        self.create_subscription(Float64MultiArray, topics.GRIPPER, self._on_gripper, qos.COMMAND,
                                 qos_overriding_options=over)
        self.create_service(ResetEpisode, topics.SIM_RESET, self._on_reset,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.episode = 0
        self._sim_time_offset = 0.0  # sim clock keeps running across resets
        self._last_status_time = -math.inf
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._startup_error: BaseException | None = None
        self.env = None  # TaskEnv, made in the sim thread
        self._thread = threading.Thread(target=self._run, name="specvla_sim", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=120.0)
        if self._startup_error is not None:
            raise RuntimeError(f"simulator failed to start: {self._startup_error}") from self._startup_error
        self.get_logger().info(
            f"simulating {self.cfg.task!r} seed {self.cfg.seed} "
            f"({'lockstep' if self.cfg.lockstep else f'real time x{self.cfg.real_time_factor:g}'}), "
            f"camera {self.cfg.image_width}x{self.cfg.image_height} @ {self.cfg.camera_rate:g} Hz")

    # ------------------------------------------------------------------ callbacks (store only)
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        if not msg.points:
            # ros2_control convention: an empty trajectory means stop and hold here
            with self._lock:
                self._hold_requested = True  # the sim thread reads the position to hold
                self._arm_seq += 1
                self._wake.notify_all()
            return
        names = list(msg.joint_names)
        if (any(len(p.positions) != len(names) for p in msg.points)
                or any(n not in names for n in PANDA_JOINT_NAMES)):
            self.get_logger().warning(
                f"ignoring joint trajectory: joints {names} with points of "
                f"{sorted({len(p.positions) for p in msg.points})} positions; need all of {list(PANDA_JOINT_NAMES)}",
                throttle_duration_sec=2.0)
            return
        order = [names.index(n) for n in PANDA_JOINT_NAMES]
        points = np.array([[p.positions[i] for i in order] for p in msg.points], dtype=float)
        times = np.array([p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in msg.points])
        if np.any(np.diff(times) <= 0):
            self.get_logger().warning(f"ignoring joint trajectory: time_from_start not increasing ({times.tolist()})",
                                      throttle_duration_sec=2.0)
            return
        # like joint_trajectory_controller: point k is the target until its time_from_start has passed
        # (the servo tracks it); a one-point trajectory is one target. Lockstep executes the first point.
        self._store_arm(points[0], (points, times))

    def _on_forward(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != len(PANDA_JOINT_NAMES):
            self.get_logger().warning(f"ignoring forward position command with {len(msg.data)} values, "
                                      f"expected {len(PANDA_JOINT_NAMES)}", throttle_duration_sec=2.0)
            return
        self._store_arm(np.asarray(msg.data, dtype=float))

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != 1 or not math.isfinite(msg.data[0]):
            self.get_logger().warning(f"ignoring gripper command {list(msg.data)}: expected one finite "
                                      "panda_finger_joint1 position [m]", throttle_duration_sec=2.0)
            return
        with self._lock:
            self._grip_cmd = 2.0 * float(msg.data[0])  # finger position -> opening
            self._grip_seq += 1
            self._wake.notify_all()

    def _store_arm(self, q: np.ndarray, trajectory: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if not np.all(np.isfinite(q)) or (trajectory is not None and not np.all(np.isfinite(trajectory[0]))):
            self.get_logger().warning("ignoring arm command with non-finite positions", throttle_duration_sec=2.0)
            return
        with self._lock:
            self._arm_cmd = q
            # (points, times, start) of a multi-point trajectory; the sim thread sets start (its clock)
            # when it first applies it: only that thread touches the simulation
            self._arm_traj = (trajectory[0], trajectory[1], None) if trajectory is not None \
                and trajectory[0].shape[0] > 1 else None
            self._hold_requested = False
            self._arm_seq += 1
            self._wake.notify_all()

    def _on_reset(self, request: Any, response: Any) -> Any:
        task = request.task or None
        if task is not None and task not in TASKS:
            response.success = False
            response.message = f"unknown task {request.task!r}; expected one of {', '.join(TASKS)}"
            return response
        if request.seed < 0:
            response.success = False
            response.message = f"seed must be >= 0, got {request.seed}"
            return response
        done = threading.Event()
        result: dict[str, Any] = {}
        self._resets.put((task, int(request.seed), done, result))
        with self._lock:
            self._wake.notify_all()
        if not done.wait(timeout=30.0):
            response.success = False
            response.message = "simulator did not reset within 30 s"
            return response
        response.success = bool(result.get("ok"))
        response.message = str(result.get("message", ""))
        response.instruction = str(result.get("instruction", ""))
        return response

    # ------------------------------------------------------------------ simulation thread
    def _run(self) -> None:
        try:
            os.environ.setdefault("MUJOCO_GL", "egl")
            from specvla_ros.sim.task_env import TaskEnv

            self.env = TaskEnv(self.cfg.task, seed=self.cfg.seed,
                               image_size=(self.cfg.image_height, self.cfg.image_width),
                               control_period_s=self.cfg.control_period)
            self.env.render()  # creates the GL context in this thread
        except Exception as exc:  # noqa: BLE001 - reported to the constructor, which raises
            self._startup_error = exc
            self._ready.set()
            return
        self._begin_episode()
        self._ready.set()
        try:
            if self.cfg.lockstep:
                self._run_lockstep()
            else:
                self._run_realtime()
        except RCLError:
            # SIGINT shuts the context down before destroy_node() stops this thread;
            # a publish failing then is the normal way out, anything else is a bug.
            if self.context.ok():
                raise
        finally:
            self.env.close()

    def _sim_now(self) -> float:
        return self._sim_time_offset + self.env.time

    def _begin_episode(self) -> None:
        """Publish everything a policy needs to start: instruction, state, image, status."""
        with self._lock:
            self._arm_cmd = self.env.robot_state().q
            self._arm_traj = None
            self._grip_cmd = self.env.robot_state().gripper
        if self._pub_instruction is not None:
            self._pub_instruction.publish(String(data=self.env.instruction))
        self._publish_clock()
        self._publish_joints()
        self._publish_image()
        self._publish_status()

    def _handle_resets(self) -> bool:
        handled = False
        while True:
            try:
                task, seed, done, result = self._resets.get_nowait()
            except queue.Empty:
                return handled
            try:
                self._sim_time_offset += self.env.time
                self.env.reset(seed=seed, task=task)
                self.episode += 1
                self._begin_episode()
                result.update(ok=True, instruction=self.env.instruction,
                              message=f"episode {self.episode}: {self.env.task} seed {seed}")
                self.get_logger().info(f"reset: {self.env.task} seed {seed}: {self.env.instruction!r}")
            except ValueError as exc:
                result.update(ok=False, message=str(exc))
            finally:
                done.set()
            handled = True

    def _apply_command(self) -> None:
        with self._lock:
            if self._hold_requested:
                self._arm_cmd = self.env.robot_state().q
                self._arm_traj = None
                self._hold_requested = False
            if self._arm_traj is not None:
                points, times, arrived = self._arm_traj
                if arrived is None:
                    arrived = self._sim_now()
                    self._arm_traj = (points, times, arrived)
                k = int(np.searchsorted(times, self._sim_now() - arrived, side="right"))
                self._arm_cmd = points[min(k, points.shape[0] - 1)]
            arm, grip = self._arm_cmd, self._grip_cmd
        if arm is not None:
            self.env.command(arm, self.env.robot_state().gripper if grip is None else grip)

    @property
    def max_steps(self) -> int:
        return self.cfg.max_episode_steps or self.env.max_steps

    def _run_lockstep(self) -> None:
        seen_arm = self._arm_seq
        republish_every = 1.0 / self.cfg.camera_rate  # [s] wall: resend the observation if lost
        while not self._stop.is_set():
            with self._lock:
                self._wake.wait_for(lambda: self._stop.is_set() or self._arm_seq != seen_arm
                                    or not self._resets.empty(), timeout=republish_every)
                new_arm = self._arm_seq != seen_arm
                grip_seq = self._grip_seq
            if self._stop.is_set():
                return
            if self._handle_resets():
                seen_arm = self._arm_seq
                continue
            if not new_arm:
                self._republish_observation()
                continue
            # the step's gripper command may follow the arm command: give it a moment
            with self._lock:
                self._wake.wait_for(lambda: self._grip_seq != grip_seq or self._stop.is_set(),
                                    timeout=self.cfg.lockstep_gripper_wait)
                seen_arm = self._arm_seq
            self._apply_command()
            self.env.step_control()
            self._publish_clock()
            self._publish_joints()
            self._publish_image()
            self._publish_status()

    def _run_realtime(self) -> None:
        cfg = self.cfg
        dt = 1.0 / cfg.physics_rate
        next_cam = next_joint = next_status = 0.0
        wall0, sim0 = time.monotonic(), self._sim_now()
        while not self._stop.is_set():
            if self._handle_resets():
                wall0, sim0 = time.monotonic(), self._sim_now()
                next_cam = next_joint = next_status = self._sim_now()
            self._apply_command()
            self.env.advance(dt)
            self.env.steps = int(self.env.time / cfg.control_period + 1e-9)
            now = self._sim_now()
            self._publish_clock()
            if now >= next_joint:
                self._publish_joints()
                next_joint = now + 1.0 / cfg.joint_state_rate
            if now >= next_cam:
                self._publish_image()
                next_cam = now + 1.0 / cfg.camera_rate
            if now >= next_status:
                self._publish_status()
                next_status = now + 1.0 / cfg.status_rate
            if cfg.real_time_factor > 0:
                # pace to wall time: sleep until this much sim time is due
                wait = wall0 + (now - sim0) / cfg.real_time_factor - time.monotonic()
                if wait > 0:
                    self._stop.wait(wait)

    # ------------------------------------------------------------------ publishing
    def _header(self, frame_id: str = "") -> Header:
        if self.cfg.sim_clock:
            return Header(stamp=_stamp(self._sim_now()), frame_id=frame_id)
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=frame_id)

    def _publish_clock(self) -> None:
        if self._pub_clock is not None:
            self._pub_clock.publish(Clock(clock=_stamp(self._sim_now())))

    def _publish_joints(self) -> None:
        state = self.env.robot_state()
        fingers = self.env.finger_positions()
        finger_v = self.env.finger_velocities()
        self._last_joints = JointState(
            header=self._header(),
            name=[*PANDA_JOINT_NAMES, *PANDA_FINGER_JOINT_NAMES],
            position=[*state.q.tolist(), *fingers.tolist()],
            velocity=[*state.dq.tolist(), *finger_v.tolist()],
        )
        self._pub_joints.publish(self._last_joints)

    def _publish_image(self) -> None:
        rgb = self.env.render()
        h, w = rgb.shape[:2]
        self._last_image = Image(header=self._header(self.cfg.camera_frame_id), height=h, width=w,
                                 encoding="rgb8", is_bigendian=0, step=3 * w, data=rgb.tobytes())
        self._pub_image.publish(self._last_image)
        self._publish_scene_objects()

    def _publish_scene_objects(self) -> None:
        from specvla_ros.ros.conversions import scene_objects_to_msg
        from specvla_ros.sim.known_objects import BASE_FRAME, task_scene_objects

        self._last_objects = scene_objects_to_msg(task_scene_objects(self.env), self._header(BASE_FRAME))
        self._pub_objects.publish(self._last_objects)

    def _republish_observation(self) -> None:
        """Lockstep, no new command: send the last observation again (one may have been lost) with its
        original stamps. The world has not moved, and a new stamp would pass an old frame off as a
        new one: a policy deciding again from it, after its last command but before the step that
        command makes, would apply that command's first step twice."""
        if self._last_joints is None or self._last_image is None:
            self._publish_joints()
            self._publish_image()
            return
        self._pub_joints.publish(self._last_joints)
        self._pub_image.publish(self._last_image)
        if self._last_objects is not None:
            self._pub_objects.publish(self._last_objects)

    def _publish_status(self) -> None:
        env = self.env
        bodies = sorted({b for pair in env.episode_collisions for b in pair})
        success = bool(env.success_ever)
        self._pub_status.publish(self._TaskStatus(
            header=self._header(), task=env.task, instruction=env.instruction, episode=self.episode,
            seed=env.seed, step=env.steps, done=success or env.steps >= self.max_steps, success=success,
            progress=env.success_report,
            collision=bool(env.episode_collisions), collision_bodies=bodies))

    # ------------------------------------------------------------------ lifecycle
    def destroy_node(self) -> None:
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        self._thread.join(timeout=10.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    from specvla_ros.ros import params as node_params

    if node_params.help_requested(list(sys.argv[1:] if args is None else args)):
        print(node_params.usage("specvla_sim", __doc__.split("\n\n")[0].replace("\n", " "),
                                list(SIM_SPECS), sim_defaults()))
        sys.exit(0)
    exit_code = 0
    rclpy.init(args=args)
    node = None
    # Single-threaded: when SIGINT shuts the context down it destroys the node under the
    # executor; rclpy's thread-pool executor then leaves failed callback tasks behind.
    executor = SingleThreadedExecutor()
    try:
        node = SimNode()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, RuntimeError) as exc:  # bad parameter or simulator start-up failure
        print(f"[{NODE_NAME}] cannot start: {exc}", file=sys.stderr)
        exit_code = 1
    finally:
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if exit_code:
        sys.exit(exit_code)


if __name__ == "__main__":
    main()
