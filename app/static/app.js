// The web page's script. It is a client of the public HTTP API only (/health, /transcribe/async, /status/<id>,
// /status/<id>/result, /v1/models), with the same key and limits as any other client. Text from the server is
// only ever inserted as text (textContent), never as HTML. The API calls themselves and the language catalogues
// are in common.js; the tabs in tabs.js; the vision tabs (/describe, /ocr, /describe-region) in vision.js.
"use strict";

import {
  $, KEYS, STORE, api, apiKey, attachmentName, authHeaders, copyToClipboard, errorOf, formatBytes, lang,
  loadEnglish, onKeyRefused, saveBlob, t, useLanguage,
} from "./common.js";
import { bindTabs, shownPanel } from "./tabs.js";
import { dropOnVision, renderVision, setupVision } from "./vision.js";

const LANGUAGES = ["en", "zh-Hant", "ru"];
const FINAL = new Set(["completed", "failed", "cancelled", "gone"]);
// Jobs are polled gently: a server with a rate limit counts these requests against the user's key.
const POLL_MS = 2000;
const HEALTH_MS = 3000;
// Recordings and uploads are kept in this browser (IndexedDB) so that the player still works after a reload;
// larger files are not copied, and the page asks for the file again to play it.
const MEDIA_LIMIT = 1024 ** 3;

// ---------------------------------------------------------------------------------------------------------------
// The page's language: every visible string is in app/static/i18n/<language>.json (common.js loads them).

function preferredLanguage() {
  const saved = localStorage.getItem(KEYS.lang);
  if (LANGUAGES.includes(saved)) return saved;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const low = tag.toLowerCase();
    // Chinese readers get the Traditional catalogue, the only Chinese one.
    if (low.startsWith("zh")) return "zh-Hant";
    if (low.startsWith("ru")) return "ru";
    if (low.startsWith("en")) return "en";
  }
  return "en";
}

async function setLanguage(code, remember) {
  await useLanguage(code);
  document.documentElement.lang = code;
  $("lang-switch").value = code;
  if (remember) localStorage.setItem(KEYS.lang, code);
  for (const element of document.querySelectorAll("[data-i18n]")) element.textContent = t(element.dataset.i18n);
  for (const element of document.querySelectorAll("[data-i18n-label]")) {
    element.setAttribute("aria-label", t(element.dataset.i18nLabel));
  }
  document.title = t("title");
  applyServerConfig(false);
  renderStatus();
  renderJobs();
  renderResultText();
  showChosen();
  if (player) player.setAttribute("aria-label", t("player"));
}

// ---------------------------------------------------------------------------------------------------------------
// Formatting.

function formatClock(seconds) {
  // Floored, as a player's clock is: a line starting at 4.8 s starts in second 0:04.
  const total = Math.max(0, Math.floor(seconds));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function languageName(code, english) {
  try {
    const name = new Intl.DisplayNames([lang], { type: "language" }).of(code) || english;
    // Some languages write their names in lower case; a list item starts with a capital.
    return name.charAt(0).toLocaleUpperCase(lang) + name.slice(1);
  } catch {
    return english;
  }
}

function formatTime(epochMs) {
  return new Intl.DateTimeFormat(lang, { hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(epochMs);
}

function stamp() {
  const d = new Date();
  const two = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}${two(d.getMonth() + 1)}${two(d.getDate())}-${two(d.getHours())}${two(d.getMinutes())}${two(d.getSeconds())}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Server status and configuration, from /health (open: it needs no key).

let health = null;
let clockSkew = 0;
let defaultsApplied = false;

async function pollHealth() {
  await refreshHealth();
  setTimeout(pollHealth, HEALTH_MS);
}

async function refreshHealth() {
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const body = await response.json();
    // A proxy's answer (an error page, another JSON) is as good as no answer.
    health = response.ok && body && body.model && body.upload ? body : null;
    if (health) {
      clockSkew = Date.parse(health.timestamp) - Date.now() || 0;
      applyServerConfig(!defaultsApplied);
      defaultsApplied = true;
    }
  } catch {
    health = null;
  }
  renderStatus();
  renderJobs();
}

function serverNow() {
  return Date.now() + clockSkew;
}

function setText(element, text) {
  // Unchanged text is left alone, so that a live region speaks only when there is something new.
  if (element.textContent !== text) element.textContent = text;
}

function renderStatus() {
  const box = $("server-status");
  const problems = $("server-problems");
  if (!health) {
    box.dataset.state = "down";
    setText($("server-status-text"), t("status_down"));
    setText($("server-status-detail"), "");
    problems.hidden = true;
    return;
  }
  const model = health.model;
  box.dataset.state = model.state;
  // The live region holds the state (and a load's error); the figures that change on every poll are beside it.
  const state = [t(`model_${model.state}`)];
  if (model.state === "error" && model.error) state.push(model.error);
  setText($("server-status-text"), state.join(": "));
  const detail = [];
  if (model.state === "loading" && model.download && model.download.percent != null) {
    detail.push(t("model_download", { percent: Math.round(model.download.percent) }));
  }
  // Before the first load the device is the configured choice, which says nothing when it is "auto".
  if (model.device !== "auto") detail.push(t("device", { device: model.device }));
  if (health.gpu_available) {
    detail.push(t("gpu_memory", {
      allocated: formatBytes(health.gpu_memory_allocated_gb * 1e9),
      reserved: formatBytes(health.gpu_memory_reserved_gb * 1e9),
    }));
  }
  // A no-break space before each separator: a wrapped line never starts with one.
  setText($("server-status-detail"), detail.map((part) => `\u00a0· ${part}`).join(""));
  problems.hidden = health.problems.length === 0;
  setText(problems, health.problems.join(" "));
}

let languagesShown = "";

function applyServerConfig(withDefaults) {
  renderVision(health);
  const upload = health && health.upload;
  if (!upload) return;
  setText($("size-limit"), t("size_limit", { size: formatBytes(upload.max_upload_bytes) }));
  const select = $("opt-language");
  // Rebuilt only when the list or the page's language changes: a menu rebuilt under the user would close.
  const shown = `${lang}:${Object.keys(upload.languages).join(",")}`;
  if (shown !== languagesShown) {
    languagesShown = shown;
    const chosen = select.value;
    select.replaceChildren(select.options[0]);
    const names = Object.entries(upload.languages).map(([code, name]) => [code, languageName(code, name)]);
    names.sort((a, b) => a[1].localeCompare(b[1], lang));
    for (const [code, name] of names) select.add(new Option(name, code));
    select.value = chosen;
  }
  $("opt-prompt").hidden = $("opt-prompt-label").hidden = !upload.takes_prompt;
  $("key-change").hidden = !upload.api_key_required;
  if (!upload.api_key_required && needKey) {
    // The server no longer asks for a key (restarted without one): nothing to wait for.
    needKey = false;
    $("key-panel").hidden = true;
  }
  // The API's document needs a key too on such a server: a link answering 401 helps no one.
  $("api-link").hidden = upload.api_key_required;
  if (withDefaults) {
    const d = upload.defaults;
    $("opt-segment").value = d.segment_duration;
    $("opt-segment").placeholder = d.segment_duration;
    $("opt-vad").checked = Boolean(d.vad);
    $("opt-s2t").checked = Boolean(d.enable_s2t);
    $("opt-words").checked = Boolean(d.word_timestamps);
    select.value = d.language || "";
    if (upload.api_key_required && !apiKey()) askForKey(false);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The API key: asked once, kept in this browser, checked against the server before it is kept.

// Set while the server refuses the key this page has (or it has none): nothing is polled until one is saved.
let needKey = false;
// Counts key changes: answers to requests sent with an earlier key are not applied.
let keyGeneration = 0;

function keyChanged() {
  keyGeneration += 1;
  needKey = false;
  $("key-panel").hidden = true;
  // The polls that follow show the chosen job's result again, if this key sees it.
  hideResult();
  recheckJobs();
  pollJobs();
}

function askForKey(rejected) {
  const panel = $("key-panel");
  const opening = panel.hidden;
  panel.hidden = false;
  setText($("key-message"), t(rejected && apiKey() ? "key_rejected" : "key_needed"));
  // Focus moves to the field once, when the panel opens, never again while the user is elsewhere.
  if (opening) $("api-key").focus();
}

function keyRefused() {
  if (needKey) return;
  needKey = true;
  askForKey(true);
}

async function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  const error = $("key-error");
  error.textContent = "";
  if (!key) {
    error.textContent = t("key_empty");
    return;
  }
  let response;
  try {
    response = await fetch("/v1/models", { headers: { Authorization: `Bearer ${key}` } });
  } catch {
    error.textContent = t("error_network");
    return;
  }
  if (response.status === 401) {
    error.textContent = t("key_wrong");
    $("api-key").select();
    return;
  }
  if (!response.ok) {
    error.textContent = errorOf(response.status, await response.text()).message;
    return;
  }
  localStorage.setItem(KEYS.apiKey, key);
  $("api-key").value = "";
  $("upload-message").textContent = "";
  keyChanged();
}

function forgetKey() {
  localStorage.removeItem(KEYS.apiKey);
  $("api-key").value = "";
  keyGeneration += 1;
  needKey = Boolean(health && health.upload && health.upload.api_key_required);
  askForKey(false);
}

// ---------------------------------------------------------------------------------------------------------------
// Media kept in this browser (IndexedDB), keyed by job id.

const media = {
  db: null,
  open() {
    this.db ??= new Promise((resolve, reject) => {
      const request = indexedDB.open(STORE, 1);
      request.onupgradeneeded = () => request.result.createObjectStore("media");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return this.db;
  },
  async run(mode, work) {
    const db = await this.open();
    return new Promise((resolve, reject) => {
      const transaction = db.transaction("media", mode);
      const request = work(transaction.objectStore("media"));
      transaction.oncomplete = () => resolve(request.result);
      transaction.onerror = transaction.onabort = () => reject(transaction.error);
    });
  },
  put(id, blob) {
    return this.run("readwrite", (store) => store.put(blob, id));
  },
  get(id) {
    return this.run("readonly", (store) => store.get(id));
  },
  remove(id) {
    return this.run("readwrite", (store) => store.delete(id));
  },
  keys() {
    return this.run("readonly", (store) => store.getAllKeys());
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Jobs: this browser's, kept in localStorage with their last known status, polled until they finish.

let jobs = loadJobs();
let selectedId = localStorage.getItem(KEYS.selected);
// Jobs this tab deleted: another tab's copy of the list must not bring them back.
const removedIds = new Set();

function loadJobs() {
  try {
    const stored = JSON.parse(localStorage.getItem(KEYS.jobs) || "[]");
    return Array.isArray(stored) ? stored.filter((j) => j && typeof j.id === "string") : [];
  } catch {
    return [];
  }
}

function loadRemoved() {
  try {
    const stored = JSON.parse(localStorage.getItem(KEYS.removed) || "[]");
    return new Set(Array.isArray(stored) ? stored : []);
  } catch {
    return new Set();
  }
}

function mergeStoredJobs() {
  // Other tabs of this page share the list: take in the jobs they added and their newer news of a job, and
  // drop the jobs any tab deleted, before writing the list back.
  for (const id of loadRemoved()) removedIds.add(id);
  const mine = new Map(jobs.map((j) => [j.id, j]));
  for (const stored of loadJobs()) {
    const known = mine.get(stored.id);
    if (!known) jobs.push(stored);
    else if ((stored.updated || 0) > (known.updated || 0)) Object.assign(known, stored);
  }
  jobs = jobs.filter((j) => !removedIds.has(j.id));
  jobs.sort((a, b) => (b.submitted || 0) - (a.submitted || 0));
}

function saveJobs() {
  mergeStoredJobs();
  try {
    localStorage.setItem(KEYS.jobs, JSON.stringify(jobs));
    // The most recent deletions are enough to keep a stale tab from bringing them back.
    localStorage.setItem(KEYS.removed, JSON.stringify([...removedIds].slice(-500)));
  } catch {
    // Storage full or refused (some private windows): the list lives on in this tab, as the page shows it.
  }
}

function touch(job) {
  job.updated = Date.now();
  saveJobs();
}

function jobState(job) {
  if (job.gone) return "gone";
  return job.last ? job.last.status : "queued";
}

function recheckJobs() {
  // Another key sees other jobs: a job of another key answers 404 like a deleted one, and one that was gone
  // may be there again. Every job is asked about once more.
  const now = Date.now();
  for (const job of jobs) {
    job.gone = false;
    job.recheck = true;
    job.updated = now;
  }
  saveJobs();
}

function keepStatus(job, body) {
  // The transcript itself is fetched when shown: only the status is kept, so that storage stays small.
  const { transcription, segments, ...status } = body;
  job.last = status;
  touch(job);
}

let polling = false;
let pausedUntil = 0;
let queuedTurn = 0;

function jobsToPoll() {
  // Each round: the running jobs, those to check again, and one of the queued ones in turn (a long queue moves
  // slowly, and its places change only as the running jobs end).
  const running = jobs.filter((j) => j.recheck || (!FINAL.has(jobState(j)) && jobState(j) !== "queued"));
  const queued = jobs.filter((j) => !j.recheck && jobState(j) === "queued");
  if (queued.length) running.push(queued[queuedTurn++ % queued.length]);
  return running;
}

async function pollJobs() {
  if (polling || needKey || document.hidden || Date.now() < pausedUntil) return;
  polling = true;
  const generation = keyGeneration;
  try {
    for (const job of jobsToPoll()) {
      try {
        const body = await (await api(`/status/${encodeURIComponent(job.id)}`)).json();
        if (generation !== keyGeneration) break;
        job.recheck = false;
        // A job that starts or finishes changes the model's state: the status line follows at once.
        if (job.last && job.last.status !== body.status) refreshHealth();
        keepStatus(job, body);
        const shown = result && result.job === job;
        if (body.status === "completed" && job.id === selectedId && !shown) showResult(job);
      } catch (error) {
        if (generation !== keyGeneration) break;
        if (error.status === 404) {
          job.gone = true;
          job.recheck = false;
          touch(job);
          if (job.id === selectedId) hideResult();
        } else if (error.status === 401) {
          break;
        } else if (error.status === 429) {
          // Over the server's rate limit: wait as long as it says before asking again.
          pausedUntil = Date.now() + 1000 * Math.max(error.retryAfter, 5);
          break;
        }
      }
    }
  } finally {
    polling = false;
  }
  renderJobs();
}

function loopJobs() {
  pollJobs().finally(() => setTimeout(loopJobs, POLL_MS));
}

function addJob(id, file) {
  const job = { id, name: file.name, size: file.size, type: file.type, submitted: Date.now(), last: null };
  jobs.unshift(job);
  saveJobs();
  if (file.size <= MEDIA_LIMIT) {
    // Best effort: a full quota only means the player asks for the file again.
    media.put(id, file).catch(() => {});
  }
  select(job);
  renderJobs();
  pollJobs();
}

function select(job) {
  selectedId = job.id;
  localStorage.setItem(KEYS.selected, job.id);
  if (jobState(job) === "completed") showResult(job);
  else hideResult();
  renderJobs();
}

async function cancelJob(job) {
  try {
    // cancel_only: a job that finished a moment ago keeps its result rather than being deleted.
    const path = `/status/${encodeURIComponent(job.id)}?cancel_only=true`;
    const body = await (await api(path, { method: "DELETE" })).json();
    keepStatus(job, body);
    // It finished before the cancel arrived: its result is there to show.
    if (body.status === "completed" && job.id === selectedId) showResult(job);
  } catch (error) {
    if (error.status === 404) {
      job.gone = true;
      touch(job);
      if (job.id === selectedId) hideResult();
    } else {
      flash(error.message);
    }
  }
  renderJobs();
}

async function deleteJob(job) {
  // A transcript deleted on the server cannot be had back: ask first.
  if (jobState(job) === "completed" && !window.confirm(t("delete_confirm", { name: job.name }))) return;
  if (jobState(job) !== "gone") {
    try {
      const body = await (await api(`/status/${encodeURIComponent(job.id)}`, { method: "DELETE" })).json();
      if (body.status !== "deleted") {
        keepStatus(job, body);
        renderJobs();
        return;
      }
    } catch (error) {
      if (error.status !== 404) {
        flash(error.message);
        return;
      }
    }
  }
  jobs = jobs.filter((j) => j.id !== job.id);
  removedIds.add(job.id);
  saveJobs();
  media.remove(job.id).catch(() => {});
  if (selectedId === job.id) hideResult();
  renderJobs();
}

function flash(message) {
  $("upload-message").textContent = message;
}

function jobDetail(job) {
  const last = job.last;
  const state = jobState(job);
  if (!last) return "";
  const started = last.started_at ? Date.parse(last.started_at) : null;
  const finished = last.completed_at ? Date.parse(last.completed_at) : null;
  const { segments_done: done, segments_total: total } = last.progress || { segments_done: 0, segments_total: 0 };
  switch (state) {
    case "queued":
      return last.queue_position ? t("job_queue_position", { position: last.queue_position }) : t("job_queued");
    case "processing": {
      const model = health && health.model;
      if (done === 0 && model && (model.state === "unloaded" || model.state === "loading")) return t("job_model_loading");
      if (done === 0 && model && model.state === "error") return t("job_model_error", { reason: model.error || "" });
      const elapsed = started ? (serverNow() - started) / 1000 : 0;
      const parts = [t("job_segments", { done, total }), t("job_elapsed", { time: formatClock(elapsed) })];
      // The total grows while the file is still being cut, so the estimate is a lower bound early on.
      if (done > 0 && total > done) parts.push(t("job_left", { time: formatClock((elapsed / done) * (total - done)) }));
      return parts.join(" · ");
    }
    case "completed": {
      const parts = [];
      if (last.duration != null) parts.push(t("job_audio", { time: formatClock(last.duration) }));
      if (started && finished) parts.push(t("job_took", { time: formatClock((finished - started) / 1000) }));
      return parts.join(" · ");
    }
    case "gone":
      return t("job_gone");
    case "cancelled":
      return t("job_cancelled");
    default:
      return last.error || "";
  }
}

function button(className, action) {
  const made = document.createElement("button");
  made.type = "button";
  made.className = className;
  made.addEventListener("click", action);
  return made;
}

function jobElement(job) {
  const item = document.createElement("li");
  item.className = "job";
  item.dataset.id = job.id;
  const head = document.createElement("div");
  head.className = "job-head";
  const name = button("job-name", () => select(job));
  const time = document.createElement("span");
  time.className = "job-time";
  const state = document.createElement("span");
  state.className = "job-state";
  head.append(name, time, state);
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  const fill = document.createElement("div");
  fill.className = "fill";
  bar.append(fill);
  const detail = document.createElement("p");
  detail.className = "job-detail";
  const actions = document.createElement("div");
  actions.className = "job-actions";
  actions.append(button("danger job-cancel", () => cancelJob(job)), button("secondary job-delete", () => deleteJob(job)));
  item.append(head, bar, detail, actions);
  return item;
}

function renderJobs() {
  const list = $("jobs");
  const existing = new Map([...list.children].map((item) => [item.dataset.id, item]));
  jobs.forEach((job, position) => {
    const item = existing.get(job.id) || jobElement(job);
    existing.delete(job.id);
    if (list.children[position] !== item) list.insertBefore(item, list.children[position] || null);
    updateJobElement(item, job);
  });
  for (const item of existing.values()) item.remove();
  $("jobs-empty").hidden = jobs.length > 0;
}

function updateJobElement(item, job) {
  const state = jobState(job);
  item.classList.toggle("selected", job.id === selectedId);
  const name = item.querySelector(".job-name");
  name.textContent = job.name;
  // The time it was sent tells apart several jobs of one file, on screen and in the buttons' names.
  const sent = job.submitted ? formatTime(job.submitted) : "";
  setText(item.querySelector(".job-time"), sent);
  const named = sent ? `${job.name} (${sent})` : job.name;
  name.disabled = state !== "completed";
  name.setAttribute("aria-current", job.id === selectedId ? "true" : "false");
  const badge = item.querySelector(".job-state");
  badge.dataset.state = state;
  badge.textContent = t(`state_${state}`);
  const progress = (job.last && job.last.progress) || { segments_done: 0, segments_total: 0 };
  const bar = item.querySelector('[role="progressbar"]');
  bar.setAttribute("aria-label", t("job_progress", { name: named }));
  const percent = progress.segments_total ? Math.round((100 * progress.segments_done) / progress.segments_total) : 0;
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute("aria-valuetext", t("job_segments", { done: progress.segments_done, total: progress.segments_total }));
  bar.firstChild.style.width = `${percent}%`;
  bar.hidden = FINAL.has(state);
  item.querySelector(".job-detail").textContent = jobDetail(job);
  const cancel = item.querySelector(".job-cancel");
  cancel.hidden = FINAL.has(state);
  cancel.textContent = t("cancel");
  cancel.setAttribute("aria-label", t("cancel_named", { name: named }));
  const remove = item.querySelector(".job-delete");
  remove.hidden = !FINAL.has(state);
  remove.textContent = t("delete");
  remove.setAttribute("aria-label", t("delete_named", { name: named }));
}

// ---------------------------------------------------------------------------------------------------------------
// Upload: the file picker, drag and drop, the options, and the upload with its progress.

let chosen = null;
let upload = null;

function choose(file) {
  chosen = file;
  showChosen();
  $("upload-message").textContent = "";
}

function showChosen() {
  $("file-info").textContent = chosen ? `${chosen.name} (${formatBytes(chosen.size)})` : "";
}

function formFields() {
  const fields = {
    segment_duration: $("opt-segment").value.trim(),
    vad: String($("opt-vad").checked),
    enable_s2t: String($("opt-s2t").checked),
    word_timestamps: String($("opt-words").checked),
    language: $("opt-language").value,
  };
  if (!$("opt-prompt").hidden && $("opt-prompt").value.trim()) fields.prompt = $("opt-prompt").value.trim();
  return fields;
}

function setUploadProgress(loaded, total, started) {
  const percent = total ? Math.min(100, Math.round((100 * loaded) / total)) : 0;
  const bar = $("upload-bar");
  bar.setAttribute("aria-valuenow", String(percent));
  bar.firstChild.style.width = `${percent}%`;
  const seconds = (performance.now() - started) / 1000;
  const speed = seconds > 0 ? loaded / seconds : 0;
  const text = loaded >= total && total > 0
    ? t("upload_checking")
    : t("upload_progress", { done: formatBytes(loaded), total: formatBytes(total), speed: formatBytes(speed), percent });
  bar.setAttribute("aria-valuetext", text);
  $("upload-progress-label").textContent = text;
}

function submit(file) {
  const message = $("upload-message");
  message.textContent = "";
  if (upload) {
    // One upload at a time: its progress bar and its cancel button belong to it.
    message.textContent = t("upload_busy");
    return;
  }
  if (!file) {
    message.textContent = t("choose_file");
    $("file").focus();
    return;
  }
  if (file.size === 0) {
    message.textContent = t("file_empty");
    return;
  }
  const limit = health && health.upload ? health.upload.max_upload_bytes : null;
  if (limit && file.size > limit) {
    message.textContent = t("too_large", { size: formatBytes(file.size), limit: formatBytes(limit) });
    return;
  }
  const segment = Number($("opt-segment").value);
  if ($("opt-segment").value.trim() && !(segment >= 1 && segment <= 300)) {
    message.textContent = t("segment_range");
    $("opt-segment").focus();
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  for (const [name, value] of Object.entries(formFields())) form.append(name, value);
  const xhr = new XMLHttpRequest();
  upload = xhr;
  const started = performance.now();
  xhr.open("POST", "/transcribe/async");
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.upload.addEventListener("progress", (event) => setUploadProgress(event.loaded, event.total, started));
  xhr.addEventListener("load", () => {
    endUpload();
    if (xhr.status === 202) {
      const body = JSON.parse(xhr.responseText);
      addJob(body.job_id, file);
      refreshHealth();
      choose(null);
      $("file").value = "";
      return;
    }
    if (xhr.status === 401) keyRefused();
    message.textContent = errorOf(xhr.status, xhr.responseText).message;
  });
  xhr.addEventListener("error", () => {
    endUpload();
    message.textContent = t("error_network");
  });
  xhr.addEventListener("abort", () => {
    endUpload();
    message.textContent = t("upload_cancelled");
  });
  $("upload-progress").hidden = false;
  setUploadProgress(0, file.size, started);
  $("transcribe").textContent = t("upload_cancel");
  xhr.send(form);
}

function endUpload() {
  upload = null;
  $("upload-progress").hidden = true;
  $("transcribe").textContent = t("transcribe");
}

// ---------------------------------------------------------------------------------------------------------------
// The microphone: MediaRecorder, then the recording is transcribed like any upload.

let recorder = null;
let recordTimer = null;
// While the browser asks for the microphone: a second click must not start a second recorder.
let recordStarting = false;

async function toggleRecording() {
  const message = $("upload-message");
  if (recorder) {
    recorder.stop();
    return;
  }
  if (recordStarting) return;
  message.textContent = "";
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.MediaRecorder) {
    // Browsers offer the microphone only to secure pages (https, or this machine itself).
    message.textContent = t("mic_unavailable");
    return;
  }
  let stream;
  recordStarting = true;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    message.textContent = t("mic_denied", { reason: error.message || error.name });
    return;
  } finally {
    recordStarting = false;
  }
  const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"].find((m) => MediaRecorder.isTypeSupported(m));
  const active = new MediaRecorder(stream, type ? { mimeType: type } : {});
  const chunks = [];
  active.addEventListener("dataavailable", (event) => event.data.size && chunks.push(event.data));
  active.addEventListener("stop", () => {
    stream.getTracks().forEach((track) => track.stop());
    clearInterval(recordTimer);
    recorder = null;
    $("record").setAttribute("aria-pressed", "false");
    $("record").textContent = t("record");
    $("record-time").textContent = "";
    const mime = (active.mimeType || type || "audio/webm").split(";")[0];
    const extension = mime.includes("ogg") ? "ogg" : mime.includes("mp4") ? "m4a" : "webm";
    const file = new File(chunks, `recording-${stamp()}.${extension}`, { type: mime });
    choose(file);
    submit(file);
  });
  recorder = active;
  active.start(1000);
  const began = Date.now();
  $("record").setAttribute("aria-pressed", "true");
  $("record").textContent = t("record_stop");
  recordTimer = setInterval(() => {
    $("record-time").textContent = formatClock((Date.now() - began) / 1000);
  }, 250);
}

// ---------------------------------------------------------------------------------------------------------------
// The result: the player, the transcript beside it (following the playback), downloads and copy.

let result = null;
let player = null;
let mediaUrl = null;
let trackUrl = null;
let currentSegment = null;
let currentWord = null;

// Counts the results shown and hidden: a result that arrives after another was asked for (or the panel was
// hidden) is dropped.
let resultToken = 0;

function hideResult() {
  resultToken += 1;
  $("result-panel").hidden = true;
  result = null;
  releaseMedia();
}

function releaseMedia() {
  if (player) player.pause();
  $("player-box").replaceChildren();
  player = null;
  for (const url of [mediaUrl, trackUrl]) if (url) URL.revokeObjectURL(url);
  mediaUrl = trackUrl = null;
}

async function showResult(job) {
  const token = ++resultToken;
  const panel = $("result-panel");
  result = null;
  panel.hidden = false;
  $("result-heading").textContent = job.name;
  $("result-message").textContent = "";
  $("segments").replaceChildren();
  releaseMedia();
  let body;
  try {
    const response = await api(`/status/${encodeURIComponent(job.id)}/result?format=json&word_timestamps=true`);
    body = await response.json();
  } catch (error) {
    if (token !== resultToken) return;
    if (error.status === 404) {
      // Deleted or expired on the server (or another key's): the list says so.
      job.gone = true;
      touch(job);
      hideResult();
      renderJobs();
    } else {
      $("result-message").textContent = error.message;
    }
    return;
  }
  if (token !== resultToken) return;
  result = { job, body };
  renderResultText();
  let blob = null;
  try {
    blob = await media.get(job.id);
  } catch {
    blob = null;
  }
  // Another job may have been chosen meanwhile: its own showResult attaches its own file.
  if (token !== resultToken) return;
  if (blob) attachMedia(blob);
  else $("media-missing").hidden = false;
}

function renderResultText() {
  if (!result) return;
  const { body } = result;
  const meta = [t("job_audio", { time: formatClock(body.duration) })];
  if (body.language) meta.push(languageName(body.language, body.language));
  meta.push(t("segment_count", { count: body.segments.length }));
  $("result-meta").textContent = meta.join(" · ");
  const box = $("segments");
  box.replaceChildren();
  if (body.segments.length === 0) {
    const empty = document.createElement("p");
    empty.className = "empty-transcript";
    empty.textContent = t("no_speech");
    box.append(empty);
  }
  for (const segment of body.segments) box.append(segmentElement(segment, body.language));
  currentSegment = currentWord = null;
}

function segmentElement(segment, language) {
  const line = document.createElement("p");
  line.className = "segment";
  line.dataset.start = segment.start;
  line.dataset.end = segment.end;
  const time = button("time", () => seek(segment.start));
  time.textContent = formatClock(segment.start);
  time.setAttribute("aria-label", t("play_from", { time: formatClock(segment.start) }));
  const text = document.createElement("span");
  text.className = "text";
  if (language) text.lang = language;
  // Each word becomes a span over its own characters in the text, so the text reads exactly as transcribed.
  let cursor = 0;
  for (const word of segment.words || []) {
    const at = segment.text.indexOf(word.word, cursor);
    if (at < 0) continue;
    if (at > cursor) text.append(segment.text.slice(cursor, at));
    const span = document.createElement("span");
    span.className = "word";
    span.dataset.start = word.start;
    span.dataset.end = word.end;
    span.textContent = word.word;
    text.append(span);
    cursor = at + word.word.length;
  }
  text.append(segment.text.slice(cursor));
  text.addEventListener("click", (event) => {
    const word = event.target.closest(".word");
    seek(Number((word || line).dataset.start));
  });
  line.append(time, text);
  return line;
}

function attachMedia(blob) {
  $("media-missing").hidden = true;
  releaseMedia();
  const video = blob.type.startsWith("video/");
  player = document.createElement(video ? "video" : "audio");
  player.controls = true;
  player.preload = "metadata";
  player.setAttribute("aria-label", t("player"));
  mediaUrl = URL.createObjectURL(blob);
  player.src = mediaUrl;
  player.addEventListener("timeupdate", follow);
  player.addEventListener("seeked", follow);
  player.addEventListener("play", () => requestAnimationFrame(followWhilePlaying));
  $("player-box").append(player);
  if (video && result) addSubtitles(result.job);
}

async function addSubtitles(job) {
  try {
    const vtt = await (await api(`/status/${encodeURIComponent(job.id)}/result?format=vtt`)).blob();
    if (!player || !result || result.job !== job) return;
    if (trackUrl) URL.revokeObjectURL(trackUrl);
    player.querySelectorAll("track").forEach((old) => old.remove());
    trackUrl = URL.createObjectURL(new Blob([vtt], { type: "text/vtt" }));
    const track = document.createElement("track");
    track.kind = "subtitles";
    track.label = t("transcript");
    track.srclang = result.body.language || lang;
    track.src = trackUrl;
    track.default = true;
    player.append(track);
  } catch (error) {
    $("result-message").textContent = error.message;
  }
}

function seek(seconds) {
  if (!player) return;
  player.currentTime = seconds;
  player.play().catch(() => {});
}

function followWhilePlaying() {
  follow();
  if (player && !player.paused) requestAnimationFrame(followWhilePlaying);
}

function follow() {
  if (!player) return;
  const now = player.currentTime;
  const inside = (element) => Number(element.dataset.start) <= now && now < Number(element.dataset.end);
  const segment = [...$("segments").querySelectorAll(".segment")].find(inside) || null;
  if (segment !== currentSegment) {
    currentSegment?.classList.remove("current");
    currentSegment?.removeAttribute("aria-current");
    segment?.classList.add("current");
    segment?.setAttribute("aria-current", "true");
    if (segment) keepInView(segment);
    currentSegment = segment;
  }
  const word = segment ? [...segment.querySelectorAll(".word")].find(inside) || null : null;
  if (word !== currentWord) {
    currentWord?.classList.remove("current");
    word?.classList.add("current");
    currentWord = word;
  }
}

function keepInView(segment) {
  // Only the transcript's own box scrolls: moving the page would take the player out of sight on a phone.
  const box = $("segments");
  const top = segment.offsetTop;
  if (top < box.scrollTop || top + segment.offsetHeight > box.scrollTop + box.clientHeight) {
    box.scrollTop = top - box.clientHeight / 3;
  }
}

async function download(format) {
  if (!result) return;
  const { job } = result;
  try {
    const response = await api(`/status/${encodeURIComponent(job.id)}/result?format=${format}`);
    const blob = await response.blob();
    saveBlob(blob, attachmentName(response.headers.get("Content-Disposition"), `transcription.${format}`));
  } catch (error) {
    $("result-message").textContent = error.message;
  }
}

async function copyText() {
  if (!result) return;
  const copied = await copyToClipboard(result.body.transcription);
  $("result-message").textContent = t(copied ? "copied" : "copy_failed");
}

// ---------------------------------------------------------------------------------------------------------------
// Wiring.

function bind() {
  $("lang-switch").addEventListener("change", (event) => setLanguage(event.target.value, true));
  $("key-form").addEventListener("submit", saveKey);
  $("key-forget").addEventListener("click", forgetKey);
  $("key-change").addEventListener("click", () => askForKey(false));
  $("file").addEventListener("change", (event) => choose(event.target.files[0] || null));
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (upload) upload.abort();
    else submit(chosen);
  });
  $("record").addEventListener("click", toggleRecording);
  $("copy").addEventListener("click", copyText);
  for (const button of document.querySelectorAll("[data-format]")) {
    button.addEventListener("click", () => download(button.dataset.format));
  }
  $("media-pick").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) attachMedia(file);
  });
  // A file dropped anywhere on the page is taken by the tab shown, rather than opened by the browser in place
  // of the page.
  const zone = () => shownPanel().querySelector(".drop-zone") || $("drop-zone");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone().classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) zone().classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    zone().classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file && !dropOnVision(file)) choose(file);
  });
}

async function pruneMedia() {
  // Files of jobs that left the list (deleted in another tab, or before a crash) are not kept.
  try {
    const listed = new Set(loadJobs().map((j) => j.id));
    for (const id of await media.keys()) if (!listed.has(id)) await media.remove(id);
  } catch {
    // No IndexedDB (a private window): nothing is kept anyway.
  }
}

async function start() {
  await loadEnglish();
  onKeyRefused(keyRefused);
  bindTabs();
  setupVision();
  bind();
  window.addEventListener("storage", (event) => {
    if (event.key === KEYS.jobs || event.key === KEYS.removed) {
      mergeStoredJobs();
      renderJobs();
    } else if (event.key === KEYS.apiKey) {
      // Another tab saved or forgot the key: this one follows.
      if (apiKey()) keyChanged();
      else forgetKey();
    }
  });
  document.addEventListener("visibilitychange", () => document.hidden || pollJobs());
  await setLanguage(preferredLanguage(), false);
  pollHealth();
  loopJobs();
  pruneMedia();
  const job = jobs.find((j) => j.id === selectedId);
  if (job && jobState(job) === "completed") showResult(job);
  document.body.dataset.ready = "true";
}

start();
