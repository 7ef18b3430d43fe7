"""Free-space grids shared by every scene: a graph over free cells, geodesic distance, shortest paths.

A scene whose physics can be rasterised (MiniWorld's walls, or a recorded world's occupancy
grid) hands its grid to a :class:`FreeSpace`, which joins free cells into a 16-connected graph
(no corner cutting) and runs Dijkstra over it. The functions below answer the
:class:`~rtfm_env.scenes.base.Scene` queries from that graph, so every grid-based scene measures
distances, plans paths and draws goals the same way:

* :func:`geodesic_distance`: exactly Euclidean where the straight segment crosses only free
  cells, else the grid distance (never below the Euclidean one);
* :func:`shortest_path`: the grid path, shortened greedily by line of sight;
* :func:`sample_goal`: a cell reachable from the start at a geodesic distance in a range, drawn
  from the start's distance field (optionally among allowed cells only).

Cell (i, j) covers world x in [origin_x + j*cell, +cell) and z in [origin_z + i*cell, +cell)
(:class:`~rtfm_env.scenes.base.TopDownMap`'s convention).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

__all__ = [
    "FreeSpace",
    "FIELD_CACHE_SIZE",
    "check_xz",
    "check_rng",
    "through_grid",
    "geodesic_distance",
    "shortest_path",
    "sample_goal",
]

FIELD_CACHE_SIZE = 16  # distance fields (one per goal cell) kept per grid

#: Grid moves (d_row, d_col) and the cells the straight line between the two cell centres
#: passes through; a move is allowed only where those are free too, so paths never cut corners.
#: Knight moves make the grid 16-connected: distances err by at most ~2.7% instead of 8.2%.
_MOVES: tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...] = (
    (0, 1, ()),
    (1, 0, ()),
    (1, 1, ((0, 1), (1, 0))),
    (1, -1, ((0, -1), (1, 0))),
    (1, 2, ((0, 1), (1, 1))),
    (2, 1, ((1, 0), (1, 1))),
    (1, -2, ((0, -1), (1, -1))),
    (2, -1, ((1, 0), (1, -1))),
)


class FreeSpace:
    """A free-space grid with a 16-connected graph over its free cells and cached distance fields.

    Args:
        free: (rows, cols) bool, True where the robot's centre may stand.
        origin_x: metres, world x of the grid's corner.
        origin_z: metres, world z of the grid's corner.
        cell: metres per cell.
    """

    def __init__(self, free: np.ndarray, origin_x: float, origin_z: float, cell: float) -> None:
        self.free = free
        self.origin_x, self.origin_z, self.cell = origin_x, origin_z, cell
        self.node = np.full(free.shape, -1, dtype=np.int64)
        self.num_nodes = int(free.sum())
        self.node[free] = np.arange(self.num_nodes)
        self.node_row, self.node_col = np.nonzero(free)
        if self.num_nodes:
            # For every cell, the index of the nearest free cell: points in walls snap there.
            _, self.nearest = ndimage.distance_transform_edt(~free, return_indices=True)
        self.graph = self._build_graph()
        self._fields: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _build_graph(self) -> sparse.csr_matrix:
        rows, cols = self.free.shape
        pad = 2
        free_p = np.pad(self.free, pad, constant_values=False)
        node_p = np.pad(self.node, pad, constant_values=-1)

        def shifted(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
            return a[pad + dr : pad + dr + rows, pad + dc : pad + dc + cols]

        src, dst, weight = [], [], []
        for dr, dc, via in _MOVES:
            ok = self.free & shifted(free_p, dr, dc)
            for vr, vc in via:
                ok &= shifted(free_p, vr, vc)
            src.append(self.node[ok])
            dst.append(shifted(node_p, dr, dc)[ok])
            weight.append(np.full(int(ok.sum()), self.cell * math.hypot(dr, dc)))
        n = self.num_nodes
        return sparse.csr_matrix((np.concatenate(weight), (np.concatenate(src), np.concatenate(dst))), shape=(n, n))

    def snap(self, xz: np.ndarray) -> int | None:
        """Graph node of the free cell containing ``xz``, or of the nearest free cell; None if none is free."""
        if not self.num_nodes:
            return None
        rows, cols = self.free.shape
        r = min(max(int(math.floor((xz[1] - self.origin_z) / self.cell)), 0), rows - 1)
        c = min(max(int(math.floor((xz[0] - self.origin_x) / self.cell)), 0), cols - 1)
        if not self.free[r, c]:
            r, c = int(self.nearest[0, r, c]), int(self.nearest[1, r, c])
        return int(self.node[r, c])

    def centre(self, node: int | np.ndarray) -> np.ndarray:
        """World (x, z) of the centre of node(s): (2,) or (N, 2)."""
        x = self.origin_x + (self.node_col[node] + 0.5) * self.cell
        z = self.origin_z + (self.node_row[node] + 0.5) * self.cell
        return np.stack([x, z], axis=-1).astype(np.float64)

    def cell_is_free(self, xz: np.ndarray) -> np.ndarray:
        """Whether the cells containing points (N, 2) are free (False outside the grid)."""
        c = np.floor((xz[:, 0] - self.origin_x) / self.cell).astype(np.int64)
        r = np.floor((xz[:, 1] - self.origin_z) / self.cell).astype(np.int64)
        rows, cols = self.free.shape
        ok = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        out = np.zeros(len(xz), dtype=bool)
        out[ok] = self.free[r[ok], c[ok]]
        return out

    def line_of_sight(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether every cell the straight segment a-b passes through is free.

        Exact: the segment is cut where it crosses grid lines, and the midpoint of every piece
        lies in exactly one of the cells it visits.
        """
        ga = (np.asarray(a, dtype=np.float64) - (self.origin_x, self.origin_z)) / self.cell
        gb = (np.asarray(b, dtype=np.float64) - (self.origin_x, self.origin_z)) / self.cell
        cuts = [np.array([0.0, 1.0])]
        for axis in (0, 1):
            lo, hi = sorted((ga[axis], gb[axis]))
            lines = np.arange(math.floor(lo) + 1, math.ceil(hi))
            if len(lines):
                cuts.append((lines - ga[axis]) / (gb[axis] - ga[axis]))
        t = np.unique(np.concatenate(cuts))
        t = np.concatenate([[0.0], 0.5 * (t[:-1] + t[1:]), [1.0]])[:, None]
        pts = ga + t * (gb - ga)
        cells = (pts * self.cell) + (self.origin_x, self.origin_z)
        return bool(self.cell_is_free(cells).all())

    def field(self, goal: int) -> tuple[np.ndarray, np.ndarray]:
        """Distances (metres) from every node to ``goal`` and each node's next node towards it."""
        if goal in self._fields:
            self._fields.move_to_end(goal)
            return self._fields[goal]
        dist, pred = csgraph.dijkstra(self.graph, directed=False, indices=goal, return_predecessors=True)
        self._fields[goal] = (dist, pred)
        if len(self._fields) > FIELD_CACHE_SIZE:
            self._fields.popitem(last=False)
        return dist, pred

    def path(self, start: int, goal: int) -> list[int] | None:
        """Nodes from ``start`` to ``goal`` along the graph, or None if unreachable."""
        dist, pred = self.field(goal)
        if not np.isfinite(dist[start]):
            return None
        nodes = [start]
        while nodes[-1] != goal:
            nodes.append(int(pred[nodes[-1]]))
        return nodes


# --------------------------------------------------------------------------------------
# Checks shared by the scenes
# --------------------------------------------------------------------------------------


def check_xz(p: np.ndarray, name: str) -> np.ndarray:
    """``p`` as a finite floor point (x, z) of shape (2,), float64; ValueError otherwise."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape != (2,):
        raise ValueError(f"{name} must be a floor point (x, z) of shape (2,), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values: {arr.tolist()}")
    return arr


def check_rng(rng: np.random.Generator) -> np.random.Generator:
    """``rng`` if it is a numpy Generator; TypeError otherwise."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def through_grid(a: np.ndarray, b: np.ndarray, grid_distance: float) -> float:
    """Geodesic distance between points without a clear straight line, from their cells' grid distance.

    Points in one cell (or off-centre in theirs) can be farther apart than their cell centres'
    grid distance; a path is never shorter than the straight line.
    """
    if not math.isfinite(grid_distance):
        return math.inf
    return max(float(grid_distance), float(np.hypot(*(b - a))))


# --------------------------------------------------------------------------------------
# Scene queries answered from a grid
# --------------------------------------------------------------------------------------


def geodesic_distance(fs: FreeSpace, a: np.ndarray, b: np.ndarray) -> float:
    """Shortest free-space path length in metres between floor points (x, z); inf if none.

    Exactly the Euclidean distance where the straight segment crosses only free cells;
    otherwise the 16-connected grid distance between the points' cells (never below the
    Euclidean distance). Points in occupied cells use the nearest free cell. The distance
    field of each goal cell is cached, so repeated queries to one goal cost O(1).
    """
    a, b = check_xz(a, "a"), check_xz(b, "b")
    na, nb = fs.snap(a), fs.snap(b)
    if na is None or nb is None:
        return math.inf
    if fs.line_of_sight(a, b):
        return float(np.hypot(*(b - a)))
    return through_grid(a, b, float(fs.field(nb)[0][na]))


def shortest_path(fs: FreeSpace, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Waypoints (N, 2) of floor points (x, z) from ``a`` to ``b``; (0, 2) if unreachable.

    The grid path is shortened greedily: a waypoint is dropped while the segment from the
    previous kept one to the next crosses only free cells. Endpoints in occupied cells are
    replaced by the nearest free cell's centre.
    """
    a, b = check_xz(a, "a"), check_xz(b, "b")
    na, nb = fs.snap(a), fs.snap(b)
    if na is None or nb is None:
        return np.zeros((0, 2))
    nodes = fs.path(na, nb)
    if nodes is None:
        return np.zeros((0, 2))
    points = fs.centre(np.asarray(nodes if len(nodes) > 1 else nodes * 2))
    if fs.cell_is_free(a[None])[0]:
        points[0] = a
    if fs.cell_is_free(b[None])[0]:
        points[-1] = b
    kept = [points[0]]
    for i in range(1, len(points) - 1):
        if not fs.line_of_sight(kept[-1], points[i + 1]):
            kept.append(points[i])
    kept.append(points[-1])
    return np.stack(kept)


def sample_goal(
    fs: FreeSpace,
    rng: np.random.Generator,
    start_xz: np.ndarray,
    min_d: float,
    max_d: float,
    tries: int,
    where: str,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """A free cell centre (x, z) reachable from ``start_xz`` at geodesic distance in [min_d, max_d].

    Candidates come straight from the start's distance field (one Dijkstra), so there is no
    rejection sampling over the whole floor; ``tries`` candidates at most are checked against
    :func:`geodesic_distance`. Where the grid has no point in range the range is clipped to what
    it allows: the goal is drawn from the reachable cells whose distance is nearest the range
    (e.g. the farthest ones when all reachable space is closer than ``min_d``).

    Args:
        fs: the grid.
        rng: the generator to draw from.
        start_xz: the start floor point (x, z).
        min_d: metres, the least geodesic distance wanted.
        max_d: metres, the largest geodesic distance wanted.
        tries: candidates checked at most.
        where: what the grid belongs to, for error messages (a scene's repr).
        allowed: (num_nodes,) bool, the nodes a goal may be drawn from; None allows all.

    Raises:
        ValueError: a bad range or start point.
        RuntimeError: no allowed free point other than the start is reachable.
    """
    rng = check_rng(rng)
    start = check_xz(start_xz, "start_xz")
    min_d, max_d = float(min_d), float(max_d)
    if not (math.isfinite(min_d) and math.isfinite(max_d) and 0.0 <= min_d <= max_d):
        raise ValueError(f"need finite 0 <= min_d <= max_d, got min_d={min_d}, max_d={max_d}")
    ns = fs.snap(start)
    dist = fs.field(ns)[0] if ns is not None else np.zeros(0)
    reachable = np.isfinite(dist) & (dist > 0.0)
    if allowed is not None and len(dist):
        reachable &= allowed
    if not reachable.any():
        raise RuntimeError(f"no free point is reachable from {start.tolist()} in {where}")
    gap = np.maximum(np.maximum(min_d - dist, dist - max_d), 0.0)
    best = float(gap[reachable].min())
    candidates = np.flatnonzero(reachable & (gap <= best + fs.cell))
    # The grid distance of a candidate and geodesic_distance (exact where the way is straight)
    # differ by up to a few percent, so keep the draw whose geodesic distance fits best.
    goal, goal_gap = fs.centre(int(candidates[0])), math.inf
    for _ in range(max(1, int(tries))):
        node = int(rng.choice(candidates))
        g = fs.centre(node)
        # geodesic_distance(start, g) without a new field: the graph is undirected.
        d = float(np.hypot(*(g - start))) if fs.line_of_sight(start, g) else through_grid(start, g, dist[node])
        g_gap = max(min_d - d, d - max_d, 0.0)
        if g_gap < goal_gap:
            goal, goal_gap = g, g_gap
        if goal_gap <= best:
            break
    return goal
