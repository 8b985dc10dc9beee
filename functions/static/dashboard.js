"use strict";
// The operations page: polls /api/status and /api/critical, searches a device's latest state and history.
// Every value from the API is put into the page as text (textContent, SVG attributes), never as HTML.
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const code = new URLSearchParams(location.search).get("code");
  const base = location.pathname.replace(/\/dashboard\/?$/, "");
  let refreshMs = 5000;
  const seenCritical = new Set();
  let history = [];

  function api(path, params) {
    const url = new URL(base + path, location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    if (code) url.searchParams.set("code", code);
    return fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" }).then(async (r) => {
      const body = await r.json().catch(() => null);
      if (!r.ok) throw new Error((body && body.message) || ("HTTP " + r.status));
      return body;
    });
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function fmt(value, unit) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") return (Number.isInteger(value) ? value.toLocaleString("en") : value.toFixed(1)) + (unit || "");
    return String(value);
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 120) return value.toFixed(1) + " s";
    if (value < 7200) return (value / 60).toFixed(1) + " min";
    return (value / 3600).toFixed(1) + " h";
  }

  // -- tiles and throughput chart ---------------------------------------------------------------
  function tileValues(s) {
    const t = s.throughput || {};
    return {
      events_per_second: fmt(t.events_per_second),
      lag: s.lag && s.lag.total !== null && s.lag.total !== undefined ? fmt(s.lag.total) : "n/a",
      delay_p99_ms: t.delay_p99_ms === null || t.delay_p99_ms === undefined ? "–" : fmt(t.delay_p99_ms, " ms"),
      feed_staleness: seconds(s.change_feed && s.change_feed.staleness_seconds),
      enrichment_freshness: seconds(s.enrichment && s.enrichment.freshness_seconds),
      dead_letters: s.dead_letters && s.dead_letters.last_hour !== undefined
        ? fmt(s.dead_letters.last_hour) + (s.dead_letters.capped ? "+" : "") : "–",
      hit_rate: s.cache && s.cache.hit_rate !== null && s.cache.hit_rate !== undefined
        ? (s.cache.hit_rate * 100).toFixed(1) + " %" : "–",
    };
  }
  window.sluiceTileValues = tileValues; // the browser test compares the tiles with /api/status through it

  function renderStatus(s) {
    window.sluiceLastStatus = s;
    const values = tileValues(s);
    for (const node of document.querySelectorAll("[data-tile]")) node.textContent = values[node.dataset.tile];
    const lagTile = document.querySelector('[data-tile="lag"]');
    lagTile.title = s.lag && s.lag.status === "not_configured" ? "no lag reader is configured" : "";
    document.getElementById("updated").textContent = "updated " + new Date(s.generated_at).toLocaleTimeString();
    const deps = document.getElementById("deps");
    deps.replaceChildren();
    for (const [name, dep] of Object.entries(s.dependencies || {})) {
      if (name === "status" || typeof dep !== "object") continue;
      deps.append(el("span", name + " " + dep.status + " ", dep.status === "up" ? "up" : "down"));
    }
    drawThroughput((s.throughput && s.throughput.series) || []);
    if (s.refresh_seconds) refreshMs = s.refresh_seconds * 1000;
    if (window.sluiceFirstRenderMs === undefined) window.sluiceFirstRenderMs = performance.now();
  }

  function scale(values, height, pad) {
    const max = Math.max(1, ...values.filter((v) => v !== null));
    return (v) => height - pad - (v / max) * (height - 2 * pad);
  }

  function drawLine(chart, points, cls) {
    if (points.length) chart.append(svg("polyline", { class: cls, points: points.map((p) => p.join(",")).join(" ") }));
  }

  function drawThroughput(series) {
    const chart = document.getElementById("throughput-chart");
    chart.replaceChildren();
    if (!series.length) return;
    const w = 600, h = 200, step = w / Math.max(1, series.length - 1);
    const y1 = scale(series.map((b) => b.events_per_second), h, 14);
    const y2 = scale(series.map((b) => b.delay_p99_ms), h, 14);
    drawLine(chart, series.map((b, i) => [i * step, y1(b.events_per_second)]), "l1");
    const delays = series.filter((b) => b.delay_p99_ms !== null).map((b) => [series.indexOf(b) * step, y2(b.delay_p99_ms)]);
    drawLine(chart, delays, "l2");
    for (const [x, y] of delays) chart.append(svg("circle", { cx: x, cy: y, r: 3, class: "pt2" }));
    const peak = Math.max(...series.map((b) => b.events_per_second));
    const peakDelay = Math.max(0, ...series.map((b) => b.delay_p99_ms || 0));
    document.getElementById("throughput-scale").textContent =
      "top of the chart: " + peak.toFixed(1) + " events/s, " + peakDelay.toFixed(0) + " ms";
  }

  // -- critical feed --------------------------------------------------------------------------
  function renderCritical(body) {
    const feed = document.getElementById("critical-feed");
    const fresh = body.events.filter((e) => !seenCritical.has(e.event_id)).reverse();
    for (const event of fresh) {
      seenCritical.add(event.event_id);
      const item = el("li");
      item.dataset.eventId = event.event_id;
      item.append(el("time", new Date(event.timestamp).toLocaleTimeString()), el("span", event.device_id, "dev"),
        el("span", " " + event.event_type + " · " + event.severity + " "),
        el("span", Object.entries(event.measurements || {}).map(([k, v]) => k + "=" + v).join(", ")),
        el("span", " " + Object.entries(event.attributes || {}).map(([k, v]) => k + ": " + v).join(", "), "muted"));
      feed.prepend(item);
    }
    while (feed.children.length > 50) feed.lastChild.remove();
    document.getElementById("critical-empty").hidden = feed.children.length > 0;
  }

  // -- device search --------------------------------------------------------------------------
  function renderLatest(event) {
    const list = document.getElementById("device-latest");
    list.replaceChildren();
    const rows = [["device", event.device_id], ["last event", event.timestamp], ["type", event.event_type],
      ["severity", event.severity], ...Object.entries(event.measurements || {}), ...Object.entries(event.attributes || {})];
    for (const [k, v] of rows) list.append(el("dt", k), el("dd", v));
  }

  function measurements(events) {
    const names = new Set();
    for (const e of events) for (const k of Object.keys(e.measurements || {})) names.add(k);
    return [...names].sort();
  }

  function drawHistory() {
    const chart = document.getElementById("history-chart");
    const name = document.getElementById("measurement").value;
    chart.replaceChildren();
    const points = history.filter((e) => e.measurements && typeof e.measurements[name] === "number")
      .map((e) => ({ t: Date.parse(e.timestamp), v: e.measurements[name], id: e.event_id }))
      .sort((a, b) => a.t - b.t);
    const desc = document.getElementById("history-desc");
    if (!points.length) { desc.textContent = "No values of this measurement in the last 24 hours."; return; }
    const w = 600, h = 200, pad = 14;
    const t0 = points[0].t, t1 = points[points.length - 1].t || t0 + 1;
    const vs = points.map((p) => p.v), lo = Math.min(...vs), hi = Math.max(...vs);
    const x = (t) => pad + (t1 === t0 ? (w - 2 * pad) / 2 : ((t - t0) / (t1 - t0)) * (w - 2 * pad));
    const y = (v) => h - pad - (hi === lo ? (h - 2 * pad) / 2 : ((v - lo) / (hi - lo)) * (h - 2 * pad));
    drawLine(chart, points.map((p) => [x(p.t), y(p.v)]), "l1");
    for (const p of points) {
      const dot = svg("circle", { cx: x(p.t), cy: y(p.v), r: 3, class: "pt", "data-t": p.t, "data-v": p.v, "data-id": p.id });
      const tip = svg("title");
      tip.textContent = new Date(p.t).toISOString() + " " + name + " = " + p.v;
      dot.append(tip);
      chart.append(dot);
    }
    desc.textContent = points.length + " values of " + name + ", from " + lo + " to " + hi + ".";
  }

  async function searchDevice(ev) {
    ev.preventDefault();
    const id = document.getElementById("device-id").value.trim();
    const error = document.getElementById("device-error");
    error.textContent = "";
    try {
      const latest = await api("/devices/" + encodeURIComponent(id) + "/latest");
      renderLatest(latest);
      history = [];
      let page = null;
      for (let i = 0; i < 20; i++) {
        const body = await api("/devices/" + encodeURIComponent(id) + "/events", { limit: 1000, page });
        history.push(...body.events);
        page = body.next_page;
        if (!page) break;
      }
      const select = document.getElementById("measurement");
      const chosen = select.value;
      select.replaceChildren(...measurements(history).map((m) => { const o = el("option", m); o.value = m; return o; }));
      if (chosen && [...select.options].some((o) => o.value === chosen)) select.value = chosen;
      drawHistory();
    } catch (err) {
      error.textContent = String(err.message || err);
      document.getElementById("device-latest").replaceChildren();
      document.getElementById("history-chart").replaceChildren();
    }
  }

  // -- sites ----------------------------------------------------------------------------------
  function renderSites(body) {
    document.getElementById("sites-empty").hidden = body.rows.length > 0;
    const tbody = document.querySelector("#sites tbody");
    tbody.replaceChildren(...body.rows.map((r) => {
      const tr = el("tr");
      tr.append(el("td", r.local_day), el("td", r.site_name || r.site_id), el("td", r.region || ""),
        el("td", fmt(r.event_count), "num"), el("td", fmt(r.critical_count), "num"), el("td", fmt(r.peak_active_devices), "num"));
      return tr;
    }));
  }

  // -- polling --------------------------------------------------------------------------------
  // The status and the critical feed are fetched together but shown apart: the feed is Redis's, and a Redis
  // outage must not hide the status of everything else (which says that Redis is down).
  async function poll() {
    try {
      const [status, critical] = await Promise.allSettled([api("/status"), api("/critical", { limit: 50 })]);
      if (status.status === "fulfilled") renderStatus(status.value);
      else document.getElementById("updated").textContent = "status unavailable: " + (status.reason.message || status.reason);
      const problem = document.getElementById("critical-error");
      problem.hidden = critical.status === "fulfilled";
      if (critical.status === "fulfilled") renderCritical(critical.value);
      else {
        problem.textContent = "critical events unavailable: " + (critical.reason.message || critical.reason);
        document.getElementById("critical-empty").hidden = true;  // not "none yet": unknown
      }
    } finally {
      setTimeout(poll, refreshMs);
    }
  }

  async function pollSites() {
    try { renderSites(await api("/reports/sites", { limit: 30 })); } catch (err) { /* shown empty */ }
    setTimeout(pollSites, 60000);
  }

  document.getElementById("device-form").addEventListener("submit", searchDevice);
  document.getElementById("measurement").addEventListener("change", drawHistory);
  poll();
  pollSites();
})();
