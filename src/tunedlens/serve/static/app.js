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
  if (t === null || Number.isNaN(t)) return "transparent";
  t = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i;
  const c = STOPS[i].map((v, k) => Math.round(v + f * (STOPS[i + 1][k] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function textColour(t) { return t !== null && t > 0.6 ? "#111" : "#fff"; }

function scaler(stat, values) {
  const flat = values.flat().filter((v) => v !== null);
  if (stat.units === "rank") {  // log scale, rank 1 brightest
    const top = Math.log(Math.max(2, ...flat));
    return (v) => (v === null ? null : 1 - Math.log(v) / top);
  }
  const low = stat.vmin ?? Math.min(0, ...flat), high = stat.vmax ?? Math.max(1e-9, ...flat);
  return (v) => (v === null ? null : (v - low) / (high - low || 1));
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

function table(title, columns, rows, values, labels, stat, onCell, probs) {
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
  const scale = scaler(stat, values);
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
      const t = scale(value);
      td.className = "cell";
      td.tabIndex = 0;
      td.textContent = labels[r][c];
      td.style.background = colour(t);
      td.style.color = textColour(t);
      td.dataset.row = r; td.dataset.col = c;
      td.dataset.value = value === null ? "" : value;
      td.title = `row ${rows[r]}, position ${columns[c]}: ${value === null ? "–" : value.toFixed(3)} ${stat.units}` +
        (probs ? `; top token ${labels[r][c]} p=${(probs[r][c] ?? 0).toFixed(3)}` : "");
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
  for (const [name, lens] of Object.entries(view.lenses)) {
    const labels = lens.top1;
    const title = `${name} (${lens.kind} lens, ${lens.source})`;
    box.appendChild(table(title, columns, view.rows, lens.values, labels, view.stat,
      (td, r, c) => openCell(td, name, lens, view, r, c), lens.top1_prob));
  }
}

function drawCompare(view) {
  const box = $("heatmaps");
  box.replaceChildren();
  $("details").hidden = true;
  const columns = view.tokens.map((t, i) => (t === view.other_tokens[i] ? `${i}: ${t}` : `${i}: ${t}/${view.other_tokens[i]}`));
  const title = `${view.lens}: where the two prompts diverge`;
  const section = table(title, columns, view.rows, view.values, view.labels, view.stat, () => {});
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
      li.textContent = `${entry.token}  ${(100 * entry.prob).toFixed(2)} %`;
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

function drawEvals() {
  const box = $("evals");
  for (const lens of info.lenses.filter((l) => l.eval)) {
    const heading = document.createElement("h2");
    heading.textContent = `${lens.name}: KL to the model per row (${lens.eval.report})`;
    box.appendChild(heading);
    const values = lens.eval.kl_bits || [];
    const w = 360, h = 120, top = Math.max(1e-9, ...values);
    const points = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * (w - 20) + 10},${h - 10 - (v / top) * (h - 20)}`);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h);
    svg.setAttribute("role", "img"); svg.setAttribute("aria-label", `KL per row, up to ${top.toFixed(2)} bits`);
    svg.innerHTML = `<line class="axis" x1="10" y1="${h - 10}" x2="${w - 10}" y2="${h - 10}"/><path class="curve" d="M${points.join(" L")}"/>`;
    box.appendChild(svg);
    if (lens.eval.gates) {
      const gates = document.createElement("table");
      gates.className = "gates";
      gates.innerHTML = "<tr><th>gate</th><th>result</th></tr>" + Object.entries(lens.eval.gates)
        .map(([gate, result]) => `<tr><td>${gate}</td><td>${result.pass ? "pass" : "fail"}</td></tr>`).join("");
      box.appendChild(gates);
    }
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
