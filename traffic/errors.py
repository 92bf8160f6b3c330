"""Exceptions raised by the estimation core; each message names the input and what is wrong."""

from __future__ import annotations


class TrafficError(Exception):
    """Base class for estimation-core errors a caller can act on."""


class ProbeValidationError(TrafficError, ValueError):
    """A probe batch cannot be validated as a whole (bad argument or configuration)."""


class ProbeSchemaError(ProbeValidationError):
    """A probe batch has missing columns or columns of the wrong type."""


class EstimatorConfigError(TrafficError, ValueError):
    """An estimator or profile configuration value is out of its allowed range."""


class TraversalBatchError(TrafficError, ValueError):
    """A traversal batch has arrays of unequal length, wrong dtype or out-of-range values."""


class EstimatorStateError(TrafficError, ValueError):
    """A checkpoint or profile does not fit the estimator or network it is loaded into."""


class KernelInputError(TrafficError, ValueError):
    """Arrays handed to a GPU kernel wrapper have the wrong dtype, layout or length."""


class SnapshotSchemaError(TrafficError, ValueError):
    """A snapshot frame lacks a column, has an unknown one, a lossy dtype or bad keys."""


class SnapshotQueryError(TrafficError, ValueError):
    """A snapshot query argument (time, range, bbox, keys, interval) is invalid."""


class NoSnapshotError(TrafficError, LookupError):
    """No stored snapshot at or before the asked time (the message names the first one)."""
