// tunedlens explorer: reads a prompt through the server's lenses and draws rows x positions.
// Everything it shows comes from the JSON API; the URL holds the view so it can be shared.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;        // /api/lenses
let last = null;        // the last readout or comparison (for export)
let lastKind = null;    // "readout" | "compare"
let lastPrompt = "";

const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

function colour(t) {
  if (t === null || Number.isNaN(t)) return "var(--line)";  // no value: grey, off the scale
  t = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i;
  const c = STOPS[i].map((v, k) => Math.round(v + f * (STOPS[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function textColour(t) {
  if (t === null || Number.isNaN(t)) return "var(--fg)";
  return t > 0.6 ? "#111" : "#fff";
}

// Heavy-tailed statistics get a log scale: on a linear one the logit lens's first rows
// (~150 bits of KL) leave every other cell the same colour. Values below the floor get its colour.
const LOG_STATS = new Set(["kl", "ce", "rank", "model-rank"]);
const LOG_FLOOR = {bits: 0.01, rank: 1};

function extent(values) {
  let low = Infinity, high = -Infinity;
  for (const v of values) { if (v < low) low = v; if (v > high) high = v; }
  return [low, high];
}

// One colour scale for every panel on show (grids: a list of rows x positions arrays), so the
// same colour means the same value in both lenses. scale.t(v) is the position in [0, 1].
function sharedScale(stat, grids) {
  const flat = grids.flat(2).filter((v) => v !== null && Number.isFinite(v));
  const reversed = stat.units === "rank";  // rank 1 brightest
  let scale;
  if (LOG_STATS.has(stat.name) && stat.vmin == null && stat.vmax == null) {
    const floor = LOG_FLOOR[stat.units] ?? 0.01;
    const positive = flat.filter((v) => v > 0);
    const low = Math.max(floor, positive.length ? extent(positive)[0] : floor);
    const high = Math.max(low * 10, flat.length ? extent(flat)[1] : low);
    const a = Math.log10(low), b = Math.log10(high);
    scale = {log: true, low, high, clipped: flat.some((v) => v < low),
      t: (v) => (v === null ? null : (Math.log10(Math.max(v, low)) - a) / (b - a))};
  } else {
    const [min, max] = flat.length ? extent(flat) : [0, 1];
    const low = stat.vmin ?? Math.min(0, min), high = stat.vmax ?? Math.max(low + 1e-9, max);
    scale = {log: false, low, high, clipped: false,
      t: (v) => (v === null ? null : (v - low) / (high - low || 1))};
  }
  if (reversed) { const t = scale.t; scale.t = (v) => (v === null ? null : 1 - t(v)); }
  scale.reversed = reversed;
  return scale;
}

function formatNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(1);
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(3)));
}

// A token as a cell shows it: one of punctuation only in ‹ ›, so "-" is not read as "no value".
function cellText(label) {
  return label && !/[\p{L}\p{N}␣↵⇥␍]/u.test(label) ? `‹${label}›` : label;
}

// A probability as a percentage that never reads "0.00 %" for a small but nonzero value.
function formatPercent(p) {
  if (p === null || p === undefined || Number.isNaN(p)) return "–";
  if (p === 0) return "0 %";
  if (p < 1e-4) return "<0.01 %";
  return `${(100 * p).toFixed(2)} %`;
}

function scaleTicks(scale) {
  if (scale.log) {
    const ticks = [];
    for (let e = Math.floor(Math.log10(scale.low)); e <= Math.ceil(Math.log10(scale.high)); e++) {
      const v = 10 ** e;
      if (v >= scale.low * 0.999 && v <= scale.high * 1.001) ticks.push(v);
    }
    if (!ticks.includes(scale.low)) ticks.unshift(scale.low);
    return ticks;
  }
  return [0, 0.25, 0.5, 0.75, 1].map((f) => scale.low + f * (scale.high - scale.low));
}

// The colour legend: the scale's gradient, ticks with values, and what kind of scale it is.
function legendBar(stat, scale, note) {
  const w = 360, x0 = 12, x1 = w - 12;
  const stops = STOPS.map((c, i) => {
    const at = scale.reversed ? 1 - i / (STOPS.length - 1) : i / (STOPS.length - 1);
    return `<stop offset="${at}" stop-color="rgb(${c.join(",")})"/>`;
  }).sort((a, b) => parseFloat(a.split('"')[1]) - parseFloat(b.split('"')[1]));
  const ticks = scaleTicks(scale).map((v) => {
    const x = x0 + scale.t(v) * (x1 - x0);
    return `<line class="axis" x1="${x}" y1="22" x2="${x}" y2="27"/>` +
      `<text x="${x}" y="38" text-anchor="middle" font-size="10" fill="currentColor">${formatNumber(v)}</text>`;
  }).join("");
  const kind = scale.log ? "log scale" + (scale.clipped ? `, below ${formatNumber(scale.low)} coloured as ${formatNumber(scale.low)}` : "") : "linear";
  const caption = `${stat.title} (${stat.units}, ${kind})${note ? "; " + note : ""}`;
  const h2 = 40;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h2);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `colour legend: ${caption}`);
  svg.innerHTML = `<defs><linearGradient id="legend-gradient">${stops.join("")}</linearGradient></defs>` +
    `<rect x="${x0}" y="6" width="${x1 - x0}" height="16" fill="url(#legend-gradient)"/>${ticks}`;
  const box = document.createElement("div");
  box.className = "colour-legend";
  const text = document.createElement("div");
  text.className = "legend";
  text.textContent = `colours: ${caption}; grey: no value`;
  box.append(svg, text);
  return box;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  let payload;
  try { payload = await response.json(); } catch (e) { payload = {error: `HTTP ${response.status}`}; }
  if (!response.ok) throw new Error(payload.error || `HTTP ${response.status}`);
  return payload;
}

function option(select, value, label) {
  const o = document.createElement("option");
  o.value = value; o.textContent = label;
  select.appendChild(o);
}

async function init() {
  info = await api("/api/lenses");
  $("model-line").textContent = `${info.model} · ${info.n_blocks} blocks · prompts up to ${info.max_tokens} tokens`;
  for (const lens of info.lenses) {
    const li = document.createElement("li");
    li.textContent = `${lens.name}: ${lens.kind} lens (${lens.source})${lens.eval ? " · evaluated" : ""}`;
    $("lens-list").appendChild(li);
    option($("lens-a"), lens.name, lens.name);
    option($("lens-b"), lens.name, lens.name);
  }
  for (const stat of info.stats) option($("stat"), stat.name, `${stat.title} (${stat.units})`);
  $("window").value = info.default_window;
  drawEvals();
  const query = new URLSearchParams(location.search);
  if (query.get("prompt")) {
    $("prompt").value = query.get("prompt");
    const lenses = (query.get("lenses") || "logit").split(",");
    $("lens-a").value = lenses[0];
    $("lens-b").value = lenses[1] || "";
    if (query.get("stat")) $("stat").value = query.get("stat");
    if (query.get("stride")) $("stride").value = query.get("stride");
    if (query.get("token")) $("token").value = query.get("token");
    if (query.get("other")) { $("other").value = query.get("other"); await compare(); }
    else await read();
  }
}

function chosenLenses() {
  const a = $("lens-a").value, b = $("lens-b").value;
  return b && b !== a ? [a, b] : [a];
}

function remember(extra) {
  const query = new URLSearchParams({prompt: $("prompt").value, lenses: chosenLenses().join(","),
    stat: $("stat").value, stride: $("stride").value, ...extra});
  if ($("token").value) query.set("token", $("token").value);
  history.replaceState(null, "", `?${query}`);
}

async function read(event) {
  if (event) event.preventDefault();
  showError("");
  $("status").textContent = "reading…";
  try {
    const body = {prompt: $("prompt").value, lenses: chosenLenses(), stat: $("stat").value,
      stride: Number($("stride").value) || 1, window: Number($("window").value) || null,
      token: $("token").value || null};
    last = await api("/api/readout", body);
    lastKind = "readout"; lastPrompt = body.prompt;
    remember({});
    drawReadout(last);
    $("status").textContent = last.truncated
      ? `showing the last ${last.positions.length} of ${last.length} positions` : "";
  } catch (error) {
    $("status").textContent = "";
    showError(error.message);
  }
}

async function compare() {
  showError("");
  $("status").textContent = "comparing…";
  try {
    const body = {prompt: $("prompt").value, other: $("other").value, lens: chosenLenses()[0],
      stride: Number($("stride").value) || 1};
    last = await api("/api/compare", body);
    lastKind = "compare"; lastPrompt = body.prompt;
    remember({other: body.other});
    drawCompare(last);
    $("status").textContent = "";
  } catch (error) {
    $("status").textContent = "";
    showError(error.message);
  }
}

function table(title, columns, rows, values, labels, stat, scale, onCell, probs) {
  const section = document.createElement("section");
  const heading = document.createElement("h2");
  heading.textContent = title;
  section.appendChild(heading);
  const legend = document.createElement("div");
  legend.className = "legend";
  legend.textContent = `${stat.title} (${stat.units}); rows: blocks, output = the model`;
  section.appendChild(legend);
  const grid = document.createElement("table");
  grid.className = "heatmap";
  grid.dataset.low = scale.low; grid.dataset.high = scale.high;
  grid.dataset.scale = scale.log ? "log" : "linear";
  const head = grid.insertRow();
  head.appendChild(document.createElement("th"));
  for (const column of columns) {
    const th = document.createElement("th");
    th.textContent = column;
    head.appendChild(th);
  }
  for (let r = rows.length - 1; r >= 0; r--) {  // the output row on top
    const tr = grid.insertRow();
    const th = document.createElement("th");
    th.textContent = rows[r];
    tr.appendChild(th);
    values[r].forEach((value, c) => {
      const td = tr.insertCell();
      const t = scale.t(value);
      td.className = "cell";
      td.tabIndex = 0;
      td.textContent = cellText(labels[r][c]);
      td.style.background = colour(t);
      td.style.color = textColour(t);
      td.dataset.row = r; td.dataset.col = c;
      td.dataset.value = value === null ? "" : value;
      td.title = `row ${rows[r]}, position ${columns[c]}: ${value === null ? "no value" : formatNumber(value)} ${stat.units}` +
        (probs ? `; top token ${labels[r][c]} ${formatPercent(probs[r][c])}` : "");
      td.addEventListener("click", () => onCell(td, r, c));
      td.addEventListener("keydown", (event) => keyMove(event, td, r, c, onCell));
    });
  }
  section.appendChild(grid);
  return section;
}

function keyMove(event, td, r, c, onCell) {
  const moves = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [1, 0], ArrowDown: [-1, 0]};
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); onCell(td, r, c); return; }
  const move = moves[event.key];
  if (!move) return;
  event.preventDefault();
  const next = td.closest("table").querySelector(`td[data-row="${r + move[0]}"][data-col="${c + move[1]}"]`);
  if (next) next.focus();
}

function drawReadout(view) {
  const box = $("heatmaps");
  box.replaceChildren();
  $("details").hidden = true;
  const columns = view.positions.map((p, i) => `${p}: ${view.tokens[i]}`);
  const lenses = Object.entries(view.lenses);
  const scale = sharedScale(view.stat, lenses.map(([, lens]) => lens.values));
  $("colour-legend").replaceChildren(legendBar(view.stat, scale,
    lenses.length > 1 ? "one scale for both lenses" : ""));
  for (const [name, lens] of lenses) {
    const labels = lens.top1;
    const title = `${name} (${lens.kind} lens, ${lens.source})`;
    box.appendChild(table(title, columns, view.rows, lens.values, labels, view.stat, scale,
      (td, r, c) => openCell(td, name, lens, view, r, c), lens.top1_prob));
  }
}

function drawCompare(view) {
  const box = $("heatmaps");
  box.replaceChildren();
  $("details").hidden = true;
  const columns = view.tokens.map((t, i) => (t === view.other_tokens[i] ? `${i}: ${t}` : `${i}: ${t}/${view.other_tokens[i]}`));
  const title = `${view.lens}: where the two prompts diverge`;
  const scale = sharedScale(view.stat, [view.values]);
  $("colour-legend").replaceChildren(legendBar(view.stat, scale, ""));
  const section = table(title, columns, view.rows, view.values, view.labels, view.stat, scale, () => {});
  section.querySelector("table").classList.add("compare");
  box.appendChild(section);
}

async function openCell(td, name, lens, view, r, c) {
  document.querySelectorAll("td.selected").forEach((cell) => cell.classList.remove("selected"));
  td.classList.add("selected");
  try {
    const cell = await api("/api/cell", {prompt: lastPrompt, lens: name, row: view.rows[r],
      position: view.positions[c]});
    $("details").hidden = false;
    $("details-title").textContent = `${name} · row ${view.rows[r]} · position ${view.positions[c]} (${view.tokens[c]})`;
    const list = $("top10");
    list.replaceChildren();
    for (const entry of cell.top) {
      const li = document.createElement("li");
      li.textContent = `${entry.token}  ${formatPercent(entry.prob)}`;
      list.appendChild(li);
    }
    sparkline(cell);
  } catch (error) { showError(error.message); }
}

function sparkline(trace) {
  const svg = $("sparkline");
  const w = 320, h = 80, n = trace.probs.length;
  const points = trace.probs.map((p, i) => `${(i / Math.max(1, n - 1)) * (w - 10) + 5},${h - 10 - (p ?? 0) * (h - 20)}`);
  svg.innerHTML = `<line class="axis" x1="5" y1="${h - 10}" x2="${w - 5}" y2="${h - 10}"/>` +
    `<path class="curve" d="M${points.join(" L")}"/>` +
    `<text x="5" y="12" fill="currentColor" font-size="11">p(${escapeXml(trace.token)}) across rows 0…output</text>`;
  svg.dataset.points = n;
}

function escapeXml(text) {
  return text.replace(/[&<>"]/g, (ch) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[ch]));
}

// KL to the model per row on a log axis (the logit lens's first rows dwarf the rest otherwise),
// with its numbers: y ticks per decade, x ticks by row, the last one "output".
function klChart(values, layers) {
  const w = 460, h = 220, left = 56, right = 24, top = 10, bottom = 42;
  const floor = 1e-3;
  const shown = values.map((v) => Math.max(v ?? floor, floor));
  const lo = Math.floor(Math.log10(Math.min(...shown))), hi = Math.ceil(Math.log10(Math.max(...shown, floor * 10)));
  const n = values.length;
  const x = (i) => left + (i / Math.max(1, n - 1)) * (w - left - right);
  const y = (v) => top + (1 - (Math.log10(v) - lo) / (hi - lo || 1)) * (h - top - bottom);
  const parts = [`<line class="axis" x1="${left}" y1="${h - bottom}" x2="${w - right}" y2="${h - bottom}"/>`,
    `<line class="axis" x1="${left}" y1="${top}" x2="${left}" y2="${h - bottom}"/>`];
  for (let e = lo; e <= hi; e++) {
    parts.push(`<line class="grid" x1="${left}" y1="${y(10 ** e)}" x2="${w - right}" y2="${y(10 ** e)}"/>`,
      `<text x="${left - 4}" y="${y(10 ** e) + 3}" text-anchor="end" font-size="10" fill="currentColor">${formatNumber(10 ** e)}</text>`);
  }
  const step = Math.max(1, Math.ceil(n / 8));
  const ticks = [];
  for (let i = 0; i < n - 1; i += step) if (n - 1 - i >= step) ticks.push(i);  // room for "output"
  ticks.push(n - 1);
  for (const i of ticks) {
    const label = i === n - 1 ? "output" : String(layers ? layers[i] : i);
    parts.push(`<line class="axis" x1="${x(i)}" y1="${h - bottom}" x2="${x(i)}" y2="${h - bottom + 4}"/>`,
      `<text x="${x(i)}" y="${h - bottom + 15}" text-anchor="${i === n - 1 ? "end" : "middle"}" font-size="10" fill="currentColor">${label}</text>`);
  }
  parts.push(`<text x="${(left + w - right) / 2}" y="${h - 6}" text-anchor="middle" font-size="11" fill="currentColor">row</text>`,
    `<text transform="translate(13 ${(top + h - bottom) / 2}) rotate(-90)" text-anchor="middle" font-size="11" fill="currentColor">KL (bits, log scale)</text>`,
    `<path class="curve" d="M${shown.map((v, i) => `${x(i)},${y(v)}`).join(" L")}"/>`,
    ...shown.map((v, i) => `<circle class="point" cx="${x(i)}" cy="${y(v)}" r="2.5"><title>row ${i === n - 1 ? "output" : (layers ? layers[i] : i)}: ${formatNumber(values[i])} bits</title></circle>`));
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  svg.setAttribute("class", "kl-chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `KL per row, log scale, from ${formatNumber(Math.max(...values))} bits down to ${formatNumber(values[n - 1])} bits at the output`);
  svg.innerHTML = parts.join("");
  return svg;
}

function gateNumbers(value) {
  if (value !== null && typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${k}: ${formatNumber(v)}`).join(", ");
  }
  return formatNumber(value);
}

// Each gate with what was measured and what it needs, not a bare pass/fail.
function gatesTable(gates) {
  const table = document.createElement("table");
  table.className = "gates";
  const head = table.insertRow();
  for (const text of ["gate", "result", "measured", "threshold"]) {
    const th = document.createElement("th");
    th.textContent = text;
    head.appendChild(th);
  }
  for (const [gate, result] of Object.entries(gates)) {
    const measured = [], needed = [];
    for (const [key, value] of Object.entries(result)) {
      if (key === "pass") continue;
      const line = `${key.replaceAll("_", " ")} ${gateNumbers(value)}`;
      (/threshold|required/.test(key) ? needed : measured).push(line);
    }
    const row = table.insertRow();
    for (const text of [gate, result.pass ? "pass" : "FAIL", measured.join("; "), needed.join("; ")]) {
      row.insertCell().textContent = text;
    }
    row.className = result.pass ? "pass" : "fail";
  }
  return table;
}

function drawEvals() {
  const box = $("evals");
  for (const lens of info.lenses.filter((l) => l.eval)) {
    const heading = document.createElement("h2");
    heading.textContent = `${lens.name}: KL to the model per row (${lens.eval.report})`;
    box.appendChild(heading);
    const values = lens.eval.kl_bits || [];
    if (values.length) box.appendChild(klChart(values, lens.eval.layers));
    if (lens.eval.gates) box.appendChild(gatesTable(lens.eval.gates));
  }
}

function download(name, url) {
  const link = document.createElement("a");
  link.href = url; link.download = name;
  document.body.appendChild(link); link.click(); link.remove();
}

function exportJson() {
  if (!last) { showError("nothing to export yet: read a prompt first"); return; }
  const blob = new Blob([JSON.stringify({kind: lastKind, prompt: lastPrompt, ...last}, null, 1)], {type: "application/json"});
  download("tunedlens-view.json", URL.createObjectURL(blob));
}

function exportPng() {
  const tables = [...document.querySelectorAll("#heatmaps table")];
  if (!tables.length) { showError("nothing to export yet: read a prompt first"); return; }
  const cell = [64, 18], pad = 8;
  const sizes = tables.map((t) => [t.rows[0].cells.length, t.rows.length]);
  const width = sizes.reduce((s, [c]) => s + c * cell[0] + pad, pad);
  const height = Math.max(...sizes.map(([, r]) => r * cell[1])) + 2 * pad;
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = getComputedStyle(document.body).backgroundColor; ctx.fillRect(0, 0, width, height);
  ctx.font = "10px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
  let x0 = pad;
  tables.forEach((t, k) => {
    [...t.rows].forEach((row, r) => [...row.cells].forEach((td, c) => {
      const x = x0 + c * cell[0], y = pad + r * cell[1];
      const style = getComputedStyle(td);
      ctx.fillStyle = td.tagName === "TD" ? style.backgroundColor : "transparent";
      ctx.fillRect(x, y, cell[0] - 1, cell[1] - 1);
      ctx.fillStyle = style.color;
      ctx.fillText(td.textContent.slice(0, 10), x + cell[0] / 2, y + cell[1] / 2);
    }));
    x0 += sizes[k][0] * cell[0] + pad;
  });
  download("tunedlens-view.png", canvas.toDataURL("image/png"));
}

$("controls").addEventListener("submit", read);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) read(event);
});
$("compare").addEventListener("click", compare);
$("export-json").addEventListener("click", exportJson);
$("export-png").addEventListener("click", exportPng);
init().catch((error) => showError(error.message));
