"""Request and response models of the HTTP API (pydantic), with the first validation in Fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Lat = Field(ge=-90.0, le=90.0, description="latitude, WGS84 degrees")
Lon = Field(ge=-180.0, le=180.0, description="longitude, WGS84 degrees")


class ProbeIn(BaseModel):
    """One GPS fix from a vehicle."""

    model_config = ConfigDict(extra="ignore")

    vehicle_id: str = Field(min_length=1, max_length=128)
    t: float = Field(description="unix seconds")
    lat: float
    lon: float
    speed_mps: float | None = None
    heading_deg: float | None = None
    accuracy_m: float | None = None


class ProbeBatchIn(BaseModel):
    """The JSON body of ``POST /v1/probes``."""

    probes: list[ProbeIn] = Field(max_length=10_000)


class RejectedProbe(BaseModel):
    """Why one probe of a batch was not accepted (``index`` into the request's probes)."""

    index: int
    reason: str


class ProbeAckOut(BaseModel):
    """The 202 answer of ``POST /v1/probes``."""

    accepted: int
    rejected: list[RejectedProbe]


class GeometryOut(BaseModel):
    """A GeoJSON LineString (``[lon, lat]`` pairs)."""

    type: Literal["LineString"] = "LineString"
    coordinates: list[list[float]]


StepType = Literal["depart", "turn", "continue", "new name", "merge", "on ramp", "off ramp",
                   "fork", "end of road", "roundabout", "arrive"]
StepModifier = Literal["uturn", "sharp right", "right", "slight right", "straight",
                       "slight left", "left", "sharp left"]


class ManeuverOut(BaseModel):
    """What the driver does where a step starts (types and modifiers as OSRM's; the angle
    thresholds are in :mod:`graph.steps`)."""

    type: StepType
    modifier: StepModifier | None = Field(description="null on depart and arrive")
    bearing_before: int = Field(ge=0, lt=360, description="degrees clockwise from north")
    bearing_after: int = Field(ge=0, lt=360, description="degrees clockwise from north")
    location: list[float] = Field(min_length=2, max_length=2, description="[lon, lat]")
    exit: int | None = Field(
        description="roundabout: the exit taken, counting every exit a car may take from "
                    "the entry on, this one included; null otherwise")


class StepOut(BaseModel):
    """One step: a manoeuvre and the road driven after it up to the next one."""

    maneuver: ManeuverOut
    name: str | None = Field(description="street name (OSM name); null when unnamed")
    ref: str | None = Field(description="route number (OSM ref); null when none")
    distance_m: float
    duration_s: float
    geometry: GeometryOut
    instruction: str = Field(description="English, e.g. 'Turn left onto Mannerheimintie'")


class LegOut(BaseModel):
    """The route between two waypoints (one leg without via points)."""

    distance_m: float
    duration_s: float
    summary: str | None = Field(default=None, description="names of the leg's longest roads")
    steps: list[StepOut] | None = Field(default=None, description="with steps=true")


class AnnotationsOut(BaseModel):
    """Per edge of the route's ``edges`` (same order and length), for colouring its line."""

    speed_mps: list[float] = Field(description="speed on the edge's travel time")
    duration_s: list[float] = Field(description="seconds driven on it (ends in part)")
    congestion: list[Literal["low", "moderate", "heavy", "severe", "unknown"]] = Field(
        description="speed / free-flow speed >= 0.85 low, >= 0.65 moderate, >= 0.45 heavy, "
                    "else severe (the map's classes); unknown where not observed")
    edge_keys: list[int]


class RouteOut(BaseModel):
    """A route and its ETA over the travel times named by ``weights_version``; ``legs``
    with turn-by-turn steps only when asked for (``steps=true``)."""

    duration_s: float
    distance_m: float
    freeflow_duration_s: float
    geometry: GeometryOut | str = Field(description="GeoJSON LineString, or with "
                                        "geometry_format=polyline6 an encoded polyline")
    edges: list[int] = Field(description="stable edge keys, in order of travel")
    network_version: str
    weights_version: str
    weights_t: float | None = Field(description="event time (unix s) the travel times cover")
    basis: Literal["live", "profile", "forecast"] = Field(
        description="forecast: each edge at its short-term forecast for when it is reached")
    duration_p10_s: float | None = Field(default=None, description="with the forecast: 10th "
                                         "percentile of the duration")
    duration_p90_s: float | None = Field(default=None, description="with the forecast: 90th "
                                         "percentile of the duration")
    eta_correction: float | None = Field(
        default=None, description="with the forecast: the router's learned optimism "
        "correction from completed probe trips, the factor every duration of this route "
        "(legs, steps, annotations, percentiles) was multiplied by; 1.0 while none is "
        "learned; null where the answer is not on the forecast")
    legs: list[LegOut] | None = Field(default=None, description="with steps=true: one leg "
                                      "per stretch between waypoints, each with its steps")
    summary: str | None = Field(default=None, description="with any navigation option: the "
                                "names of the two or three longest roads")
    annotations: AnnotationsOut | None = Field(default=None, description="with annotations=true")
    alternatives: list[RouteOut] | None = Field(default=None, description="with "
                                                "alternatives=N: admissible alternatives")


class LatLonIn(BaseModel):
    """A point as ``[lat, lon]``."""

    lat: float = Lat
    lon: float = Lon


class TableIn(BaseModel):
    """The body of ``POST /v1/table``: points as ``[lat, lon]`` pairs."""

    model_config = ConfigDict(extra="forbid")  # unknown fields: 422 (api/strict.py)

    sources: list[tuple[float, float]] = Field(min_length=1)
    destinations: list[tuple[float, float]] = Field(min_length=1)
    depart_at: str | float | None = Field(
        default=None, description="unix seconds or ISO 8601; default now (live weights)")
    exclude: str | list[str] | None = Field(
        default=None, description="tag classes no route may use: motorway, toll, ferry "
                                  "(`\"motorway,toll\"` or a list)")


#: A point in a JSON body: ``[lat, lon]`` or ``"lat,lon"``.
PointIn = tuple[float, float] | str


class RouteIn(BaseModel):
    """The body of ``POST /v1/route``: the ``GET`` parameters as fields, plus ``avoid``.

    ``avoid`` is a GeoJSON Polygon or MultiPolygon (``[lon, lat]`` positions, rings closed):
    the route never uses a road that meets it, and an end point inside it is a 422
    ``point_in_avoid``. Unknown fields are a 422 naming them.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: PointIn = Field(alias="from", description="origin, `[lat, lon]` or `\"lat,lon\"`")
    to: PointIn = Field(description="destination, `[lat, lon]` or `\"lat,lon\"`")
    avoid: dict[str, Any] | None = Field(
        default=None, description="GeoJSON Polygon or MultiPolygon the route may not enter")
    exclude: str | list[str] | None = Field(
        default=None, description="tag classes the route may not use: motorway, toll, ferry")
    steps: bool = Field(default=False, description="add `legs` with turn-by-turn steps")
    depart_at: str | float | None = Field(
        default=None, description="unix seconds or ISO 8601; default now (live weights)")
    max_snap_m: float | None = Field(default=None, gt=0, le=5000)
    via: str | list[PointIn] | None = Field(
        default=None, description="up to 25 points between `from` and `to` (`\"lat,lon;"
                                  "lat,lon\"` or a list of points): one leg each")
    bearing: float | None = Field(default=None, ge=0, le=360,
                                  description="origin's direction of travel (degrees)")
    bearing_range: float | None = Field(default=None, ge=0, le=180)
    alternatives: int = Field(default=0, ge=0, le=3)
    annotations: bool = False
    geometry_format: Literal["geojson", "polyline6"] = "geojson"


class TableOut(BaseModel):
    """Durations (s) from each source to each destination; ``null`` where unreachable."""

    durations_s: list[list[float | None]]
    network_version: str
    weights_version: str
    weights_t: float | None
    basis: Literal["live", "profile"] = "live"


class NetworkOut(BaseModel):
    """The serving road network."""

    version: str
    name: str
    n_nodes: int
    n_edges: int
    bbox: tuple[float, float, float, float] = Field(description="min_lon, min_lat, max_lon, max_lat")
    loaded_at: float = Field(description="wall-clock unix s the network started serving")


class NetworkJobOut(BaseModel):
    """A network upload job: ``queued`` -> ``running`` -> ``done`` | ``failed``."""

    id: str
    state: Literal["queued", "running", "done", "failed"]
    stage: str | None = None
    error: dict[str, Any] | None = None
    network_version: str | None = None
    previous_version: str | None = None
    edges_carried: int | None = None
    submitted_at: float
    finished_at: float | None = None


class ProbeCountsOut(BaseModel):
    """Every probe the service has seen, by fate."""

    received: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    applied: int
    pending: int
    unmatched: int
    unmatched_by_reason: dict[str, int]


class StatusOut(BaseModel):
    """Where the pipeline stands (``GET /v1/status``)."""

    clock: Literal["wall", "event"]
    watermark_t: float | None
    weights_version: str
    weights_t: float | None
    network_version: str
    probes: ProbeCountsOut
    queues: dict[str, int]
    coverage: dict[str, float]
    sources: dict[str, Any] = Field(default_factory=dict, description=(
        "what the live times blend: `probes`, and `speed_feed` (POST /v1/speeds)"))
    workers: dict[str, Any]


def inline_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined, for hand-written OpenAPI bodies.

    A bare ``model_json_schema()`` refers to ``#/$defs/...``, which does not resolve once the
    schema is placed inside the OpenAPI document; clients and fuzzers then cannot read it.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.split("/")[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


class TracePointIn(BaseModel):
    """One fix of a recorded trace (``POST /v1/match``)."""

    model_config = ConfigDict(extra="ignore")

    t: float = Field(allow_inf_nan=False, description="unix seconds; strictly increasing")
    lat: float = Field(ge=-90.0, le=90.0, allow_inf_nan=False)
    lon: float = Field(ge=-180.0, le=180.0, allow_inf_nan=False)
    speed_mps: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    heading_deg: float | None = Field(default=None, ge=0.0, le=360.0, allow_inf_nan=False)


class MatchIn(BaseModel):
    """The JSON body of ``POST /v1/match``: a trace of one vehicle, at most 10,000 points."""

    model_config = ConfigDict(extra="forbid")  # unknown fields: 422 (api/strict.py)

    points: list[TracePointIn] = Field(min_length=1)
    ingest: bool = Field(default=False, description="also feed the trace to the estimator "
                         "as probes (needs `vehicle_id` and the probe-writer role)")
    vehicle_id: str | None = Field(default=None, min_length=1, max_length=128)
    geometry_format: Literal["geojson", "polyline6"] = "geojson"


class TracePointOut(BaseModel):
    """Where one input point matched; every field but ``reason`` is null when it did not."""

    lat: float | None
    lon: float | None
    edge: int | None = Field(description="stable edge key, as /v1/route's `edges`")
    osm_way_id: int | None
    offset_m: float | None = Field(description="metres along the edge from its start")
    distance_m: float | None = Field(description="metres from the input point")
    matching: int | None = Field(description="index into `matchings`")
    reason: str | None = Field(description="why the point is not matched (`no_candidate`)")


class MatchingOut(BaseModel):
    """One unbroken stretch of the trace (the HMM breaks at a gap or an unreachable point)."""

    confidence: float
    distance_m: float
    duration_s: float
    first_point: int
    last_point: int
    edge_start: int = Field(description="first index of its edges in `edges`")
    edge_count: int


class MatchOut(BaseModel):
    """The matched route of ``POST /v1/match``."""

    network_version: str
    confidence: float = Field(description="matched share of the points times the "
                              "point-weighted mean of the matchings' confidences")
    distance_m: float
    duration_s: float
    edges: list[int]
    osm_way_ids: list[int]
    enter_s: list[float]
    exit_s: list[float]
    edge_distance_m: list[float]
    geometry: Any
    matchings: list[MatchingOut]
    tracepoints: list[TracePointOut]
    ingest: ProbeAckOut | None = None
