"""The task language: every instruction and narration phrase the simulator and
its scripted expert can produce.

Kept small and regular on purpose: the model's tokenizer is built from
``task_language_corpus()``, so anything said here can be encoded, and nothing
else is ever said. No mujoco import: the tokenizer code may use this module
without the simulator.
"""
from __future__ import annotations

#: Task families, in the order datasets cycle through them.
TASKS: tuple[str, ...] = ("reach", "push", "pick")
COLOR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPE_NAMES: tuple[str, ...] = ("cube", "block", "ball")
#: Shapes a task's object may have (a ball rolls away when pushed or is hard to grasp).
TASK_SHAPES: dict[str, tuple[str, ...]] = {
    "reach": ("cube", "block", "ball"),
    "push": ("cube", "block"),
    "pick": ("cube", "block"),
}

_INSTRUCTIONS: dict[str, str] = {
    "reach": "reach the {obj}",
    "push": "push the {obj} to the target",
    "pick": "pick up the {obj}",
}

#: Narration phrases; "{obj}" is "<colour> <shape>".
MOVE = "moving to the {obj}"
LOWER = "lowering to the {obj}"
PUSH = "pushing the {obj} to the target"
LIFT = "lifting the {obj}"
CLOSE = "closing the gripper"
OPEN = "opening the gripper"
HOLD = "holding still"
DONE = "done"
_NARRATIONS: tuple[str, ...] = (MOVE, LOWER, PUSH, LIFT, CLOSE, OPEN, HOLD, DONE)


def _check(task: str | None = None, color: str | None = None, shape: str | None = None) -> None:
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if color is not None and color not in COLOR_NAMES:
        raise ValueError(f"unknown colour {color!r}; expected one of {COLOR_NAMES}")
    if shape is not None and shape not in SHAPE_NAMES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPE_NAMES}")


def object_phrase(color: str, shape: str) -> str:
    """'red cube'."""
    _check(color=color, shape=shape)
    return f"{color} {shape}"


def instruction(task: str, color: str, shape: str) -> str:
    """The instruction for a task on the object of that colour and shape."""
    _check(task, color, shape)
    return _INSTRUCTIONS[task].format(obj=object_phrase(color, shape))


def narration(template: str, color: str, shape: str) -> str:
    """Fill one of the narration templates above for an object."""
    if template not in _NARRATIONS:
        raise ValueError(f"unknown narration template {template!r}")
    return template.format(obj=object_phrase(color, shape))


def task_language_corpus() -> list[str]:
    """Every instruction and narration phrase, each once, sorted."""
    phrases: set[str] = set()
    for color in COLOR_NAMES:
        for shape in SHAPE_NAMES:
            for task in TASKS:
                phrases.add(instruction(task, color, shape))
            for template in _NARRATIONS:
                phrases.add(narration(template, color, shape))
    return sorted(phrases)


def task_vocabulary() -> list[str]:
    """The distinct words of the corpus, sorted."""
    return sorted({w for phrase in task_language_corpus() for w in phrase.split()})
