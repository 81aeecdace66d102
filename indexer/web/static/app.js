// clipindex serve's page. Every file name is set as text (textContent, attributes), never as markup.
"use strict";

const DEBOUNCE_MS = 250;
const LIMIT = 60;
const $ = (id) => document.getElementById(id);
const q = $("q"), folder = $("folder"), results = $("results"), message = $("message");
const after = $("after"), before = $("before"), camera = $("camera"), sort = $("sort");
const FILTERS = { after, before, camera, sort };
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

// "2023-06-01T12:00:00+02:00 (EXIF), Canon EOS R5": what the payload says of when and with what
function takenText(item) {
  const parts = [];
  if (item.taken_at) parts.push(`taken ${item.taken_at}${item.taken_at_source === "mtime" ? " (file time)" : ""}`);
  const cam = [item.camera_make, item.camera_model].filter(Boolean).join(" ");
  if (cam) parts.push(cam);
  return parts.join(", ");
}

// one thumbnail with its name and a figure, a button that opens the viewer; every text is set as text
function tile(item, { title, label, value, valueClass }) {
  const li = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.title = title;
  button.setAttribute("aria-label", label);
  const img = document.createElement("img");
  img.src = item.thumbnail;
  img.alt = baseName(item.path);
  img.loading = "lazy";
  img.width = 180; img.height = 180;
  const meta = document.createElement("span");
  meta.className = "meta";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = baseName(item.path);
  const figure = document.createElement("span");
  if (valueClass) figure.className = valueClass;
  figure.textContent = value;
  meta.append(name, figure);
  button.append(img, meta);
  button.addEventListener("click", () => openViewer(item));
  li.append(button);
  return li;
}

function show(answer, what) {
  results.replaceChildren();
  for (const hit of answer.results) {
    results.append(tile(hit, {
      title: [hit.path, takenText(hit)].filter(Boolean).join("\n"),
      label: `${baseName(hit.path)}, score ${hit.score.toFixed(3)}`,
      value: hit.score.toFixed(3),
      valueClass: "score",
    }));
  }
  const n = answer.results.length;
  say(n ? `${n} result${n === 1 ? "" : "s"} for ${what} (${answer.took_ms.toFixed(0)} ms)` : `No results for ${what}`);
}

function where() {
  const body = { limit: LIMIT };
  if (folder.value.trim()) body.folder = folder.value.trim();
  for (const [name, input] of Object.entries(FILTERS)) {
    const value = input.value.trim();
    if (value && !(name === "sort" && value === "score")) body[name] = value;
  }
  return body;
}

function rememberFilters(url) {
  for (const [name, input] of Object.entries(FILTERS)) {
    const value = input.value.trim();
    if (value && !(name === "sort" && value === "score")) url.searchParams.set(name, value); else url.searchParams.delete(name);
  }
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
  rememberFilters(url);
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
  $("viewer-score").textContent = hit.score != null ? `score ${hit.score.toFixed(4)}` : `similarity ${hit.similarity.toFixed(4)}`;
  $("viewer-taken").textContent = takenText(hit);
  $("viewer-original").href = `/api/v1/images/${encodeURIComponent(hit.id)}`;
  viewer.showModal();
  $("more-like-this").focus();
}

$("more-like-this").addEventListener("click", () => {
  if (!current) return;
  const hit = current;
  viewer.close();
  showSearch();
  run({ image_id: hit.id }, `images like ${baseName(hit.path)}`);
});
$("viewer-close").addEventListener("click", () => viewer.close());
viewer.addEventListener("click", (event) => { if (event.target === viewer) viewer.close(); });

$("search-form").addEventListener("submit", (event) => { event.preventDefault(); clearTimeout(debounce); searchText(); });
q.addEventListener("input", searchSoon);
folder.addEventListener("change", () => { if (q.value.trim()) searchText(); });
for (const input of Object.values(FILTERS)) input.addEventListener("change", () => { if (q.value.trim()) searchText(); });
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

// duplicates: groups side by side, the best (the one to keep) outlined; nothing is deleted
function showSearch() { $("duplicates").hidden = true; results.hidden = false; message.hidden = false; }

async function findDuplicates() {
  const say2 = (text) => { $("duplicates-message").textContent = text; };
  const groups = $("groups");
  const params = new URLSearchParams({ min_similarity: $("min-similarity").value || "0.99" });
  if (folder.value.trim()) params.set("folder", folder.value.trim());
  groups.replaceChildren();
  say2("Comparing every photo… (a minute or two at a million)");
  try {
    const answer = await api(`/api/v1/duplicates?${params}`);
    for (const [number, group] of answer.groups.entries()) {
      const li = document.createElement("li");
      const title = document.createElement("h3");
      title.textContent = `${number + 1}: ${group.kind === "exact" ? "identical files" : "near-copies"}, ${group.files.length} files`;
      const row = document.createElement("ul");
      for (const file of group.files) {
        const item = tile(file, {
          title: file.path,
          label: `${baseName(file.path)}${file.best ? ", the one to keep" : ""}, similarity ${file.similarity.toFixed(3)}`,
          value: file.best ? "keep" : file.similarity.toFixed(3),
        });
        if (file.best) item.className = "best";
        row.append(item);
      }
      li.append(title, row);
      groups.append(li);
    }
    const copies = answer.groups.reduce((n, g) => n + g.files.length - 1, 0);
    say2(answer.groups.length
      ? `${answer.groups.length} groups, ${copies} copies among ${answer.scanned.toLocaleString()} photos (${(answer.took_ms / 1000).toFixed(1)} s)`
      : `No duplicates among ${answer.scanned.toLocaleString()} photos`);
  } catch (error) {
    say2(String(error.message || error));
  }
}

$("show-duplicates").addEventListener("click", () => {
  $("duplicates").hidden = false; results.hidden = true; message.hidden = true;
  $("min-similarity").focus();
});
$("hide-duplicates").addEventListener("click", () => { showSearch(); q.focus(); });
$("duplicates-form").addEventListener("submit", (event) => { event.preventDefault(); findDuplicates(); });

const start = new URL(location.href).searchParams;
for (const [name, input] of Object.entries(FILTERS)) if (start.get(name)) input.value = start.get(name);
const initial = start.get("q");
if (initial) { q.value = initial; searchText(); }
refreshStatus();
setInterval(() => { if (!document.hidden) refreshStatus(); }, 5000);
