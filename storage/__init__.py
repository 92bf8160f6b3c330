"""Bottom layer: generic file helpers (atomic writes, durable directory entries) that every
package above may use. It imports nothing from the project."""

from storage.files import fsync_directory, write_atomic

__all__ = ["fsync_directory", "write_atomic"]
