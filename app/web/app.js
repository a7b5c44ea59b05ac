// The geoguide page: upload a photo, stream the agent's steps (Server-Sent Events over a POST),
// draw the evidence on the offline world map, and ask follow-up questions in the same session.
// The session id lives in the URL (#s=ID), so a reload or a server restart keeps the session.
"use strict";

const $ = (id) => document.getElementById(id);
const map = new WorldMap($("map"));
let sessionId = null;

function headers(extra) {
  const h = { ...(extra || {}) };
  const token = localStorage.getItem("geoguide-token");
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

async function failure(resp) {
  let detail = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  if (resp.status === 401) $("token-button").hidden = false;
  return new Error(detail);
}

async function fetchJSON(url, options) {
  const resp = await fetch(url, { ...(options || {}), headers: headers(options && options.headers) });
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
  $("error").hidden = !err;
}

function fmt(lat, lon) {
  return `${Math.abs(lat).toFixed(4)}°${lat >= 0 ? "N" : "S"}, ${Math.abs(lon).toFixed(4)}°${lon >= 0 ? "E" : "W"}`;
}

function li(parent, text, cls) {
  const item = document.createElement("li");
  item.textContent = text;
  if (cls) item.className = cls;
  parent.appendChild(item);
  return item;
}

// ---- the map ------------------------------------------------------------------------------
function drawPrediction(view) {
  const pred = view.prediction;
  map.clear();
  $("popup").hidden = true;
  if (!pred) return;
  const focus = [];
  for (const step of pred.trail) {
    const sm = step.summary.submap;
    if (sm.scheme === "global") continue;
    if (sm.scheme === "country") {  // one country or a union ("country:UA,BY,PL")
      for (const iso2 of sm.id.split(":")[1].split(",")) map.shadeCountry(iso2, "searched");
      continue;
    }
    if (sm.radius_km) {
      const e = map.circle("submaps", sm, sm.radius_km, "submap-area");
      e.dataset.submap = sm.id;
    }
  }
  $("map").dataset.submaps = String(pred.trail.length);
  const prior = pred.prior;
  if (prior && prior.lat !== null && prior.lat !== undefined) {
    if (prior.uncertainty_km) map.circle("prior-layer", prior, prior.uncertainty_km, "uncertainty");
    map.dot("prior-layer", prior, 10, "prior-point", `prior: ${fmt(prior.lat, prior.lon)}`);
    focus.push(prior);
  }
  const best = Math.max(...pred.top_candidates.map((c) => c.score), 1e-9);
  pred.top_candidates.forEach((c, i) => {
    const dot = map.dot("candidates", c, 3 + 6 * Math.max(0, c.score) / best, "candidate",
                        `#${i + 1} ${c.ref_id} (${c.country}) score ${c.score.toFixed(3)}`);
    dot.dataset.ref = c.ref_id;
    dot.addEventListener("click", (e) => { e.stopPropagation(); showReference(c, dot); });
    if (i < 5) focus.push(c);
  });
  if (view.truth) {  // drawn first: the answer's dot stays on top of it
    if (pred.lat !== null) map.line("truth-line", pred, view.truth);
    map.dot("marks", view.truth, 7, "truth-mark", `truth: ${fmt(view.truth.lat, view.truth.lon)}`);
    focus.push(view.truth);
  }
  if (pred.lat !== null) {
    if (pred.country) map.shadeCountry(pred.country, "answer-country");
    if (pred.radius_km) {  // the profile's radius: holds the truth with radius_coverage
      const r = map.circle("marks", pred, pred.radius_km, "answer-radius");
      r.dataset.radiusKm = String(pred.radius_km);
    }
    map.dot("marks", pred, 7, "answer-mark", `answer: ${fmt(pred.lat, pred.lon)}`);
    focus.push(pred);
  }
  map.fit(focus);
}

async function showReference(c, dot) {
  for (const d of document.querySelectorAll(".candidate.open")) d.classList.remove("open");
  dot.classList.add("open");
  const fig = $("popup");
  const img = fig.querySelector("img");
  const resp = await fetch(`/api/references/${encodeURIComponent(c.ref_id)}/thumbnail`, { headers: headers() });
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = resp.ok ? URL.createObjectURL(await resp.blob()) : "";
  fig.querySelector("figcaption").textContent =
    `${c.ref_id} · ${c.country} · ${fmt(c.lat, c.lon)} · similarity ${c.similarity.toFixed(3)}`;
  fig.hidden = false;
}

// ---- the panel ----------------------------------------------------------------------------
// A clause the server wrote to follow other words ("the VLM's point; ...") as a sentence of its own.
const sentence = (text) => (text ? text[0].toUpperCase() + text.slice(1) : "");

function render(view) {
  sessionId = view.session_id;
  history.replaceState(null, "", `#s=${sessionId}`);
  const pred = view.prediction;
  if (view.photo && !$("preview").src) showSessionPhoto(view);
  $("answer").hidden = !pred;
  $("chat-box").hidden = !pred;
  if (!pred) return;
  const place = [pred.nearest_city, pred.country_name].filter(Boolean).join(", ");
  $("answer-place").textContent = pred.lat === null ? "No answer" : `${place || "?"} (${fmt(pred.lat, pred.lon)})`;
  const odds = Object.entries(pred.p_within_km || {}).map(([km, p]) => `${km} km ${p.toFixed(2)}`).join(", ");
  const radius = pred.radius_km
    ? `${Math.round(100 * pred.radius_coverage)}% radius ${pred.radius_km} km.`
    : "Radius uncalibrated (no calibration profile).";
  $("answer-why").textContent = `Confidence ${pred.confidence.toFixed(2)}, from ${pred.source}. `
    + (odds ? `P(within): ${odds} (${pred.probability_source}). ${radius} ` : "") + sentence(pred.why);
  $("answer-truth").textContent = view.truth
    ? `True location ${fmt(view.truth.lat, view.truth.lon)}: ${view.truth.error_km === null ? "no answer" : view.truth.error_km.toFixed(1) + " km off"}.`
    : "";
  const prior = pred.prior;
  $("prior").replaceChildren();
  if (prior) {
    const clues = document.createElement("ul");
    for (const c of prior.clues) li(clues, `${c.kind}: ${c.text}`);
    const countries = prior.countries.map((g) => `${g.name || g.iso2} ${(100 * g.probability).toFixed(0)}%`).join(", ");
    const p = document.createElement("p");
    p.textContent = `Countries: ${countries || "none"}.` + (prior.uncertainty_km ? ` Within ${prior.uncertainty_km} km.` : "");
    $("prior").append(clues, p);
  } else {
    $("prior").textContent = pred.prior_error ? `No prior: ${pred.prior_error}` : "No prior (retrieval only).";
  }
  $("trail").replaceChildren();
  for (const s of pred.trail) {
    const sum = s.summary;
    li($("trail"), `${sum.submap.name}: ${s.reason} — ${sum.n_candidates} candidates` +
       (sum.best_similarity === null ? "" : `, best ${sum.best_similarity.toFixed(3)}`) +
       (s.contradiction ? " (prior contradicted)" : ""));
  }
  $("chat").replaceChildren();
  for (const turn of view.chat) {
    if (turn.role === "user" && turn.text.startsWith("/image ")) continue;
    li($("chat"), turn.text, turn.role);
  }
  drawPrediction(view);
}

async function showSessionPhoto(view) {  // a session reopened from the URL: its photo from the server
  const resp = await fetch(`/api/sessions/${view.session_id}/photo`, { headers: headers() });
  if (!resp.ok) return;
  $("preview").src = URL.createObjectURL(await resp.blob());
  $("preview").hidden = false;
  $("drop-text").textContent = view.photo;
}

function step(event) {
  $("steps-box").hidden = false;
  const item = li($("steps"), "");
  const badge = document.createElement("span");
  badge.className = "node";
  badge.textContent = event.node;
  item.append(badge, document.createTextNode(event.text));
}

// Server-Sent Events from a POST: EventSource can only GET, so the stream is read by hand.
async function readEvents(resp, on) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) on(name, JSON.parse(data));
    }
  }
}

async function locate(file) {
  showError(null);
  $("steps").replaceChildren();
  $("answer").hidden = true;
  $("chat-box").hidden = true;
  map.clear();
  const preview = $("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-text").textContent = file.name;
  const form = new FormData();
  form.append("image", file, file.name);
  const text = $("user-text").value.trim();
  if (text) form.append("text", text);
  document.body.dataset.state = "locating";
  try {
    const resp = await fetch("/api/locate/stream", { method: "POST", body: form, headers: headers() });
    if (!resp.ok) throw await failure(resp);
    let ended = false;
    await readEvents(resp, (name, data) => {
      if (name === "step") step(data);
      else if (name === "session") { ended = true; render(data); }
      else if (name === "error") { ended = true; throw new Error(data.detail); }
    });
    if (!ended) throw new Error("the server closed the stream before the answer");
    document.body.dataset.state = "located";
  } catch (err) {
    document.body.dataset.state = "failed";
    showError(err);
  }
}

async function ask(text) {
  const pending = li($("chat"), text, "user");
  const waiting = li($("chat"), "thinking…", "assistant pending");
  document.body.dataset.state = "asking";
  try {
    const view = await fetchJSON(`/api/sessions/${sessionId}/messages`, {
      method: "POST", body: JSON.stringify({ text }), headers: { "Content-Type": "application/json" },
    });
    render(view);
    document.body.dataset.state = "answered";
  } catch (err) {
    pending.remove();
    waiting.remove();
    document.body.dataset.state = "failed";
    showError(err);
  }
}

// ---- wiring -------------------------------------------------------------------------------
$("file").addEventListener("change", (e) => { if (e.target.files[0]) locate(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) locate(e.dataTransfer.files[0]);
});
$("ask").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("question").value.trim();
  if (!text || !sessionId) return;
  $("question").value = "";
  ask(text);
});
$("map").addEventListener("click", () => { $("popup").hidden = true; });
$("zoom-in").addEventListener("click", () => map.zoom(1.6));
$("zoom-out").addEventListener("click", () => map.zoom(1 / 1.6));
$("zoom-fit").addEventListener("click", () => map.fit([...document.querySelectorAll("#marks ellipse, .prior-point, .candidate")]
  .map((c) => ({ lon: +c.getAttribute("cx"), lat: -c.getAttribute("cy") }))));
$("token-button").addEventListener("click", () => {
  const token = prompt("API token (serve --token):");
  if (token !== null) localStorage.setItem("geoguide-token", token.trim());
  start();
});

async function start() {
  showError(null);
  try {
    await map.load(fetchJSON);
    $("token-button").hidden = !localStorage.getItem("geoguide-token");
    const h = await fetchJSON("/api/health");
    const vlm = h.vlm.replace(/^([\w-]+):.*\/([^/]+)$/, "$1:$2");  // replay:/long/path/prior.csv -> replay:prior.csv
    $("health").textContent = `${h.n_references.toLocaleString()} references · ${h.descriptor} · ${vlm} · ${h.policy}`;
    const m = location.hash.match(/^#s=([0-9a-f]{32})$/);
    if (m) render(await fetchJSON(`/api/sessions/${m[1]}`));
    document.body.dataset.state = document.body.dataset.state || "ready";
  } catch (err) {
    showError(err);
  }
}
start();
