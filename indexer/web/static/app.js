// clipindex serve's page. Every file name is set as text (textContent, attributes), never as markup.
"use strict";

const DEBOUNCE_MS = 250;
const LIMIT = 60;
const $ = (id) => document.getElementById(id);
const q = $("q"), folder = $("folder"), results = $("results"), message = $("message");
const viewer = $("viewer");
let generation = 0;       // answers to older queries are dropped
let current = null;       // the result shown in the viewer
let debounce = null;

function say(text) { message.textContent = text; }

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) { $("token-form").hidden = false; throw new Error("this server needs its token"); }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const text = body && body.error ? body.error.message : (body && body.detail ? JSON.stringify(body.detail) : response.statusText);
    throw new Error(text);
  }
  return body;
}

function baseName(path) { const i = path.lastIndexOf("/"); return i >= 0 ? path.slice(i + 1) : path; }

function show(answer, what) {
  results.replaceChildren();
  for (const hit of answer.results) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.title = hit.path;
    button.setAttribute("aria-label", `${baseName(hit.path)}, score ${hit.score.toFixed(3)}`);
    const img = document.createElement("img");
    img.src = hit.thumbnail;
    img.alt = baseName(hit.path);
    img.loading = "lazy";
    img.width = 180; img.height = 180;
    const meta = document.createElement("span");
    meta.className = "meta";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = baseName(hit.path);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    meta.append(name, score);
    button.append(img, meta);
    button.addEventListener("click", () => openViewer(hit));
    li.append(button);
    results.append(li);
  }
  const n = answer.results.length;
  say(n ? `${n} result${n === 1 ? "" : "s"} for ${what} (${answer.took_ms.toFixed(0)} ms)` : `No results for ${what}`);
}

function where() {
  const body = { limit: LIMIT };
  if (folder.value.trim()) body.folder = folder.value.trim();
  return body;
}

async function run(body, what) {
  const mine = ++generation;
  say(`Searching ${what}…`);
  try {
    const answer = await api("/api/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ...where(), ...body }),
    });
    if (mine === generation) show(answer, what);
  } catch (error) {
    if (mine === generation) { results.replaceChildren(); say(String(error.message || error)); }
  }
}

// "golden retriever + beach - 2:snow": the query arithmetic of `clipindex search` (texts only here)
function parseTerms(text) {
  const parts = text.split(/\s+([+-])\s+/);
  const term = (raw, sign) => {
    const m = /^(\d+(?:\.\d*)?|\.\d+):(.+)$/s.exec(raw);
    let value = m ? m[2] : raw;
    if (value.startsWith("text:")) value = value.slice(5);
    return { text: value, weight: m ? Number(m[1]) : 1, sign };
  };
  const terms = [term(parts[0], 1)];
  for (let i = 1; i + 1 < parts.length; i += 2) terms.push(term(parts[i + 1], parts[i] === "-" ? -1 : 1));
  return terms;
}

function textQuery(text) {
  const terms = parseTerms(text);
  if (terms.length === 1 && terms[0].weight === 1) return { text: terms[0].text };
  const strip = ({ text, weight }) => ({ text, weight });
  return {
    add: terms.filter((t) => t.sign > 0).map(strip),
    subtract: terms.filter((t) => t.sign < 0).map(strip),
  };
}

function searchText() {
  const text = q.value.trim();
  const url = new URL(location.href);
  if (text) url.searchParams.set("q", text); else url.searchParams.delete("q");
  history.replaceState(null, "", url);
  if (!text) { generation++; results.replaceChildren(); say("Type to search, or drop or paste an image."); return; }
  run(textQuery(text), `“${text}”`);
}

function searchSoon() { clearTimeout(debounce); debounce = setTimeout(searchText, DEBOUNCE_MS); }

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function searchImage(file) {
  if (!file) return;
  const image = await readImage(file);
  run({ image }, `the image ${file.name || "pasted"}`);
}

function openViewer(hit) {
  current = hit;
  $("viewer-image").src = `/api/v1/thumbnails/${encodeURIComponent(hit.id)}?size=1024`;
  $("viewer-image").alt = baseName(hit.path);
  $("viewer-path").textContent = hit.path;
  $("viewer-score").textContent = `score ${hit.score.toFixed(4)}`;
  $("viewer-original").href = `/api/v1/images/${encodeURIComponent(hit.id)}`;
  viewer.showModal();
  $("more-like-this").focus();
}

$("more-like-this").addEventListener("click", () => {
  if (!current) return;
  const hit = current;
  viewer.close();
  run({ image_id: hit.id }, `images like ${baseName(hit.path)}`);
});
$("viewer-close").addEventListener("click", () => viewer.close());
viewer.addEventListener("click", (event) => { if (event.target === viewer) viewer.close(); });

$("search-form").addEventListener("submit", (event) => { event.preventDefault(); clearTimeout(debounce); searchText(); });
q.addEventListener("input", searchSoon);
folder.addEventListener("change", () => { if (q.value.trim()) searchText(); });
$("upload").addEventListener("change", (event) => searchImage(event.target.files[0]));
document.querySelector(".file-button").addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("upload").click(); }
});

// drag and drop, paste
const drop = $("drop-zone");
document.addEventListener("dragover", (event) => { event.preventDefault(); drop.hidden = false; });
document.addEventListener("dragleave", (event) => { if (!event.relatedTarget) drop.hidden = true; });
document.addEventListener("drop", (event) => {
  event.preventDefault(); drop.hidden = true;
  const file = [...(event.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) searchImage(file);
});
document.addEventListener("paste", (event) => {
  const item = [...(event.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) { event.preventDefault(); searchImage(item.getAsFile()); }
});

// the token, when the server needs one: kept in a cookie for this site only
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  document.cookie = `clipindex_token=${encodeURIComponent($("token").value)}; path=/; SameSite=Strict`;
  location.reload();
});

// status in the corner: points, model, and a running ingest's progress
async function refreshStatus() {
  try {
    const s = await api("/api/v1/status");
    const parts = [];
    parts.push(s.points != null ? `${s.points.toLocaleString()} photos` : (s.collection_exists ? "busy" : "nothing indexed"));
    if (s.model) parts.push(s.model);
    const run = s.running_ingest;
    if (run) parts.push(`ingest ${run.done ?? 0}/${run.todo ?? "?"}${run.images_per_s ? ` at ${Number(run.images_per_s).toFixed(1)} img/s` : ""}`);
    $("status").textContent = parts.join(" · ");
  } catch (error) {
    $("status").textContent = String(error.message || error);
  }
}

const initial = new URL(location.href).searchParams.get("q");
if (initial) { q.value = initial; searchText(); }
refreshStatus();
setInterval(() => { if (!document.hidden) refreshStatus(); }, 5000);
