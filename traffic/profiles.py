"""Historical time-of-week pace profiles: learned from published estimates, used as priors.

A :class:`TimeOfWeekProfile` keeps, per segment and per time-of-week bin (default 15 min x 7
days = 672 bins, Monday 00:00 first, in a configured time zone), a running weighted mean of
the published pace, weighted by the estimator's confidence. It is stored keyed by stable edge
keys, so it survives a network re-import.

Storage is sparse: only observed ``(segment, bin)`` entries are held, per bin a sorted
``int32`` segment index, a ``float32`` mean pace and a ``uint16`` weight in fixed-point units
of a power of two (``max_weight`` / 65535 rounded up; 1/1024 for the default 50). That is
**10 bytes per observed entry**, plus 8 bytes per segment for the edge keys; nothing is dense
in segments x bins. Measured for a New York-sized network (730,000 segments, 10 % of them
observed in 100 bins: 7.3 M entries): 73 MB of entries (the dense layout took 3.9 GB), and
one observation of 73,000 segments into a bin holding as many costs a few milliseconds.

Why the mean stays ``float32``: it is an exponential moving average with rates down to
``min_confidence / max_weight`` (0.001 by default). In ``float16`` (relative step 2^-11) an
update smaller than half a step is lost, so the mean would stall up to 2^-11 / 0.001 = 5 %
away from the value; ``float32`` keeps it within 1e-4. The weight only sets the rate, so an
absolute error of half a unit (< 5e-4 by default) is harmless; weights at the cap are exact.

The layout is versioned (:data:`PROFILE_FORMAT`) in :meth:`TimeOfWeekProfile.state_dict`
(checkpoints) and in the ``.npz`` files of :meth:`TimeOfWeekProfile.save`. Format 1 was
dense (``mean_pace``/``weight`` ``[n_bins, n_edges]``); both readers convert it.
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from graph.network import RoadNetwork
from traffic.errors import EstimatorConfigError, EstimatorStateError

_WEEK_S = 7 * 86_400
# 1970-01-01 was a Thursday, 3 days after a Monday: shift so bin 0 starts Monday 00:00.
_EPOCH_TO_MONDAY_S = 3 * 86_400

#: Version of the profile layout written by ``save`` and ``state_dict`` (1 was dense).
PROFILE_FORMAT = 2
_WEIGHT_UNITS = 65_535  # uint16 weight units
_EMPTY_BIN = (np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32),
              np.empty(0, dtype=np.uint16))


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Binning and learning parameters of a time-of-week profile.

    Attributes
    ----------
    bin_s
        Bin width in seconds; must divide a week.
    timezone
        IANA zone name for local time of week (``"UTC"``; ``"Europe/Copenhagen"`` for the
        SUMO scenario), daylight saving included.
    max_weight
        Cap on a bin's accumulated weight: beyond it the mean keeps adapting as an
        exponential moving average with rate ``w / max_weight``.
    min_confidence
        Observations with a lower confidence are ignored.
    """

    bin_s: int = 900
    timezone: str = "UTC"
    max_weight: float = 50.0
    min_confidence: float = 0.05

    def __post_init__(self) -> None:
        if self.bin_s <= 0 or _WEEK_S % self.bin_s:
            raise EstimatorConfigError(
                f"`bin_s` must be a positive divisor of a week ({_WEEK_S} s); got {self.bin_s!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise EstimatorConfigError(
                f"`timezone` must be an IANA zone name; got {self.timezone!r}") from err
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise EstimatorConfigError(f"`max_weight` must be > 0; got {self.max_weight!r}")
        if not 0 <= self.min_confidence <= 1:
            raise EstimatorConfigError(
                f"`min_confidence` must be within [0, 1]; got {self.min_confidence!r}")

    @property
    def n_bins(self) -> int:
        """Number of bins in a week."""
        return _WEEK_S // self.bin_s


class TimeOfWeekProfile:
    """Per-segment, per-time-of-week-bin running mean of published pace (s/m), sparse.

    Only observed ``(segment, bin)`` entries are stored: per bin, a sorted ``int32`` array
    of segment indices, their ``float32`` mean pace and ``uint16`` fixed-point weight (see
    the module docstring). Learning merges into a bin with ``np.searchsorted``.

    Parameters
    ----------
    edge_key
        Stable keys of the segments (``RoadNetwork.edge_key``), defining the row order.
    config
        Binning and learning parameters.
    """

    def __init__(self, edge_key: np.ndarray, config: ProfileConfig | None = None) -> None:
        self.config = config or ProfileConfig()
        self.edge_key = np.ascontiguousarray(edge_key, dtype=np.int64)
        if self.edge_key.ndim != 1:
            raise EstimatorStateError(
                f"`edge_key` must be one-dimensional; got shape {self.edge_key.shape}")
        self._weight_step = _weight_step(self.config.max_weight)
        # Bin -> (edge_idx int32[k] sorted, mean pace float32[k], weight units uint16[k]).
        # A bin's tuple is replaced as a whole when entries are added, so a reader holding
        # it sees three arrays of one length.
        self._bins: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        #: Per bin, how many observations changed it (not stored): a cache key for weights.
        self.bin_revision = np.zeros(self.config.n_bins, dtype=np.int64)

    @classmethod
    def for_network(cls, net: RoadNetwork, config: ProfileConfig | None = None) -> TimeOfWeekProfile:
        """An empty profile over ``net``'s edges."""
        return cls(net.edge_key, config)

    @property
    def n_edges(self) -> int:
        """Number of segments."""
        return int(self.edge_key.shape[0])

    @property
    def n_entries(self) -> int:
        """Number of observed ``(segment, bin)`` entries stored."""
        return sum(int(entry[0].size) for entry in list(self._bins.values()))

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored entries, the edge keys and the revision counters."""
        held = sum(a.nbytes for entry in list(self._bins.values()) for a in entry)
        return int(held + self.edge_key.nbytes + self.bin_revision.nbytes)

    def bin_of(self, t_s: float) -> int:
        """Time-of-week bin of unix time ``t_s`` in the configured zone (Monday 00:00 = 0)."""
        if not math.isfinite(t_s):
            raise EstimatorConfigError(f"`t_s` must be a finite unix time; got {t_s!r}")
        when = datetime.fromtimestamp(t_s, tz=timezone.utc).astimezone(ZoneInfo(self.config.timezone))
        offset = when.utcoffset()
        local_s = t_s + (offset.total_seconds() if offset else 0.0)
        return int(((local_s + _EPOCH_TO_MONDAY_S) % _WEEK_S) // self.config.bin_s)

    def observe(self, pace_s_per_m: np.ndarray, confidence: np.ndarray, t_s: float) -> None:
        """Fold one published estimate (pace per segment, its confidence) into ``t_s``'s bin.

        Entries with non-finite or non-positive pace, or confidence below
        ``min_confidence``, are ignored. Cost O(m) to select the usable entries, then
        O(k + entries in the bin) for the k usable ones; :meth:`observe_edges` skips the
        first part when the caller knows which segments changed.
        """
        pace = np.asarray(pace_s_per_m, dtype=np.float32)
        conf = np.asarray(confidence, dtype=np.float32)
        if pace.shape != (self.n_edges,) or conf.shape != (self.n_edges,):
            raise EstimatorStateError(
                f"`pace_s_per_m` and `confidence` must have one entry per segment "
                f"({self.n_edges}); got {pace.shape} and {conf.shape}")
        b = self.bin_of(t_s)
        idx = np.flatnonzero(self._usable(pace, conf)).astype(np.int32)
        self._fold(b, idx, pace[idx], conf[idx])

    def observe_edges(self, edge_idx: np.ndarray, pace_s_per_m: np.ndarray,
                      confidence: np.ndarray, t_s: float) -> None:
        """:meth:`observe` for the listed segments only; the others are left as they are.

        ``edge_idx`` (distinct segment indices, any order), ``pace_s_per_m`` and
        ``confidence`` are 1-D and of equal length. The same entries as in :meth:`observe`
        are ignored. Cost O(k log k + entries in the bin), independent of the network size.

        Raises
        ------
        EstimatorStateError
            On unequal lengths, an index outside ``[0, n_edges)`` or a repeated index.
        """
        idx = np.asarray(edge_idx)
        pace = np.asarray(pace_s_per_m, dtype=np.float32)
        conf = np.asarray(confidence, dtype=np.float32)
        if idx.ndim != 1 or pace.shape != idx.shape or conf.shape != idx.shape:
            raise EstimatorStateError(
                f"`edge_idx`, `pace_s_per_m` and `confidence` must be 1-D of equal length; "
                f"got {idx.shape}, {pace.shape} and {conf.shape}")
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise EstimatorStateError(f"`edge_idx` must hold integers; got dtype {idx.dtype}")
        b = self.bin_of(t_s)
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self.n_edges:
            raise EstimatorStateError(
                f"`edge_idx` must lie in [0, {self.n_edges}); got {idx.min()}..{idx.max()}")
        order = np.argsort(idx, kind="stable")
        idx = idx[order].astype(np.int32)
        if idx.size > 1 and not np.all(idx[1:] != idx[:-1]):
            first = int(idx[1:][idx[1:] == idx[:-1]][0])
            raise EstimatorStateError(f"`edge_idx` repeats segment {first}")
        pace, conf = pace[order], conf[order]
        use = self._usable(pace, conf)
        self._fold(b, idx[use], pace[use], conf[use])

    def _usable(self, pace: np.ndarray, conf: np.ndarray) -> np.ndarray:
        return (np.isfinite(pace) & (pace > 0) & np.isfinite(conf)
                & (conf >= self.config.min_confidence))

    def _fold(self, b: int, idx: np.ndarray, pace: np.ndarray, w: np.ndarray) -> None:
        """Fold usable entries (``idx`` sorted, distinct, int32) into bin ``b``."""
        if idx.size == 0:
            return
        step = self._weight_step
        cap = np.float32(self.config.max_weight)
        old = self._bins.get(b)
        if old is None:
            pos = np.zeros(idx.size, dtype=np.int64)
            found = np.zeros(idx.size, dtype=bool)
            old = _EMPTY_BIN
        else:
            pos = np.searchsorted(old[0], idx)
            found = pos < old[0].size
            found[found] = old[0][pos[found]] == idx[found]
        at = pos[found]
        mean = old[1][at]
        weight = _decode_weight(old[2][at], step, cap)
        wf = w[found]
        total = np.minimum(weight + wf, cap)
        new_mean = mean + (wf / total) * (pace[found] - mean)
        new_units = _encode_weight(total, step)
        fresh = ~found
        if fresh.any():
            # First observation of these entries: the mean is the pace, the weight capped.
            ins = pos[fresh]
            e_idx = np.insert(old[0], ins, idx[fresh])
            e_mean = np.insert(old[1], ins, pace[fresh])
            e_units = np.insert(old[2], ins, _encode_weight(np.minimum(w[fresh], cap), step))
            # Positions of the updated old entries after the insertions before them.
            shifted = at + np.searchsorted(ins, at, side="right")
            e_mean[shifted] = new_mean
            e_units[shifted] = new_units
            self._bins[b] = (e_idx, e_mean, e_units)
        else:
            e_idx, e_mean, e_units = old
            if not (e_mean.flags.writeable and e_units.flags.writeable):
                # Arrays that came through Ray's object store are read-only views of it.
                e_idx, e_mean, e_units = e_idx, e_mean.copy(), e_units.copy()
            e_mean[at] = new_mean
            e_units[at] = new_units
            self._bins[b] = (e_idx, e_mean, e_units)
        if not self.bin_revision.flags.writeable:
            self.bin_revision = self.bin_revision.copy()
        self.bin_revision[b] += 1

    def has_data(self, t_s: float) -> bool:
        """Whether any segment has a learned pace in ``t_s``'s bin."""
        entry = self._bins.get(self.bin_of(t_s))
        return entry is not None and entry[0].size > 0

    def revision(self, t_s: float) -> tuple[int, int]:
        """``(bin, revision)`` of ``t_s``'s bin; the revision grows with each observation."""
        b = self.bin_of(t_s)
        return b, int(self.bin_revision[b])

    def observed_edges(self, t_s: float) -> np.ndarray:
        """Indices (sorted, int32) of the segments with a learned pace in ``t_s``'s bin."""
        entry = self._bins.get(self.bin_of(t_s))
        return np.empty(0, dtype=np.int32) if entry is None else entry[0].copy()

    def prior_pace(self, t_s: float) -> np.ndarray:
        """Learned pace (s/m, float64[m]) for ``t_s``'s bin; NaN where the bin has no data.

        Allocates the one output vector; cost O(m).
        """
        out = np.full(self.n_edges, np.nan, dtype=np.float64)
        entry = self._bins.get(self.bin_of(t_s))
        if entry is not None:
            out[entry[0]] = entry[1]
        return out

    def remap_to(self, edge_key: np.ndarray) -> TimeOfWeekProfile:
        """A profile over ``edge_key`` keeping entries whose key is known; others start empty.

        Cost O(old + new segments + stored entries).
        """
        other = TimeOfWeekProfile(edge_key, self.config)
        src = index_of_keys(self.edge_key, other.edge_key)
        found = np.flatnonzero(src >= 0)
        new_of_old = np.full(self.n_edges, -1, dtype=np.int64)
        new_of_old[src[found]] = found
        for b, (e_idx, e_mean, e_units) in list(self._bins.items()):
            target = new_of_old[e_idx]
            keep = np.flatnonzero(target >= 0)
            if keep.size == 0:
                continue
            order = keep[np.argsort(target[keep], kind="stable")]
            other._bins[b] = (target[order].astype(np.int32), e_mean[order].copy(),
                              e_units[order].copy())
        return other

    def state_dict(self) -> dict[str, Any]:
        """The learned content as plain arrays and scalars (a copy), for checkpoints.

        Layout, ``format`` = :data:`PROFILE_FORMAT` (2):

        ``format`` (int)
            Layout version; :meth:`load_state_dict` refuses a newer one.
        ``n_edges`` (int)
            Number of segments the indices refer to.
        ``bins`` (int64[nb])
            Bins holding data, ascending.
        ``bin_offsets`` (int64[nb + 1])
            Entries of ``bins[i]`` are ``bin_offsets[i]:bin_offsets[i + 1]`` of the arrays below.
        ``edge_idx`` (int32[n]), ``pace_s_per_m`` (float32[n]), ``weight`` (float32[n])
            Per entry, the segment (ascending within a bin), its mean pace and its weight.

        ``bin_revision`` and the configuration are not part of it. The edge keys are not
        either: a checkpoint belongs to one network.
        """
        # One consistent view although another thread may learn meanwhile: list() of a
        # dict is atomic, and each bin's tuple is replaced whole.
        held = sorted(((b, e) for b, e in list(self._bins.items()) if e[0].size),
                      key=lambda item: item[0])
        bins = np.array([b for b, _ in held], dtype=np.int64)
        entries = [e for _, e in held]
        sizes = np.array([e[0].size for e in entries], dtype=np.int64)
        offsets = np.zeros(bins.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        cap = np.float32(self.config.max_weight)

        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)

        return {
            "format": PROFILE_FORMAT,
            "n_edges": self.n_edges,
            "bins": bins,
            "bin_offsets": offsets,
            "edge_idx": cat([e[0] for e in entries], np.int32),
            "pace_s_per_m": cat([e[1] for e in entries], np.float32),
            "weight": cat([_decode_weight(e[2], self._weight_step, cap) for e in entries],
                          np.float32),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the learned content, in place, with ``state``.

        Accepts the layout of :meth:`state_dict` (``format`` 2) and the older dense one
        (no ``format``; ``bins``, and ``mean_pace``/``weight`` rows ``[len(bins), n_edges]``),
        with or without a ``"profile."`` prefix on the keys. Other keys are ignored. Every
        bin's revision grows, so caches keyed on :meth:`revision` see the change.

        Raises
        ------
        EstimatorStateError
            On a newer ``format``, missing keys, inconsistent arrays or another segment count.
        """
        state = _unprefixed(state)
        if "format" not in state and "mean_pace" in state:
            need = [k for k in ("bins", "mean_pace", "weight") if k not in state]
            if need:
                raise EstimatorStateError(f"profile state lacks {need}")
            state = state_from_dense_rows(state["bins"], state["mean_pace"], state["weight"])
        bins = self._unpack(state, "profile state")
        if not self.bin_revision.flags.writeable:
            self.bin_revision = self.bin_revision.copy()
        self._bins = bins
        self.bin_revision += 1

    def _unpack(self, state: dict[str, Any], where: str
                ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Validate a format-2 layout and split it into per-bin entries for this profile."""
        if "format" not in state:
            raise EstimatorStateError(f"{where} lacks ['format']")
        version = int(state["format"])
        if version > PROFILE_FORMAT:
            raise EstimatorStateError(
                f"{where} has profile format version {version}; this program reads up to "
                f"version {PROFILE_FORMAT} (upgrade it to read the file)")
        need = ["n_edges", "bins", "bin_offsets", "edge_idx", "pace_s_per_m", "weight"]
        missing = [k for k in need if k not in state]
        if missing:
            raise EstimatorStateError(f"{where} lacks {missing}")
        n_edges = int(state["n_edges"])
        if n_edges != self.n_edges:
            raise EstimatorStateError(
                f"{where} is for {n_edges} segments; this profile has {self.n_edges}")
        bins = np.asarray(state["bins"], dtype=np.int64)
        offsets = np.asarray(state["bin_offsets"], dtype=np.int64)
        e_idx = np.asarray(state["edge_idx"])
        pace = np.asarray(state["pace_s_per_m"], dtype=np.float32)
        weight = np.asarray(state["weight"], dtype=np.float32)
        n = e_idx.shape[0] if e_idx.ndim == 1 else -1
        if (bins.ndim != 1 or offsets.shape != (bins.size + 1,) or n < 0
                or pace.shape != (n,) or weight.shape != (n,)
                or (offsets.size and (offsets[0] != 0 or offsets[-1] != n))
                or np.any(np.diff(offsets) < 0)):
            raise EstimatorStateError(
                f"{where} has inconsistent arrays: bins {bins.shape}, bin_offsets "
                f"{offsets.shape}, edge_idx {e_idx.shape}, pace_s_per_m {pace.shape}, "
                f"weight {weight.shape}")
        if bins.size and (bins.min() < 0 or bins.max() >= self.config.n_bins
                          or np.any(np.diff(bins) <= 0)):
            raise EstimatorStateError(
                f"{where}: `bins` must be ascending within [0, {self.config.n_bins})")
        if n and (e_idx.min() < 0 or e_idx.max() >= n_edges):
            raise EstimatorStateError(f"{where}: `edge_idx` must lie in [0, {n_edges})")
        cap = np.float32(self.config.max_weight)
        out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for i, b in enumerate(bins.tolist()):
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            idx = e_idx[lo:hi].astype(np.int32)
            if idx.size > 1 and np.any(idx[1:] <= idx[:-1]):
                raise EstimatorStateError(
                    f"{where}: `edge_idx` of bin {b} must be strictly ascending")
            w = weight[lo:hi]
            if np.any(~(w > 0)):  # NaN too
                raise EstimatorStateError(f"{where}: weights of bin {b} must be > 0")
            if idx.size:
                out[b] = (idx, pace[lo:hi].copy(),
                          _encode_weight(np.minimum(w, cap), self._weight_step))
        return out

    def save(self, path: str | Path | BinaryIO) -> None:
        """Write the profile as an ``.npz``: :meth:`state_dict`, the edge keys and the
        configuration (file ``format`` :data:`PROFILE_FORMAT`). Stored, not compressed: the
        keys are hashes that do not compress, and zlib over a 26M-edge network's keys took
        4.5 s of the estimator's time at every save."""
        state = self.state_dict()
        np.savez(
            path if hasattr(path, "write") else Path(path),
            format=np.int64(state.pop("format")), n_edges=np.int64(state.pop("n_edges")),
            **state, edge_key=self.edge_key,
            bin_s=np.int64(self.config.bin_s), timezone=np.str_(self.config.timezone),
            max_weight=np.float64(self.config.max_weight),
            min_confidence=np.float64(self.config.min_confidence))

    def save_atomic(self, path: str | Path) -> None:
        """:meth:`save` so that readers see the old or the complete new file (fsync, rename)."""
        from storage import write_atomic

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.save)

    @classmethod
    def load(cls, path: str | Path, *, edge_key: np.ndarray | None = None) -> TimeOfWeekProfile:
        """Read a profile written by :meth:`save`; remap to ``edge_key`` when given.

        A file of the dense layout (format 1: no ``format``; ``mean_pace`` and ``weight``
        ``[n_bins, n_edges]``) is converted to the sparse one: learned entries are kept.

        Raises
        ------
        EstimatorStateError
            When the file is not a profile (missing arrays or inconsistent shapes), or
            has a newer format than this program reads.
        """
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                names = set(z.files)
                dense = "format" not in names and {"mean_pace", "weight"} <= names
                # Read everything but the dense rows (converted one array at a time below).
                data: dict[str, Any] = {k: z[k] for k in names
                                        if not (dense and k in ("mean_pace", "weight"))}
                need = ["edge_key", "bin_s", "timezone", "max_weight", "min_confidence"]
                missing = [k for k in need if k not in data]
                if "format" not in names and not dense:
                    missing += [k for k in ("mean_pace", "weight") if k not in names]
                if missing:
                    raise EstimatorStateError(f"{path}: profile file lacks {missing}")
                config = ProfileConfig(bin_s=int(data["bin_s"]), timezone=str(data["timezone"]),
                                       max_weight=float(data["max_weight"]),
                                       min_confidence=float(data["min_confidence"]))
                profile = cls(data["edge_key"], config)
                if dense:
                    data.update(_dense_file_state(z, profile, path))
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            if isinstance(err, EstimatorStateError):
                raise
            raise EstimatorStateError(f"{path}: not a readable profile file: {err}") from err
        profile._bins = profile._unpack(data, f"{path}:")
        if edge_key is not None:
            profile = profile.remap_to(edge_key)
        return profile


def state_from_dense_rows(bins: np.ndarray, mean_pace_rows: np.ndarray,
                          weight_rows: np.ndarray) -> dict[str, Any]:
    """Convert the dense layout (format 1) to :meth:`TimeOfWeekProfile.state_dict`'s.

    ``bins`` (int[nb]) are the bins of the rows; ``mean_pace_rows`` and ``weight_rows`` are
    ``[nb, n_edges]``. Entries with weight > 0 are kept. This is how checkpoints written
    before format 2 (keys ``profile.bins``, ``profile.mean_pace``, ``profile.weight``) and
    dense profile files are read.

    Raises
    ------
    EstimatorStateError
        When the shapes do not agree.
    """
    bins = np.asarray(bins, dtype=np.int64)
    mean = np.asarray(mean_pace_rows)
    weight = np.asarray(weight_rows)
    if (bins.ndim != 1 or mean.ndim != 2 or mean.shape[0] != bins.size
            or weight.shape != mean.shape):
        raise EstimatorStateError(
            f"dense profile rows must be [len(bins), n_edges]; got bins {bins.shape}, "
            f"mean_pace {mean.shape}, weight {weight.shape}")
    order = np.argsort(bins, kind="stable")
    keep_bins, offsets, idx_parts, pace_parts, weight_parts = [], [0], [], [], []
    for row in order.tolist():
        idx = np.flatnonzero(weight[row] > 0).astype(np.int32)
        if idx.size == 0:
            continue
        keep_bins.append(int(bins[row]))
        offsets.append(offsets[-1] + idx.size)
        idx_parts.append(idx)
        pace_parts.append(mean[row, idx].astype(np.float32))
        weight_parts.append(weight[row, idx].astype(np.float32))

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.empty(0, dtype)

    return {"format": PROFILE_FORMAT, "n_edges": int(mean.shape[1]),
            "bins": np.array(keep_bins, dtype=np.int64),
            "bin_offsets": np.array(offsets, dtype=np.int64),
            "edge_idx": cat(idx_parts, np.int32), "pace_s_per_m": cat(pace_parts, np.float32),
            "weight": cat(weight_parts, np.float32)}


def _dense_file_state(z: Any, profile: TimeOfWeekProfile, path: Any) -> dict[str, Any]:
    """Format-2 state from an open dense (format-1) profile file, one array in memory at a
    time besides the kept entries."""
    expected = (profile.config.n_bins, profile.n_edges)
    weight = z["weight"]
    if weight.shape != expected:
        raise EstimatorStateError(
            f"{path}: profile array `weight` has shape {weight.shape}; expected {expected}")
    has = weight > 0
    bins = np.flatnonzero(has.any(axis=1))
    rows_idx = [np.flatnonzero(has[b]) for b in bins]
    del has
    weights = [weight[b, idx] for b, idx in zip(bins, rows_idx)]
    del weight
    mean = z["mean_pace"]
    if mean.shape != expected:
        raise EstimatorStateError(
            f"{path}: profile array `mean_pace` has shape {mean.shape}; expected {expected}")
    paces = [mean[b, idx] for b, idx in zip(bins, rows_idx)]
    del mean
    sizes = [idx.size for idx in rows_idx]
    offsets = np.zeros(bins.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)

    return {"format": PROFILE_FORMAT, "n_edges": profile.n_edges,
            "bins": bins.astype(np.int64), "bin_offsets": offsets,
            "edge_idx": cat(rows_idx, np.int32), "pace_s_per_m": cat(paces, np.float32),
            "weight": cat(weights, np.float32)}


def _unprefixed(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with a leading ``"profile."`` removed from its keys."""
    prefix = "profile."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def _weight_step(max_weight: float) -> float:
    """The weight unit: the smallest power of two with ``max_weight`` within 65535 units."""
    return 2.0 ** math.ceil(math.log2(max_weight / _WEIGHT_UNITS))


def _encode_weight(weight: np.ndarray, step: float) -> np.ndarray:
    """Weights (> 0) as uint16 units of ``step``; at least one unit, so data stays data."""
    units = np.rint(np.asarray(weight, dtype=np.float64) / step)
    return np.clip(units, 1, _WEIGHT_UNITS).astype(np.uint16)


def _decode_weight(units: np.ndarray, step: float, cap: np.float32) -> np.ndarray:
    """float32 weights of uint16 units (exact: ``step`` is a power of two), capped."""
    return np.minimum(units.astype(np.float32) * np.float32(step), cap)


def index_of_keys(old_keys: np.ndarray, new_keys: np.ndarray) -> np.ndarray:
    """For each new key, its index in ``old_keys`` or -1.

    The same keys in the same order (a restart on the same network) cost one comparison.
    Otherwise many unsorted new keys are searched in sorted order: a binary search per key
    in random order misses the cache at every step (at 26M keys: 46 s, against a few s).
    """
    old_keys = np.asarray(old_keys)
    new_keys = np.asarray(new_keys)
    if old_keys.size == 0:
        return np.full(new_keys.shape, -1, dtype=np.int64)
    if old_keys.shape == new_keys.shape and np.array_equal(old_keys, new_keys):
        return np.arange(new_keys.size, dtype=np.int64).reshape(new_keys.shape)
    order = np.argsort(old_keys, kind="stable")
    sorted_keys = old_keys[order]
    flat = new_keys.reshape(-1)
    if flat.size > 4096:
        ask = np.argsort(flat, kind="stable")
        pos = np.empty(flat.size, dtype=np.int64)
        pos[ask] = np.searchsorted(sorted_keys, flat[ask])
    else:
        pos = np.searchsorted(sorted_keys, flat)
    pos = np.clip(pos, 0, sorted_keys.size - 1)
    out = np.where(sorted_keys[pos] == flat, order[pos], -1).astype(np.int64)
    return out.reshape(new_keys.shape)
