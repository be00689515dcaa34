// fetalhead live view: draws what the server pushes over /ws (see stream/view.py).
// Text messages are the state (streams, new timeline points, processes, alerts);
// binary ones are images: big-endian u16 header length, JSON {stream, seq}, JPEG.
"use strict";

const HEAD = "Head";
const cards = new Map();
let historyS = 60;
let audio = null;
let heatmaps = true;

if (new URLSearchParams(location.search).has("token")) {
  // The server has set the token cookie; keep the token out of the address bar and of screenshots.
  history.replaceState(null, "", location.pathname);
}

document.getElementById("sound").addEventListener("change", (event) => {
  // Browsers allow sound only after a user gesture: this click is it.
  audio = event.target.checked ? (audio || new AudioContext()) : null;
});

document.getElementById("heatmaps").addEventListener("change", (event) => {
  heatmaps = event.target.checked;
  for (const c of cards.values()) drawHeat(c);
});

function beep() {
  if (!audio) return;
  const osc = audio.createOscillator();
  const gain = audio.createGain();
  osc.frequency.value = 880;
  gain.gain.setValueAtTime(0.2, audio.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.3);
  osc.connect(gain).connect(audio.destination);
  osc.start();
  osc.stop(audio.currentTime + 0.3);
}

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function card(name) {
  let c = cards.get(name);
  if (c) return c;
  const node = document.getElementById("card").content.firstElementChild.cloneNode(true);
  node.dataset.stream = name;
  node.querySelector(".name").textContent = name;
  const grid = document.getElementById("grid");
  const after = [...cards.keys()].filter((other) => other > name).sort()[0];
  grid.insertBefore(node, after ? cards.get(after).node : null);
  document.getElementById("empty").hidden = true;
  c = { node, points: [], verdict: null, url: null, saliency: null };
  cards.set(name, c);
  return c;
}

function showStream(row, worker) {
  const c = card(row.stream);
  const q = (selector) => c.node.querySelector(selector);
  const band = q(".band");
  const head = row.verdict === HEAD;
  band.className = "band " + (row.verdict === null ? "none" : head ? "head" : "nothead");
  band.dataset.seq = row.seq;
  band.dataset.score = row.score;
  band.dataset.decision = row.decision;
  band.dataset.verdict = row.verdict;
  q(".verdict").textContent = row.verdict === null ? "—" : head ? "HEAD" : "NOT-HEAD";
  q(".inview").textContent = head && row.in_view_s !== null ? `in view ${fmt(row.in_view_s, 1)} s` : "";
  q(".score").textContent = `score ${fmt(row.score, 3)}`;
  q(".threshold").textContent = `threshold ${fmt(row.threshold, 3)}`;
  const tags = q(".tags");
  tags.replaceChildren();
  for (const flag of row.flags || []) {
    const tag = document.createElement("span");
    tag.textContent = flag === "warmup" ? "WARM-UP" : flag === "gap" ? "GAP" : flag.toUpperCase();
    tags.appendChild(tag);
  }
  if (row.no_scores_s !== null && row.no_scores_s !== undefined) {
    // Its worker died or stalls: the last verdict shown is getting old.
    const tag = document.createElement("span");
    tag.className = "lost";
    tag.textContent = `NO SCORES ${fmt(row.no_scores_s, 0)} s`;
    tags.appendChild(tag);
  }
  const gaps = row.score_gaps || [];
  tags.title = gaps.length ? "scores lost: " + gaps.map(([ago, lasted]) =>
    `${fmt(lasted, 1)} s, ${fmt(ago, 0)} s ago`).join("; ") : "";
  q(".seq").textContent = row.seq === null ? "–" : row.seq;
  q(".fps").textContent = `${fmt(row.fps_in, 1)} in / ${fmt(row.fps_out, 1)} scored`;
  q(".latency").textContent = `${fmt(row.latency_p50_ms, 1)} / ${fmt(row.latency_p99_ms, 1)} ms`;
  q(".drops").textContent = row.drops;
  let state = row.ended ? `ended (${row.end_reason})` : `live · ${fmt(row.age_s, 1)} s ago`;
  if (worker) state += ` · worker ${worker}`;
  q(".state").textContent = state;
  c.node.classList.toggle("ended", row.ended);
  if (c.verdict !== null && c.verdict !== HEAD && head) beep();
  c.verdict = row.verdict;
  c.saliency = row.saliency || null;
  drawHeat(c);
}

// A heat level in 0..1 as the JET colour map's [r, g, b] in 0..255 (blue, cyan, yellow, red), as `fetalhead explain`.
function jet(v) {
  const channel = (centre) => Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * v - centre))));
  return [channel(3), channel(2), channel(1)];
}

// The newest heat map over the image: its grid covers the backbone's square input, `square` [x, y, side] in
// pixels of the frame, which the image shows downscaled inside the box (object-fit: contain).
function drawHeat(c) {
  const canvas = c.node.querySelector(".heat");
  const img = c.node.querySelector(".frame");
  const s = c.saliency;
  const show = Boolean(heatmaps && s && img.naturalWidth && img.clientWidth);
  canvas.hidden = !show;
  c.node.querySelector(".heatinfo").textContent = heatmaps && s ? `heat map of frame ${s.seq}, score ${fmt(s.score, 3)}` : "";
  canvas.dataset.seq = s ? s.seq : "";
  if (!show) return;
  const [frameRows, frameCols] = s.frame_shape;
  const scale = Math.min(img.clientWidth / frameCols, img.clientHeight / frameRows);
  const width = Math.round(frameCols * scale);
  const height = Math.round(frameRows * scale);
  canvas.width = width;
  canvas.height = height;
  canvas.style.left = `${img.offsetLeft + (img.clientWidth - width) / 2}px`;
  canvas.style.top = `${img.offsetTop + (img.clientHeight - height) / 2}px`;
  const [rows, cols] = s.shape;
  const cells = document.createElement("canvas");
  cells.width = cols;
  cells.height = rows;
  const cellsCtx = cells.getContext("2d");
  const data = cellsCtx.createImageData(cols, rows);
  s.heat.forEach((level, i) => {
    const v = level / 255;
    data.data.set([...jet(v), Math.round(0.55 * 255 * v)], 4 * i);
  });
  cellsCtx.putImageData(data, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  ctx.imageSmoothingEnabled = true;
  const [x, y, side] = s.square;
  ctx.drawImage(cells, x * scale, y * scale, side * scale, side * scale);
}

function addPoints(name, points) {
  const c = card(name);
  for (const p of points) {
    // [seq, t, score, verdict_head, decision, warmup, gap]
    if (c.points.length && p[0] <= c.points[c.points.length - 1][0]) c.points.length = 0;
    c.points.push(p);
  }
  const last = c.points.length ? c.points[c.points.length - 1][1] : 0;
  const keep = c.points.findIndex((p) => p[1] >= last - historyS);
  if (keep > 0) c.points.splice(0, keep);
}

function drawTimeline(c, threshold) {
  const canvas = c.node.querySelector(".timeline");
  const width = canvas.clientWidth || canvas.width;
  if (canvas.width !== width) canvas.width = width;
  const h = canvas.height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, h);
  if (!c.points.length) return;
  const end = c.points[c.points.length - 1][1];
  const x = (t) => width - ((end - t) / historyS) * width;
  const y = (s) => 6 + (1 - s) * (h - 24);
  ctx.fillStyle = "rgba(27, 138, 58, 0.35)";
  for (let i = 0; i < c.points.length; i++) {
    if (!c.points[i][3]) continue;
    const next = i + 1 < c.points.length ? c.points[i + 1][1] : c.points[i][1];
    ctx.fillRect(x(c.points[i][1]), 0, Math.max(1, x(next) - x(c.points[i][1])), h - 14);
  }
  if (threshold !== null && threshold !== undefined) {
    ctx.strokeStyle = "#f2c94c";
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    ctx.moveTo(0, y(threshold));
    ctx.lineTo(width, y(threshold));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  ctx.lineWidth = 2;
  for (let i = 1; i < c.points.length; i++) {
    const [a, b] = [c.points[i - 1], c.points[i]];
    ctx.strokeStyle = b[5] ? "#8a9299" : "#e8eef3";
    ctx.beginPath();
    ctx.moveTo(x(a[1]), y(a[2]));
    ctx.lineTo(x(b[1]), y(b[2]));
    ctx.stroke();
  }
  ctx.fillStyle = "#ff6b5e";
  for (const p of c.points) if (p[6]) ctx.fillRect(x(p[1]) - 1, h - 12, 3, 10);
  ctx.fillStyle = "#9aa4ad";
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(`last ${historyS} s`, 4, h - 2);
}

function workerHealth(processes) {
  const workers = processes.filter((p) => p.role === "worker");
  if (!workers.length) return "not seen";
  const p = workers[0];
  return p.dead ? `DEAD (silent ${fmt(p.silent_s, 0)} s)` : p.loading ? "loading" : "alive";
}

function showProcesses(processes) {
  const box = document.getElementById("processes");
  box.replaceChildren();
  for (const p of processes) {
    const pill = document.createElement("span");
    const state = p.dead ? "dead" : p.loading ? "loading" : "alive";
    pill.className = `proc ${state}`;
    pill.dataset.id = p.id;
    const name = p.id.startsWith("_capture.") ? ` ${p.id.slice("_capture.".length)}` : "";
    pill.textContent = `${p.role}${name} · pid ${p.pid} · ${state}` +
      (p.dead ? ` (silent ${fmt(p.silent_s, 0)} s)` : "");
    box.appendChild(pill);
  }
}

function showAlerts(alerts) {
  const box = document.getElementById("alerts");
  box.replaceChildren(...alerts.map((text) => {
    const line = document.createElement("div");
    line.textContent = text;
    return line;
  }));
}

function onState(state) {
  historyS = state.history_s;
  for (const [name, points] of Object.entries(state.points)) addPoints(name, points);
  const worker = workerHealth(state.processes);
  for (const row of state.streams) {
    showStream(row, worker);
    drawTimeline(card(row.stream), row.threshold);
  }
  showProcesses(state.processes);
  showAlerts(state.alerts);
}

function onImage(buffer) {
  const length = new DataView(buffer).getUint16(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 2, length)));
  const c = card(header.stream);
  const img = c.node.querySelector(".frame");
  const url = URL.createObjectURL(new Blob([new Uint8Array(buffer, 2 + length)], { type: "image/jpeg" }));
  const old = c.url;
  c.url = url;
  img.onload = () => {
    if (old) URL.revokeObjectURL(old);
    drawHeat(c);
  };
  img.src = url;
  img.dataset.seq = header.seq;
}

function connect() {
  const status = document.getElementById("connection");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { status.textContent = "connected"; status.className = "connection"; };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onState(JSON.parse(event.data));
    else onImage(event.data);
  };
  ws.onclose = () => {
    status.textContent = "disconnected: retrying";
    status.className = "connection off";
    setTimeout(connect, 1000);
  };
}

connect();
