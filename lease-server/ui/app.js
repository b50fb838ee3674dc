// weft status page: the cluster network as a map of node subnets, the nodes
// table and the fleet's convergence, kept live from GET /v1/events.
//
// It must stay fast at thousands of nodes and tens of thousands of subnets:
// the map is one <canvas> (a DOM node per subnet would take seconds to lay
// out), the table renders only the rows in view, and events only mark what
// they touched as dirty; one requestAnimationFrame pass redraws it, so a burst
// of events costs one render.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  // A lease this close to its expiry (or past it) is "expiring": agents renew at half the TTL, so a quarter
  // left means its node missed renewals. 60 s until /v1/network says the TTL.
  let EXPIRING_MS = 60_000;
  const expiringHelp = () => `lease expires within ${EXPIRING_MS >= 3_600_000 ? `${Math.round(EXPIRING_MS / 360_000) / 10} h` : `${Math.round(EXPIRING_MS / 1000)} s`} (a quarter of the lease TTL: renewals missed) or has expired`;
  const ROW_H = 28;
  const MAP_MAX_H = 480;

  // Kinds of map cells, in legend order; the index is the kind's code in the cell array.
  const KINDS = [
    { key: "converged", label: "converged", color: "#2f9e5b", help: "applied the newest revision" },
    { key: "lagging", label: "lagging", color: "#e2a419", help: "behind the newest revision" },
    { key: "unhealthy", label: "unhealthy", color: "#d9434a", help: "its agent reports problems" },
    { key: "disconnected", label: "disconnected", color: "#6b7280", help: "a lease but no status stream to this server" },
    { key: "expiring", label: "expiring", color: "#8b4fd0", help: expiringHelp() },
    { key: "reserved", label: "reserved", color: "#8fb8f2", help: "reserved for a node name, not taken" },
    { key: "free", label: "free", color: "#e3e6ea", help: "no lease" },
  ];
  const KIND = Object.fromEntries(KINDS.map((k, i) => [k.key, i]));
  const COLOR = Object.fromEntries(KINDS.map((k) => [k.key, k.color]));

  const S = {
    /** {network, subnetLen, base, size, count} from GET /v1/network. */
    net: null,
    nodes: new Map(),
    /** Cell index -> node name. */
    bySubnet: new Map(),
    reservationList: [],
    /** Cell index -> node name it is reserved for. */
    reservations: new Map(),
    summary: null,
    /** {name} (a node) or {index} (a cell), or null. */
    selected: null,
    sort: { key: "subnet", dir: 1 },
    filter: "",
    /** The table's rows: filtered and sorted nodes. */
    view: [],
    layout: null,
    hover: -1,
    connection: "connecting",
  };
  const dirty = { view: true, table: true, map: true, layout: true, header: true, detail: true };
  // For the browser test and for anyone curious: render timings and the map's geometry.
  const stats = { firstFullRenderMs: null, lastRenderMs: 0, renders: 0, counts: {} };

  // ---------- addresses ----------

  function ipToInt(s) {
    const p = s.split(".");
    if (p.length !== 4) return NaN;
    let v = 0;
    for (const x of p) {
      const n = Number(x);
      if (!Number.isInteger(n) || n < 0 || n > 255 || x === "") return NaN;
      v = v * 256 + n;
    }
    return v;
  }
  const intToIp = (v) => [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join(".");

  /** The map cell of a subnet, or -1 when it is not a node subnet of the network. */
  function cellOf(cidr) {
    if (!S.net || !cidr) return -1;
    const [ip, len] = cidr.split("/");
    if (Number(len) !== S.net.subnetLen) return -1;
    const off = ipToInt(ip) - S.net.base;
    if (!(off >= 0) || off % S.net.size !== 0) return -1;
    const i = off / S.net.size;
    return i < S.net.count ? i : -1;
  }
  const subnetOfCell = (i) => `${intToIp(S.net.base + i * S.net.size)}/${S.net.subnetLen}`;

  // ---------- state ----------

  const searchKey = (n) => [n.nodeName, n.subnet, n.publicIP, n.state, n.backendType, n.agentVersion, ...n.problems].filter(Boolean).join(" ").toLowerCase();

  function prepare(n) {
    n._exp = n.leaseExpiresAt ? Date.parse(n.leaseExpiresAt) : null;
    n._report = n.lastReportAt ? Date.parse(n.lastReportAt) : null;
    n._subnetKey = n.subnet ? ipToInt(n.subnet.split("/")[0]) : null;
    n._ipKey = n.publicIP ? ipToInt(n.publicIP) : null;
    n._search = searchKey(n);
    n._cell = cellOf(n.subnet);
    return n;
  }

  function unindex(n) {
    if (n._cell >= 0 && S.bySubnet.get(n._cell) === n.nodeName) S.bySubnet.delete(n._cell);
  }

  function setNode(n) {
    const old = S.nodes.get(n.nodeName);
    if (old) unindex(old);
    prepare(n);
    S.nodes.set(n.nodeName, n);
    if (n._cell >= 0) S.bySubnet.set(n._cell, n.nodeName);
    touch("view", "map", "detail");
  }

  function removeNode(name) {
    const old = S.nodes.get(name);
    if (!old) return;
    unindex(old);
    S.nodes.delete(name);
    touch("view", "map", "detail");
  }

  function resetNodes(body) {
    S.nodes.clear();
    S.bySubnet.clear();
    for (const n of body.nodes) setNode(n);
    setSummary(body);
  }

  function setSummary(s) {
    const before = S.summary?.revision;
    S.summary = { revision: s.revision, agents: s.agents, convergence: s.convergence };
    if (before !== undefined && before !== s.revision) restate(s.revision);
    touch("header");
  }

  // A new revision makes every healthy agent that has not applied it lagging. The
  // server sends only the nodes whose own lease or report changed (sending all of
  // them on every revision would cost thousands of events), so the page applies
  // the rule itself, as the server's fleet.ts states it.
  function restate(revision) {
    let changed = false;
    for (const n of S.nodes.values()) {
      if (!n.connected || n.healthy !== true || n.appliedRevision === null) continue;
      const state = n.appliedRevision >= revision ? "converged" : "lagging";
      const lag = Math.max(0, revision - n.appliedRevision);
      if (state === n.state && lag === n.lagRevisions) continue;
      n.lagRevisions = lag;
      n.state = state;
      n._search = searchKey(n);
      changed = true;
    }
    if (changed) touch("view", "map", "detail");
  }

  function setReservations(list) {
    S.reservationList = list;
    S.reservations.clear();
    for (const r of list) {
      const i = cellOf(r.subnet);
      if (i >= 0) S.reservations.set(i, r.nodeName);
    }
    touch("map", "detail");
  }

  /** After the network (re)loads: every cell index depends on it. */
  function reindex() {
    S.bySubnet.clear();
    for (const n of S.nodes.values()) {
      n._cell = cellOf(n.subnet);
      if (n._cell >= 0) S.bySubnet.set(n._cell, n.nodeName);
    }
    setReservations(S.reservationList);
    touch("layout", "map", "header");
  }

  function kindOfNode(n, now) {
    if (n._exp !== null && n._exp - now < EXPIRING_MS) return KIND.expiring;
    return KIND[n.state] ?? KIND.disconnected;
  }

  function kindOfCell(i, now) {
    const name = S.bySubnet.get(i);
    if (name !== undefined) return kindOfNode(S.nodes.get(name), now);
    return S.reservations.has(i) ? KIND.reserved : KIND.free;
  }

  // ---------- rendering ----------

  let frame = 0;
  function touch(...parts) {
    for (const p of parts) dirty[p] = true;
    if (parts.includes("view")) dirty.table = true;
    if (!frame) frame = requestAnimationFrame(render);
  }

  function render() {
    frame = 0;
    const t0 = performance.now();
    if (dirty.header) renderHeader();
    if (dirty.layout) layoutMap();
    if (dirty.map) drawMap();
    if (dirty.view) computeView();
    if (dirty.table) renderTable();
    if (dirty.detail) renderDetail();
    for (const k of Object.keys(dirty)) dirty[k] = false;
    stats.lastRenderMs = performance.now() - t0;
    stats.renders++;
    if (stats.firstFullRenderMs === null && S.net && S.summary) {
      stats.firstFullRenderMs = performance.now();
      document.body.dataset.ready = "true";
    }
  }

  const fmtSeconds = (s) => (s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(s < 10 ? 2 : 1)} s`);

  function relTime(t, now) {
    if (t === null) return "";
    const d = t - now;
    let a = Math.round(Math.abs(d) / 1000);
    if (a === 0) return "now";
    let u = "s";
    if (a >= 86400) { a = Math.round(a / 86400); u = "d"; } else if (a >= 3600) { a = Math.round(a / 3600); u = "h"; } else if (a >= 60) { a = Math.round(a / 60); u = "min"; }
    return d < 0 ? `${a} ${u} ago` : `in ${a} ${u}`;
  }

  function dot(kind) {
    const s = document.createElement("span");
    s.className = "dot";
    s.style.background = COLOR[kind] ?? COLOR.disconnected;
    s.setAttribute("aria-hidden", "true");
    return s;
  }

  function renderHeader() {
    if (S.net) {
      $("network").textContent = `${S.net.network} · /${S.net.subnetLen} subnets · ${S.net.count.toLocaleString()} cells`;
    }
    const s = S.summary;
    if (!s) return;
    $("revision").textContent = String(s.revision);
    const agents = $("agents");
    agents.replaceChildren();
    for (const k of ["converged", "lagging", "unhealthy", "disconnected"]) {
      const span = document.createElement("span");
      span.className = "agent-count";
      span.dataset.state = k;
      span.append(dot(k), `${s.agents[k] ?? 0} ${k}`);
      agents.append(span);
    }
    const c = s.convergence;
    $("convergence").textContent = c.lastSeconds === null ? "none yet" : `${fmtSeconds(c.lastSeconds)} (revision ${c.lastRevision})`;
    $("pending").textContent = String(c.pendingRevisions);
  }

  function layoutMap() {
    if (!S.net) return;
    const box = $("map-box");
    const count = S.net.count;
    const width = Math.max(120, box.clientWidth);
    const minCell = count <= 65536 ? 3 : 1;
    const cell = Math.max(minCell, Math.min(28, Math.floor(Math.sqrt((width * MAP_MAX_H) / count))));
    const cols = Math.max(1, Math.min(count, Math.floor(width / cell)));
    const rows = Math.ceil(count / cols);
    const gap = cell >= 8 ? 2 : cell >= 5 ? 1 : 0;
    const dpr = window.devicePixelRatio || 1;
    const canvas = $("map");
    canvas.style.width = `${cols * cell}px`;
    canvas.style.height = `${rows * cell}px`;
    canvas.width = Math.round(cols * cell * dpr);
    canvas.height = Math.round(rows * cell * dpr);
    S.layout = { cell, cols, rows, gap, dpr, width };
    dirty.map = true;
  }

  function drawMap() {
    const L = S.layout;
    if (!S.net || !L) return;
    const canvas = $("map");
    const ctx = canvas.getContext("2d");
    ctx.setTransform(L.dpr, 0, 0, L.dpr, 0, 0);
    ctx.clearRect(0, 0, L.cols * L.cell, L.rows * L.cell);
    const now = Date.now();
    const count = S.net.count;
    const kinds = new Uint8Array(count).fill(KIND.free);
    const counts = new Array(KINDS.length).fill(0);
    for (const i of S.reservations.keys()) kinds[i] = KIND.reserved;
    for (const [i, name] of S.bySubnet) kinds[i] = kindOfNode(S.nodes.get(name), now);
    for (let i = 0; i < count; i++) counts[kinds[i]]++;
    // One path per kind: a fill per cell would be 65,536 draw calls.
    const side = L.cell - L.gap;
    for (let k = 0; k < KINDS.length; k++) {
      if (counts[k] === 0) continue;
      ctx.fillStyle = KINDS[k].color;
      ctx.beginPath();
      for (let i = 0; i < count; i++) {
        if (kinds[i] === k) ctx.rect((i % L.cols) * L.cell, Math.floor(i / L.cols) * L.cell, side, side);
      }
      ctx.fill();
    }
    const sel = selectedCell();
    if (sel >= 0) {
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#111827";
      const x = (sel % L.cols) * L.cell;
      const y = Math.floor(sel / L.cols) * L.cell;
      ctx.strokeRect(x - 1, y - 1, Math.max(side, 2) + 2, Math.max(side, 2) + 2);
    }
    renderLegend(counts);
  }

  function renderLegend(counts) {
    const legend = $("legend");
    if (legend.children.length === 0) {
      for (const k of KINDS) {
        const li = document.createElement("li");
        li.dataset.kind = k.key;
        li.title = k.help;
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = k.color;
        sw.setAttribute("aria-hidden", "true");
        const label = document.createElement("span");
        label.textContent = k.label;
        const b = document.createElement("b");
        b.className = "count";
        li.append(sw, label, " ", b);
        legend.append(li);
      }
    }
    KINDS.forEach((k, i) => {
      stats.counts[k.key] = counts[i];
      legend.children[i].querySelector(".count").textContent = counts[i].toLocaleString();
    });
  }

  function selectedCell() {
    const sel = S.selected;
    if (!sel) return -1;
    if (sel.name !== undefined) return S.nodes.get(sel.name)?._cell ?? -1;
    return sel.index;
  }

  // ---------- table ----------

  const num = (v) => (v === null || v === undefined ? "" : String(v));
  const COLUMNS = [
    { key: "nodeName", label: "Node", sort: (n) => n.nodeName, text: (n) => n.nodeName },
    { key: "subnet", label: "Subnet", sort: (n) => n._subnetKey, text: (n) => n.subnet ?? "" },
    { key: "state", label: "State", sort: (n) => n.state, text: (n) => n.state },
    { key: "publicIP", label: "Public IP", sort: (n) => n._ipKey, text: (n) => n.publicIP ?? "" },
    { key: "backendType", label: "Backend", sort: (n) => n.backendType, text: (n) => n.backendType ?? "" },
    { key: "appliedRevision", label: "Applied", sort: (n) => n.appliedRevision, text: (n) => num(n.appliedRevision), numeric: true },
    { key: "lagRevisions", label: "Lag", sort: (n) => n.lagRevisions, text: (n) => num(n.lagRevisions), numeric: true },
    { key: "peers", label: "Peers", sort: (n) => n.peers, text: (n) => num(n.peers), numeric: true },
    { key: "lastReportAt", label: "Last report", sort: (n) => n._report, text: (n, now) => relTime(n._report, now) },
    { key: "leaseExpiresAt", label: "Lease expires", sort: (n) => n._exp, text: (n, now) => (n.subnet && n._exp === null ? "never" : relTime(n._exp, now)) },
    { key: "agentVersion", label: "Version", sort: (n) => n.agentVersion, text: (n) => n.agentVersion ?? "" },
    { key: "problems", label: "Problems", sort: (n) => n.problems.length || null, text: (n) => n.problems.join("; ") },
  ];

  function renderTableHead() {
    const row = $("nodes-head-row");
    row.replaceChildren();
    for (const c of COLUMNS) {
      const th = document.createElement("th");
      th.scope = "col";
      th.className = `col-${c.key}${c.numeric ? " num" : ""}`;
      const active = S.sort.key === c.key;
      th.setAttribute("aria-sort", active ? (S.sort.dir > 0 ? "ascending" : "descending") : "none");
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.key = c.key;
      b.textContent = c.label + (active ? (S.sort.dir > 0 ? " ▲" : " ▼") : "");
      b.title = `Sort by ${c.label.toLowerCase()}`;
      th.append(b);
      row.append(th);
    }
  }

  function computeView() {
    const f = S.filter;
    const col = COLUMNS.find((c) => c.key === S.sort.key) ?? COLUMNS[1];
    const dir = S.sort.dir;
    const rows = [];
    for (const n of S.nodes.values()) if (!f || n._search.includes(f)) rows.push(n);
    rows.sort((a, b) => {
      const x = col.sort(a);
      const y = col.sort(b);
      // Empty values last in either direction; ties by name so rows do not jump.
      if (x !== y) {
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        if (x < y) return -dir;
        if (x > y) return dir;
      }
      return a.nodeName < b.nodeName ? -1 : a.nodeName > b.nodeName ? 1 : 0;
    });
    S.view = rows;
    const total = S.nodes.size;
    $("nodes-count").textContent = f ? `(${rows.length.toLocaleString()} of ${total.toLocaleString()})` : `(${total.toLocaleString()})`;
    $("nodes").setAttribute("aria-rowcount", String(rows.length + 1));
  }

  function spacer(height) {
    const tr = document.createElement("tr");
    tr.className = "spacer";
    tr.setAttribute("aria-hidden", "true");
    const td = document.createElement("td");
    td.colSpan = COLUMNS.length;
    td.style.height = `${height}px`;
    tr.append(td);
    return tr;
  }

  function renderTable() {
    const scroll = $("table-scroll");
    const view = S.view;
    const first = Math.max(0, Math.floor(scroll.scrollTop / ROW_H) - 8);
    const last = Math.min(view.length, first + Math.ceil((scroll.clientHeight || 600) / ROW_H) + 16);
    const now = Date.now();
    const selName = S.selected?.name ?? (S.selected ? S.bySubnet.get(S.selected.index) : undefined);
    const out = [];
    if (first > 0) out.push(spacer(first * ROW_H));
    for (let i = first; i < last; i++) {
      const n = view[i];
      const tr = document.createElement("tr");
      tr.dataset.name = n.nodeName;
      tr.dataset.state = n.state;
      tr.setAttribute("aria-rowindex", String(i + 2));
      if (n.nodeName === selName) {
        tr.className = "selected";
        tr.setAttribute("aria-selected", "true");
      }
      for (const c of COLUMNS) {
        const td = document.createElement("td");
        td.className = `col-${c.key}${c.numeric ? " num" : ""}`;
        if (c.key === "state") td.append(dot(n.state));
        const text = c.text(n, now);
        td.append(text);
        if (c.key === "problems" && text) td.title = text;
        tr.append(td);
      }
      out.push(tr);
    }
    if (last < view.length) out.push(spacer((view.length - last) * ROW_H));
    $("nodes-body").replaceChildren(...out);
  }

  // ---------- details ----------

  function field(dl, label, value, key) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    if (key) dd.dataset.field = key;
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value === null || value === undefined || value === "" ? "–" : String(value);
    dl.append(dt, dd);
  }

  function when(iso, t, now) {
    return iso ? `${relTime(t, now)} (${iso.replace("T", " ").replace(/\.\d+Z$/, "Z")})` : null;
  }

  function renderDetail() {
    const dl = $("detail-fields");
    const empty = $("detail-empty");
    const sel = S.selected;
    if (!sel || !S.net) {
      dl.hidden = true;
      empty.hidden = false;
      return;
    }
    dl.replaceChildren();
    const now = Date.now();
    const name = sel.name ?? S.bySubnet.get(sel.index);
    const n = name === undefined ? undefined : S.nodes.get(name);
    if (n) {
      const state = document.createElement("span");
      state.append(dot(n.state), n.state);
      field(dl, "Node", n.nodeName, "nodeName");
      field(dl, "Subnet", n.subnet ?? "none (connected, no lease)", "subnet");
      field(dl, "State", state, "state");
      if (n._cell >= 0 && kindOfNode(n, now) === KIND.expiring) field(dl, "Map", "lease expiring", "expiring");
      field(dl, "Public IP", n.publicIP, "publicIP");
      field(dl, "Backend", n.backendType, "backendType");
      field(dl, "Lease expires", n.subnet ? (when(n.leaseExpiresAt, n._exp, now) ?? "never") : null, "leaseExpiresAt");
      field(dl, "Last renewal", n.leaseRevision === null ? null : `revision ${n.leaseRevision}`, "leaseRevision");
      field(dl, "Applied revision", n.appliedRevision, "appliedRevision");
      field(dl, "Lag", n.lagRevisions === null ? null : `${n.lagRevisions} revision${n.lagRevisions === 1 ? "" : "s"}`, "lagRevisions");
      field(dl, "Health", n.healthy === null ? "not reported" : n.healthy ? "healthy" : "unhealthy", "healthy");
      if (n.problems.length > 0) {
        const ul = document.createElement("ul");
        for (const p of n.problems) {
          const li = document.createElement("li");
          li.textContent = p;
          ul.append(li);
        }
        field(dl, "Problems", ul, "problems");
      }
      field(dl, "Last report", when(n.lastReportAt, n._report, now) ?? (n.connected ? "connected, no report yet" : "never (no status stream to this server)"), "lastReportAt");
      field(dl, "Agent version", n.agentVersion, "agentVersion");
      field(dl, "Peers", n.peers, "peers");
    } else if (sel.name !== undefined) {
      field(dl, "Node", sel.name, "nodeName");
      field(dl, "Status", "gone: its lease was released, revoked or expired", "gone");
    } else {
      const reserved = S.reservations.get(sel.index);
      field(dl, "Subnet", subnetOfCell(sel.index), "subnet");
      field(dl, "Status", reserved === undefined ? "free" : `reserved for ${reserved}`, "status");
    }
    dl.hidden = false;
    empty.hidden = true;
  }

  function select(sel) {
    S.selected = sel;
    touch("map", "table", "detail");
  }

  // ---------- input ----------

  function cellAtEvent(ev) {
    const L = S.layout;
    if (!L || !S.net) return -1;
    const col = Math.floor(ev.offsetX / L.cell);
    const row = Math.floor(ev.offsetY / L.cell);
    const i = row * L.cols + col;
    return col >= 0 && col < L.cols && row >= 0 && i < S.net.count ? i : -1;
  }

  function describeCell(i) {
    const name = S.bySubnet.get(i);
    const subnet = subnetOfCell(i);
    if (name !== undefined) return `${subnet} · ${name} · ${KINDS[kindOfNode(S.nodes.get(name), Date.now())].label}`;
    const r = S.reservations.get(i);
    return r === undefined ? `${subnet} · free` : `${subnet} · reserved for ${r}`;
  }

  function bindInput() {
    const canvas = $("map");
    const tip = $("tip");
    canvas.addEventListener("mousemove", (ev) => {
      const i = cellAtEvent(ev);
      if (i < 0) {
        tip.hidden = true;
        return;
      }
      if (i !== S.hover) tip.textContent = describeCell(i);
      S.hover = i;
      tip.hidden = false;
      // Near the right edge the tip goes left of the pointer, so it never covers the details.
      const right = ev.offsetX + 14 + tip.offsetWidth > $("map-box").clientWidth;
      tip.style.left = `${right ? ev.offsetX - 8 - tip.offsetWidth : ev.offsetX + 14}px`;
      tip.style.top = `${ev.offsetY + 14}px`;
    });
    canvas.addEventListener("mouseleave", () => {
      tip.hidden = true;
      S.hover = -1;
    });
    canvas.addEventListener("click", (ev) => {
      const i = cellAtEvent(ev);
      if (i < 0) return;
      const name = S.bySubnet.get(i);
      select(name === undefined ? { index: i } : { name });
    });
    canvas.addEventListener("keydown", (ev) => {
      if (!S.net || !S.layout) return;
      const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -S.layout.cols, ArrowDown: S.layout.cols }[ev.key];
      if (step === undefined) return;
      ev.preventDefault();
      const cur = selectedCell();
      const i = Math.min(S.net.count - 1, Math.max(0, cur < 0 ? 0 : cur + step));
      const name = S.bySubnet.get(i);
      select(name === undefined ? { index: i } : { name });
    });

    $("nodes-head-row").addEventListener("click", (ev) => {
      const key = ev.target.closest("button")?.dataset.key;
      if (!key) return;
      S.sort = { key, dir: S.sort.key === key ? -S.sort.dir : 1 };
      renderTableHead();
      touch("view");
    });
    $("nodes-body").addEventListener("click", (ev) => {
      const name = ev.target.closest("tr")?.dataset.name;
      if (name !== undefined) select({ name });
    });
    const scroll = $("table-scroll");
    scroll.addEventListener("scroll", () => touch("table"), { passive: true });
    scroll.addEventListener("keydown", (ev) => {
      const page = Math.max(1, Math.floor(scroll.clientHeight / ROW_H) - 1);
      const move = { ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page, Home: -Infinity, End: Infinity }[ev.key];
      if (move === undefined || S.view.length === 0) return;
      ev.preventDefault();
      const selName = S.selected?.name ?? (S.selected ? S.bySubnet.get(S.selected.index) : undefined);
      const cur = S.view.findIndex((n) => n.nodeName === selName);
      const i = Math.min(S.view.length - 1, Math.max(0, cur < 0 ? 0 : cur + move));
      // Keep the selected row in view (below the sticky header).
      const head = $("nodes-head-row").offsetHeight;
      const top = i * ROW_H;
      if (top < scroll.scrollTop) scroll.scrollTop = top;
      else if (top + ROW_H + head > scroll.scrollTop + scroll.clientHeight) scroll.scrollTop = top + ROW_H + head - scroll.clientHeight;
      select({ name: S.view[i].nodeName });
    });
    $("filter").addEventListener("input", (ev) => {
      S.filter = ev.target.value.trim().toLowerCase();
      $("table-scroll").scrollTop = 0;
      touch("view");
    });
    new ResizeObserver(() => {
      if (S.layout && $("map-box").clientWidth !== S.layout.width) touch("layout");
      touch("table");
    }).observe($("map-box"));
  }

  // ---------- data ----------

  function setConnection(state, text) {
    S.connection = state;
    const b = $("conn");
    b.className = `badge badge-${state}`;
    b.textContent = text;
    document.body.classList.toggle("stale", state !== "live");
  }

  async function loadNetwork() {
    const res = await fetch("../v1/network", { cache: "no-store" });
    if (!res.ok) throw new Error(`GET /v1/network: HTTP ${res.status}`);
    const n = await res.json();
    const base = ipToInt(n.subnetMin);
    const size = 2 ** (32 - n.subnetLen);
    S.net = { network: n.network, subnetLen: n.subnetLen, base, size, count: (ipToInt(n.subnetMax) - base) / size + 1 };
    if (n.leaseTtlSeconds > 0) {
      EXPIRING_MS = (n.leaseTtlSeconds * 1000) / 4;
      KINDS[KIND.expiring].help = expiringHelp();
      const li = document.querySelector('#legend li[data-kind="expiring"]');
      if (li) li.title = KINDS[KIND.expiring].help;
    }
    $("map-note").textContent = "";
    reindex();
  }

  let source = null;
  function connect() {
    source?.close();
    const es = new EventSource("../v1/events");
    source = es;
    let wasDown = S.connection !== "connecting";
    es.addEventListener("nodes", (e) => {
      resetNodes(JSON.parse(e.data));
      setConnection("live", "live");
      // The server may have restarted with another network config.
      if (wasDown) loadNetwork().catch(() => {});
      wasDown = false;
    });
    es.addEventListener("node", (e) => setNode(JSON.parse(e.data)));
    es.addEventListener("node-removed", (e) => removeNode(JSON.parse(e.data).nodeName));
    es.addEventListener("summary", (e) => setSummary(JSON.parse(e.data)));
    es.addEventListener("reservations", (e) => setReservations(JSON.parse(e.data)));
    es.addEventListener("error", () => {
      wasDown = true;
      // CLOSED: the browser gave up (an HTTP error, not a dropped connection); retry ourselves.
      if (es.readyState === EventSource.CLOSED) {
        setConnection("down", "disconnected · retrying");
        setTimeout(() => source === es && connect(), 3000);
      } else {
        setConnection("down", "disconnected · reconnecting");
      }
    });
  }

  async function start() {
    renderTableHead();
    bindInput();
    for (;;) {
      try {
        await loadNetwork();
        break;
      } catch (err) {
        $("map-note").textContent = `(cannot load the network: ${err.message}; retrying)`;
        setConnection("down", "disconnected · retrying");
        await new Promise((r) => setTimeout(r, 3000));
      }
    }
    connect();
    // Relative times move on; the map's "expiring" cells change with the clock, not with events.
    let tick = 0;
    setInterval(() => {
      touch("table", "detail");
      if (++tick % 5 === 0) touch("map");
    }, 1000);
  }

  window.weftStatus = {
    stats,
    /** Where a subnet's cell is on the canvas (CSS pixels), for tests and tools. */
    cellRect(subnet) {
      const i = cellOf(subnet);
      const L = S.layout;
      if (i < 0 || !L) return null;
      return { x: (i % L.cols) * L.cell, y: Math.floor(i / L.cols) * L.cell, size: L.cell - L.gap };
    },
    colors: COLOR,
  };

  start();
})();
