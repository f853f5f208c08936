"""Distances between the robot's collision primitives, the scene (table, boxes,
known objects) and its own non-adjacent links, computed by coal through
Pinocchio in one call.

Known objects (``SceneObject``: what perception or the simulator says lies on
the table) live in a fixed pool of box slots added once at construction; a new
object list only resizes and moves those boxes and switches their collision
pairs on or off, so the geometry model is never rebuilt per control step.
Unused slots have every pair switched off and cost nothing.

The gate's finger joints are locked fully open, which leaves the space between
the fingers empty: a closed gripper would "straddle" a small object. Against
scene objects the space between ``finger_links`` therefore counts as solid
(the ``panda_finger_gap`` box), a gripper link like the fingers themselves.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import coal
import numpy as np
import pinocchio as pin

from specvla_ros.core.safety.kinematics import ArmKinematics
from specvla_ros.core.safety.config import SafetyConfig

#: The table is a 20 m x 20 m slab this thick [m] under its top surface: the
#: whole plane counts (reaching past the table's edge and down is refused too)
#: and box-vs-primitive pairs give signed distances, penetration included.
_TABLE_DEPTH = 1.0
#: Pair kinds (index into the per-pair kind array).
_STATIC, _OBJECT, _SELF = 0, 1, 2
#: Largest object edge accepted [m]: anything bigger is a perception error, not an object on a table.
MAX_OBJECT_SIZE = 5.0
#: Travel counted for a prismatic joint without finite limits when bounding path lengths [m].
_UNBOUNDED_TRAVEL = 10.0
#: Largest distance of an object's centre from the robot base accepted [m]: further is a perception
#: or units error (and coal's distances lose meaning at absurd ranges).
MAX_OBJECT_RANGE = 10.0
#: Name of the box between the two fingers in verdict messages.
FINGER_GAP = "panda_finger_gap"


@dataclass(frozen=True)
class SceneObject:
    """A known object as an axis-aligned box in the robot base frame.

    name: label for verdict messages (e.g. "red_cube").
    center: box centre (x, y, z) [m], base frame.
    size: full box extents (sx, sy, sz) [m], each > 0 (a rotated object: its bounding box).
    gripper_may_touch: the task's object: hand and fingers (``SafetyConfig.gripper_links``)
        may touch it, the rest of the arm may not.

    Raises ValueError on an empty name, a non-finite centre or a non-positive/huge size.
    """

    name: str
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    gripper_may_touch: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"scene object needs a non-empty name, got {self.name!r}")
        try:
            c = tuple(float(v) for v in self.center)
            s = tuple(float(v) for v in self.size)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"scene object {self.name!r}: center and size must be 3 numbers each: {exc}") from exc
        if len(c) != 3 or len(s) != 3:
            raise ValueError(f"scene object {self.name!r}: center {self.center} and size {self.size} "
                             "must have 3 values each")
        if not all(math.isfinite(v) for v in c):
            raise ValueError(f"scene object {self.name!r}: center {c} is not finite")
        if math.dist(c, (0.0, 0.0, 0.0)) > MAX_OBJECT_RANGE:
            raise ValueError(f"scene object {self.name!r}: center {c} is more than {MAX_OBJECT_RANGE} m from the base")
        if not all(math.isfinite(v) and 0.0 < v <= MAX_OBJECT_SIZE for v in s):
            raise ValueError(f"scene object {self.name!r}: size {s} must be finite, > 0 and <= "
                             f"{MAX_OBJECT_SIZE} m")
        object.__setattr__(self, "center", c)
        object.__setattr__(self, "size", s)
        object.__setattr__(self, "gripper_may_touch", bool(self.gripper_may_touch))


def _bounding_radius(geometry: coal.CollisionGeometry) -> float:
    """Largest distance of a point of ``geometry`` from its frame's origin [m]."""
    geometry.computeLocalAABB()
    return float(geometry.aabb_radius + np.linalg.norm(np.asarray(geometry.aabb_center)))


@dataclass
class Distances:
    """Smallest distances [m] (negative = penetration) and the pairs they belong to.

    obstacle: robot to table / static boxes; object: robot to known scene objects
    (inf when none); self_: between non-adjacent links.
    """

    obstacle: float
    self_: float
    obstacle_pair: tuple[str, str]
    self_pair: tuple[str, str]
    object: float = math.inf
    object_pair: tuple[str, str] = ("", "")
    #: collision-pair index of the closest (obstacle, object, self) pair; -1 where there is none
    pair_index: tuple[int, int, int] = (-1, -1, -1)
    #: every pair's distance, by pair index (inf for pairs switched off)
    per_pair: np.ndarray = field(default_factory=lambda: np.empty(0))

    @property
    def minimum(self) -> float:
        return min(self.obstacle, self.self_, self.object)


class CollisionScene:
    """Robot links vs table/boxes/known objects and non-adjacent link pairs.

    Pairs checked: every robot primitive against every obstacle (links named in
    ``obstacle_ignore_links`` excepted), robot primitives on joints at least two
    apart (adjacent links always touch) that ``self_collision_ignore`` does not
    list, and every robot primitive against each occupied object slot (pairs
    with ``gripper_links`` switched off for an object the gripper may touch).

    Args:
        object_slots: size of the object pool (default ``config.scene_object_slots``).
    """

    def __init__(self, kin: ArmKinematics, config: SafetyConfig, object_slots: int | None = None) -> None:
        if kin.collision_model is None:
            raise ValueError("kinematics has no collision model (URDF without <collision> elements?)")
        n_slots = config.scene_object_slots if object_slots is None else int(object_slots)
        if n_slots < 0:
            raise ValueError(f"object_slots must be >= 0, got {n_slots}")
        self.kin = kin
        self.config = config
        self.geom = kin.collision_model.copy()
        self.geom.removeAllCollisionPairs()
        model = kin.model
        robot_ids = list(range(self.geom.ngeoms))
        link_of = {i: model.frames[self.geom.geometryObjects[i].parentFrame].name for i in robot_ids}
        unknown = [n for n in config.gripper_links if not model.existFrame(n)]
        if unknown:
            raise ValueError(f"collision.gripper_links {unknown} are not links of {kin.urdf_path}")
        obstacle_ids: list[int] = []
        if config.table_height is not None:
            # slab under the table top, large in x/y: the whole table plane is an obstacle
            box = coal.Box(20.0, 20.0, _TABLE_DEPTH)
            place = pin.SE3(np.eye(3), np.array([0.0, 0.0, config.table_height - _TABLE_DEPTH / 2]))
            obstacle_ids.append(self.geom.addGeometryObject(pin.GeometryObject("table", 0, 0, place, box)))
        for b in config.boxes:
            place = pin.SE3(np.eye(3), np.asarray(b.center, dtype=float))
            obstacle_ids.append(self.geom.addGeometryObject(
                pin.GeometryObject(b.name, 0, 0, place, coal.Box(*map(float, b.size)))))
        ignore_obs = set(config.obstacle_ignore_links)
        ignore_self = {frozenset(p) for p in config.self_collision_ignore}
        self.pair_names: list[tuple[str, str]] = []
        kinds: list[int] = []
        names = {i: self.geom.geometryObjects[i].name for i in obstacle_ids}
        checked_robot = [r for r in robot_ids if link_of[r] not in ignore_obs]
        for r in checked_robot:
            for o in obstacle_ids:
                self.geom.addCollisionPair(pin.CollisionPair(r, o))
                self.pair_names.append((link_of[r], names[o]))
                kinds.append(_STATIC)
        for a, b in itertools.combinations(robot_ids, 2):
            ja = self.geom.geometryObjects[a].parentJoint
            jb = self.geom.geometryObjects[b].parentJoint
            if abs(ja - jb) < 2 or frozenset((link_of[a], link_of[b])) in ignore_self:
                continue
            self.geom.addCollisionPair(pin.CollisionPair(a, b))
            self.pair_names.append((link_of[a], link_of[b]))
            kinds.append(_SELF)
        object_robot = list(checked_robot)
        if config.finger_links:
            gap = self._finger_gap(config.finger_links, robot_ids, link_of)
            link_of[gap] = FINGER_GAP
            object_robot.append(gap)
        # object pool: unit boxes far below the table, every pair off until an object fills the slot
        gripper = set(config.gripper_links) | {FINGER_GAP}
        self._slot_geom: list[int] = []
        self._slot_arm_pairs: list[list[int]] = []  # pairs of the rest of the arm
        self._slot_grip_pairs: list[list[int]] = []  # pairs of gripper_links (off for gripper_may_touch)
        for k in range(n_slots):
            parked = pin.SE3(np.eye(3), np.array([0.0, 0.0, -100.0 - k]))
            gid = self.geom.addGeometryObject(pin.GeometryObject(f"object_slot{k}", 0, 0, parked, coal.Box(1e-3, 1e-3, 1e-3)))
            self._slot_geom.append(gid)
            arm, grip = [], []
            for r in object_robot:
                (grip if link_of[r] in gripper else arm).append(len(self.pair_names))
                self.geom.addCollisionPair(pin.CollisionPair(r, gid))
                self.pair_names.append((link_of[r], f"object_slot{k}"))
                kinds.append(_OBJECT)
            self._slot_arm_pairs.append(arm)
            self._slot_grip_pairs.append(grip)
        self._kind = np.array(kinds, dtype=np.int8)
        self.data = model.createData()
        # per pair (robot primitive first in every table/box/object pair), per joint: how far a point
        # of the robot's primitive can lie from that joint's axis. A self pair moves relative to itself
        # only by the joints that move one primitive and not the other (a joint moving both moves them
        # rigidly): the sum of the two primitives' reaches over those joints
        self._pair_reach = np.zeros((len(kinds), model.nv))
        self._pair_robot = np.array([pair.first for pair in self.geom.collisionPairs])
        self._pair_other = np.array([pair.second for pair in self.geom.collisionPairs])
        self._geom_radius = np.zeros(self.geom.ngeoms)
        reach = {r: self._joint_reach(r) for r in set(robot_ids) | {int(p.first) for p in self.geom.collisionPairs}}
        for r in reach:
            self._geom_radius[r] = _bounding_radius(self.geom.geometryObjects[r].geometry)
        for i, pair in enumerate(self.geom.collisionPairs):
            if kinds[i] != _SELF:
                self._pair_reach[i] = reach[pair.first]
            else:
                ra, rb = reach[pair.first], reach[pair.second]
                self._pair_reach[i] = np.where((ra > 0) & (rb > 0), 0.0, ra + rb)
        self.geom_data = pin.GeometryData(self.geom)
        for req in self.geom_data.distanceRequests:
            req.enable_signed_distance = True
        self._active = np.ones(len(kinds), dtype=bool)
        self._slot_state: list[tuple[bool, bool]] = [(True, True)] * n_slots  # (arm on, gripper on)
        self._slot_obj: list[SceneObject | None] = [None] * n_slots  # what each slot holds now
        for k in range(n_slots):
            self._set_slot_pairs(k, False, False)
        self._refresh_active()
        self.objects: tuple = ()

    def _joint_reach(self, geom: int) -> np.ndarray:
        """Per joint, how far [m] a point of primitive ``geom`` can move per unit of that joint in any
        pose (0 for joints that do not move it). Revolute: its furthest distance from the joint, the
        joint-to-joint lengths down to the primitive's joint plus the primitive's own extent, each
        prismatic joint between them counted at its full travel. Prismatic: 1 (a translation)."""
        model = self.kin.model
        pin.forwardKinematics(model, self.data, pin.neutral(model))
        obj = self.geom.geometryObjects[geom]
        own = float(np.linalg.norm(obj.placement.translation)) + _bounding_radius(obj.geometry)
        reach = np.zeros(model.nv)
        chain = 0.0
        for j in range(obj.parentJoint, 0, -1):
            joint = model.joints[j]
            prismatic = "Prismatic" in joint.shortname() or joint.shortname() in ("JointModelPX", "JointModelPY",
                                                                                  "JointModelPZ")
            if prismatic:
                reach[joint.idx_v] = 1.0
                lo, hi = model.lowerPositionLimit[joint.idx_q], model.upperPositionLimit[joint.idx_q]
                chain += float(hi - lo) if np.isfinite(hi - lo) else _UNBOUNDED_TRAVEL
            else:
                reach[joint.idx_v] = chain + own
            chain += float(np.linalg.norm(self.data.oMi[j].translation - self.data.oMi[model.parents[j]].translation))
        return reach

    def _finger_gap(self, fingers: tuple[str, ...], robot_ids: list[int], link_of: dict[int, str]) -> int:
        """Add the box spanning the two finger boxes (centre to centre) on their common joint."""
        boxes = []
        for name in fingers:
            ids = [i for i in robot_ids if link_of[i] == name]
            geo = self.geom.geometryObjects[ids[0]] if len(ids) == 1 else None
            if geo is None or not isinstance(geo.geometry, coal.Box):
                raise ValueError(f"collision.finger_links: {name!r} needs exactly one <box> collision element")
            boxes.append(geo)
        left, right = boxes
        if left.parentJoint != right.parentJoint or not np.allclose(left.placement.rotation, right.placement.rotation):
            raise ValueError(f"collision.finger_links {fingers}: fingers must be parallel boxes on one joint")
        R = left.placement.rotation
        offset = R.T @ (right.placement.translation - left.placement.translation)  # in the finger box frame
        half = np.maximum(np.asarray(left.geometry.halfSide, dtype=float), np.abs(offset) / 2.0)
        place = pin.SE3(R, (left.placement.translation + right.placement.translation) / 2.0)
        return self.geom.addGeometryObject(pin.GeometryObject(FINGER_GAP, left.parentJoint, left.parentFrame, place,
                                                              coal.Box(*(2.0 * half))))

    @property
    def n_pairs(self) -> int:
        return len(self.pair_names)

    @property
    def object_slots(self) -> int:
        return len(self._slot_geom)

    def set_objects(self, objects: Sequence[SceneObject]) -> None:
        """Put these objects in the pool (replacing the previous ones); empty slots are switched off.

        Raises ValueError when there are more objects than slots (the caller grows the pool).
        """
        if len(objects) > self.object_slots:
            raise ValueError(f"{len(objects)} scene objects but only {self.object_slots} slots")
        for k, obj in enumerate(objects):
            old = self._slot_obj[k]
            if old == obj:
                continue  # a resting object: nothing to move (the usual case, every control step)
            go = self.geom.geometryObjects[self._slot_geom[k]]
            if old is None or old.center != obj.center:
                go.placement = pin.SE3(np.eye(3), np.asarray(obj.center, dtype=np.float64))
            if old is None or old.size != obj.size:
                go.geometry.halfSide = np.asarray(obj.size, dtype=np.float64) / 2.0
                go.geometry.computeLocalAABB()
            if old is None or old.name != obj.name:
                for i in self._slot_arm_pairs[k] + self._slot_grip_pairs[k]:
                    self.pair_names[i] = (self.pair_names[i][0], obj.name)
            self._set_slot_pairs(k, True, not obj.gripper_may_touch)
            self._slot_obj[k] = obj
        for k in range(len(objects), self.object_slots):
            self._set_slot_pairs(k, False, False)
            self._slot_obj[k] = None
        self.objects = tuple(objects)
        self._refresh_active()

    def _set_slot_pairs(self, k: int, arm_on: bool, grip_on: bool) -> None:
        if self._slot_state[k] == (arm_on, grip_on):
            return
        for pairs, on in ((self._slot_arm_pairs[k], arm_on), (self._slot_grip_pairs[k], grip_on)):
            for i in pairs:
                # an inactive pair is skipped by computeDistances (no cost) and masked below
                if on:
                    self.geom_data.activateCollisionPair(i)
                else:
                    self.geom_data.deactivateCollisionPair(i)
                self._active[i] = on
        self._slot_state[k] = (arm_on, grip_on)

    def _refresh_active(self) -> None:
        self._active_idx = np.flatnonzero(self._active)
        self._active_list = self._active_idx.tolist()  # the results vector takes Python ints only
        kind = self._kind[self._active_idx]
        self._masks = tuple(kind == c for c in (_STATIC, _OBJECT, _SELF))

    def distances(self, q: np.ndarray) -> Distances:
        """Smallest obstacle, object and self distances at joint positions q."""
        pin.computeDistances(self.kin.model, self.data, self.geom, self.geom_data, np.asarray(q, dtype=np.float64))
        results = self.geom_data.distanceResults
        idx = self._active_idx
        d = np.fromiter((results[i].min_distance for i in self._active_list), dtype=np.float64, count=idx.size)
        out: list[tuple[float, tuple[str, str], int]] = []
        for mask in self._masks:
            if not mask.any():
                out.append((math.inf, ("", ""), -1))
                continue
            sub = np.where(mask, d, np.inf)
            j = int(np.argmin(sub))
            out.append((float(sub[j]), self.pair_names[int(idx[j])], int(idx[j])))
        (obs, obs_pair, i_obs), (obj, obj_pair, i_obj), (slf, slf_pair, i_slf) = out
        per_pair = np.full(self.n_pairs, np.inf)
        per_pair[idx] = d
        return Distances(obstacle=obs, self_=slf, obstacle_pair=obs_pair, self_pair=slf_pair,
                         object=obj, object_pair=obj_pair, pair_index=(i_obs, i_obj, i_slf), per_pair=per_pair)

    @property
    def pair_kinds(self) -> np.ndarray:
        """Per collision pair: 0 robot vs table/box, 1 robot vs scene object, 2 robot vs itself."""
        return self._kind

    @property
    def path_checked(self) -> np.ndarray:
        """Mask of the pairs checked along a step's path: every active pair (table/box, object, self)."""
        return self._active.copy()

    def path_bounds(self, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        """Per pair, an upper bound L [m] on the length of the path any point of its robot primitive
        travels on the joint-space segment q0 -> q1 (a self pair: relative to the other primitive):
        sum over joints of |dq_i| times how far that joint moves the primitive per unit (see
        ``_joint_reach``). At fraction t of the way such a point is within t L of its start and
        (1 - t) L of its end, so the pair's distance there is at least (d0 + d1 - L) / 2."""
        dq = np.abs(np.asarray(q1, dtype=np.float64) - np.asarray(q0, dtype=np.float64))
        return self._pair_reach @ dq

    def pair_sweeps(self, q0: np.ndarray, q1: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Per pair, how far its robot primitive moves between poses q0 and q1 [m] (a self pair's first
        primitive: in the frame of the second): its origin's displacement plus its extent times its
        rotation angle (the end-to-end motion; a short joint-space step moves it along a nearly
        straight path)."""
        pairs = np.asarray(pairs, dtype=np.int64)
        geoms = self._pair_robot[pairs]
        selfs = self._kind[pairs] == _SELF
        others = self._pair_other[pairs]
        places = []
        for q in (q0, q1):
            pin.updateGeometryPlacements(self.kin.model, self.data, self.geom, self.geom_data,
                                         np.asarray(q, dtype=np.float64))
            places.append([self.geom_data.oMg[int(o)].actInv(self.geom_data.oMg[int(g)]) if own
                           else self.geom_data.oMg[int(g)].copy() for g, o, own in zip(geoms, others, selfs)])
        out = np.empty(len(geoms))
        for k, (a, b) in enumerate(zip(*places)):
            angle = float(np.linalg.norm(pin.log3(a.rotation.T @ b.rotation)))
            out[k] = float(np.linalg.norm(b.translation - a.translation)) + self._geom_radius[int(geoms[k])] * angle
        return out

    def pair_distances(self, q: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Signed distances [m] of just these pairs at q (cheaper than ``distances`` for a few)."""
        pin.updateGeometryPlacements(self.kin.model, self.data, self.geom, self.geom_data,
                                     np.asarray(q, dtype=np.float64))
        return np.array([pin.computeDistance(self.geom, self.geom_data, int(p)).min_distance for p in pairs])

    def pair_distance_gradient(self, q: np.ndarray, pair: int, step: float = 1e-4) -> tuple[float, np.ndarray]:
        """One collision pair's signed distance [m] at q and its gradient d(distance)/dq [m/rad]
        (forward differences of ``step`` rad; only that pair is computed, so it is cheap)."""
        if not 0 <= pair < self.n_pairs:
            raise ValueError(f"collision pair {pair} out of range (0..{self.n_pairs - 1})")
        q = np.asarray(q, dtype=np.float64).reshape(-1)

        def dist(qq: np.ndarray) -> float:
            pin.updateGeometryPlacements(self.kin.model, self.data, self.geom, self.geom_data, qq)
            return float(pin.computeDistance(self.geom, self.geom_data, pair).min_distance)

        d0 = dist(q)
        grad = np.empty(q.size)
        for i in range(q.size):
            qq = q.copy()
            qq[i] += step
            grad[i] = (dist(qq) - d0) / step
        return d0, grad
