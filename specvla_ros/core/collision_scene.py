"""Distances between the robot's collision primitives, the scene (table, boxes)
and its own non-adjacent links, computed by coal through Pinocchio in one call.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import coal
import numpy as np
import pinocchio as pin

from specvla_ros.core.kinematics import ArmKinematics
from specvla_ros.core.safety_config import SafetyConfig

#: The table is a 20 m x 20 m slab this thick [m] under its top surface: the
#: whole plane counts (reaching past the table's edge and down is refused too)
#: and box-vs-primitive pairs give signed distances, penetration included.
_TABLE_DEPTH = 1.0


@dataclass
class Distances:
    """Smallest distances [m] (negative = penetration) and the pairs they belong to."""

    obstacle: float
    self_: float
    obstacle_pair: tuple[str, str]
    self_pair: tuple[str, str]

    @property
    def minimum(self) -> float:
        return min(self.obstacle, self.self_)


class CollisionScene:
    """Robot links vs table/boxes and non-adjacent link pairs.

    Pairs checked: every robot primitive against every obstacle (links named in
    ``obstacle_ignore_links`` excepted), and robot primitives on joints at least two
    apart (adjacent links always touch) that ``self_collision_ignore`` does not list.
    """

    def __init__(self, kin: ArmKinematics, config: SafetyConfig) -> None:
        if kin.collision_model is None:
            raise ValueError("kinematics has no collision model (URDF without <collision> elements?)")
        self.kin = kin
        self.geom = kin.collision_model.copy()
        self.geom.removeAllCollisionPairs()
        model = kin.model
        robot_ids = list(range(self.geom.ngeoms))
        link_of = {i: model.frames[self.geom.geometryObjects[i].parentFrame].name for i in robot_ids}
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
        self._is_self: list[bool] = []
        names = {i: self.geom.geometryObjects[i].name for i in obstacle_ids}
        for r in robot_ids:
            if link_of[r] in ignore_obs:
                continue
            for o in obstacle_ids:
                self.geom.addCollisionPair(pin.CollisionPair(r, o))
                self.pair_names.append((link_of[r], names[o]))
                self._is_self.append(False)
        for a, b in itertools.combinations(robot_ids, 2):
            ja = self.geom.geometryObjects[a].parentJoint
            jb = self.geom.geometryObjects[b].parentJoint
            if abs(ja - jb) < 2 or frozenset((link_of[a], link_of[b])) in ignore_self:
                continue
            self.geom.addCollisionPair(pin.CollisionPair(a, b))
            self.pair_names.append((link_of[a], link_of[b]))
            self._is_self.append(True)
        self._is_self_arr = np.array(self._is_self, dtype=bool)
        self.data = model.createData()
        self.geom_data = pin.GeometryData(self.geom)
        for req in self.geom_data.distanceRequests:
            req.enable_signed_distance = True

    @property
    def n_pairs(self) -> int:
        return len(self.pair_names)

    def distances(self, q: np.ndarray) -> Distances:
        """Smallest obstacle and self distances at joint positions q."""
        pin.computeDistances(self.kin.model, self.data, self.geom, self.geom_data, np.asarray(q, dtype=np.float64))
        d = np.fromiter((r.min_distance for r in self.geom_data.distanceResults), dtype=np.float64,
                        count=self.n_pairs)
        obs = np.where(self._is_self_arr, np.inf, d)
        slf = np.where(self._is_self_arr, d, np.inf)
        io, is_ = int(np.argmin(obs)), int(np.argmin(slf))
        none = ("", "")
        return Distances(
            obstacle=float(obs[io]) if np.isfinite(obs[io]) else float("inf"),
            self_=float(slf[is_]) if np.isfinite(slf[is_]) else float("inf"),
            obstacle_pair=self.pair_names[io] if np.isfinite(obs[io]) else none,
            self_pair=self.pair_names[is_] if np.isfinite(slf[is_]) else none,
        )
