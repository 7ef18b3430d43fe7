"""The folder a revisit evaluation writes: its settings, its file layout and its JSON.

Both the evaluator (:mod:`rtfm_env.eval.revisit`) and the report (:mod:`rtfm_env.eval.report`)
read these, so they live here and neither of those modules imports the other for them.

An evaluation folder holds:

* ``config.json``: the settings and checkpoint every episode's numbers depend on (``--resume``
  checks them);
* ``episodes/<env>/<n>.json`` (plus an image strip ``<n>.png``): every number of one episode,
  written as soon as it finishes, which is what ``--resume`` reads back;
* ``episodes.tar.xz`` (optional, ``rtfm-env eval report --pack``): the per-episode JSON only,
  compressed, for a folder that is committed without ``episodes/``;
* ``results.json``: a compact summary, enough to rebuild the report: config, checkpoint SHA-256,
  machine, the headline and per-family numbers, curves already aggregated over episodes, and which
  episodes the image strips show. It does not repeat the per-episode records;
* ``report.md``, ``report.html`` and ``plots/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtfm_env.data.shards import atomic_write_bytes
from rtfm_env.eval.trajectories import HEADING_TOL, POSITION_TOL, SUITE_KINDS, SuiteConfig

__all__ = [
    "STRATEGIES",
    "MODEL_STRATEGIES",
    "RESULTS_FORMAT",
    "EPISODE_FORMAT",
    "FORMAT_VERSION",
    "RESULTS_VERSION",
    "CONFIG_FILE",
    "RESULTS_FILE",
    "EPISODES_DIR",
    "EPISODES_ARCHIVE",
    "OUTPUT_NAMES",
    "RevisitConfig",
    "config_hash",
    "dumps",
    "write_json",
    "episode_path",
    "parse_episode",
    "n_episodes",
    "pack_episodes",
    "read_episode_archive",
]

#: Model-camera context strategies compared (see :func:`rtfm_env.cameras.select_context`).
MODEL_STRATEGIES: tuple[str, ...] = ("spatial", "last_k", "first_only", "all")
#: Every strategy the evaluator knows: the model's, and the scene's renderer as the ceiling.
STRATEGIES: tuple[str, ...] = (*MODEL_STRATEGIES, "ground_truth")

RESULTS_FORMAT = "rtfm-revisit-results"
EPISODE_FORMAT = "rtfm-revisit-episode"
# Version of config.json and of the episode records. It enters the config hash that --resume
# compares, so changing it would orphan every saved episode: the compact results.json has its own.
FORMAT_VERSION = 1
#: results.json version: 1 embedded every episode record; 2 is the compact summary.
RESULTS_VERSION = 2
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
EPISODES_DIR = "episodes"
EPISODES_ARCHIVE = "episodes.tar.xz"
#: What an evaluation directory may hold; --overwrite refuses to delete anything else.
OUTPUT_NAMES = frozenset(
    {CONFIG_FILE, RESULTS_FILE, EPISODES_DIR, EPISODES_ARCHIVE, "report.md", "report.html", "plots"}
)


@dataclass
class RevisitConfig:
    """What one evaluation runs. Every field is saved in ``config.json`` and ``results.json``."""

    out: str = "eval_revisit"  # output directory
    checkpoint: str | None = None  # frame-model checkpoint directory; None: the shipped default
    envs: list[str] = field(default_factory=lambda: ["MiniWorld-YMaze-v0", "MiniWorld-WallGap-v0", "MiniWorld-Sign-v0"])
    world: str | None = None  # a saved memory file to evaluate instead of envs (no ground truth)
    episodes: int = 4  # episodes (layouts) per env id, or start poses in a world
    strategies: list[str] | None = None  # subset of STRATEGIES; None: all that apply
    kinds: list[str] = field(default_factory=lambda: list(SUITE_KINDS))  # trajectory families
    k: int = 2  # context views per generated frame (spatial, last_k, first_only)
    # Retrieved views the spatial strategy warps into the target (ModelCamera's warp_k); None:
    # the camera's default (cameras.DEFAULT_WARP_K), recorded in the identity as the value used.
    warp_k: int | None = None
    steps: int | None = None  # sampling steps; None: the checkpoint's default
    memory_capacity: int | None = None  # frames each model camera keeps; None: every frame
    resolution: int = 64  # pixels, square frames (must match the checkpoint)
    seed: int = 0  # base seed of layouts, trajectories and flow noise
    position_tol: float = POSITION_TOL  # metres, revisit tolerance on the camera centre
    heading_tol: float = HEADING_TOL  # degrees, revisit tolerance on the viewing direction
    excursion: int = 100  # out_and_back: steps from the anchor to its revisit
    lead_in: int = 8  # out_and_back: steps before the anchor
    loop_steps: int = 150  # loop: steps
    turn_rotations: int = 3  # turn360: full turns in place
    tour_steps: int = 1000  # tour: steps
    tour_landmarks: int = 4  # tour: landmarks on the chain
    tour_every: int = 1  # the tour runs in every n-th episode, counted across env ids (it is the longest)
    world_radius: float = 0.5  # metres; in a world, the camera stays this close to stored cameras
    device: str | None = None  # torch device; None: CUDA when available, else CPU
    threads: int = 1  # torch CPU threads (0: torch's default); one avoids oversubscribing shared cores
    # Most stored frames the `all` strategy attends to; None: the model's max_context. A larger
    # cap lets `all` show how attending to the whole memory grows in cost.
    all_cap: int | None = None
    # The network's GELU form (FrameModel.from_pretrained): "tanh" as trained, "none" (erf, the
    # bf16 default, within bf16 rounding of tanh and faster); None: the default.
    gelu: str | None = None

    @property
    def suite(self) -> SuiteConfig:
        """The trajectory lengths as a :class:`SuiteConfig`."""
        return SuiteConfig(
            excursion=self.excursion,
            lead_in=self.lead_in,
            loop_steps=self.loop_steps,
            turn_rotations=self.turn_rotations,
            tour_steps=self.tour_steps,
            tour_landmarks=self.tour_landmarks,
        )

    def identity(self) -> dict[str, Any]:
        """The settings every episode's numbers depend on: a resume must not change them.

        ``out``, ``episodes``, ``envs`` and ``threads`` may change (more episodes or env ids
        can be added to a finished evaluation).
        """
        d = asdict(self)
        for key in ("out", "episodes", "envs", "threads"):
            d.pop(key)
        if d["warp_k"] is None:  # recorded as the camera's default, so a later default does not resume it
            from rtfm_env.cameras import default_warp_k

            d["warp_k"] = default_warp_k(self.k)
        if d["all_cap"] is None:
            d.pop("all_cap")  # absent as before the option existed: earlier evaluations still resume
        # Evaluations made before the option ran the trained tanh form: the key is absent for it,
        # so those resume with --gelu tanh, and not with the erf default.
        if (d.pop("gelu") or "none") != "tanh":
            d["gelu"] = "none"
        return d


def config_hash(record: dict) -> str:
    """Hash of what an episode's numbers depend on: the settings and the weights (not their path).

    Args:
        record: the content of ``config.json`` (format, version, identity, checkpoint).
    """
    weights = (record["checkpoint"] or {}).get("sha256")
    key = {"format": record["format"], "version": record["version"], "identity": record["identity"], "weights": weights}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _dumps(obj: Any, indent: int, depth: int) -> str:
    pad = " " * (indent * (depth + 1))
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(str(k))}: {_dumps(v, indent, depth + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * (indent * depth) + "}"
    if isinstance(obj, list | tuple) and obj and not all(_scalar(v) for v in obj):
        items = [pad + _dumps(v, indent, depth + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * (indent * depth) + "]"
    # Lists of numbers (the per-step curves) stay on one line: one line per number would be most of the file.
    return json.dumps(obj, allow_nan=True, separators=(", ", ": "))


def dumps(obj: Any, indent: int = 1) -> str:
    """JSON indented like ``json.dumps(obj, indent=indent)``, but lists of scalars on one line.

    NaN stays ``NaN`` (as :func:`json.dumps` writes it by default), which :func:`json.loads` reads.
    """
    return _dumps(obj, indent, 0) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically with :func:`dumps`, creating the parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, dumps(obj).encode())


def episode_path(out: Path, env: str, episode: int) -> Path:
    """Where episode ``episode`` of ``env`` is saved under the evaluation folder ``out``."""
    safe = env.replace("/", "_").replace(":", "_")
    return out / EPISODES_DIR / safe / f"{episode:04d}.json"


def parse_episode(data: bytes | str, run_hash: str) -> dict | None:
    """A saved episode record, or None when unreadable or written with other settings.

    Args:
        data: the content of an episode's JSON file.
        run_hash: :func:`config_hash` of the evaluation it must belong to.
    """
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.get("format") != EPISODE_FORMAT:
        return None
    if record.get("config_hash") != run_hash:
        return None
    return record


def n_episodes(results: dict) -> int:
    """How many episodes a ``results.json`` summarises (compact, or version 1 with every record)."""
    if "n_episodes" in results:
        return int(results["n_episodes"])
    return len(results.get("episodes", []))


def pack_episodes(out: str | Path) -> Path:
    """Write ``out/episodes.tar.xz``: every per-episode JSON under ``out/episodes`` (no image strips).

    The archive is reproducible (sorted members, no times or owners), so packing the same episodes
    twice gives the same bytes and a committed archive only changes when its numbers do.

    Raises:
        FileNotFoundError: ``out/episodes`` holds no JSON file.
    """
    out = Path(out)
    files = sorted(p for p in (out / EPISODES_DIR).rglob("*.json") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{out / EPISODES_DIR} holds no episode to pack")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", preset=9) as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(out).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    target = out / EPISODES_ARCHIVE
    atomic_write_bytes(target, buf.getvalue())
    return target


def read_episode_archive(out: str | Path) -> dict[str, bytes]:
    """The files in ``out/episodes.tar.xz`` by their path relative to ``out``; empty when there is none."""
    path = Path(out) / EPISODES_ARCHIVE
    if not path.is_file():
        return {}
    found: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:xz") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member) if member.isfile() else None
            if f is not None:
                found[member.name] = f.read()
    return found

