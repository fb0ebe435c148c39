"""The procedural room renderer behind the ``synthetic`` dataset (numpy only, no torch).

A box room (floor, walls, ceiling) with boxes, spheres, vertical cylinders and slabs (tables,
shelves), seen by a pinhole camera inside it and ray cast analytically (numpy, vectorised): per
pixel the class, metric z-depth, unit normal in camera coordinates (OpenCV: x right, y down,
z forward; facing the camera) and a Lambertian image of textured surfaces with noise. Colours
come from one distribution for every surface, so class is not a function of colour. A scene is
a pure function of its seed, and its geometry does not depend on the resolution (focal length
``FOCAL_FACTOR * W``, pixel (i, j) at (u, v) = (j, i), principal point at the centre).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("floor", "wall", "ceiling", "box", "sphere", "cylinder", "slab")
NUM_CLASSES = len(CLASS_NAMES)
FLOOR, WALL, CEILING, BOX, SPHERE, CYLINDER, SLAB = range(NUM_CLASSES)
FOCAL_FACTOR = 0.8  # focal length in pixels = 0.8 * W: a horizontal field of view of ~64 degrees
DEFAULT_SIZE = (96, 128)
FACES = 8  # ``surface = instance * FACES + face``
_EPS = 1e-6
_CUBE = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=float)

SeedLike = int | Sequence[int] | np.random.SeedSequence | np.random.Generator


def camera_intrinsics(size: tuple[int, int]) -> np.ndarray:
    """The 3x3 pinhole matrix K for an image of ``size = (H, W)``; pixel (i, j) is at (u=j, v=i)."""
    h, w = size
    f = FOCAL_FACTOR * w
    return np.array([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]])


@dataclass
class Material:
    """Albedo ``c1 * (1 - t) + c2 * t`` for a procedural texture ``t(p)`` of the local point p."""

    c1: np.ndarray
    c2: np.ndarray
    kind: str  # plain | stripes | checker | noise
    waves: np.ndarray  # (k, 3) wave vectors (stripes: one; noise: several)
    phases: np.ndarray  # (k,)
    scale: float  # checker cell size in metres
    offset: np.ndarray  # (3,) checker offset

    def albedo(self, p: np.ndarray) -> np.ndarray:
        """Albedo (N, 3) at local points ``p`` (N, 3)."""
        if self.kind == "plain":
            t = np.zeros(len(p))
        elif self.kind == "stripes":
            t = np.clip(3.0 * np.sin(p @ self.waves[0] + self.phases[0]), -1.0, 1.0) * 0.5 + 0.5
        elif self.kind == "checker":
            t = np.floor((p + self.offset) / self.scale).sum(axis=1) % 2.0
        else:
            t = np.sin(p @ self.waves.T + self.phases).mean(axis=1) * 0.9 + 0.5
        t = np.clip(t, 0.0, 1.0)[:, None]
        return self.c1 * (1.0 - t) + self.c2 * t


@dataclass
class Prim:
    """One object: a (yawed) box, a sphere or a vertical cylinder, with its class and material."""

    kind: str  # box | sphere | cylinder
    cls: int
    center: np.ndarray  # box centre / sphere centre / cylinder axis point at its base (z = z0)
    size: np.ndarray  # box half extents / (r, 0, 0) / (r, 0, height)
    material: Material
    yaw: float = 0.0

    def corners(self) -> np.ndarray:
        """The 8 corners of a cube around the prim's bounding sphere (for screen-space culling)."""
        mid, rad = self.center, float(np.linalg.norm(self.size) if self.kind == "box" else self.size[0])
        if self.kind == "cylinder":
            mid, rad = self.center + [0.0, 0.0, self.size[2] / 2], float(np.hypot(rad, self.size[2] / 2))
        return mid + rad * _CUBE


@dataclass
class Scene:
    """Everything a render needs; drawn from the scene generator only (resolution-free)."""

    lo: np.ndarray  # room corner (x0, y0, 0)
    hi: np.ndarray  # room corner (x1, y1, height)
    room: list[Material]  # by room face: walls x0, x1, y0, y1 (may share one), floor, ceiling
    position: np.ndarray  # camera centre, world (z up)
    rotation: np.ndarray  # world -> camera (rows: right, down, forward)
    prims: list[Prim] = field(default_factory=list)
    light: dict[str, np.ndarray] = field(default_factory=dict)  # see the end of sample_scene


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random RGB albedo from one class-independent distribution (HSV, linear-ish)."""
    h, s, v = rng.random(), rng.uniform(0.0, 0.85), rng.uniform(0.2, 0.95)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _material(rng: np.random.Generator) -> Material:
    c1 = _colour(rng)
    c2 = _colour(rng) if rng.random() < 0.5 else c1 * rng.uniform(0.4, 0.8)
    kind = str(rng.choice(["plain", "stripes", "checker", "noise"], p=[0.3, 0.25, 0.2, 0.25]))
    scale = rng.uniform(0.08, 0.5)
    waves = rng.normal(size=(4, 3))
    waves *= (2 * np.pi / scale) / np.linalg.norm(waves, axis=1, keepdims=True)
    return Material(c1, c2, kind, waves, rng.uniform(0, 2 * np.pi, 4), scale, rng.uniform(0, scale, 3))


def _place(rng, scene: Scene, taken: list, radius: float, cam: np.ndarray, yaw: float) -> np.ndarray | None:
    """A free floor point in view for a footprint of ``radius`` (None after 40 tries)."""
    for _ in range(40):
        ang, dist = yaw + rng.uniform(-0.5, 0.5), rng.uniform(radius + 0.8, 7.0)
        xy = cam + dist * np.array([np.sin(ang), np.cos(ang)])
        inside = np.all(xy - radius - 0.05 > scene.lo[:2]) and np.all(xy + radius + 0.05 < scene.hi[:2])
        if inside and all(np.hypot(*(xy - q)) > radius + r + 0.08 for q, r in taken):
            taken.append((xy, radius))
            return xy
    return None


def _object(rng, kind: str, scale: float = 1.0) -> Prim:
    """A box, sphere or cylinder standing on z = 0 at the origin; ``scale`` < 1 for table-top ones."""
    mat = _material(rng)
    if kind == "sphere":
        r = scale * rng.uniform(0.15, 0.55)
        return Prim(kind, SPHERE, np.array([0.0, 0.0, r]), np.array([r, 0.0, 0.0]), mat)
    if kind == "cylinder":
        size = scale * np.array([rng.uniform(0.1, 0.45), 0.0, rng.uniform(0.3, 1.8)])
        return Prim(kind, CYLINDER, np.zeros(3), size, mat)
    half = scale * np.array([*rng.uniform(0.15, 0.6, 2), rng.uniform(0.15, 0.75)])
    yaw = 0.0 if rng.random() < 0.4 else rng.uniform(0, np.pi)
    return Prim(kind, BOX, np.array([0.0, 0.0, half[2]]), half, mat, yaw)


def _table(rng, xy: np.ndarray, half: np.ndarray, yaw: float) -> list[Prim]:
    """A slab top on four legs (all class slab), sometimes with a small object on it."""
    mat, thick, height = _material(rng), rng.uniform(0.025, 0.07), rng.uniform(0.45, 1.0)
    top = Prim("box", SLAB, np.array([*xy, height - thick / 2]), np.array([*half, thick / 2]), mat, yaw)
    leg, legh = rng.uniform(0.02, 0.04), (height - thick) / 2
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    prims = [top]
    for corner in ([-1, -1], [-1, 1], [1, -1], [1, 1]):
        pos = xy + rot @ (np.array(corner) * (half - leg - 0.02))
        prims.append(Prim("box", SLAB, np.array([*pos, legh]), np.array([leg, leg, legh]), mat, yaw))
    if rng.random() < 0.6:
        small = _object(rng, str(rng.choice(["box", "sphere", "cylinder"])), 0.25)
        small.center += [*(xy + rot @ (rng.uniform(-0.4, 0.4, 2) * half)), height]
        prims.append(small)
    return prims


def _shelves(rng, lo: np.ndarray, hi: np.ndarray) -> list[Prim]:
    """One to three shelves on the far or a side wall."""
    wall, mat = int(rng.integers(3)), _material(rng)
    length, depth, thick = rng.uniform(0.8, 2.0), rng.uniform(0.22, 0.4), rng.uniform(0.025, 0.05)
    z = rng.uniform(0.7, 1.6)
    if wall == 0:  # far wall (y = y1)
        c = np.array([rng.uniform(lo[0] + length / 2, hi[0] - length / 2), hi[1] - depth / 2, z])
        half = np.array([length / 2, depth / 2, thick / 2])
    else:  # side walls
        y = rng.uniform(lo[1] + 0.3 * (hi[1] - lo[1]), hi[1] - length / 2)
        c = np.array([lo[0] + depth / 2 if wall == 1 else hi[0] - depth / 2, y, z])
        half = np.array([depth / 2, length / 2, thick / 2])
    levels = [z + 0.38 * k for k in range(int(rng.integers(1, 4)))]
    levels = [zk for zk in levels if zk + thick < hi[2] - 0.05]
    return [Prim("box", SLAB, np.array([*c[:2], zk]), half, mat) for zk in levels]


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a room, a camera inside it looking in, objects in view and the lights."""
    size = np.array([rng.uniform(3.5, 7.0), rng.uniform(4.5, 9.0), rng.uniform(2.4, 3.2)])
    lo = np.array([-size[0] / 2, 0.0, 0.0])
    hi = lo + size
    walls = [_material(rng)] * 4 if rng.random() < 0.7 else [_material(rng) for _ in range(4)]
    room = [*walls, _material(rng), _material(rng)]  # by room face: walls x0, x1, y0, y1, floor, ceiling
    cam_xy = np.array([rng.uniform(lo[0] + 0.6, hi[0] - 0.6), rng.uniform(0.3, 1.2)])
    target = np.array([rng.uniform(lo[0], hi[0]), rng.uniform(0.55, 1.0) * size[1]])
    yaw = float(np.arctan2(*(target - cam_xy))) + rng.uniform(-0.15, 0.15)
    pitch, roll = np.radians(rng.uniform(-18.0, 6.0)), np.radians(rng.uniform(-3.0, 3.0))
    fwd = np.array([np.cos(pitch) * np.sin(yaw), np.cos(pitch) * np.cos(yaw), np.sin(pitch)])
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    right, down = np.cos(roll) * right + np.sin(roll) * down, np.cos(roll) * down - np.sin(roll) * right
    scene = Scene(lo, hi, room, np.array([*cam_xy, rng.uniform(1.0, 1.7)]), np.stack([right, down, fwd]))
    taken: list[tuple[np.ndarray, float]] = [(cam_xy, 0.2)]
    for _ in range(int(rng.integers(3, 8))):
        kind = str(rng.choice(["box", "sphere", "cylinder", "slab"], p=[0.3, 0.2, 0.25, 0.25]))
        if kind == "slab" and rng.random() < 0.3:
            scene.prims += _shelves(rng, lo, hi)
        elif kind == "slab":
            half = np.array([rng.uniform(0.4, 0.9), rng.uniform(0.25, 0.5)])
            table_yaw = 0.0 if rng.random() < 0.4 else rng.uniform(0, np.pi)
            xy = _place(rng, scene, taken, float(np.hypot(*half)), cam_xy, yaw)
            scene.prims += [] if xy is None else _table(rng, xy, half, table_yaw)
        else:
            prim = _object(rng, kind)
            foot = float(np.hypot(*prim.size[:2]) if kind == "box" else prim.size[0])
            xy = _place(rng, scene, taken, foot, cam_xy, yaw)
            if xy is not None:
                prim.center[:2] += xy
                scene.prims.append(prim)
    elev, azim, tint = rng.uniform(0.5, 1.4), rng.uniform(0, 2 * np.pi), rng.uniform(0.85, 1.15, (3, 3))
    scene.light = {
        "ambient": rng.uniform(0.12, 0.3) * tint[0],
        "sun_dir": np.array([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)]),
        "sun": rng.uniform(0.25, 0.6) * tint[1],
        "lamp_pos": np.array([*rng.uniform(lo[:2] + 0.5, hi[:2] - 0.5), hi[2] - rng.uniform(0.2, 0.6)]),
        "lamp": rng.uniform(0.4, 1.0) * tint[2],
        "lamp_range": np.array(rng.uniform(2.0, 5.0)),
        "exposure": np.array(rng.uniform(0.85, 1.25)),
        "noise": np.array(rng.uniform(0.004, 0.025)),
    }
    return scene


def _hit_box(o: np.ndarray, d: np.ndarray, prim: Prim) -> tuple[np.ndarray, ...]:
    """Slab test in the box's yawed frame: (t, world normal, local point, face)."""
    c, s = np.cos(prim.yaw), np.sin(prim.yaw)
    rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # world -> local
    ol, dl = rot @ (o - prim.center), d @ rot.T
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-prim.size - ol) / dl, (prim.size - ol) / dl
    tmin = np.minimum(t1, t2)
    near, far = tmin.max(axis=-1), np.maximum(t1, t2).min(axis=-1)
    t = np.where((near <= far) & (near > _EPS), near, np.inf)
    axis = tmin.argmax(axis=-1)
    sign = -np.sign(np.take_along_axis(dl, axis[..., None], axis=-1))
    normal = (np.eye(3)[axis] * sign) @ rot  # local -> world
    return t, normal, ol + near[..., None] * dl, axis * 2 + (sign[..., 0] > 0)


def _hit_sphere(o: np.ndarray, d: np.ndarray, prim: Prim) -> tuple[np.ndarray, ...]:
    r, oc = prim.size[0], o - prim.center
    a, b = (d * d).sum(axis=-1), d @ oc
    disc = b * b - a * (oc @ oc - r * r)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    t = np.where((disc > 0) & (t > _EPS), t, np.inf)
    local = oc + np.where(np.isfinite(t), t, 0.0)[..., None] * d
    return t, local / r, local, np.zeros(t.shape, dtype=np.int64)


def _hit_cylinder(o: np.ndarray, d: np.ndarray, prim: Prim) -> tuple[np.ndarray, ...]:
    """Vertical cylinder: side (face 0), top cap (1), bottom cap (2)."""
    r, height, oc = prim.size[0], prim.size[2], o - prim.center
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    a, b = dx * dx + dy * dy, dx * oc[0] + dy * oc[1]
    disc = b * b - a * (oc[0] ** 2 + oc[1] ** 2 - r * r)
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = (-b - np.sqrt(disc)) / a
        zs = oc[2] + ts * dz
        ts = np.where((disc > 0) & (ts > _EPS) & (zs >= 0) & (zs <= height), ts, np.inf)
        tt, tb = (height - oc[2]) / dz, -oc[2] / dz
    caps = []
    for tc in (tt, tb):
        inside = (oc[0] + tc * dx) ** 2 + (oc[1] + tc * dy) ** 2 <= r * r
        caps.append(np.where(inside & (tc > _EPS), tc, np.inf))
    stack = np.stack([ts, *caps])
    face = stack.argmin(axis=0)
    t = stack.min(axis=0)
    local = oc + np.where(np.isfinite(t), t, 0.0)[..., None] * d
    normal = np.where((face == 0)[..., None], local * [1 / r, 1 / r, 0], 0.0)
    normal[..., 2] = np.where(face == 1, 1.0, np.where(face == 2, -1.0, 0.0))
    return t, normal, local, face


_HIT = {"box": _hit_box, "sphere": _hit_sphere, "cylinder": _hit_cylinder}


def _screen_box(prim: Prim, scene: Scene, k: np.ndarray, size: tuple[int, int]) -> tuple[slice, slice]:
    """A conservative pixel rectangle covering the prim (its projected bounding-box corners)."""
    h, w = size
    pc = (prim.corners() - scene.position) @ scene.rotation.T
    if np.any(pc[:, 2] < 0.05):
        return slice(0, h), slice(0, w)
    uv = pc[:, :2] / pc[:, 2:] * k[0, 0] + k[:2, 2]
    u0, v0 = np.floor(uv.min(axis=0)).astype(int) - 1
    u1, v1 = np.ceil(uv.max(axis=0)).astype(int) + 2
    return slice(max(v0, 0), max(min(v1, h), 0)), slice(max(u0, 0), max(min(u1, w), 0))


def render(scene: Scene, size: tuple[int, int], noise_rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Ray-cast ``scene`` at ``size = (H, W)``; see :func:`render_scene` for the outputs."""
    h, w = size
    k = camera_intrinsics(size)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1)
    d, o = cam @ scene.rotation, scene.position  # world rays with camera z = 1: t is z-depth
    # The room, seen from inside: the nearest exit plane.
    with np.errstate(divide="ignore", invalid="ignore"):
        t_axes = (np.where(d > 0, scene.hi, scene.lo) - o) / d
    axis = np.nan_to_num(t_axes, nan=np.inf).argmin(axis=-1)
    depth = np.take_along_axis(t_axes, axis[..., None], axis=-1)[..., 0]
    positive = np.take_along_axis(d, axis[..., None], axis=-1)[..., 0] > 0
    normal = -np.eye(3)[axis] * np.where(positive, 1.0, -1.0)[..., None]
    local = o + depth[..., None] * d
    face = axis * 2 + positive  # 0..3 walls (x0, x1, y0, y1), 4 floor, 5 ceiling
    inst = np.zeros(size, dtype=np.int64)
    for i, prim in enumerate(scene.prims, start=1):
        rows, cols = _screen_box(prim, scene, k, size)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        t, n, p, f = _HIT[prim.kind](o, d[rows, cols], prim)
        m = t < depth[rows, cols]
        for buf, val in ((depth, t), (normal, n), (local, p), (face, f)):
            buf[rows, cols][m] = val[m]
        inst[rows, cols][m] = i
    # Classes, albedo and Lambertian shading.
    room_cls = np.array([WALL, WALL, WALL, WALL, FLOOR, CEILING])
    seg = np.where(inst == 0, room_cls[np.minimum(face, 5)], 0)
    albedo = np.empty((h, w, 3))
    for f in range(6):
        m = (inst == 0) & (face == f)
        albedo[m] = scene.room[f].albedo(local[m])
    for i, prim in enumerate(scene.prims, start=1):
        m = inst == i
        seg[m] = prim.cls
        albedo[m] = prim.material.albedo(local[m])
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    points = o + depth[..., None] * d
    li = scene.light
    to_lamp = li["lamp_pos"] - points
    dist = np.linalg.norm(to_lamp, axis=-1, keepdims=True)
    lamp = np.clip((normal * to_lamp).sum(-1, keepdims=True) / dist, 0, None)
    lamp /= 1 + (dist / li["lamp_range"]) ** 2
    sun = np.clip(normal @ li["sun_dir"], 0, None)[..., None]
    light = li["ambient"] + sun * li["sun"] + lamp * li["lamp"]
    image = np.clip(albedo * light * li["exposure"], 0.0, 1.0) ** (1 / 2.2)
    image = np.clip(image + noise_rng.normal(0.0, li["noise"], image.shape), 0.0, 1.0)
    ncam = normal @ scene.rotation.T
    ncam *= np.where((ncam * cam).sum(-1, keepdims=True) > 0, -1.0, 1.0)  # face the camera
    return {
        "image": image.astype(np.float32),
        "seg": seg.astype(np.int64),
        "depth": depth.astype(np.float32),
        "normal": ncam.astype(np.float32),
        "instance": inst,
        "surface": inst * FACES + face,
        "K": k,
    }


def render_scene(seed: SeedLike, size: tuple[int, int] = DEFAULT_SIZE) -> dict[str, np.ndarray]:
    """Render the scene of ``seed`` (an int, a tuple of ints, a SeedSequence or a Generator).

    Returns ``image`` (H, W, 3) float32 in [0, 1], ``seg`` (H, W) int64 class ids
    (:data:`CLASS_NAMES`), ``depth`` (H, W) float32 camera-z in metres, ``normal`` (H, W, 3)
    float32 unit normals in camera coordinates (x right, y down, z forward) facing the camera,
    plus ``instance`` (H, W) int64 (0 = room, k = k-th object), ``surface`` (H, W) int64
    (``instance * FACES + face``: one id per planar face or smooth patch) and ``K`` (3, 3).
    The scene is drawn before the pixel noise, so it does not depend on ``size``.
    """
    if isinstance(seed, np.random.Generator):
        scene = sample_scene(seed)
        noise_rng = np.random.default_rng(int(seed.integers(2**63)))
    else:
        ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        scene_ss, noise_ss = ss.spawn(2)
        scene, noise_rng = sample_scene(np.random.default_rng(scene_ss)), np.random.default_rng(noise_ss)
    return render(scene, (int(size[0]), int(size[1])), noise_rng)
