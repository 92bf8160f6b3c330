// The live congestion map: roads from GET /v1/congestion drawn on a canvas, coloured by
// speed / free-flow ratio. Web Mercator projection of our own; pan by dragging, zoom with
// the wheel. No third-party code and nothing fetched from outside this server.
// Also: routes A -> B with their alternatives and turn-by-turn steps (GET /v1/route), roads
// closed or slowed by operators (the congestion answer's `closed` / `override_factor`, and
// GET /v1/closures), and isochrones from a clicked point (GET /v1/isochrone).
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const REFRESH_MS = 1000 * Math.max(0.5, Number(params.get("refresh")) || 5);
  const HISTORY_S = 3 * 3600;
  // Colour classes of the ratio speed / free-flow speed, most congested last.
  const CLASSES = [
    { min: 0.85, color: "#2e9d47", label: "\u2265 85% of free-flow speed" },
    { min: 0.65, color: "#e0b81f", label: "65\u201385%" },
    { min: 0.45, color: "#f07c1e", label: "45\u201365%" },
    { min: -Infinity, color: "#d7301f", label: "< 45%" },
  ];
  const NO_DATA = { color: "#b9b9b9", label: "no observation yet" };
  // Operator overrides, drawn dashed over the congestion colour.
  const CLOSED = { color: "#111111", label: "closed (operator)", dashed: true };
  const SLOWED = { color: "#8e24aa", label: "slowed down (operator)", dashed: true };
  const ROUTE_COLOUR = "#1f5fbf", ALT_COLOUR = "#7f8ea6";
  // Isochrone fills, opaque under the roads, for the 1st, 2nd, 3rd, 4th contour by minutes.
  const ISO_FILLS = ["#b59ddb", "#d3c6ec", "#ebe5f6", "#f4f1fa"];
  const ISO_EDGE = "#6a51a3";

  // Everything the page knows, exposed for the browser test and for debugging.
  const S = (window.trafficMap = {
    ready: false, loads: 0, features: [], asOf: null, source: null, networkVersion: null,
    live: true, at: null, times: [], mode: "inspect", selected: null, history: null,
    routePoints: [], route: null, routeError: null, colorsDrawn: {}, lastError: null,
    routes: [], routeIndex: 0, steps: [], stepFocus: null,
    closures: [], closedDrawn: 0, slowedDrawn: 0,
    isoPoint: null, isochrones: null, isoDrawn: 0, isoError: null,
    view: { cx: 0, cy: 0, scale: 1 }, bbox: null,
  });

  const canvas = document.getElementById("map");
  const ctx = canvas.getContext("2d");
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ projection
  const RAD = Math.PI / 180;
  const mercY = (lat) => Math.log(Math.tan(Math.PI / 4 + (lat * RAD) / 2)) / RAD;
  const invMercY = (y) => (2 * Math.atan(Math.exp(y * RAD)) - Math.PI / 2) / RAD;
  function toScreen(x, y) {
    const v = S.view;
    return [(x - v.cx) * v.scale + canvas.clientWidth / 2, -(y - v.cy) * v.scale + canvas.clientHeight / 2];
  }
  function fromScreen(sx, sy) {
    const v = S.view;
    return [(sx - canvas.clientWidth / 2) / v.scale + v.cx, -(sy - canvas.clientHeight / 2) / v.scale + v.cy];
  }
  S.lonLatToScreen = (lon, lat) => toScreen(lon, mercY(lat));
  S.screenToLonLat = (sx, sy) => { const [x, y] = fromScreen(sx, sy); return [x, invMercY(y)]; };

  function fit(bbox) {
    const [x0, x1] = [bbox[0], bbox[2]];
    const [y0, y1] = [mercY(bbox[1]), mercY(bbox[3])];
    const w = canvas.clientWidth, h = canvas.clientHeight;
    S.view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2,
               scale: 0.92 * Math.min(w / Math.max(x1 - x0, 1e-9), h / Math.max(y1 - y0, 1e-9)) };
  }

  function visibleBbox() {
    const w = canvas.clientWidth, h = canvas.clientHeight, pad = 0.15;
    const [lon0, lat0] = S.screenToLonLat(-pad * w, (1 + pad) * h);
    const [lon1, lat1] = S.screenToLonLat((1 + pad) * w, -pad * h);
    const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
    return [clamp(lon0, -180, 180), clamp(lat0, -85, 85), clamp(lon1, -180, 180), clamp(lat1, -85, 85)];
  }

  // ------------------------------------------------------------------ data
  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await r.json().catch(() => null);
    if (!r.ok) {
      const err = new Error(body && body.message ? body.message : `HTTP ${r.status}`);
      err.code = body && body.code; err.status = r.status;
      throw err;
    }
    return body;
  }

  let loading = false, reloadAgain = false;
  async function loadCongestion() {
    if (loading) { reloadAgain = true; return; }
    loading = true;
    try {
      const q = new URLSearchParams({ bbox: visibleBbox().map((v) => v.toFixed(6)).join(",") });
      if (!S.live && S.at !== null) q.set("at", String(S.at));
      const fc = await getJSON(`/v1/congestion?${q}`);
      S.features = fc.features.map(prepare);
      S.asOf = fc.as_of; S.source = fc.source; S.networkVersion = fc.network_version;
      S.loads += 1; S.lastError = null;
      if (S.selected) {
        const again = S.features.find((f) => f.id === S.selected.id);
        if (again) { S.selected = again; showRoad(again, false); }
      }
      setStatus();
      draw();
    } catch (err) {
      S.lastError = err.message;
      setStatus(err);
    } finally {
      loading = false;
      S.ready = true;
      if (reloadAgain) { reloadAgain = false; loadCongestion(); }
    }
  }

  function prepare(f) {
    const c = f.geometry.coordinates;
    const xy = new Float64Array(c.length * 2);
    for (let i = 0; i < c.length; i++) { xy[2 * i] = c[i][0]; xy[2 * i + 1] = mercY(c[i][1]); }
    return { id: f.id, p: f.properties, xy };
  }

  async function loadTimes() {
    try {
      const body = await getJSON("/v1/congestion/snapshots");
      S.times = body.times;
      const slider = $("slider");
      slider.max = String(Math.max(0, S.times.length - 1));
      slider.disabled = S.times.length === 0;
      if (S.live) slider.value = slider.max;
      setTimeLabel();
    } catch (err) { S.lastError = err.message; }
  }

  // ------------------------------------------------------------------ drawing
  function classOf(p) {
    if (!p.observations || p.ratio === null || p.ratio === undefined) return NO_DATA;
    for (const c of CLASSES) if (p.ratio >= c.min) return c;
    return CLASSES[CLASSES.length - 1];
  }

  function resize() {
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(canvas.clientWidth * dpr);
    canvas.height = Math.round(canvas.clientHeight * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  // Both directions of a two-way street share one centreline, so each directed edge is drawn
  // shifted to its right-hand side (the side traffic keeps to here), by a constant number of
  // screen pixels at every zoom. Drawing and hit-testing both use screenPath, so a click picks
  // the direction whose drawn line is nearer.
  const lineWidthPx = () => Math.max(1, Math.min(6, S.view.scale / 4000));
  const laneOffsetPx = (width) => 0.5 * width + 0.4;

  // Screen coordinates of a projected polyline, each vertex moved offPx to the right of the
  // direction of travel (mitred at bends, the mitre capped at 2 offPx for sharp turns).
  function screenPath(xy, offPx) {
    const n = xy.length / 2, out = new Float64Array(xy.length);
    for (let i = 0; i < n; i++) {
      const [sx, sy] = toScreen(xy[2 * i], xy[2 * i + 1]);
      out[2 * i] = sx; out[2 * i + 1] = sy;
    }
    if (!offPx || n < 2) return out;
    // Unit right-hand normals of the segments; screen y points down, so right of (dx, dy) is (-dy, dx).
    const nx = new Float64Array(n - 1), ny = new Float64Array(n - 1), ok = new Uint8Array(n - 1);
    for (let s = 0; s < n - 1; s++) {
      const dx = out[2 * s + 2] - out[2 * s], dy = out[2 * s + 3] - out[2 * s + 1], len = Math.hypot(dx, dy);
      if (len > 1e-9) { nx[s] = -dy / len; ny[s] = dx / len; ok[s] = 1; }
    }
    // Segments of zero screen length borrow a neighbour's normal.
    for (let s = 1; s < n - 1; s++) if (!ok[s] && ok[s - 1]) { nx[s] = nx[s - 1]; ny[s] = ny[s - 1]; ok[s] = 1; }
    for (let s = n - 3; s >= 0; s--) if (!ok[s] && ok[s + 1]) { nx[s] = nx[s + 1]; ny[s] = ny[s + 1]; ok[s] = 1; }
    for (let i = 0; i < n; i++) {
      const a = Math.max(0, i - 1), b = Math.min(n - 2, i);
      const mx = nx[a] + nx[b], my = ny[a] + ny[b];
      const k = offPx / Math.max(0.5, mx * nx[a] + my * ny[a]);  // (n1 + n2)·n1 = 1 + cos(turn)
      out[2 * i] += mx * k; out[2 * i + 1] += my * k;
    }
    return out;
  }

  function strokePath(pts) {
    ctx.beginPath();
    ctx.moveTo(pts[0], pts[1]);
    for (let i = 2; i < pts.length; i += 2) ctx.lineTo(pts[i], pts[i + 1]);
    ctx.stroke();
  }
  const strokeLine = (xy) => strokePath(screenPath(xy, 0));
  const strokeEdge = (xy, width) => strokePath(screenPath(xy, laneOffsetPx(width)));

  function draw() {
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    drawIsochrones();
    const width = lineWidthPx();
    ctx.lineCap = "round"; ctx.lineJoin = "round";
    // Grey roads first, then by growing congestion, so jams are drawn on top.
    const groups = new Map([[NO_DATA, []], ...CLASSES.map((c) => [c, []])]);
    for (const f of S.features) groups.get(classOf(f.p)).push(f);
    const drawn = {};
    for (const [cls, feats] of [[NO_DATA, groups.get(NO_DATA)], ...CLASSES.map((c) => [c, groups.get(c)])]) {
      if (!feats.length) continue;
      ctx.strokeStyle = cls.color;
      ctx.lineWidth = cls === NO_DATA ? width * 0.6 : width;
      for (const f of feats) strokeEdge(f.xy, width);
      drawn[cls.color] = feats.length;
    }
    S.colorsDrawn = drawn;
    drawOverrides(width);
    if (S.selected) {
      ctx.strokeStyle = "#1b1b1b"; ctx.lineWidth = width + 4; strokeEdge(S.selected.xy, width);
      ctx.strokeStyle = classOf(S.selected.p).color; ctx.lineWidth = width + 1; strokeEdge(S.selected.xy, width);
    }
    // Alternatives dashed in grey-blue under the chosen route in solid blue.
    S.routes.forEach((r, i) => {
      if (i === S.routeIndex) return;
      ctx.strokeStyle = "#ffffff"; ctx.lineWidth = width + 5; strokeLine(r.xy);
      ctx.setLineDash([10, 6]); ctx.strokeStyle = ALT_COLOUR; ctx.lineWidth = width + 3; strokeLine(r.xy);
      ctx.setLineDash([]);
    });
    if (S.route) {
      ctx.strokeStyle = "#ffffff"; ctx.lineWidth = width + 6; strokeLine(S.route.xy);
      ctx.strokeStyle = ROUTE_COLOUR; ctx.lineWidth = width + 3; strokeLine(S.route.xy);
    }
    if (S.stepFocus) {
      const [sx, sy] = S.lonLatToScreen(S.stepFocus[0], S.stepFocus[1]);
      ctx.strokeStyle = "#1b1b1b"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(sx, sy, 9, 0, 2 * Math.PI); ctx.stroke();
    }
    if (S.isoPoint) {
      const [sx, sy] = S.lonLatToScreen(S.isoPoint[0], S.isoPoint[1]);
      ctx.fillStyle = ISO_EDGE; ctx.beginPath(); ctx.arc(sx, sy, 6, 0, 2 * Math.PI); ctx.fill();
      ctx.strokeStyle = "#fff"; ctx.lineWidth = 2; ctx.stroke();
    }
    S.routePoints.forEach((pt, i) => {
      const [sx, sy] = S.lonLatToScreen(pt[0], pt[1]);
      ctx.fillStyle = i === 0 ? "#1f5fbf" : "#7a1fbf";
      ctx.beginPath(); ctx.arc(sx, sy, 7, 0, 2 * Math.PI); ctx.fill();
      ctx.fillStyle = "#fff"; ctx.font = "bold 10px system-ui"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
      ctx.fillText(i === 0 ? "A" : "B", sx, sy);
    });
  }

  // Closed edges black and dashed, slowed ones purple and dashed, over their congestion colour.
  function drawOverrides(width) {
    let closed = 0, slowed = 0;
    ctx.setLineDash([Math.max(6, 3 * width), Math.max(4, 2 * width)]);
    ctx.lineCap = "butt";
    for (const f of S.features) {
      if (f.p.closed) {
        ctx.strokeStyle = CLOSED.color; ctx.lineWidth = width + 2; strokeEdge(f.xy, width); closed++;
      } else if (f.p.override_factor !== null && f.p.override_factor !== undefined) {
        ctx.strokeStyle = SLOWED.color; ctx.lineWidth = width + 1; strokeEdge(f.xy, width); slowed++;
      }
    }
    ctx.setLineDash([]); ctx.lineCap = "round";
    S.closedDrawn = closed; S.slowedDrawn = slowed;
  }

  // Isochrone contours filled (largest first, each smaller one on top), outlined.
  function drawIsochrones() {
    S.isoDrawn = 0;
    if (!S.isochrones) return;
    const polys = [...S.isochrones].sort((a, b) => b.minutes - a.minutes);
    for (const iso of polys) {
      ctx.beginPath();
      for (const ring of iso.rings) {
        for (let i = 0; i < ring.length; i += 2) {
          const [sx, sy] = toScreen(ring[i], ring[i + 1]);
          if (i === 0) ctx.moveTo(sx, sy); else ctx.lineTo(sx, sy);
        }
        ctx.closePath();
      }
      ctx.fillStyle = iso.fill; ctx.fill("evenodd");
      ctx.strokeStyle = ISO_EDGE; ctx.lineWidth = 1; ctx.stroke();
      S.isoDrawn += 1;
    }
  }

  function drawLegend() {
    const rows = [...CLASSES, NO_DATA].map((c) =>
      `<div class="swatch" style="background:${c.color}"></div><div>${c.label}</div>`).concat([CLOSED, SLOWED].map((c) =>
      `<div class="swatch dashed" style="border-color:${c.color}"></div><div>${c.label}</div>`));
    $("legend").innerHTML = rows.join("");
  }

  // ------------------------------------------------------------------ text
  const fmtTime = (t) => (t === null || t === undefined ? "\u2013"
    : new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC");
  const kmh = (mps) => (mps === null || mps === undefined ? "\u2013" : `${(mps * 3.6).toFixed(0)} km/h`);
  function fmtDuration(s) {
    const m = Math.floor(s / 60), r = Math.round(s - 60 * m);
    return m ? `${m} min ${r} s` : `${r} s`;
  }
  const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

  function setStatus(err) {
    const el = $("status");
    if (err) {
      el.className = "error";
      el.textContent = err.code === "no_snapshot" ? "no snapshot at that time" : `error: ${err.message}`;
      return;
    }
    el.className = "";
    el.textContent = `${S.source === "snapshot" ? "snapshot" : "live"} \u00b7 as of ${fmtTime(S.asOf)} \u00b7 ` +
      `${S.features.length} roads`;
  }

  function setTimeLabel() {
    $("time-label").textContent = S.live ? `live (${S.times.length} snapshots stored)` : `at ${fmtTime(S.at)}`;
  }

  // ------------------------------------------------------------------ road details
  // The directed edge whose drawn (offset) line passes nearest to (sx, sy), within maxPx.
  function nearestFeature(sx, sy, maxPx) {
    const off = laneOffsetPx(lineWidthPx());
    let best = null, bestD = maxPx * maxPx;
    for (const f of S.features) {
      const pts = screenPath(f.xy, off);
      for (let i = 2; i < pts.length; i += 2) {
        const ax = pts[i - 2], ay = pts[i - 1], dx = pts[i] - ax, dy = pts[i + 1] - ay, len2 = dx * dx + dy * dy;
        const u = len2 > 0 ? Math.max(0, Math.min(1, ((sx - ax) * dx + (sy - ay) * dy) / len2)) : 0;
        const ex = ax + u * dx - sx, ey = ay + u * dy - sy, d = ex * ex + ey * ey;
        if (d < bestD) { bestD = d; best = f; }
      }
    }
    return best;
  }

  function showRoad(f, fetchHistory = true) {
    const p = f.p;
    const rows = [
      ["speed", kmh(p.speed_mps)], ["free-flow speed", kmh(p.freeflow_mps)],
      ["ratio", p.ratio === null ? "\u2013" : `${(100 * p.ratio).toFixed(0)}%`],
      ["confidence", p.confidence === null ? "\u2013" : p.confidence.toFixed(2)],
      ["observations", p.observations], ["as of", fmtTime(p.as_of)], ["edge key", f.id],
    ];
    $("info").innerHTML = "<table>" + rows.map(([k, v]) => `<tr><td>${k}</td><td>${esc(v)}</td></tr>`).join("") +
      "</table><p class=\"hint\" id=\"chart-caption\">speed over the last 3 hours (km/h)</p>";
    if (fetchHistory) loadHistory(f);
  }

  async function loadHistory(f) {
    const to = S.asOf !== null && S.asOf !== undefined ? S.asOf : Date.now() / 1000;
    const q = new URLSearchParams({ edge: f.id, from: String(to - HISTORY_S), to: String(to) });
    try {
      const h = await getJSON(`/v1/congestion/history?${q}`);
      if (!S.selected || S.selected.id !== f.id) return;
      S.history = h;
      drawChart(h.series, f.p.freeflow_mps);
    } catch (err) {
      S.history = null;
      $("chart").hidden = true;
      const cap = $("chart-caption");
      if (cap) cap.textContent = err.code === "no_snapshot" ? "no history stored yet" : `history: ${err.message}`;
    }
  }

  function drawChart(series, freeflowMps) {
    const c = $("chart"), g = c.getContext("2d");
    const t = series.t || [], v = (series.speed_mps || []).map((x) => (x === null ? null : x * 3.6));
    c.hidden = false;
    g.clearRect(0, 0, c.width, c.height);
    const cap = $("chart-caption");
    if (!t.length) { if (cap) cap.textContent = "no history stored for this road yet"; c.hidden = true; return; }
    const ff = freeflowMps * 3.6;
    const vmax = Math.max(ff, ...v.filter((x) => x !== null)) * 1.1 || 1;
    const t0 = t[0], t1 = Math.max(t[t.length - 1], t0 + 60);
    const L = 30, R = 6, T = 6, B = 18, W = c.width - L - R, H = c.height - T - B;
    const X = (x) => L + ((x - t0) / (t1 - t0)) * W, Y = (y) => T + H - (y / vmax) * H;
    g.strokeStyle = "#ccc"; g.lineWidth = 1; g.strokeRect(L, T, W, H);
    g.fillStyle = "#555"; g.font = "10px system-ui"; g.textAlign = "right"; g.textBaseline = "middle";
    g.fillText(vmax.toFixed(0), L - 3, T + 4); g.fillText("0", L - 3, T + H);
    g.textAlign = "left"; g.textBaseline = "top";
    g.fillText(fmtTime(t0).slice(11, 16), L, T + H + 3);
    g.textAlign = "right"; g.fillText(fmtTime(t1).slice(11, 16), L + W, T + H + 3);
    g.setLineDash([4, 3]); g.strokeStyle = "#2e9d47";
    g.beginPath(); g.moveTo(L, Y(ff)); g.lineTo(L + W, Y(ff)); g.stroke(); g.setLineDash([]);
    g.strokeStyle = "#1f5fbf"; g.lineWidth = 1.5; g.beginPath();
    let pen = false;
    t.forEach((ti, i) => {
      if (v[i] === null) { pen = false; return; }
      if (pen) g.lineTo(X(ti), Y(v[i])); else g.moveTo(X(ti), Y(v[i]));
      pen = true;
    });
    g.stroke();
    if (cap) cap.textContent = `speed over the last 3 hours (km/h; dashed: free flow) \u00b7 ${t.length} snapshots`;
  }

  // ------------------------------------------------------------------ routing
  const ALTERNATIVES = 2;
  const fmtDistance = (m) => (m >= 1000 ? `${(m / 1000).toFixed(1)} km` : `${Math.round(m)} m`);
  const lineXY = (coords) => {
    const xy = new Float64Array(coords.length * 2);
    coords.forEach((c, i) => { xy[2 * i] = c[0]; xy[2 * i + 1] = mercY(c[1]); });
    return xy;
  };

  function clearRoute() {
    S.routePoints = []; S.route = null; S.routes = []; S.routeIndex = 0; S.steps = []; S.stepFocus = null;
    $("steps").hidden = true; $("steps").innerHTML = "";
  }

  async function addRoutePoint(lon, lat) {
    if (S.routePoints.length >= 2) clearRoute();
    S.routePoints.push([lon, lat]);
    S.routeError = null;
    $("route-info").innerHTML = S.routePoints.length === 1 ? "<p class=\"hint\">Now click the destination (B).</p>" : "";
    draw();
    if (S.routePoints.length < 2) return;
    const [a, b] = S.routePoints;
    const q = new URLSearchParams({ from: `${a[1].toFixed(6)},${a[0].toFixed(6)}`, to: `${b[1].toFixed(6)},${b[0].toFixed(6)}`,
                                    alternatives: String(ALTERNATIVES), steps: "true" });
    try {
      const r = await getJSON(`/v1/route?${q}`);
      S.routes = [r, ...(r.alternatives || [])].map((x, i) => ({
        xy: lineXY(x.geometry.coordinates), duration_s: x.duration_s, freeflow_duration_s: x.freeflow_duration_s,
        distance_m: x.distance_m, summary: x.summary || "", weights_t: r.weights_t,
        steps: (x.legs || []).flatMap((leg) => leg.steps || []), alternative: i > 0,
      }));
      selectRoute(0);
    } catch (err) {
      S.route = null; S.routes = []; S.routeError = err.message;
      $("route-info").innerHTML = `<p class="hint">no route: ${esc(err.message)}</p>`;
      $("steps").hidden = true;
    }
    draw();
  }

  // Show route i (0: the fastest; then the alternatives): its ETA, the list of routes, its steps.
  function selectRoute(i) {
    S.routeIndex = i; S.route = S.routes[i]; S.stepFocus = null;
    const r = S.route, best = S.routes[0];
    const delay = r.duration_s - r.freeflow_duration_s;
    const rows = S.routes.map((x, k) => {
      const extra = k === 0 ? "fastest" : `+${fmtDuration(Math.max(0, x.duration_s - best.duration_s))}`;
      return `<button class="route-row${k === i ? " active" : ""}" data-route="${k}">` +
        `<span class="line${k ? " alt" : ""}"></span><span class="what">${k ? `Alternative ${k}` : "Route"} \u00b7 ` +
        `${fmtDuration(x.duration_s)} \u00b7 ${fmtDistance(x.distance_m)} (${extra})` +
        (x.summary ? `<br><span class="summary">via ${esc(x.summary)}</span>` : "") + "</span></button>";
    });
    $("route-info").innerHTML = `<div class="eta" id="eta">ETA ${fmtDuration(r.duration_s)}</div><table>` +
      `<tr><td>free-flow ETA</td><td id="eta-freeflow">${fmtDuration(r.freeflow_duration_s)}</td></tr>` +
      `<tr><td>delay</td><td>${delay >= 0 ? "+" : "\u2212"}${fmtDuration(Math.abs(delay))}</td></tr>` +
      `<tr><td>distance</td><td>${(r.distance_m / 1000).toFixed(2)} km</td></tr>` +
      `<tr><td>travel times of</td><td>${fmtTime(r.weights_t)}</td></tr></table>` +
      `<div id="route-list">${rows.join("")}</div>` +
      (S.routes.length === 1 ? "<p class=\"hint\">no alternative route worth taking</p>" : "");
    document.querySelectorAll("#route-list .route-row").forEach((el) => {
      el.onclick = () => { selectRoute(Number(el.dataset.route)); draw(); };
    });
    S.steps = r.steps;
    const ol = $("steps");
    ol.innerHTML = r.steps.map((st, k) => `<li data-step="${k}"><span class="instr">${esc(st.instruction)}</span>` +
      (st.distance_m > 0 ? `<span class="dist">${fmtDistance(st.distance_m)} \u00b7 ${fmtDuration(st.duration_s)}</span>` : "") +
      "</li>").join("");
    ol.hidden = r.steps.length === 0;
    ol.querySelectorAll("li").forEach((li) => {
      li.onclick = () => {
        ol.querySelectorAll("li.active").forEach((x) => x.classList.remove("active"));
        li.classList.add("active");
        const m = r.steps[Number(li.dataset.step)].maneuver;
        S.stepFocus = m && m.location ? m.location : null;
        draw();
      };
    });
  }
  S.selectRoute = (i) => { selectRoute(i); draw(); };

  // ------------------------------------------------------------------ isochrones
  function isoMinutes() {
    return $("iso-minutes").value.split(",").map((v) => v.trim()).filter((v) => v !== "").join(",");
  }

  async function loadIsochrone(lon, lat) {
    S.isoPoint = [lon, lat]; S.isochrones = null; S.isoError = null;
    $("iso-info").innerHTML = "<p class=\"hint\">computing the reachable area&hellip;</p>";
    draw();
    const q = new URLSearchParams({ from: `${lat.toFixed(6)},${lon.toFixed(6)}`, minutes: isoMinutes() });
    try {
      const fc = await getJSON(`/v1/isochrone?${q}`);
      const byMin = [...fc.features].sort((a, b) => a.properties.minutes - b.properties.minutes);
      S.isochrones = byMin.map((f, k) => {
        const g = f.geometry, polys = g.type === "Polygon" ? [g.coordinates] : g.type === "MultiPolygon" ? g.coordinates : [];
        const rings = polys.flat().map(lineXY);
        return { minutes: f.properties.minutes, area_km2: f.properties.area_km2, rings,
                 fill: ISO_FILLS[Math.min(k, ISO_FILLS.length - 1)] };
      });
      $("iso-info").innerHTML = "<h2>Reachable from the point</h2><table>" + S.isochrones.map((c) =>
        `<tr><td><span class="swatch" style="background:${c.fill}"></span></td><td>within ${c.minutes} min</td>` +
        `<td>${Number(c.area_km2).toFixed(2)} km\u00b2</td></tr>`).join("") + "</table>";
    } catch (err) {
      S.isochrones = null; S.isoError = err.message;
      $("iso-info").innerHTML = `<p class="hint">no isochrone: ${esc(err.message)}</p>`;
    }
    draw();
  }

  // ------------------------------------------------------------------ closures
  async function loadClosures() {
    try {
      const body = await getJSON("/v1/closures");
      S.closures = body.closures || [];
    } catch (err) { S.closures = []; return; }
    const now = S.asOf !== null && S.asOf !== undefined ? S.asOf : Date.now() / 1000;
    const rows = S.closures.map((c) => {
      const what = c.kind === "closure" ? "closed" : `slowed \u00d7${Number(c.factor).toFixed(1)}`;
      const when = c.start_t > now ? `from ${fmtTime(c.start_t).slice(11, 16)}` : `until ${fmtTime(c.end_t).slice(11, 16)}`;
      return `<tr><td>${what}</td><td>${esc(c.reason || "\u2013")}</td><td>${c.n_edges ?? ""} roads</td><td>${when}</td></tr>`;
    });
    $("closures").innerHTML = rows.length ? `<h2>Operator closures (${rows.length})</h2><table>${rows.join("")}</table>` : "";
  }

  // ------------------------------------------------------------------ interaction
  let drag = null, fetchTimer = null;
  const scheduleFetch = () => { clearTimeout(fetchTimer); fetchTimer = setTimeout(loadCongestion, 250); };

  canvas.addEventListener("mousedown", (e) => {
    drag = { x: e.clientX, y: e.clientY, cx: S.view.cx, cy: S.view.cy, moved: false };
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (!drag.moved && dx * dx + dy * dy < 16) return;
    drag.moved = true; canvas.classList.add("dragging");
    S.view.cx = drag.cx - dx / S.view.scale; S.view.cy = drag.cy + dy / S.view.scale;
    draw();
  });
  window.addEventListener("mouseup", (e) => {
    if (!drag) return;
    const wasDrag = drag.moved;
    drag = null; canvas.classList.remove("dragging");
    if (wasDrag) { scheduleFetch(); return; }
    const rect = canvas.getBoundingClientRect();
    onClick(e.clientX - rect.left, e.clientY - rect.top);
  });

  function onClick(sx, sy) {
    if (S.mode === "route" || S.mode === "iso") {
      const [lon, lat] = S.screenToLonLat(sx, sy);
      if (S.mode === "route") addRoutePoint(lon, lat); else loadIsochrone(lon, lat);
      return;
    }
    const f = nearestFeature(sx, sy, 8);
    S.selected = f; S.history = null;
    $("chart").hidden = true;
    if (f) showRoad(f); else $("info").innerHTML = "<p class=\"hint\">No road there; click closer to a road.</p>";
    draw();
  }

  function zoomAt(factor, sx, sy) {
    const [x, y] = fromScreen(sx, sy);
    S.view.scale = Math.min(5e7, Math.max(1, S.view.scale * factor));
    const [x2, y2] = fromScreen(sx, sy);
    S.view.cx += x - x2; S.view.cy += y - y2;
    draw(); scheduleFetch();
  }
  // Centre the view on (lon, lat) at `scale` screen px per projected degree (tests, debugging).
  S.centerOn = (lon, lat, scale) => {
    S.view = { cx: lon, cy: mercY(lat), scale: Math.min(5e7, Math.max(1, scale || S.view.scale)) };
    draw(); scheduleFetch();
  };
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect();
    zoomAt(Math.pow(1.2, -e.deltaY / 100), e.clientX - rect.left, e.clientY - rect.top);
  }, { passive: false });
  $("zoom-in").onclick = () => zoomAt(1.5, canvas.clientWidth / 2, canvas.clientHeight / 2);
  $("zoom-out").onclick = () => zoomAt(1 / 1.5, canvas.clientWidth / 2, canvas.clientHeight / 2);
  $("zoom-fit").onclick = () => { if (S.bbox) { fit(S.bbox); draw(); scheduleFetch(); } };

  function setMode(mode) {
    S.mode = mode;
    $("mode-inspect").classList.toggle("active", mode === "inspect");
    $("mode-route").classList.toggle("active", mode === "route");
    $("mode-iso").classList.toggle("active", mode === "iso");
    $("iso-controls").hidden = mode !== "iso";
    canvas.classList.toggle("route-mode", mode === "route" || mode === "iso");
    if (mode === "route" && !S.routePoints.length) $("route-info").innerHTML = "<p class=\"hint\">Click the start (A), then the destination (B).</p>";
    if (mode === "iso" && !S.isochrones) $("iso-info").innerHTML = "<p class=\"hint\">Click a point: the areas reachable from it within each number of minutes, on live travel times.</p>";
  }
  $("mode-inspect").onclick = () => setMode("inspect");
  $("mode-route").onclick = () => setMode("route");
  $("mode-iso").onclick = () => setMode("iso");
  $("iso-minutes").onchange = () => { if (S.isoPoint) loadIsochrone(S.isoPoint[0], S.isoPoint[1]); };
  $("iso-clear").onclick = () => { S.isoPoint = null; S.isochrones = null; $("iso-info").innerHTML = ""; draw(); };

  $("live").onchange = (e) => {
    S.live = e.target.checked;
    if (S.live) { S.at = null; $("slider").value = $("slider").max; }
    else if (S.times.length) S.at = S.times[Number($("slider").value)];
    setTimeLabel(); loadCongestion();
  };
  $("slider").oninput = (e) => {
    if (!S.times.length) return;
    S.live = false; $("live").checked = false;
    S.at = S.times[Number(e.target.value)];
    setTimeLabel(); scheduleFetch();
  };

  window.addEventListener("resize", () => { resize(); draw(); scheduleFetch(); });

  // ------------------------------------------------------------------ start
  async function start() {
    resize(); drawLegend();
    try {
      const net = await getJSON("/v1/network");
      S.bbox = net.bbox;
      fit(net.bbox);
    } catch (err) { S.lastError = err.message; setStatus(err); }
    await Promise.all([loadTimes(), loadCongestion(), loadClosures()]);
    setInterval(() => { loadTimes(); loadClosures(); if (S.live) loadCongestion(); }, REFRESH_MS);
  }
  start();
})();
