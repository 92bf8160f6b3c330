"""Prepared artifacts of a network: what serving derives from it, built once and saved.

A network's derived artifacts are the CCH node order (``routingkit-cch`` cannot save a
contraction, only take an order, so each router process contracts again from it; about
0.2 s on New York) and the spatial index (:func:`graph.spatial.save_spatial_index`, mapped
read-only by every process that loads it). They live in one *artifact directory* per
network file, named by :func:`artifacts_dir`: ``NET.prepared/`` beside the network when that
folder is writable, else ``<data dir>/prepared/<file name>/``. Inside it every file is keyed
by the network's content version, and a ``prepared-<version>.json`` manifest records the
artifact-format version :data:`ARTIFACT_FORMAT_VERSION`:

    NET.prepared/
        prepared-<version>.json          format, format_version, network_version, files
        cch-order-<version>-node.npy     (``-turn`` for a turn-expanded network)
        spatial-<version>.idx            the spatial index (aligned, uncompressed ZIP)

:func:`prepare_artifacts` builds whatever is missing or stale (a manifest of another
format version, a file that does not load or does not match the network) and logs a
warning for each rebuild; :func:`prepared_indexes` returns the spatial index and CCH index,
loading them when present and building and saving them when absent. ``traffic network
prepare`` and ``traffic serve`` call these.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graph.network import RoadNetwork
from graph.spatial import SpatialIndex, build_spatial_index, load_spatial_index, save_spatial_index
from storage import write_atomic

log = logging.getLogger(__name__)

#: Name written into each manifest.
ARTIFACT_FORMAT = "traffic-prepared-network"
#: Version of the artifact set; bump when an artifact's layout or meaning changes.
ARTIFACT_FORMAT_VERSION = 1

#: ``progress(stage, fraction)`` as in :mod:`graph.io`.
ProgressCallback = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class PreparedFiles:
    """Where one network version's artifacts are (or go) in an artifact directory."""

    directory: Path
    network_version: str
    mode: str  # "node" or "turn": the routing graph the CCH order is for

    @property
    def manifest(self) -> Path:
        """The manifest file."""
        return self.directory / f"prepared-{self.network_version}.json"

    @property
    def cch_order(self) -> Path:
        """The CCH node order (the name :func:`graph.cch.prepare_cch` reads and writes)."""
        return self.directory / f"cch-order-{self.network_version}-{self.mode}.npy"

    @property
    def spatial(self) -> Path:
        """The spatial index."""
        return self.directory / f"spatial-{self.network_version}.idx"


def artifacts_dir(network_path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None) -> Path:
    """The artifact directory of a network file: ``NET.prepared`` beside it when its folder
    is writable (or that directory exists and is writable), else
    ``<data_dir>/prepared/<file name>``.

    Raises ``ValueError`` when neither is possible (a read-only folder and no ``data_dir``).
    """
    path = Path(network_path)
    beside = path.with_name(path.name + ".prepared")
    if (beside.is_dir() and os.access(beside, os.W_OK)) or (
            not beside.exists() and os.access(path.parent, os.W_OK)):
        return beside
    if data_dir is None:
        raise ValueError(f"{path.parent} is not writable and no --data-dir was given for the "
                         "prepared artifacts")
    return Path(data_dir) / "prepared" / path.name


def prepared_files(net: RoadNetwork, directory: str | os.PathLike[str]) -> PreparedFiles:
    """The artifact paths for ``net`` in ``directory``."""
    from graph.network import banned_turns

    turn = banned_turns(net)[0].size > 0 if net.turn_kind.size else False
    return PreparedFiles(Path(directory), net.version, "turn" if turn else "node")


def artifact_status(net: RoadNetwork, directory: str | os.PathLike[str]) -> dict[str, str]:
    """What :func:`prepare_artifacts` would do per artifact: ``"ok"``, ``"missing"`` or why
    it is stale. Loads the manifest, the order and the (mapped) spatial index's header."""
    files = prepared_files(net, directory)
    manifest = _read_manifest(files)
    status = {}
    for name, path, check in (("cch_order", files.cch_order, _order_or_none),
                              ("spatial", files.spatial, _spatial_or_none)):
        if not path.exists():
            status[name] = "missing"
        elif manifest not in (None, "ok"):
            status[name] = str(manifest)
        elif check(files, net) is None:
            status[name] = "unreadable or not this network's"
        else:
            status[name] = "ok"
    return status


def prepare_artifacts(
    net: RoadNetwork, directory: str | os.PathLike[str], *, force: bool = False,
    progress: ProgressCallback | None = None, only: tuple[str, ...] = ("cch_order", "spatial"),
) -> dict[str, float]:
    """Build and save every artifact of ``net`` that is missing or stale in ``directory``.

    A stale artifact (manifest of another format version, or a file that does not load or
    does not fit the network) is rebuilt with a logged warning, never used. Returns the
    seconds spent per artifact built (empty when everything was present). ``force``
    rebuilds everything; ``only`` limits the work to some artifacts. The CCH order is the slow step: about 7 s on New York (730k
    edges), linear-ish in the network (inertial flow).
    """
    files = prepared_files(net, directory)
    files.directory.mkdir(parents=True, exist_ok=True)
    status = {k: "forced" for k in ("cch_order", "spatial")} if force else artifact_status(net, directory)
    _note_other_versions(files)
    spent: dict[str, float] = {}
    steps = [k for k, v in status.items() if v != "ok" and k in only]
    for i, name in enumerate(steps):
        why = status[name]
        if why not in ("missing", "forced"):
            log.warning("%s artifact of network %s in %s is stale (%s): rebuilding it",
                        name, net.version, files.directory, why)
        if progress is not None:
            progress(name.replace("_", " "), i / max(len(steps), 1))
        t0 = time.perf_counter()
        if name == "spatial":
            save_spatial_index(build_spatial_index(net), files.spatial)
        else:
            _build_order(net, files)
        spent[name] = time.perf_counter() - t0
    if steps or _read_manifest(files) != "ok":
        _write_manifest(files)
    if progress is not None:
        progress("done", 1.0)
    return spent


def prepared_indexes(
    net: RoadNetwork, directory: str | os.PathLike[str] | None, *, cch: bool = True,
) -> tuple[SpatialIndex, Any]:
    """The spatial index and CCH index of ``net``: loaded (the spatial index mapped
    read-only) from ``directory`` when prepared there, else built, saved and returned.

    ``directory=None`` builds both in memory and saves nothing. With ``cch=False`` the
    second item is ``None`` (a matcher needs no hierarchy).
    """
    if directory is None:
        from graph.cch import prepare_cch

        return build_spatial_index(net), prepare_cch(net) if cch else None
    spatial = spatial_index_for(net, directory)
    if not cch:
        return spatial, None
    return spatial, cch_index_for(net, directory)


def spatial_index_for(net: RoadNetwork, directory: str | os.PathLike[str] | None) -> SpatialIndex:
    """The spatial index of ``net``, mapped from ``directory`` (prepared first when missing
    or stale, with a warning); built in memory when ``directory`` is ``None``."""
    if directory is None:
        return build_spatial_index(net)
    files = prepared_files(net, directory)
    index = _spatial_or_none(files, net) if _read_manifest(files) in (None, "ok") else None
    if index is None:
        log.warning("no prepared spatial index for network %s in %s: building it (run "
                    "`traffic network prepare` to do this once)", net.version, files.directory)
        prepare_artifacts(net, directory, only=("spatial",))
        index = _spatial_or_none(files, net)
    if index is None:  # pragma: no cover - just written
        raise RuntimeError(f"{files.spatial}: the spatial index just written does not load")
    return index


def cch_index_for(net: RoadNetwork, directory: str | os.PathLike[str] | None) -> Any:
    """The CCH index of ``net``, contracted from the order prepared in ``directory``
    (ordered first, with a warning, when missing or stale)."""
    from graph.cch import prepare_cch

    if directory is None:
        return prepare_cch(net)
    files = prepared_files(net, directory)
    if _read_manifest(files) not in (None, "ok") or _order_or_none(files, net) is None:
        log.warning("no prepared CCH order for network %s in %s: ordering it (run "
                    "`traffic network prepare` to do this once)", net.version, files.directory)
        prepare_artifacts(net, directory, only=("cch_order",))
    return prepare_cch(net, cache_dir=files.directory, turn_expanded=files.mode == "turn")


# -- internals ----------------------------------------------------------------------------
def _read_manifest(files: PreparedFiles) -> str | None:
    """``"ok"``, ``None`` (no manifest) or why the manifest does not fit."""
    try:
        manifest = json.loads(files.manifest.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"manifest unreadable: {exc}"
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        return "not a manifest of prepared artifacts"
    if manifest.get("format_version") != ARTIFACT_FORMAT_VERSION:
        return (f"artifact format version {manifest.get('format_version')!r}, this program "
                f"writes version {ARTIFACT_FORMAT_VERSION}")
    if manifest.get("network_version") != files.network_version:
        return f"prepared for network version {manifest.get('network_version')!r}"
    return "ok"


def _write_manifest(files: PreparedFiles) -> None:
    body = {"format": ARTIFACT_FORMAT, "format_version": ARTIFACT_FORMAT_VERSION,
            "network_version": files.network_version,
            "files": {"cch_order": files.cch_order.name, "spatial": files.spatial.name},
            "written_unix_s": time.time()}
    write_atomic(files.manifest, lambda fh: fh.write(json.dumps(body, indent=1).encode()))


def _spatial_or_none(files: PreparedFiles, net: RoadNetwork) -> SpatialIndex | None:
    try:
        index = load_spatial_index(files.spatial)
    except (OSError, ValueError) as exc:
        if files.spatial.exists():
            log.warning("%s does not load: %s", files.spatial, exc)
        return None
    if index.network_version != net.version or (
            index.seg_edge.size and int(index.seg_edge.max(initial=0)) >= net.n_edges):
        log.warning("%s was built for network %s, not %s", files.spatial, index.network_version,
                    net.version)
        return None
    return index


def _order_or_none(files: PreparedFiles, net: RoadNetwork) -> Any:
    from graph.cch import _read_order

    n = net.n_edges if files.mode == "turn" else net.n_nodes
    return _read_order(files.cch_order, n) if files.cch_order.exists() else None


def _build_order(net: RoadNetwork, files: PreparedFiles) -> None:
    import numpy as np
    import routingkit_cch as rk

    from graph.cch import _write_order, routing_graph

    graph = routing_graph(net, turn_expanded=files.mode == "turn")
    order = np.asarray(rk.compute_order_inertial(graph.n_nodes, graph.arc_tail, graph.arc_head,
                                                 graph.node_lat, graph.node_lon), dtype=np.int32)
    _write_order(files.cch_order, order)


def _note_other_versions(files: PreparedFiles) -> None:
    others = sorted({p.name.split("-", 1)[1].rsplit(".", 1)[0]
                     for p in files.directory.glob("prepared-*.json")} - {files.network_version})
    if others:
        log.info("%s also holds artifacts of network version(s) %s (not used for %s)",
                 files.directory, ", ".join(others), files.network_version)
