"""specvla_policy_server: the inference process.

    specvla_policy_server --address /run/specvla/policy.sock --authkey-file /etc/specvla/key

Listens on a Unix socket; every authenticated connection is one session (one
robot) with its own ``Policy``. The main thread does nothing but serve
requests, so inference never competes with other Python threads for the GIL.
Sessions are served one request at a time, in arrival order; requests from
several robots that arrive together are the place to batch them later.

A node that starts its own private server (``PolicyClient.spawn``) passes
``--parent-pid`` and ``--idle-timeout``: the server exits when its parent is
gone or when it has had no session for that long.
"""
from __future__ import annotations

import argparse
import os
import pickle
import queue
import signal
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path

from specvla_ros.core.serving.frames import SharedFrame
from specvla_ros.core.serving.protocol import (
    CONFIG,
    MODEL_LOAD,
    PROTOCOL,
    PROTOCOL_VERSION,
    STEP,
    CloseSession,
    Failure,
    OpenSession,
    SessionOpened,
    SetSceneObjects,
    StepReply,
    StepRequest,
)
from specvla_ros.core.types import Observation

#: How often the loop wakes with nothing to do, to notice a stop, a lost parent or the idle timeout [s].
_POLL_S = 0.25


def _log(message: str) -> None:
    print(f"[specvla_policy_server {os.getpid()}] {message}", file=sys.stderr, flush=True)


class _Session:
    """One robot: its connection, policy and frame block."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.name = "?"
        self.policy = None  # specvla_ros.core.policy.Policy once opened
        self.frame: SharedFrame | None = None

    def close(self) -> None:
        if self.frame is not None:
            self.frame.close()
            self.frame = None
        self.policy = None
        self.conn.close()


class PolicyServer:
    """Serves sessions on ``listener`` until ``stop`` (or idle / parent loss, when configured)."""

    def __init__(self, listener: Listener, idle_timeout_s: float | None = None, parent_pid: int | None = None) -> None:
        self._listener = listener
        self._idle_timeout_s = idle_timeout_s
        self._parent_pid = parent_pid
        self._sessions: dict[Connection, _Session] = {}
        self._new: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._idle_since = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ accepting
    def _accept_forever(self) -> None:
        """Blocked in accept (no GIL held) until a client connects; hands it to the main loop."""
        while not self._stop.is_set():
            try:
                conn = self._listener.accept()
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)  # a client that hung up mid-handshake, or no descriptors left: no busy loop
                continue
            except (EOFError, AuthenticationError) as exc:
                _log(f"refused a connection: {exc}")
                continue
            self._new.put(conn)
            os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ main loop
    def serve_forever(self) -> None:
        acceptor = threading.Thread(target=self._accept_forever, name="specvla_accept", daemon=True)
        acceptor.start()
        try:
            while not self._stop.is_set():
                ready = wait([*self._sessions, self._wake_r], timeout=_POLL_S)
                for item in ready:
                    if item == self._wake_r:
                        os.read(self._wake_r, 64)
                        while not self._new.empty():
                            conn = self._new.get()
                            self._sessions[conn] = _Session(conn)
                    else:
                        self._serve_one(self._sessions[item])  # type: ignore[index]
                if self._should_exit():
                    break
        finally:
            self._stop.set()
            for session in list(self._sessions.values()):
                session.close()
            self._sessions.clear()
            self._listener.close()

    def _should_exit(self) -> bool:
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            _log(f"parent {self._parent_pid} is gone; exiting")
            return True
        if self._sessions:
            self._idle_since = time.monotonic()
            return False
        if self._idle_timeout_s is not None and time.monotonic() - self._idle_since > self._idle_timeout_s:
            _log(f"no session for {self._idle_timeout_s:.0f} s; exiting")
            return True
        return False

    def _drop(self, session: _Session, why: str) -> None:
        _log(f"session {session.name!r} closed ({why})")
        session.close()
        self._sessions.pop(session.conn, None)

    def _serve_one(self, session: _Session) -> None:
        try:
            request = session.conn.recv()
        except (EOFError, OSError):
            self._drop(session, "client disconnected")
            return
        except (pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError) as exc:
            self._reply(session, Failure(PROTOCOL, f"unreadable request: {exc}"))
            return
        try:
            if isinstance(request, StepRequest):
                self._step(session, request)
            elif isinstance(request, SetSceneObjects):
                if session.policy is not None:
                    session.policy.set_scene_objects(request.objects)
            elif isinstance(request, OpenSession):
                self._open(session, request)
            elif isinstance(request, CloseSession):
                self._drop(session, "closed by the client")
            else:
                self._reply(session, Failure(PROTOCOL, f"unknown request {type(request).__name__}"))
        except Exception as exc:  # noqa: BLE001 — one session's failure must not end the server
            seq = request.seq if isinstance(request, StepRequest) else -1
            _log(f"session {session.name!r}: {type(request).__name__} failed: {type(exc).__name__}: {exc}")
            self._reply(session, Failure(STEP, f"{type(exc).__name__}: {exc}", seq))

    def _reply(self, session: _Session, message: object) -> None:
        try:
            session.conn.send(message)
        except (OSError, EOFError):
            self._drop(session, "client disconnected")

    def _open(self, session: _Session, request: OpenSession) -> None:
        from specvla_ros.core.models.interface import ModelLoadError
        from specvla_ros.core.policy import Policy

        if request.protocol != PROTOCOL_VERSION:
            self._reply(session, Failure(PROTOCOL, f"client speaks protocol {request.protocol}, "
                                                   f"server {PROTOCOL_VERSION}"))
            return
        if session.policy is not None:
            self._reply(session, Failure(PROTOCOL, "session already open"))
            return
        session.name = request.name
        t0 = time.perf_counter()
        try:
            policy = Policy(request.config)
            load_s = time.perf_counter() - t0
            warmup_s = policy.warmup(n=request.warmup_steps) if request.warmup_steps > 0 else 0.0
        except (ModelLoadError, OSError, ImportError) as exc:
            self._reply(session, Failure(MODEL_LOAD, str(exc)))
            return
        except ValueError as exc:
            self._reply(session, Failure(CONFIG, str(exc)))
            return
        session.policy = policy
        session.frame = SharedFrame.create(policy.image_size)
        self._reply(session, SessionOpened(frames=session.frame.name, image_size=tuple(policy.image_size),
                                           image_resize=policy.image_resize,
                                           info=dict(policy.info), load_s=load_s, warmup_s=warmup_s,
                                           server_pid=os.getpid()))
        _log(f"session {session.name!r} open: {policy.info.get('target_params')} target params on "
             f"{policy.info.get('device')}, loaded in {load_s:.2f} s")

    def _step(self, session: _Session, request: StepRequest) -> None:
        t0 = time.perf_counter()
        if session.policy is None or session.frame is None:
            self._reply(session, Failure(PROTOCOL, "step before the session was opened", request.seq))
            return
        obs = Observation(image=session.frame.read(), instruction=request.instruction,
                          proprio=request.proprio, frame_id=request.frame_id)
        out = session.policy.step(obs, request.state, request.shift)
        self._reply(session, StepReply(request.seq, out, time.perf_counter() - t0))


def _read_authkey(args: argparse.Namespace) -> bytes:
    if args.authkey_file:
        text = Path(args.authkey_file).read_text(encoding="utf-8")
    else:
        text = sys.stdin.readline()
    key = bytes.fromhex(text.strip())
    if len(key) < 16:
        raise ValueError("the authentication key must be at least 16 bytes (32 hex digits)")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specvla_policy_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="Unix socket path to listen on")
    parser.add_argument("--authkey-file", default="", help="file holding the shared key in hex (default: read stdin)")
    parser.add_argument("--idle-timeout", type=float, default=0.0,
                        help="[s] exit after this long without a session (0 = never)")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is no longer the parent")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--nice", type=int, default=0,
                        help="add this to the process niceness (negative raises priority; needs CAP_SYS_NICE)")
    args = parser.parse_args(argv)
    try:
        authkey = _read_authkey(args)
    except (OSError, ValueError) as exc:
        print(f"specvla_policy_server: {exc}", file=sys.stderr)
        return 2
    if args.nice:
        try:
            os.nice(args.nice)
        except PermissionError:
            _log(f"could not change niceness by {args.nice} (needs CAP_SYS_NICE); running at "
                 f"{os.getpriority(os.PRIO_PROCESS, 0)}")
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    address = Path(args.address)
    address.parent.mkdir(parents=True, exist_ok=True)
    if address.exists():
        address.unlink()  # a stale socket of a server that died
    old_umask = os.umask(0o177)  # the socket is the owner's alone (the key authenticates as well)
    try:
        listener = Listener(str(address), family="AF_UNIX", authkey=authkey)
    finally:
        os.umask(old_umask)
    server = PolicyServer(listener, args.idle_timeout or None, args.parent_pid or None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    _log(f"listening on {address} (torch threads {torch.get_num_threads()}, "
         f"niceness {os.getpriority(os.PRIO_PROCESS, 0)})")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
