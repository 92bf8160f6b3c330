"""The estimation core: probes, map matching, traversals, the speed estimator, snapshots."""
