"""Ray actors wrapping the plain stages of traffic/ and graph/."""
