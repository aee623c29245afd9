"""Shape library and numpy rasteriser for the embedded world.

Every shape is an implicit membership test ``inside(x, y) -> bool array`` in a
canonical unit frame: the shape fits inside the unit disc and roughly fills it,
so a shape rendered with radius ``R`` has a diameter of about ``2 R`` pixels.
:func:`rasterize` maps the pixels of a bounding window into that frame
(translation, rotation, anisotropic scale) and evaluates the test on a
supersampled grid, returning an anti-aliased coverage (alpha) map for the
window only, so the cost of an object scales with its own area.

``SHAPES`` is ordered: the first ``NUM_DETECTION_SHAPES`` names are the
detection categories, the full list is the classification label space.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------- primitives
def polygon(vertices) -> Inside:
    """Even-odd point-in-polygon test for a simple polygon given as ``[(x, y), ...]``."""
    edges = []
    pts = [(float(x), float(y)) for x, y in vertices]
    for (xa, ya), (xb, yb) in zip(pts, pts[1:] + pts[:1]):
        if ya != yb:  # horizontal edges never cross a horizontal ray
            edges.append((xa, ya, yb, (xb - xa) / (yb - ya)))

    def inside(x, y):
        res = np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
        for xa, ya, yb, slope in edges:
            res ^= ((ya > y) != (yb > y)) & (x < xa + slope * (y - ya))
        return res

    return inside


def regular_vertices(n: int, radius: float = 1.0, phase_deg: float = -90.0):
    """Vertices of a regular ``n``-gon; the default phase puts a vertex at the top (-y)."""
    ph = math.radians(phase_deg)
    return [(radius * math.cos(ph + 2 * math.pi * k / n), radius * math.sin(ph + 2 * math.pi * k / n))
            for k in range(n)]


def star_vertices(points: int, inner: float, outer: float = 1.0):
    """Vertices of a ``points``-pointed star with the given inner/outer radii."""
    verts = []
    for k in range(2 * points):
        r = outer if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / points
        verts.append((r * math.cos(a), r * math.sin(a)))
    return verts


def disk(cx: float, cy: float, r: float) -> Inside:
    """Filled disc."""
    return lambda x, y: (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def rect(x0: float, y0: float, x1: float, y1: float) -> Inside:
    """Axis-aligned filled rectangle."""
    return lambda x, y: (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def union(*parts: Inside) -> Inside:
    """Union of shapes."""
    def inside(x, y):
        res = parts[0](x, y)
        for p in parts[1:]:
            res = res | p(x, y)
        return res
    return inside


def minus(a: Inside, b: Inside) -> Inside:
    """Shape ``a`` with ``b`` cut out."""
    return lambda x, y: a(x, y) & ~b(x, y)


def annulus(r_in: float, r_out: float = 1.0) -> Inside:
    """Ring centred at the origin."""
    return lambda x, y: ((x * x + y * y) <= r_out * r_out) & ((x * x + y * y) >= r_in * r_in)


def blob(radii_fn) -> Inside:
    """Star-shaped region ``r <= radii_fn(angle)`` around the origin."""
    return lambda x, y: np.hypot(x, y) <= radii_fn(np.arctan2(y, x))


# --------------------------------------------------------------------- shapes
def _heart() -> Inside:
    # Two lobes plus the two tangent lines from the bottom apex (image y points down).
    r, dx, dy, apex = 0.42, 0.42, -0.38, 0.97
    verts = []
    for sgn in (-1.0, 1.0):
        base = math.atan2(dy - apex, sgn * dx)
        d = math.hypot(sgn * dx, dy - apex)
        a = base + sgn * math.asin(r / d)
        t = math.sqrt(d * d - r * r)
        verts.append((t * math.cos(a), apex + t * math.sin(a)))
    left, right = verts
    return union(disk(-dx, dy, r), disk(dx, dy, r),
                 polygon([(0.0, apex), left, (-dx, dy), (dx, dy), right]))


def _teardrop() -> Inside:
    cy, r = 0.36, 0.62
    d = cy + 1.0
    th = math.acos(r / d)
    tx, ty = r * math.sin(th), cy - r * math.cos(th)
    return union(disk(0, cy, r), polygon([(0, -1.0), (tx, ty), (-tx, ty)]))


def _gear(x, y):
    r = np.hypot(x, y)
    ang = np.mod(np.arctan2(y, x), math.pi / 4) - math.pi / 8
    tooth = np.abs(ang) < math.radians(9)
    return ((r <= 0.7) | ((r <= 0.98) & tooth)) & (r >= 0.3)


def _pacman(x, y):
    return (x * x + y * y <= 1.0) & ~((x > 0) & (np.abs(y) < x * math.tan(math.radians(45))))


def _arrow(double: bool) -> Inside:
    if double:
        return polygon([(-0.97, 0), (-0.35, -0.55), (-0.35, -0.2), (0.35, -0.2), (0.35, -0.55), (0.97, 0),
                        (0.35, 0.55), (0.35, 0.2), (-0.35, 0.2), (-0.35, 0.55)])
    return polygon([(-0.97, -0.2), (0.15, -0.2), (0.15, -0.6), (0.98, 0), (0.15, 0.6), (0.15, 0.2), (-0.97, 0.2)])


_SQ = 0.70  # half-side of a square inscribed in the unit disc (slightly inside)
_BAR = 0.36  # bar thickness of the letter-like shapes (in half-side units of the square)

SHAPES: dict[str, Inside] = {
    # --- detection categories (also the first classification categories) ---
    "circle": disk(0, 0, 1.0),
    "triangle": polygon(regular_vertices(3, 1.0)),
    "square": rect(-_SQ, -_SQ, _SQ, _SQ),
    "star": polygon(star_vertices(5, 0.45)),
    "cross": union(rect(-0.3, -0.95, 0.3, 0.95), rect(-0.95, -0.3, 0.95, 0.3)),
    "ring": annulus(0.58),
    "crescent": minus(disk(0, 0, 1.0), disk(0.42, -0.05, 0.8)),
    "arrow": _arrow(double=False),
    "heart": _heart(),
    "l_shape": union(rect(-_SQ, -_SQ, -_SQ + _BAR * 1.3, _SQ), rect(-_SQ, _SQ - _BAR * 1.3, _SQ, _SQ)),
    # --- classification-only categories ---
    "pentagon": polygon(regular_vertices(5, 1.0)),
    "star4": polygon(star_vertices(4, 0.38)),
    "star6": polygon(star_vertices(6, 0.55)),
    "star8": polygon(star_vertices(8, 0.62)),
    "hollow_square": minus(rect(-_SQ, -_SQ, _SQ, _SQ), rect(-0.42, -0.42, 0.42, 0.42)),
    "hollow_triangle": minus(polygon(regular_vertices(3, 1.0)), polygon(regular_vertices(3, 0.5))),
    "u_shape": union(rect(-_SQ, -_SQ, -_SQ + _BAR, _SQ), rect(_SQ - _BAR, -_SQ, _SQ, _SQ),
                     rect(-_SQ, _SQ - _BAR, _SQ, _SQ)),
    "h_shape": union(rect(-_SQ, -_SQ, -_SQ + _BAR, _SQ), rect(_SQ - _BAR, -_SQ, _SQ, _SQ),
                     rect(-_SQ, -_BAR / 2, _SQ, _BAR / 2)),
    "z_shape": union(rect(-_SQ, -_SQ, _SQ, -_SQ + 0.28), rect(-_SQ, _SQ - 0.28, _SQ, _SQ),
                     polygon([(_SQ - 0.5, -_SQ + 0.28), (_SQ, -_SQ + 0.28),
                              (-_SQ + 0.5, _SQ - 0.28), (-_SQ, _SQ - 0.28)])),
    "t_shape": union(rect(-_SQ, -_SQ, _SQ, -_SQ + _BAR), rect(-_BAR / 2, -_SQ, _BAR / 2, _SQ)),
    "e_shape": union(rect(-_SQ, -_SQ, -_SQ + _BAR, _SQ), rect(-_SQ, -_SQ, _SQ, -_SQ + 0.3),
                     rect(-_SQ, -0.15, _SQ, 0.15), rect(-_SQ, _SQ - 0.3, _SQ, _SQ)),
    "hourglass": polygon([(-_SQ, -_SQ), (_SQ, -_SQ), (0.12, 0), (_SQ, _SQ), (-_SQ, _SQ), (-0.12, 0)]),
    "semicircle": lambda x, y: (x * x + y * y <= 1.0) & (y >= 0),
    "trapezoid": polygon([(-0.92, 0.4), (0.92, 0.4), (0.42, -0.6), (-0.42, -0.6)]),
    "parallelogram": polygon([(-0.95, 0.3), (0.35, 0.3), (0.95, -0.3), (-0.35, -0.3)]),
    "double_circle": union(disk(-0.5, 0, 0.5), disk(0.5, 0, 0.5)),
    "chevron": polygon([(-0.6, -0.8), (-0.1, -0.8), (0.62, 0), (-0.1, 0.8), (-0.6, 0.8), (0.12, 0)]),
    "keyhole": union(disk(0, -0.38, 0.5), polygon([(-0.16, -0.1), (0.16, -0.1), (0.42, 0.88), (-0.42, 0.88)])),
    "ellipse": lambda x, y: x * x + 4.0 * y * y <= 1.0,
    "pacman": _pacman,
    "teardrop": _teardrop(),
    "lightning": polygon([(-0.2, -0.93), (0.35, -0.93), (0.08, -0.2), (0.5, -0.2), (-0.3, 0.94),
                          (-0.06, 0.1), (-0.45, 0.1)]),
    "crown": polygon([(-0.75, 0.6), (0.75, 0.6), (0.88, -0.45), (0.42, -0.02), (0.0, -0.75), (-0.42, -0.02),
                      (-0.88, -0.45)]),
    "arc": lambda x, y: annulus(0.62)(x, y) & (y >= 0),
    "quarter_disc": lambda x, y: (x >= -0.45) & (y >= -0.45) & ((x + 0.45) ** 2 + (y + 0.45) ** 2 <= 1.33 ** 2),
    "double_arrow": _arrow(double=True),
    "target": union(disk(0, 0, 0.34), annulus(0.66)),
    "gear": _gear,
    "trefoil": union(*(disk(0.5 * math.cos(a), 0.5 * math.sin(a), 0.48)
                       for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6))),
    "y_shape": union(*(polygon([(0.17 * math.cos(a + math.pi / 2), 0.17 * math.sin(a + math.pi / 2)),
                                (0.98 * math.cos(a) + 0.17 * math.cos(a + math.pi / 2),
                                 0.98 * math.sin(a) + 0.17 * math.sin(a + math.pi / 2)),
                                (0.98 * math.cos(a) - 0.17 * math.cos(a + math.pi / 2),
                                 0.98 * math.sin(a) - 0.17 * math.sin(a + math.pi / 2)),
                                (-0.17 * math.cos(a + math.pi / 2), -0.17 * math.sin(a + math.pi / 2))])
                       for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6))),
}

SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)
NUM_DETECTION_SHAPES = 10


# ----------------------------------------------------------------- rasteriser
def rasterize(inside: Inside, cx: float, cy: float, radius: float, aspect: float, angle: float,
              height: int, width: int, supersample: int = 2):
    """Rasterise a unit-frame shape into an image of size ``height x width``.

    The shape is scaled by ``radius * sqrt(aspect)`` along its x axis and
    ``radius / sqrt(aspect)`` along its y axis, rotated by ``angle`` (radians)
    and centred at pixel coordinates ``(cx, cy)`` (pixel ``(i, j)`` covers
    ``[j, j+1) x [i, i+1)``). Only the bounding window is evaluated, on a
    ``supersample x supersample`` grid per pixel.

    Returns ``(y0, x0, alpha)`` where ``alpha`` is the float32 coverage of the
    window ``[y0:y0+h, x0:x0+w]``, or ``None`` if the window is off-image.
    """
    sa = math.sqrt(aspect)
    ext = radius * max(sa, 1.0 / sa) + 1.0
    x0, x1 = max(0, int(math.floor(cx - ext))), min(width, int(math.ceil(cx + ext)))
    y0, y1 = max(0, int(math.floor(cy - ext))), min(height, int(math.ceil(cy + ext)))
    if x1 <= x0 or y1 <= y0:
        return None
    s = supersample
    offs = (np.arange(s, dtype=np.float32) + 0.5) / s
    xs = (np.arange(x0, x1, dtype=np.float32)[:, None] + offs).ravel() - np.float32(cx)
    ys = (np.arange(y0, y1, dtype=np.float32)[:, None] + offs).ravel() - np.float32(cy)
    c, sn = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    kx, ky = np.float32(1.0 / (radius * sa)), np.float32(sa / radius)
    xg, yg = xs[None, :], ys[:, None]
    u = (c * xg + sn * yg) * kx
    v = (c * yg - sn * xg) * ky
    cov = inside(u, v)
    alpha = cov.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3), dtype=np.float32)
    return y0, x0, alpha
