"""One router per resource: routing, probes, network, status."""
