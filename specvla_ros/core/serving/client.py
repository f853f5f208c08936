"""The client side of the inference process: what the ROS node calls.

``PolicyClient.spawn`` starts a private ``specvla_policy_server`` for this
robot; ``PolicyClient.connect`` joins a server that already runs (one server,
several robots). Either way ``step`` is a blocking call with a timeout that
waits in a system call, so it holds no GIL while the server decides.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import numpy as np

from specvla_ros.core.safety.collision_scene import SceneObject
from specvla_ros.core.models.frame_resize import ResizeMethod, check_resize_method, resize_frame
from specvla_ros.core.serving.frames import SharedFrame
from specvla_ros.core.serving.protocol import (
    MODEL_LOAD,
    CloseSession,
    Failure,
    OpenSession,
    SessionOpened,
    SetSceneObjects,
    StepReply,
    StepRequest,
)
from specvla_ros.core.types import Observation, PolicyOutput, RobotState


class InferenceError(RuntimeError):
    """The server could not serve a request; the message says why."""


class InferenceTimeout(InferenceError):
    """No reply within the timeout (the decision may still arrive later; it is then discarded)."""


class InferenceUnavailable(InferenceError):
    """The server is gone (process exited, connection lost) or the client is closed."""


class SessionOpenError(InferenceError):
    """The server refused or failed to open the session. ``kind``: protocol.MODEL_LOAD, CONFIG, ..."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ServerOptions:
    """How a private server is started.

    threads: torch intra-op threads in the server (0 = torch's default).
    nice: niceness added to the server process (negative = higher priority; needs CAP_SYS_NICE).
    start_timeout_s: wait this long for the server to listen [s].
    open_timeout_s: wait this long for the models to load and warm up [s].
    idle_timeout_s: the server exits after this long without a session [s].
    """

    threads: int = 0
    nice: int = 0
    start_timeout_s: float = 60.0
    open_timeout_s: float = 600.0
    idle_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"ServerOptions.threads must be >= 0, got {self.threads}")
        if not -20 <= self.nice <= 19:
            raise ValueError(f"ServerOptions.nice must be in [-20, 19], got {self.nice}")
        for name in ("start_timeout_s", "open_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerOptions.{name} must be > 0, got {getattr(self, name)}")


class PolicyClient:
    """One robot's session on an inference server. Thread-safe; one request in flight at a time."""

    #: A request unanswered for this long means a stuck (not merely slow) server [s].
    STUCK_AFTER_S = 10.0

    def __init__(self, conn: Connection, opened: SessionOpened, process: subprocess.Popen | None = None,
                 socket_dir: str | None = None) -> None:
        self._conn = conn
        self._opened = opened
        self._process = process
        self._socket_dir = socket_dir
        self._frame = SharedFrame.attach(opened.frames, opened.image_size)
        self._lock = threading.Lock()
        self._seq = 0
        self._in_flight: int | None = None
        self._sent_at = 0.0  # time.monotonic() when the request in flight was sent
        self._dead: str | None = None

    # ------------------------------------------------------------------ starting
    @classmethod
    def spawn(cls, config: Any, name: str = "specvla", warmup_steps: int = 2,
              options: ServerOptions | None = None) -> PolicyClient:
        """Start a private server process and open a session on it.

        Raises:
            SessionOpenError: the models could not be loaded (kind MODEL_LOAD / CONFIG) or the
                server did not start.
        """
        options = options or ServerOptions()
        socket_dir = tempfile.mkdtemp(prefix="specvla_policy_")
        address = os.path.join(socket_dir, "policy.sock")
        authkey = os.urandom(32)
        cmd = [sys.executable, "-m", "specvla_ros.core.serving.server", "--address", address,
               "--idle-timeout", f"{options.idle_timeout_s:g}", "--parent-pid", str(os.getpid()),
               "--threads", str(options.threads), "--nice", str(options.nice)]
        process = subprocess.Popen(cmd, stdin=subprocess.PIPE, close_fds=True)
        try:
            pipe = process.stdin
            if pipe is None:
                raise SessionOpenError(MODEL_LOAD, "could not pass the key to the inference server")
            pipe.write(authkey.hex().encode() + b"\n")
            pipe.close()
            conn = _connect_when_listening(address, authkey, options.start_timeout_s, process)
            opened = _open(conn, name, config, warmup_steps, options.open_timeout_s, process)
            return cls(conn, opened, process, socket_dir)
        except BaseException:
            _stop_process(process)
            shutil.rmtree(socket_dir, ignore_errors=True)
            raise

    @classmethod
    def connect(cls, address: str, authkey: bytes, config: Any, name: str = "specvla", warmup_steps: int = 2,
                timeout_s: float = 600.0) -> PolicyClient:
        """Open a session on a server that is already running at ``address``.

        Raises:
            SessionOpenError: no server there, wrong key, or the models could not be loaded.
        """
        conn = _connect_when_listening(address, authkey, min(timeout_s, 10.0), None)
        return cls(conn, _open(conn, name, config, warmup_steps, timeout_s, None))

    # ------------------------------------------------------------------ what the session is
    @property
    def image_size(self) -> tuple[int, int]:
        return self._opened.image_size

    @property
    def image_resize(self) -> ResizeMethod:
        return check_resize_method(self._opened.image_resize)

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._opened.info)

    @property
    def load_s(self) -> float:
        return self._opened.load_s

    @property
    def warmup_s(self) -> float:
        return self._opened.warmup_s

    @property
    def server_pid(self) -> int:
        return self._opened.server_pid

    @property
    def problem(self) -> str | None:
        """Why the session is unusable (server gone, closed), or None while it works."""
        if self._dead is None and self._process is not None and self._process.poll() is not None:
            self._dead = f"inference process exited with code {self._process.returncode}"
        return self._dead

    # ------------------------------------------------------------------ requests
    def step(self, obs: Observation, state: RobotState, timeout_s: float, shift: int = 1) -> PolicyOutput:
        """``Policy.step`` in the server (``shift``: control steps since the previous decision); a frame of another size than ``image_size`` is resized
        here with the model's method (the shared block holds input-size frames).

        Raises:
            InferenceTimeout: no reply within ``timeout_s`` (also when an earlier late decision is
                still running: nothing new is sent until it returns).
            InferenceUnavailable: the server is gone.
            InferenceError: the server failed to decide (its exception's message).
            ValueError: the image has the wrong shape or dtype.
        """
        deadline = time.monotonic() + timeout_s
        image = obs.image
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[:2] != self.image_size:
            image = resize_frame(image, self.image_size, self.image_resize)
        with self._lock:
            self._check_alive()
            if self._in_flight is not None and self._await(self._in_flight, deadline) is None:
                self._check_stuck()
                raise InferenceTimeout(f"the previous decision (request {self._in_flight}) is still running")
            self._frame.write(image)
            self._seq += 1
            request = StepRequest(self._seq, obs.frame_id, obs.instruction,
                                  np.asarray(obs.proprio, dtype=np.float32), state, int(shift))
            self._send(request)
            self._in_flight, self._sent_at = self._seq, time.monotonic()
            reply = self._await(self._seq, deadline)
            if reply is None:
                raise InferenceTimeout(f"no decision within {timeout_s:.3f} s")
            if isinstance(reply, Failure):
                raise InferenceError(f"inference failed: {reply.message}")
            return reply.output

    def set_scene_objects(self, objects: Sequence[SceneObject]) -> None:
        """Replace the gate's known scene objects in the server (empty clears them)."""
        with self._lock:
            self._check_alive()
            if self._in_flight is not None:
                self._check_stuck()
            self._send(SetSceneObjects(tuple(objects)))

    def close(self) -> None:
        """End the session (and the private server). Idempotent; never blocks for long."""
        if not self._lock.acquire(timeout=2.0):
            # a call is blocked on a stuck server: ending the process unblocks it
            if self._process is not None:
                _stop_process(self._process, timeout_s=1.0)
            self._lock.acquire()
        try:
            if self._dead != "closed":
                try:
                    self._conn.send(CloseSession())
                except (OSError, EOFError, ValueError):
                    pass
                self._conn.close()
                self._frame.close()
                self._dead = "closed"
            if self._process is not None:
                _stop_process(self._process)
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ helpers
    def _check_stuck(self) -> None:
        """Give up on a server that has not answered for STUCK_AFTER_S: kill a private one."""
        waited = time.monotonic() - self._sent_at
        if waited > self.STUCK_AFTER_S:
            if self._process is not None:
                _stop_process(self._process, timeout_s=1.0)
            self._dead = f"no decision for {waited:.1f} s: inference process stuck (killed)"
            raise InferenceUnavailable(self._dead)

    def _check_alive(self) -> None:
        problem = self.problem
        if problem is not None:
            raise InferenceUnavailable(problem)

    def _send(self, message: object) -> None:
        try:
            self._conn.send(message)
        except (OSError, EOFError, ValueError) as exc:
            self._mark_dead(f"connection to the inference process lost: {exc}")

    def _mark_dead(self, why: str) -> None:
        if self._process is not None and self._process.poll() is not None:
            why = f"inference process exited with code {self._process.returncode}"
        self._dead = why
        raise InferenceUnavailable(why)

    def _await(self, seq: int, deadline: float) -> StepReply | Failure | None:
        """The answer to ``seq`` (None on timeout); answers to older requests are dropped."""
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not self._conn.poll(left):
                    return None
                message = self._conn.recv()
            except (OSError, EOFError) as exc:
                self._mark_dead(f"connection to the inference process lost: {exc}")
            if isinstance(message, (StepReply, Failure)) and message.seq == seq:
                self._in_flight = None
                return message
            if isinstance(message, Failure) and message.seq < 0:  # the session itself is broken
                self._mark_dead(f"inference server: {message.message}")
            # anything else: a reply to a request already given up on


def _connect_when_listening(address: str, authkey: bytes, timeout_s: float,
                            process: subprocess.Popen | None) -> Connection:
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise SessionOpenError(MODEL_LOAD, f"inference server exited with code {process.returncode} "
                                               "before it listened (see its log above)")
        if Path(address).exists():
            try:
                return Client(address, family="AF_UNIX", authkey=authkey)
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # bound but not yet listening
            except AuthenticationError as exc:
                raise SessionOpenError(MODEL_LOAD, f"inference server at {address} refused the key: {exc}") from exc
        if time.monotonic() > deadline:
            raise SessionOpenError(MODEL_LOAD, f"no inference server listening at {address} after {timeout_s:.0f} s")
        time.sleep(0.01)


def _open(conn: Connection, name: str, config: Any, warmup_steps: int, timeout_s: float,
          process: subprocess.Popen | None) -> SessionOpened:
    conn.send(OpenSession(name, config, warmup_steps))
    deadline = time.monotonic() + timeout_s
    while not conn.poll(0.1):
        if process is not None and process.poll() is not None:
            raise SessionOpenError(MODEL_LOAD, f"inference server exited with code {process.returncode} "
                                               "while loading the models (see its log above)")
        if time.monotonic() > deadline:
            raise SessionOpenError(MODEL_LOAD, f"models not loaded after {timeout_s:.0f} s")
    try:
        reply = conn.recv()
    except (OSError, EOFError) as exc:
        raise SessionOpenError(MODEL_LOAD, f"inference server hung up while loading the models: {exc}") from exc
    if isinstance(reply, Failure):
        conn.close()
        raise SessionOpenError(reply.kind, reply.message)
    if not isinstance(reply, SessionOpened):
        conn.close()
        raise SessionOpenError(MODEL_LOAD, f"unexpected answer {type(reply).__name__} to OpenSession")
    return reply


def _stop_process(process: subprocess.Popen, timeout_s: float = 5.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
