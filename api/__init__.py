"""The HTTP API (FastAPI) over the workers."""
