"""Traversal arithmetic on a tiny known case: enter/exit by distance, pace, weights."""

from __future__ import annotations

import numpy as np

from graph.network import build_network
from traffic.matching import MatchOutput
from traffic.traversals import TraversalConfig, TraversalExtractor, merge_pieces


def _net():
    # A straight chain of three 100 m edges (0->1->2->3), east along the equator.
    lon = np.array([0.0, 1.0, 2.0, 3.0]) * 100.0 / 111_195.08
    return build_network(node_lat=np.zeros(4), node_lon=lon, edge_src=np.array([0, 1, 2]),
                         edge_dst=np.array([1, 2, 3]), edge_speed_kph=np.full(3, 36.0),
                         edge_length_m=np.full(3, 100.0))


def _out(trace, edge, o0, o1, t0, t1, ended=()):
    z = np.zeros(0)
    return MatchOutput(point_row=z, point_slot=z, point_trace=z, point_edge=z, point_offset_m=z,
                       point_t_s=z, piece_trace=np.array(trace), piece_edge=np.array(edge, np.int32),
                       piece_off0_m=np.array(o0, float), piece_off1_m=np.array(o1, float),
                       piece_t0_s=np.array(t0, float), piece_t1_s=np.array(t1, float),
                       ended_traces=np.array(ended, np.int64))


def test_merge_pieces_joins_runs():
    r = merge_pieces(np.array([0, 0, 0, 1]), np.array([5, 5, 6, 5]), np.array([0., 40, 0, 0]),
                     np.array([40., 100, 10, 3]), np.array([0., 4, 10, 0]), np.array([4., 10, 11, 1]))
    assert r[1].tolist() == [5, 6, 5] and r[2].tolist() == [0, 0, 0]
    assert r[3].tolist() == [100, 10, 3] and r[4].tolist() == [0, 10, 0] and r[5].tolist() == [10, 11, 1]


def test_push_full_and_partial_traversals():
    ex = TraversalExtractor(_net())
    # Start at 50 m on edge 0 at t=0, 10 m/s: edge 0 partial (50 m, 5 s), edge 1 full (10 s).
    tr = ex.push(_out([7, 7, 7], [0, 0, 1], [50, 80, 0], [80, 100, 30], [0, 3, 5], [3, 5, 8]))
    assert tr.edge.tolist() == [0]
    assert np.allclose(tr.pace_s_per_m, 0.1) and np.allclose(tr.weight, 0.5)
    tr = ex.push(_out([7, 7], [1, 2], [30, 0], [100, 4], [8, 15], [15, 15.4]))
    assert tr.edge.tolist() == [1] and tr.t_enter_s[0] == 5 and tr.t_exit_s[0] == 15
    assert np.allclose(tr.pace_s_per_m, 0.1) and tr.weight[0] == 1.0
    # Trace ends after only 4 m of edge 2: below min_fraction, dropped and counted.
    tr = ex.push(_out([], [], [], [], [], [], ended=[7]))
    assert len(tr) == 0 and ex.dropped == 1 and ex.open_count() == 0


def test_push_empty():
    ex = TraversalExtractor(_net(), TraversalConfig())
    assert len(ex.push(_out([], [], [], [], [], []))) == 0
