"""One camera frame in shared memory, written by the client and read by the server.

The frame never passes through the socket: the client copies the resized
HxWx3 uint8 image into the block and then sends the request; the server copies
it out when the request arrives. A client has at most one request in flight, so
the block is never written while the server reads it.
"""
from __future__ import annotations

from multiprocessing import resource_tracker, shared_memory

import numpy as np


#: Blocks this process created (an attach in the same process must not unregister them).
_CREATED: set[str] = set()


class SharedFrame:
    """An HxWx3 uint8 frame in a named shared-memory block.

    ``create`` makes the block (the server, which owns it and unlinks it on
    ``close``); ``attach`` maps an existing one (the client).
    """

    def __init__(self, shm: shared_memory.SharedMemory, size_hw: tuple[int, int], owner: bool) -> None:
        h, w = int(size_hw[0]), int(size_hw[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"frame size must be positive, got {size_hw}")
        if shm.size < h * w * 3:
            raise ValueError(f"shared memory block {shm.name} has {shm.size} bytes, a {h}x{w}x3 frame needs {h * w * 3}")
        self._shm = shm
        self._owner = owner
        self.size_hw = (h, w)
        self._view: np.ndarray | None = np.ndarray((h, w, 3), dtype=np.uint8, buffer=shm.buf)

    @classmethod
    def create(cls, size_hw: tuple[int, int]) -> SharedFrame:
        h, w = int(size_hw[0]), int(size_hw[1])
        shm = shared_memory.SharedMemory(create=True, size=max(1, h * w * 3))
        _CREATED.add(shm._name)  # noqa: SLF001
        return cls(shm, (h, w), owner=True)

    @classmethod
    def attach(cls, name: str, size_hw: tuple[int, int]) -> SharedFrame:
        shm = shared_memory.SharedMemory(name=name)
        # Python < 3.13 registers attached blocks with this process's resource
        # tracker, which would unlink the owner's block when this process exits.
        if shm._name not in _CREATED:  # noqa: SLF001
            resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001
        return cls(shm, size_hw, owner=False)

    @property
    def name(self) -> str:
        return self._shm.name

    def write(self, rgb: np.ndarray) -> None:
        """Copy ``rgb`` (HxWx3 uint8 at ``size_hw``) into the block.

        Raises:
            ValueError: wrong shape or dtype.
        """
        if self._view is None:
            raise ValueError("frame block is closed")
        if rgb.shape != self._view.shape or rgb.dtype != np.uint8:
            raise ValueError(f"frame must be {self._view.shape} uint8, got {rgb.shape} {rgb.dtype}")
        np.copyto(self._view, rgb)

    def read(self) -> np.ndarray:
        """A private copy of the frame now in the block."""
        if self._view is None:
            raise ValueError("frame block is closed")
        return self._view.copy()

    def close(self) -> None:
        """Unmap (and unlink, for the owner). Idempotent."""
        if self._view is None:
            return
        self._view = None
        self._shm.close()
        if self._owner:
            _CREATED.discard(self._shm._name)  # noqa: SLF001
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
