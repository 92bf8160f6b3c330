"""Network uploads as background jobs: import in a child process, prepare, swap.

:class:`NetworkJobs` runs each uploaded file as a :class:`NetworkJob`: the file is imported
in a fresh child process (:func:`import_in_child`, killed past the upload timeout), the
service prepares what serving it needs while the old network keeps serving, then swaps it
in. A bad file fails its job and leaves the serving network as it was.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph.errors import NetworkError
from graph.network import RoadNetwork

logger = logging.getLogger(__name__)


class UnknownJob(LookupError):
    """No network job has this id."""


@dataclass(slots=True)
class NetworkJob:
    """A network upload being imported; see :meth:`NetworkJobs.submit`."""

    id: str
    path: str
    state: str = "queued"
    stage: str | None = None
    error: dict[str, Any] | None = None
    network_version: str | None = None
    previous_version: str | None = None
    edges_carried: int | None = None
    submitted_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The job as the API returns it (the upload path is internal)."""
        return {k: getattr(self, k) for k in (
            "id", "state", "stage", "error", "network_version", "previous_version",
            "edges_carried", "submitted_at", "finished_at")}



class ImportTimeout(RuntimeError):
    """A network import ran past its time limit and was stopped."""


def import_in_child(path: str | Path, *, timeout_s: float, cache_dir: str | None = None,
                    keep_as: str | Path | None = None, by_path: bool = False) -> RoadNetwork:
    """Import a network file in a fresh child process, killed after ``timeout_s`` wall s.

    The child parses ``path`` (:func:`graph.io.load_network`), prepares its routing index
    into ``cache_dir`` (when given, so the caller's preparation then reads the cache) and
    writes the network in the compiled format next to ``path``. Without ``keep_as`` the
    caller reads that back (:func:`graph.io.load_compiled`, a plain read) and removes it.
    With ``keep_as`` the compiled file is renamed there and *mapped* (read-only, shared page
    cache, as ``traffic serve`` maps the network it starts with): the serving process then
    holds no private copy of the new network, and with ``by_path`` it pickles as its path,
    so Ray actors on this machine map the same file instead of an object-store copy. The
    caller owns ``keep_as`` from then on. A thread cannot be stopped; a process can, so a
    hostile or huge file cannot hold the import forever.

    Raises
    ------
    ImportTimeout
        When the child did not finish within ``timeout_s`` (it is killed).
    NetworkError, ValueError, OSError
        What the import raised in the child (re-raised here with its message).
    RuntimeError
        When the child died without an answer (e.g. killed for memory).
    """
    import multiprocessing

    from graph.io import load_compiled

    src = Path(path)
    out = src.with_name(src.name + ".compiled")
    ctx = multiprocessing.get_context("spawn")  # fresh interpreter: no copied locks or threads
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_import_child, args=(str(src), str(out), cache_dir, send),
                        name="network-import", daemon=True)
    try:
        child.start()
        send.close()  # ours; the child's copy closing signals its end
        if not recv.poll(timeout_s):
            child.kill()
            raise ImportTimeout(f"{src}: the import took longer than the {timeout_s:g} s limit "
                                f"(upload timeout) and was stopped; the serving network is "
                                f"unchanged")
        try:
            kind, message = recv.recv()
        except EOFError:
            raise RuntimeError(f"{src}: the import process ended without an answer "
                               f"(exit code {child.exitcode})") from None
        if kind == "network":
            raise NetworkError(message)
        if kind == "value":
            raise ValueError(message)
        if kind == "os":
            raise OSError(message)
        if kind != "ok":
            raise RuntimeError(message)
        if keep_as is None:
            return load_compiled(out)
        Path(keep_as).parent.mkdir(parents=True, exist_ok=True)
        out.replace(keep_as)
        return load_compiled(keep_as, mmap=True, pickle_by_path=by_path)
    finally:
        recv.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join()
        out.unlink(missing_ok=True)


def _import_child(src: str, out: str, cache_dir: str | None, send: Any) -> None:
    """In the child: load, prepare (into the cache), save compiled; report ``(kind, message)``."""
    try:
        from graph.io import load_network, save_network

        # A compiled upload is mapped, not read: its pages are the page cache's, and only
        # what preparing touches is resident (other formats are parsed into memory).
        net = load_network(src, mmap=True)
        if cache_dir is not None:  # CCH order and spatial index (graph.artifacts)
            from graph.artifacts import prepare_artifacts

            prepare_artifacts(net, cache_dir)
        save_network(net, out)
        reply = ("ok", "")
    except NetworkError as exc:
        reply = ("network", str(exc))
    except ValueError as exc:
        reply = ("value", str(exc))
    except OSError as exc:
        reply = ("os", str(exc))
    except Exception as exc:  # reported to the job as an internal error
        reply = ("internal", f"{type(exc).__name__}: {exc}")
    send.send(reply)
    send.close()


class NetworkJobs:
    """The upload jobs of one service.

    Parameters
    ----------
    prepare
        Builds what serving a network needs (routers), while the old one keeps serving.
    swap
        Swaps a prepared network in; returns how many edges carried their state over.
        Called with ``swap_lock`` held.
    upload_timeout_s
        Wall seconds an import may take before its child process is killed.
    cache_dir
        Where the child may prepare the routing index for the service to reuse.
    data_dir
        Root of ``uploads/`` and ``networks/`` (``None``: the system temporary directory).
    by_path
        Whether a new network may be shared with the workers as the path of its compiled
        file (they see this file system; true when the serving network is shared so).

    An imported network is kept compiled as ``networks/<job id>.net`` and mapped while it
    serves (no private copy in this process, none in the object store with ``by_path``);
    the file of the network it replaced is removed after a swap (processes still mapping
    it keep their pages until they let go).
    """

    def __init__(self, *, prepare: Callable[[RoadNetwork], Any],
                 swap: Callable[[RoadNetwork, Any], int], current_version: Callable[[], str],
                 upload_timeout_s: float, cache_dir: str | None, data_dir: str | None,
                 by_path: Callable[[], bool] = lambda: False) -> None:
        self._prepare, self._swap, self._current_version = prepare, swap, current_version
        self.upload_timeout_s = upload_timeout_s
        self.cache_dir, self.data_dir = cache_dir, data_dir
        self._by_path = by_path
        self.swap_lock = threading.RLock()
        self._jobs: dict[str, NetworkJob] = {}
        self._serving_file: Path | None = None  # the kept file of an uploaded network serving

    def upload_dir(self) -> str:
        """Directory for network uploads in progress (created when missing)."""
        root = Path(self.data_dir or tempfile.gettempdir()) / "uploads"
        root.mkdir(parents=True, exist_ok=True)
        return str(root)

    def network_dir(self) -> Path:
        """Directory of the compiled files of uploaded networks (mapped while they serve)."""
        return Path(self.data_dir or tempfile.gettempdir()) / "networks"

    def submit(self, path: str | Path) -> NetworkJob:
        """Start importing ``path`` in the background; the job swaps it in when ready."""
        job = NetworkJob(id=uuid.uuid4().hex[:12], path=str(path))
        self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), name=f"network-job-{job.id}",
                         daemon=True).start()
        return job

    def get(self, job_id: str) -> NetworkJob:
        """The job with this id; raises :class:`UnknownJob`."""
        try:
            return self._jobs[job_id]
        except KeyError:
            raise UnknownJob(f"no network job with id {job_id!r}") from None

    def _run(self, job: NetworkJob) -> None:
        job.state, job.stage = "running", "import"
        state = "failed"
        kept = self.network_dir() / f"{job.id}.net"
        try:
            net = import_in_child(job.path, timeout_s=self.upload_timeout_s,
                                  cache_dir=self.cache_dir, keep_as=kept,
                                  by_path=self._by_path())
            job.stage = "prepare"
            prepared = self._prepare(net)
            job.stage = "swap"
            with self.swap_lock:
                job.previous_version = self._current_version()
                job.edges_carried = self._swap(net, prepared)
                replaced, self._serving_file = self._serving_file, kept
            if replaced is not None:
                replaced.unlink(missing_ok=True)
            job.network_version = net.version
            state, job.stage = "done", None
        except ImportTimeout as exc:
            job.error = {"code": "timeout", "message": str(exc),
                         "details": {"timeout_s": self.upload_timeout_s}}
        except (NetworkError, ValueError, OSError) as exc:
            job.error = {"code": "invalid_network", "message": str(exc), "details": None}
        except Exception as exc:  # an import bug must not kill the server; report it
            logger.exception("network job %s failed", job.id)
            job.error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}",
                         "details": None}
        finally:
            # The upload is gone before the job reads as finished, so a client that sees
            # `done`/`failed` never finds the file still there.
            Path(job.path).unlink(missing_ok=True)
            if state != "done":
                kept.unlink(missing_ok=True)
            job.finished_at = time.time()
            job.state = state
