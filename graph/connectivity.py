"""Connectivity of a road network: strongly connected components, and a summary for `info`.

A car network is useful for routing only where every node can reach every other; imports of
city extracts usually leave islands (roads cut at the extract's border, one-way fragments,
private enclaves removed by the profile). These functions measure and remove them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from graph.network import ROAD_CLASSES, RoadNetwork, build_network, network_strings


def strong_components(net: RoadNetwork) -> tuple[int, np.ndarray]:
    """Return ``(count, label)``: the strongly connected components, ``label`` int32[n].

    Uses ``scipy.sparse.csgraph.connected_components(connection="strong")`` on the
    node-adjacency matrix: O(n + m).
    """
    n = net.n_nodes
    if n == 0:
        return 0, np.zeros(0, dtype=np.int32)
    adj = sp.csr_matrix(
        (np.ones(net.n_edges, dtype=np.int8), (net.edge_src, net.edge_dst)), shape=(n, n)
    )
    count, label = connected_components(adj, directed=True, connection="strong")
    return int(count), label.astype(np.int32)


def largest_scc_nodes(net: RoadNetwork) -> np.ndarray:
    """Boolean mask of the nodes in the largest strongly connected component.

    Ties go to the component with the smallest label (deterministic).
    """
    count, label = strong_components(net)
    if count == 0:
        return np.zeros(0, dtype=bool)
    return label == int(np.argmax(np.bincount(label, minlength=count)))


def largest_scc_share(net: RoadNetwork) -> float:
    """Share of nodes (0..1) in the largest strongly connected component; 0.0 when empty."""
    if net.n_nodes == 0:
        return 0.0
    return float(largest_scc_nodes(net).sum() / net.n_nodes)


def keep_largest_scc(net: RoadNetwork) -> RoadNetwork:
    """Return a new network with only the largest strongly connected component.

    Nodes keep their relative order and get new dense ids; an edge is kept when both its
    ends are kept (every edge between two nodes of one component lies in it), with its key,
    geometry and attributes unchanged. Turn restrictions are kept when both their edges are
    kept (their via node then is too), remapped to the new ids; the others are dropped.
    The name is kept; the version is that of the new content.
    """
    keep_node = largest_scc_nodes(net)
    new_node = np.cumsum(keep_node, dtype=np.int64) - 1
    keep_edge = keep_node[net.edge_src] & keep_node[net.edge_dst]
    new_edge = np.cumsum(keep_edge, dtype=np.int64) - 1
    edges = np.flatnonzero(keep_edge)

    sizes = np.diff(net.geom_offsets)[edges]
    offsets = np.zeros(edges.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    point = np.repeat(net.geom_offsets[:-1][edges] - offsets[:-1], sizes) + np.arange(offsets[-1])

    keep_turn = keep_edge[net.turn_from_edge] & keep_edge[net.turn_to_edge]
    return build_network(
        node_lat=net.node_lat[keep_node],
        node_lon=net.node_lon[keep_node],
        node_osm_id=net.node_osm_id[keep_node],
        edge_src=new_node[net.edge_src[edges]],
        edge_dst=new_node[net.edge_dst[edges]],
        edge_speed_kph=net.edge_speed_kph[edges],
        edge_length_m=net.edge_length_m[edges],
        edge_road_class=net.edge_road_class[edges],
        edge_oneway=net.edge_oneway[edges],
        edge_osm_way=net.edge_osm_way[edges],
        edge_reversed=net.edge_reversed[edges],
        edge_key=net.edge_key[edges],
        geom_offsets=offsets,
        geom_lat=net.geom_lat[point],
        geom_lon=net.geom_lon[point],
        geom_osm_node=net.geom_osm_node[point],
        turn_from_edge=new_edge[net.turn_from_edge[keep_turn]],
        turn_via_node=new_node[net.turn_via_node[keep_turn]],
        turn_to_edge=new_edge[net.turn_to_edge[keep_turn]],
        turn_kind=net.turn_kind[keep_turn],
        edge_name=net.edge_name[edges],
        edge_ref=net.edge_ref[edges],
        edge_flags=net.edge_flags[edges],
        strings=network_strings(net),
        name=net.name,
        source=f"largest SCC of {net.name or 'network'}",
    )


def network_summary(net: RoadNetwork) -> dict[str, Any]:
    """Summarise a network for ``traffic network info``.

    Returns a JSON-ready dict: ``name``, ``version``, ``nodes``, ``edges`` (directed),
    ``oneway_edges``, ``turn_restrictions``, ``bbox`` (``[min_lon, min_lat, max_lon,
    max_lat]``), ``largest_scc_share`` (0..1), ``road_km`` and ``road_km_by_class`` (km of
    road, a two-way road counted once: one-way edges count in full and each of the two
    edges of a two-way road counts half), and ``directed_km`` (sum over directed edges).
    """
    length_km = net.edge_length_m / 1000.0
    road_km = np.where(net.edge_oneway, length_km, 0.5 * length_km)
    by_class = np.bincount(net.edge_road_class, weights=road_km, minlength=len(ROAD_CLASSES))
    return {
        "name": net.name,
        "version": net.version,
        "nodes": net.n_nodes,
        "edges": net.n_edges,
        "oneway_edges": int(net.edge_oneway.sum()),
        "turn_restrictions": int(net.turn_kind.shape[0]),
        "bbox": list(net.bbox),
        "largest_scc_share": round(largest_scc_share(net), 6),
        "road_km": round(float(road_km.sum()), 3),
        "directed_km": round(float(length_km.sum()), 3),
        "road_km_by_class": {
            ROAD_CLASSES[i]: round(float(km), 3) for i, km in enumerate(by_class) if km > 0
        },
    }
