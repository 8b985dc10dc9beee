"use strict";
// The operations page: polls /api/status and /api/critical, searches a device's latest state and history.
// Every value from the API is put into the page as text (textContent, SVG attributes), never as HTML.
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  // the host takes the key as code in any case (?Code=, ?CODE=): the first such parameter, as it does
  const code = [...new URLSearchParams(location.search)].find(([name]) => name.toLowerCase() === "code")?.[1] ?? null;
  const base = location.pathname.replace(/\/dashboard\/?$/i, "");  // routes are case-insensitive: /api/Dashboard
  const REQUEST_TIMEOUT_MS = 20000;  // a request that never answers must not stop the polling
  const HISTORY_PAGES = 20, HISTORY_PAGE_SIZE = 1000;  // a chart holds at most the newest 20,000 events
  const FEED_SIZE = 50;
  const SITE_ROWS = 30;  // the site table shows the newest 30 rows of report_site_daily
  let refreshMs = 5000;
  const criticalCopies = new WeakMap();  // an item of the feed -> the event it shows (JSON), to see it corrected
  let device = null;  // the device shown: {id, events, partial, from, to (the range read)}; null when none is
  let search = null;  // the AbortController of the search in flight: a newer search aborts it
  let statusReadAt = null, sitesReadAt = null, criticalReadAt = null;

  // An error of a route carries the message of its 400/404/503 JSON body (naming the dependency), or the HTTP status,
  // and the status itself (err.status).
  // A 2xx whose body is not JSON (cut off by a pod stopped mid-answer or a gateway, or not the app's) is an error too.
  function api(path, params, signal) {
    const url = new URL(base + path, location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    if (code) url.searchParams.set("code", code);
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; controller.abort(); }, REQUEST_TIMEOUT_MS);
    const cancel = () => controller.abort();
    if (signal) {
      if (signal.aborted) controller.abort();
      else signal.addEventListener("abort", cancel, { once: true });
    }
    return fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", signal: controller.signal })
      .then(async (r) => {
        const body = await r.json().catch(() => undefined);
        if (!r.ok) {
          const err = new Error(naming(body && body.dependency, (body && body.message) || ("HTTP " + r.status)));
          err.status = r.status;  // a search tells "no latest state" (404) from a store that failed
          throw err;
        }
        if (body === undefined) throw new Error("the answer (HTTP " + r.status + ") was cut off or is not JSON");
        return body;
      })
      .catch((err) => {
        if (timedOut) throw new Error("no answer within " + REQUEST_TIMEOUT_MS / 1000 + " s");
        throw err;
      })
      .finally(() => {
        clearTimeout(timer);
        if (signal) signal.removeEventListener("abort", cancel);
      });
  }

  // "<dependency>: <message>", unless the message names its dependency already ("redis unavailable: ...").
  function naming(dependency, text) {
    return dependency && !String(text).includes(dependency) ? dependency + ": " + text : String(text);
  }

  // A device id as one path segment. new URL() and fetch remove the segments "." and ".." (valid device ids) as
  // dot-segments, and "%2E" and "%2E%2E" too: those two ids are encoded twice ("%252E"), which the route reads as
  // the dots (functions/parameters.py, docs/api.md).
  function devicePath(id) {
    return "/devices/" + (id === "." || id === ".." ? id.replace(/\./g, "%252E") : encodeURIComponent(id));
  }

  function message(err) {
    return String((err && err.message) || err);
  }

  // A live region (role=status) announces every change of its text: it is set only when the text changes.
  function say(node, text) {
    if (node.textContent !== text) node.textContent = text;
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

  // Numbers: integers grouped, others to one decimal, but a non-zero value under 0.1 keeps two significant
  // digits (0.03 events/s is not "0.0": one or two events a minute still arrive).
  function fmt(value, unit) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    let text;
    if (Number.isInteger(value)) text = value.toLocaleString("en");
    else if (Math.abs(value) < 0.1) text = String(Number(value.toPrecision(2)));
    else text = value.toFixed(1);
    return text + (unit || "");
  }

  // A rate as a percentage to one decimal, but never rounded to 100.0 % or 0.0 % when it is not that: 99.96 % is
  // ">99.9 %" (some reads still miss), 0.04 % is "<0.1 %".
  function percent(rate) {
    const p = rate * 100;
    if (p > 99.9 && p < 100) return ">99.9 %";
    if (p > 0 && p < 0.1) return "<0.1 %";
    return p.toFixed(1) + " %";
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 120) return value.toFixed(1) + " s";
    if (value < 7200) return (value / 60).toFixed(1) + " min";
    return (value / 3600).toFixed(1) + " h";
  }

  // Every time on the page is a date and time in UTC, said so: "2026-11-23 09:30:01 UTC".
  function when(value) {
    const t = typeof value === "number" ? value : Date.parse(value);
    if (!Number.isFinite(t)) return String(value);
    return new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  // How long ago, by this browser's clock.
  function ago(value) {
    const s = (Date.now() - Date.parse(value)) / 1000;
    if (!Number.isFinite(s)) return "";
    if (s < -60) return "in the future";
    if (s < 60) return "under a minute ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }

  // -- tiles and throughput chart ---------------------------------------------------------------
  // A section of /api/status in error is {"error": "...", "dependency": "..."} (docs/api.md): its tiles say
  // "error", never "–" (no data) or "n/a" (not configured), and the error is listed under the tiles.
  const TILE_SECTION = { events_per_second: "throughput", lag: "lag", delay_p99_ms: "throughput",
    feed_staleness: "change_feed", enrichment_freshness: "enrichment", dead_letters: "dead_letters", hit_rate: "cache" };
  const SECTION_LABEL = { throughput: "throughput", lag: "lag", change_feed: "change feed", enrichment: "enrichment",
    dead_letters: "dead letters", cache: "cache hit rate", dependencies: "health checks" };

  function failed(section) {
    return section && typeof section === "object" && typeof section.error === "string" ? section : null;
  }

  function problem(name, section) {
    return SECTION_LABEL[name] + ": " + naming(section.dependency, section.error);
  }

  // KEDA cannot read the checkpoint of a partition (docs/api.md): that partition's lag is unknown and counted in
  // no total, the autoscaler is on its fallback. Not the normal figure: "unknown" when no partition could be read,
  // else the readable partitions' total with "+"; the tile is marked and the problem listed under the tiles.
  function unreadableLag(s) {
    const lag = s.lag;
    return lag && !failed(lag) && lag.status === "checkpoint_unreadable" ? lag : null;
  }

  function lagProblem(lag) {
    const why = Object.entries(lag.unreadable || {}).map(([p, text]) => "partition " + p + " (" + text + ")");
    return SECTION_LABEL.lag + ": KEDA cannot read the checkpoint of " + (why.join(", ") || "a partition") +
      "; the autoscaler is on its fallback and the lag of " + (why.length === 1 ? "that partition" : "those partitions") +
      " is unknown";
  }

  function tileValues(s) {
    const t = s.throughput || {};
    const unknownLag = unreadableLag(s);
    const values = {
      events_per_second: fmt(t.events_per_second),
      lag: unknownLag ? (Object.keys(unknownLag.partitions || {}).length ? fmt(unknownLag.total) + "+" : "unknown")
        : s.lag && s.lag.total !== null && s.lag.total !== undefined ? fmt(s.lag.total) : "n/a",
      delay_p99_ms: t.delay_p99_ms === null || t.delay_p99_ms === undefined ? "–" : fmt(t.delay_p99_ms, " ms"),
      feed_staleness: seconds(s.change_feed && s.change_feed.staleness_seconds),
      enrichment_freshness: seconds(s.enrichment && s.enrichment.freshness_seconds),
      dead_letters: s.dead_letters && s.dead_letters.last_hour !== undefined
        ? fmt(s.dead_letters.last_hour) + (s.dead_letters.capped ? "+" : "") : "–",
      hit_rate: s.cache && s.cache.hit_rate !== null && s.cache.hit_rate !== undefined
        ? percent(s.cache.hit_rate) : "–",
    };
    for (const [tile, name] of Object.entries(TILE_SECTION)) if (failed(s[name])) values[tile] = "error";
    return values;
  }
  window.sluiceTileValues = tileValues; // the browser test compares the tiles with /api/status through it

  // The list under the tiles is the page's live region: it changes (and is announced) only when a problem
  // appears, changes or goes, never on a routine poll.
  function showProblems(lines) {
    const list = document.getElementById("status-problems");
    if ([...list.children].map((li) => li.textContent).join("\n") === lines.join("\n")) return;
    list.replaceChildren(...lines.map((line) => el("li", line)));
  }

  // An answer of another shape throws (here or while drawing it): the poll counts it as failed.
  function renderStatus(s) {
    if (!s || typeof s !== "object" || !Number.isFinite(Date.parse(s.generated_at))) {
      throw new Error("the answer is not a status (no generated_at)");
    }
    const values = tileValues(s);
    for (const node of document.querySelectorAll("[data-tile]")) {
      const name = TILE_SECTION[node.dataset.tile], section = failed(s[name]);
      const unknownLag = name === "lag" ? unreadableLag(s) : null;
      node.textContent = values[node.dataset.tile];
      node.classList.toggle("down", Boolean(section || unknownLag));
      node.title = section ? problem(name, section)
        : unknownLag ? lagProblem(unknownLag)
        : name === "lag" && s.lag && s.lag.status === "not_configured" ? "no lag reader is configured" : "";
    }
    document.getElementById("updated").textContent = "updated " + when(s.generated_at);
    const lines = Object.keys(SECTION_LABEL).filter((name) => failed(s[name])).map((name) => problem(name, s[name]));
    if (unreadableLag(s)) lines.push(lagProblem(s.lag));
    showProblems(lines);
    // The health checks' dependencies, then those of the sections in error (storage, Event Hubs, PostgreSQL).
    const deps = document.getElementById("deps");
    const shown = new Map();
    for (const [name, dep] of Object.entries(s.dependencies || {})) {
      if (name !== "status" && dep && typeof dep === "object") shown.set(name, dep.status);
    }
    for (const name of Object.keys(SECTION_LABEL)) {
      const section = failed(s[name]);
      // a dependency still being connected to (the process's first check) stays "connecting", not "error"
      if (section && section.dependency && !["down", "connecting"].includes(shown.get(section.dependency))) {
        shown.set(section.dependency, "error");
      }
    }
    deps.replaceChildren(...[...shown].map(([name, state]) =>
      el("span", name + " " + state + " ", state === "up" ? "up" : state === "connecting" ? "pending" : "down")));
    drawThroughput(s.throughput);
    document.body.classList.remove("status-stale");
    window.sluiceLastStatus = s;
    statusReadAt = s.generated_at;
    if (s.refresh_seconds) refreshMs = s.refresh_seconds * 1000;
    if (window.sluiceFirstRenderMs === undefined) window.sluiceFirstRenderMs = performance.now();
  }

  function statusFailed(text) {
    document.body.classList.add("status-stale");
    document.getElementById("updated").textContent = statusReadAt ? "not updated since " + when(statusReadAt) : "status unavailable";
    showProblems(["status unavailable: " + text + (statusReadAt ? "; the figures shown are of " + when(statusReadAt) : "")]);
  }

  // The top of the chart is the largest value, at least 1: the caption names that top, the value drawn there.
  function scale(values, height, pad) {
    const top = Math.max(1, ...values.filter((v) => v !== null && v !== undefined));
    return { top, y: (v) => height - pad - (v / top) * (height - 2 * pad) };
  }

  function drawLine(chart, points, cls) {
    if (points.length) chart.append(svg("polyline", { class: cls, points: points.map((p) => p.join(",")).join(" ") }));
  }

  function drawThroughput(t) {
    const chart = document.getElementById("throughput-chart");
    const caption = document.getElementById("throughput-scale");
    chart.replaceChildren();
    const section = failed(t);
    if (section) { caption.textContent = problem("throughput", section); return; }
    const series = (t && t.series) || [];
    if (!series.length) { caption.textContent = "no arrival buckets yet"; return; }
    const w = 600, h = 200, step = w / Math.max(1, series.length - 1);
    const rate = scale(series.map((b) => b.events_per_second), h, 14);
    const delay = scale(series.map((b) => b.delay_p99_ms), h, 14);
    drawLine(chart, series.map((b, i) => [i * step, rate.y(b.events_per_second)]), "l1");
    const delays = [];
    series.forEach((b, i) => { if (b.delay_p99_ms !== null && b.delay_p99_ms !== undefined) delays.push([i * step, delay.y(b.delay_p99_ms)]); });
    drawLine(chart, delays, "l2");
    for (const [x, y] of delays) chart.append(svg("circle", { cx: x, cy: y, r: 3, class: "pt2" }));
    caption.textContent = "top of the chart: " + fmt(rate.top) + " events/s, " + fmt(delay.top) + " ms";
  }

  // -- critical feed --------------------------------------------------------------------------
  // Drawn from each answer, by event id: an event the answer no longer lists leaves (corrected into one that is not
  // critical), one whose copy changed (a correction) gets a new item, and an unchanged one keeps its item where it
  // is, so the live region (additions only) announces new and corrected events, never the whole feed again.
  function criticalItem(event) {
    const item = el("li");
    item.dataset.eventId = event.event_id;
    const time = el("time", when(event.timestamp));
    time.dateTime = event.timestamp;
    const age = el("span", null, "age muted");
    age.append(document.createTextNode(""));
    item.append(time, age, el("span", event.device_id, "dev"),
      el("span", " " + event.event_type + " · " + event.severity + " "),
      el("span", Object.entries(event.measurements || {}).map(([k, v]) => k + "=" + v).join(", ")),
      el("span", " " + Object.entries(event.attributes || {}).map(([k, v]) => k + ": " + v).join(", "), "muted"));
    return item;
  }

  function renderCritical(body) {
    if (!body || !Array.isArray(body.events)) throw new Error("the answer is not a list of events");
    const feed = document.getElementById("critical-feed");
    const shown = new Map([...feed.children].map((li) => [li.dataset.eventId, li]));
    const items = [], listed = new Set();
    for (const event of body.events) {
      if (listed.has(event.event_id) || items.length >= FEED_SIZE) continue;
      listed.add(event.event_id);
      const copy = JSON.stringify(event), old = shown.get(event.event_id);
      const item = old && criticalCopies.get(old) === copy ? old : criticalItem(event);
      criticalCopies.set(item, copy);
      items.push(item);
    }
    const keep = new Set(items);
    for (const li of [...feed.children]) if (!keep.has(li)) li.remove();
    let next = feed.firstChild;  // the items before it are in the answer's order
    for (const item of items) {
      if (item === next) next = next.nextSibling;
      else feed.insertBefore(item, next);  // new, corrected, or (rarely) moved
    }
    document.getElementById("critical-loading").hidden = true;
    document.getElementById("critical-empty").hidden = feed.children.length > 0;
  }

  // The ages of the feed's events and of the device's last event move on every poll, whether or not its reads
  // succeed: a change of text, which the feed's live region (additions only) does not announce.
  function refreshAges() {
    for (const li of document.getElementById("critical-feed").children) {
      li.querySelector(".age").firstChild.nodeValue = ago(li.querySelector("time").dateTime) + " ";
    }
    for (const node of document.querySelectorAll("#device-latest [data-since]")) {
      say(node, when(node.dataset.since) + " (" + ago(node.dataset.since) + ")");
    }
  }

  // -- device search --------------------------------------------------------------------------
  function renderLatest(event) {
    const list = document.getElementById("device-latest");
    list.replaceChildren();
    const last = el("dd", when(event.timestamp) + " (" + ago(event.timestamp) + ")");
    last.dataset.since = event.timestamp;  // its age is refreshed with the feed's (refreshAges)
    list.append(el("dt", "device"), el("dd", event.device_id), el("dt", "last event"), last);
    const rows = [["type", event.event_type], ["severity", event.severity],
      ...Object.entries(event.measurements || {}), ...Object.entries(event.attributes || {})];
    for (const [k, v] of rows) list.append(el("dt", k), el("dd", v));
  }

  // The lookups answered 404 for a device with history: a correction moved its newest event to another device.
  function renderNoLatest(id) {
    document.getElementById("device-latest").replaceChildren(el("dt", "device"), el("dd", id), el("dt", "last event"),
      el("dd", "no latest state: none is known for this device (its newest event may have been corrected to " +
        "another device id); its history is shown below"));
  }

  function measurements(events) {
    const names = new Set();
    for (const e of events) for (const k of Object.keys(e.measurements || {})) names.add(k);
    return [...names].sort();
  }

  // Nothing of a device stays on the page once another is searched for: not its values, list or chart.
  // keepLatest: the latest state of this search's device, read before its history failed, stays.
  function clearDevice(text, keepLatest) {
    device = null;
    if (!keepLatest) document.getElementById("device-latest").replaceChildren();
    document.getElementById("measurement").replaceChildren();
    document.getElementById("history-chart").replaceChildren();
    document.getElementById("history-desc").textContent = text;
  }

  function drawHistory() {
    const chart = document.getElementById("history-chart");
    chart.replaceChildren();
    if (!device) return;
    const name = document.getElementById("measurement").value;
    const desc = document.getElementById("history-desc");
    const range = device.from && device.to ? "from " + when(device.from) + " to " + when(device.to) : "in the last 24 hours";
    const read = device.partial
      ? " Partial: only the newest " + fmt(device.events.length) + " events " + range + " were read; older ones are not drawn."
      : "";
    const points = device.events.filter((e) => e.measurements && typeof e.measurements[name] === "number")
      .map((e) => ({ t: Date.parse(e.timestamp), v: e.measurements[name], id: e.event_id }))
      .sort((a, b) => a.t - b.t);
    if (!points.length) {
      desc.textContent = (name ? "No values of " + name : "No numeric measurements") + " " + range + "." + read;
      return;
    }
    const w = 600, h = 200, pad = 14;
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    const vs = points.map((p) => p.v), lo = Math.min(...vs), hi = Math.max(...vs);
    const x = (t) => pad + (t1 === t0 ? (w - 2 * pad) / 2 : ((t - t0) / (t1 - t0)) * (w - 2 * pad));
    // Values are divided by the largest magnitude first: hi - lo of finite values can overflow (1e308 - -1e308 is
    // Infinity), the differences of values within [-1, 1] cannot.
    const mag = Math.max(Math.abs(lo), Math.abs(hi)), span = mag > 0 ? hi / mag - lo / mag : 0;
    const y = (v) => h - pad - (span > 0 ? ((v / mag - lo / mag) / span) : 0.5) * (h - 2 * pad);
    drawLine(chart, points.map((p) => [x(p.t), y(p.v)]), "l1");
    for (const p of points) {
      const dot = svg("circle", { cx: x(p.t), cy: y(p.v), r: 3, class: "pt", "data-t": p.t, "data-v": p.v, "data-id": p.id });
      const tip = svg("title");
      tip.textContent = when(p.t) + " " + name + " = " + p.v;
      dot.append(tip);
      chart.append(dot);
    }
    desc.textContent = points.length + " values of " + name + " from " + when(t0) + " to " + when(t1) +
      ", lowest " + lo + ", highest " + hi + ". Read " + range + "." + read;
  }

  // The id is checked after trimming, here and not by the input's pattern: the browser checks a pattern on the
  // untrimmed value, so an id pasted with a space did nothing, with no error on the page.
  const DEVICE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

  async function searchDevice(ev) {
    ev.preventDefault();
    const input = document.getElementById("device-id");
    const id = input.value.trim();
    const error = document.getElementById("device-error");
    error.textContent = "";
    if (search) search.abort();  // its answers would be another device's
    search = null;
    const valid = DEVICE_ID.test(id);
    input.setAttribute("aria-invalid", String(!valid));
    if (!valid) {
      clearDevice("Choose a device to see its history.");
      error.textContent = id ? "device id " + JSON.stringify(id) + " is not valid: it is 1-128 characters of " +
        "A-Z a-z 0-9 . _ : -" : "enter a device id";
      return;
    }
    const mine = new AbortController();
    search = mine;
    clearDevice("Reading the history of " + id + "…");
    const path = devicePath(id);
    let latest = null, missing = null;
    try {
      // A 404 of the latest state is not the end of the search: a device whose newest event a correction moved to
      // another device has none, yet has its history (docs/api.md). It fails the search only with no history either.
      try {
        latest = await api(path + "/latest", null, mine.signal);
      } catch (err) {
        if (err.status !== 404) throw err;
        missing = err;
      }
      if (latest) renderLatest(latest);
      // Every page reads the range the first answer names: without from and to each request would read its own
      // "last 24 hours", a window that moves on while a slow store answers the pages (the token is a position only).
      const events = [];
      let page = null, pages = 0, from = null, to = null;
      do {
        const body = await api(path + "/events", { limit: HISTORY_PAGE_SIZE, page, from, to }, mine.signal);
        if (pages === 0) { from = body.from; to = body.to; }
        events.push(...body.events);
        page = body.next_page;
        pages += 1;
      } while (page && pages < HISTORY_PAGES);
      if (search !== mine) return;
      if (missing && !events.length) throw missing;
      device = { id, events, partial: Boolean(page), from, to };
      if (!latest) renderNoLatest(id);
      const select = document.getElementById("measurement");
      const chosen = select.dataset.chosen;
      select.replaceChildren(...measurements(events).map((m) => { const o = el("option", m); o.value = m; return o; }));
      if (chosen && [...select.options].some((o) => o.value === chosen)) select.value = chosen;
      drawHistory();
    } catch (err) {
      if (search !== mine) return;  // replaced by a newer search, which shows its own outcome
      if (latest) {
        // The latest state was read and drawn: it stays; only the history, which failed, is not shown.
        clearDevice("No history shown: reading the history of " + id + " failed.", true);
        error.textContent = "history of " + id + " unavailable: " + message(err);
      } else {
        clearDevice("No history shown: the search for " + id + " failed.");
        error.textContent = message(err);
      }
    } finally {
      if (search === mine) search = null;
    }
  }

  // -- sites ----------------------------------------------------------------------------------
  // The report answers {"rows": [...]} without saying whether more rows exist: one more row than is shown is asked
  // for, and when it comes the table says that older days or other sites are left out.
  // A row's day is the site's local day, in its own time zone (not UTC like the rest of the page): shown with it.
  function renderSites(body) {
    if (!body || !Array.isArray(body.rows)) throw new Error("the answer is not a list of rows");
    const rows = body.rows.slice(0, SITE_ROWS);
    document.getElementById("sites-loading").hidden = true;
    document.getElementById("sites-empty").hidden = rows.length > 0;
    const more = document.getElementById("sites-more");
    more.hidden = body.rows.length <= SITE_ROWS;
    more.textContent = more.hidden ? "" : "Showing the first " + SITE_ROWS + " rows (newest day first): " +
      "more rows, of earlier days or other sites, are not shown.";
    const tbody = document.querySelector("#sites tbody");
    tbody.replaceChildren(...rows.map((r) => {
      const tr = el("tr");
      tr.append(el("td", r.local_day), el("td", r.timezone || "unknown"), el("td", r.site_name || r.site_id),
        el("td", r.region || ""),
        el("td", fmt(r.event_count), "num"), el("td", fmt(r.critical_count), "num"), el("td", fmt(r.peak_active_devices), "num"));
      return tr;
    }));
  }

  // A failed read is said, never shown as an empty report: rows read before stay, marked with their age.
  async function pollSites() {
    const problemNode = document.getElementById("sites-error");
    const table = document.getElementById("sites");
    try {
      renderSites(await api("/reports/sites", { limit: SITE_ROWS + 1 }));
      sitesReadAt = new Date().toISOString();
      problemNode.hidden = true;
      say(problemNode, "");
      table.classList.remove("stale");
    } catch (err) {
      const kept = document.querySelector("#sites tbody").children.length > 0 && sitesReadAt !== null;
      document.getElementById("sites-loading").hidden = true;
      document.getElementById("sites-empty").hidden = true;  // not "none yet": unknown
      say(problemNode, "site report unavailable: " + message(err) +
        (kept ? "; the rows below were read at " + when(sitesReadAt) + " and may be out of date." : ""));
      problemNode.hidden = false;
      table.classList.toggle("stale", kept);
    } finally {
      setTimeout(pollSites, 60000);
    }
  }

  // -- polling --------------------------------------------------------------------------------
  // The status and the critical feed are polled apart, each drawn as soon as it answers: the feed is Redis's, and
  // a slow or failed Redis must not hold back or hide the status of everything else (which says that Redis is
  // down). Each is polled again refreshMs after its previous poll ended, so polls of one route never overlap.
  async function pollStatus() {
    try {
      renderStatus(await api("/status"));
    } catch (err) {
      statusFailed(message(err));
    } finally {
      refreshAges();
      setTimeout(pollStatus, refreshMs);
    }
  }

  // A failed read is said, never shown as "no critical events": the events read before stay, greyed and marked
  // with the time they were read; their ages still move.
  async function pollCritical() {
    const problemNode = document.getElementById("critical-error");
    const feed = document.getElementById("critical-feed");
    try {
      renderCritical(await api("/critical", { limit: FEED_SIZE }));
      criticalReadAt = new Date().toISOString();
      problemNode.hidden = true;
      say(problemNode, "");
      feed.classList.remove("stale");
    } catch (err) {
      const kept = feed.children.length > 0 && criticalReadAt !== null;
      document.getElementById("critical-loading").hidden = true;
      document.getElementById("critical-empty").hidden = true;  // not "none yet": unknown
      say(problemNode, "critical events unavailable: " + message(err) +
        (kept ? "; the events above were read at " + when(criticalReadAt) + " and may be out of date." : ""));
      problemNode.hidden = false;
      feed.classList.toggle("stale", kept);
    } finally {
      refreshAges();
      setTimeout(pollCritical, refreshMs);
    }
  }

  document.getElementById("device-form").addEventListener("submit", searchDevice);
  document.getElementById("measurement").addEventListener("change", (ev) => {
    ev.target.dataset.chosen = ev.target.value;  // kept across searches while the next device has it
    drawHistory();
  });
  pollStatus();
  pollCritical();
  pollSites();
})();
