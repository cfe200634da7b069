// The vision tabs: questions about an image or a video (POST /describe), the text of an image (POST /ocr) and
// a region of an image (POST /describe-region). Like app.js it is a client of the public API only, and text from
// the server is only ever inserted as text. A file is sent once: its answer's media_id names it afterwards.
"use strict";

import { $, api, copyToClipboard, formatBytes, saveBlob, t } from "./common.js";
import { shownPanel } from "./tabs.js";

// Whether this server's model takes images and video (/health's upload.sees); true until /health says.
let sees = true;
let maxUpload = null;

// Each tab's state. `generation` counts the files chosen: an answer about an earlier file is dropped.
function tool(name) {
  return { name, file: null, url: null, mediaId: null, busy: false, generation: 0 };
}
const ask = { ...tool("ask"), turns: [] };
const ocr = { ...tool("ocr"), text: null, fileName: "" };
const region = { ...tool("region"), answer: null, size: null, drag: null };

// ---------------------------------------------------------------------------------------------------------------
// What the tabs share: choosing a file, its preview, sending a request, and saying what went wrong.

function takeFile(state, file) {
  state.generation += 1;
  state.file = file;
  state.mediaId = null;
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = file ? URL.createObjectURL(file) : null;
  $(`${state.name}-message`).textContent = "";
  showFileInfo(state);
}

function showFileInfo(state) {
  const file = state.file;
  $(`${state.name}-file-info`).textContent = file ? `${file.name} (${formatBytes(file.size)})` : "";
}

function isVideo(file) {
  return file.type.startsWith("video/");
}

// A message for a file that cannot be sent as it is, or "" when it can.
function fileProblem(file) {
  if (file.size === 0) return t("file_empty");
  if (maxUpload && file.size > maxUpload) return t("too_large", { size: formatBytes(file.size), limit: formatBytes(maxUpload) });
  return "";
}

// The server's answer as JSON; the tab's button is disabled and its busy sign shown until it comes.
async function send(state, path, form) {
  state.busy = true;
  $(`${state.name}-submit`).disabled = true;
  $(`${state.name}-busy`).hidden = false;
  $(`${state.name}-message`).textContent = "";
  try {
    return await (await api(path, { method: "POST", body: form })).json();
  } finally {
    state.busy = false;
    $(`${state.name}-submit`).disabled = false;
    $(`${state.name}-busy`).hidden = true;
  }
}

function failed(state, error, imagesOnly) {
  const message = $(`${state.name}-message`);
  if (error.code === "media_not_found") {
    // The server forgot the file (an hour after its last use): what was asked stays on screen, and the file
    // must be chosen again, which starts anew.
    state.generation += 1;
    state.file = null;
    state.mediaId = null;
    $(`${state.name}-file`).value = "";
    showFileInfo(state);
    message.textContent = t("vision_expired");
    $(`${state.name}-file`).focus();
    return;
  }
  // The refusals the vision routes add, in the page's words with the server's after them; the others (too large,
  // rate limits, a full queue) are already worded by common.js.
  if (error.code === "invalid_option") message.textContent = `${t("vision_invalid")} (${error.detail})`;
  else if (error.code === "unsupported_media" && imagesOnly) message.textContent = `${t("unreadable_image")} (${error.detail})`;
  else if (error.code === "unsupported_media") message.textContent = `${t("unreadable_media")} (${error.detail})`;
  else if (error.code === "media_too_large") message.textContent = `${t("media_too_large")} (${error.detail})`;
  else message.textContent = error.message;
}

// The file, or the media_id of the same file sent before.
function fileOrId(state, form) {
  if (state.mediaId) form.append("media_id", state.mediaId);
  else form.append("file", state.file, state.file.name);
}

function preview(state, box) {
  box.replaceChildren();
  if (!state.file) return;
  const video = isVideo(state.file);
  const element = document.createElement(video ? "video" : "img");
  if (video) {
    element.controls = true;
    element.preload = "metadata";
    element.setAttribute("aria-label", t("preview_of", { name: state.file.name }));
  } else {
    element.alt = t("preview_of", { name: state.file.name });
  }
  element.src = state.url;
  box.append(element);
}

// Whether the state's file or media_id can be sent; if not, says so.
function ready(state, choose) {
  const message = $(`${state.name}-message`);
  if (!state.mediaId && !state.file) {
    message.textContent = choose;
    $(`${state.name}-file`).focus();
    return false;
  }
  const problem = state.mediaId ? "" : fileProblem(state.file);
  message.textContent = problem;
  return !problem;
}

// ---------------------------------------------------------------------------------------------------------------
// Ask about an image or a video: a conversation about one file.

function chooseAsk(file) {
  takeFile(ask, file);
  ask.turns = [];
  preview(ask, $("ask-preview"));
  renderAsk();
}

async function submitAsk() {
  if (ask.busy || !ready(ask, t("choose_image_or_video"))) return;
  const form = new FormData();
  fileOrId(ask, form);
  form.append("question", $("ask-question").value.trim());
  const tokens = $("ask-tokens").value.trim();
  if (tokens) form.append("max_new_tokens", tokens);
  const generation = ask.generation;
  let body;
  try {
    body = await send(ask, "/describe", form);
  } catch (error) {
    if (generation === ask.generation) failed(ask, error, false);
    return;
  }
  if (generation !== ask.generation) return;
  ask.mediaId = body.media.media_id;
  ask.turns.push({ question: body.question, answer: body.answer, cut: body.finish_reason === "length" });
  $("ask-question").value = "";
  renderAsk();
  const list = $("ask-conversation");
  list.scrollTop = list.scrollHeight;
}

function turnPart(className, label, text) {
  const part = document.createElement("div");
  part.className = className;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = label;
  const said = document.createElement("p");
  said.className = "said";
  said.textContent = text;
  part.append(who, said);
  return part;
}

function renderAsk() {
  const list = $("ask-conversation");
  list.replaceChildren();
  for (const turn of ask.turns) {
    const item = document.createElement("li");
    item.className = "turn";
    item.append(turnPart("question", t("question"), turn.question), turnPart("answer", t("answer"), turn.answer));
    if (turn.cut) {
      const note = document.createElement("p");
      note.className = "hint";
      note.textContent = t("answer_cut");
      item.append(note);
    }
    list.append(item);
  }
  $("ask-empty").hidden = ask.turns.length > 0;
  const shown = $("ask-preview").firstElementChild;
  if (shown && ask.file) {
    const name = t("preview_of", { name: ask.file.name });
    if (shown.tagName === "IMG") shown.alt = name;
    else shown.setAttribute("aria-label", name);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Read the text of an image (OCR), with a download named by the server and a copy button.

function chooseOcr(file) {
  takeFile(ocr, file);
  ocr.text = null;
  preview(ocr, $("ocr-preview"));
  renderOcr();
}

async function submitOcr() {
  if (ocr.busy || !ready(ocr, t("choose_image"))) return;
  const form = new FormData();
  fileOrId(ocr, form);
  const generation = ocr.generation;
  let body;
  try {
    body = await send(ocr, "/ocr?format=json", form);
  } catch (error) {
    if (generation === ocr.generation) failed(ocr, error, true);
    return;
  }
  if (generation !== ocr.generation) return;
  ocr.mediaId = body.media.media_id;
  ocr.text = body.text;
  ocr.fileName = body.file_name;
  $("ocr-status").textContent = "";
  renderOcr();
}

function renderOcr() {
  $("ocr-result").hidden = ocr.text === null;
  $("ocr-text").value = ocr.text || "";
  $("ocr-text").placeholder = t("ocr_empty");
  const shown = $("ocr-preview").firstElementChild;
  if (shown && ocr.file) shown.alt = t("preview_of", { name: ocr.file.name });
}

function downloadOcr() {
  // The text shown, under the name the server gave it (ocr_result_<YYYYMMDDHHMMSS>.txt): nothing is asked again.
  if (ocr.text === null) return;
  saveBlob(new Blob([`${ocr.text}\n`], { type: "text/plain;charset=utf-8" }), ocr.fileName);
}

async function copyOcr() {
  if (ocr.text === null) return;
  $("ocr-status").textContent = t((await copyToClipboard(ocr.text)) ? "copied" : "copy_failed");
}

// ---------------------------------------------------------------------------------------------------------------
// Describe a region: the user drags a rectangle over the image (or types it); the box is in the image's pixels.

const BOX = /^\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$/;

function chooseRegion(file) {
  takeFile(region, file);
  region.answer = null;
  region.size = null;
  region.drag = null;
  $("region-box").value = "";
  $("region-rect").hidden = true;
  const image = $("region-image");
  $("region-stage").hidden = !file;
  if (file) {
    image.alt = t("preview_of", { name: file.name });
    image.src = region.url;
  } else {
    image.removeAttribute("src");
  }
  renderRegion();
}

// The image's size in its own pixels: the server's once it has read it, else the browser's.
function naturalSize() {
  const image = $("region-image");
  return region.size || (image.naturalWidth ? { width: image.naturalWidth, height: image.naturalHeight } : null);
}

// A pointer's place over the image, in displayed pixels, kept inside the image.
function pointOver(event) {
  const rect = $("region-image").getBoundingClientRect();
  return {
    x: Math.min(Math.max(event.clientX - rect.left, 0), rect.width),
    y: Math.min(Math.max(event.clientY - rect.top, 0), rect.height),
  };
}

function drawRect(left, top, width, height) {
  const rect = $("region-rect");
  rect.style.left = `${left}px`;
  rect.style.top = `${top}px`;
  rect.style.width = `${width}px`;
  rect.style.height = `${height}px`;
  rect.hidden = false;
}

function drawDrag(a, b) {
  drawRect(Math.min(a.x, b.x), Math.min(a.y, b.y), Math.abs(a.x - b.x), Math.abs(a.y - b.y));
}

// The dragged rectangle as x1,y1,x2,y2 in the image's pixels, or null for a click (no area).
function naturalBox(a, b) {
  const size = naturalSize();
  const rect = $("region-image").getBoundingClientRect();
  if (!size || !rect.width || !rect.height) return null;
  const sx = size.width / rect.width;
  const sy = size.height / rect.height;
  const clamp = (value, most) => Math.min(Math.max(Math.round(value), 0), most);
  const x1 = clamp(Math.min(a.x, b.x) * sx, size.width);
  const x2 = clamp(Math.max(a.x, b.x) * sx, size.width);
  const y1 = clamp(Math.min(a.y, b.y) * sy, size.height);
  const y2 = clamp(Math.max(a.y, b.y) * sy, size.height);
  return x1 < x2 && y1 < y2 ? [x1, y1, x2, y2] : null;
}

// The typed box drawn over the image, when it is one inside it.
function drawTypedBox() {
  if (region.drag) return;
  const match = BOX.exec($("region-box").value);
  const size = naturalSize();
  const rect = $("region-image").getBoundingClientRect();
  const box = match ? match.slice(1).map(Number) : null;
  const fits = box && size && rect.width && box[0] < box[2] && box[1] < box[3] && box[2] <= size.width && box[3] <= size.height;
  if (!fits) {
    $("region-rect").hidden = true;
    return;
  }
  const sx = rect.width / size.width;
  const sy = rect.height / size.height;
  drawRect(box[0] * sx, box[1] * sy, (box[2] - box[0]) * sx, (box[3] - box[1]) * sy);
}

function bindDrag() {
  const stage = $("region-stage");
  stage.addEventListener("pointerdown", (event) => {
    if (!region.file || !naturalSize() || $("region-fields").disabled || event.button !== 0) return;
    event.preventDefault();
    stage.setPointerCapture(event.pointerId);
    const start = pointOver(event);
    region.drag = { id: event.pointerId, start };
    drawDrag(start, start);
  });
  stage.addEventListener("pointermove", (event) => {
    if (region.drag && event.pointerId === region.drag.id) drawDrag(region.drag.start, pointOver(event));
  });
  const end = (event, cancelled) => {
    if (!region.drag || event.pointerId !== region.drag.id) return;
    const box = cancelled ? null : naturalBox(region.drag.start, pointOver(event));
    region.drag = null;
    if (box) {
      $("region-box").value = box.join(",");
      $("region-message").textContent = "";
    }
    drawTypedBox();
  };
  stage.addEventListener("pointerup", (event) => end(event, false));
  stage.addEventListener("pointercancel", (event) => end(event, true));
  $("region-box").addEventListener("input", drawTypedBox);
  // The drawn box follows the image's displayed size (a resized window, the tab shown again).
  $("region-image").addEventListener("load", drawTypedBox);
  new ResizeObserver(() => drawTypedBox()).observe($("region-image"));
}

async function submitRegion() {
  if (region.busy || !ready(region, t("choose_image"))) return;
  const box = $("region-box").value.trim();
  if (!box) {
    $("region-message").textContent = t("box_needed");
    $("region-box").focus();
    return;
  }
  const form = new FormData();
  fileOrId(region, form);
  form.append("box", box);
  form.append("question", $("region-question").value.trim());
  const generation = region.generation;
  let body;
  try {
    body = await send(region, "/describe-region", form);
  } catch (error) {
    if (generation === region.generation) failed(region, error, true);
    return;
  }
  if (generation !== region.generation) return;
  region.mediaId = body.media.media_id;
  region.size = { width: body.media.width, height: body.media.height };
  region.answer = body;
  renderRegion();
}

function renderRegion() {
  const body = region.answer;
  $("region-answer").hidden = !body;
  if (body) {
    $("region-answer-question").textContent = `${body.question} (${(body.box || []).join(",")})`;
    $("region-answer-text").textContent = body.answer;
    $("region-answer-note").textContent = body.finish_reason === "length" ? t("answer_cut") : "";
  }
  if (region.file) $("region-image").alt = t("preview_of", { name: region.file.name });
}

// ---------------------------------------------------------------------------------------------------------------
// Wiring, and what app.js calls: at the start, on a dropped file, and when the language or /health changes.

function render(state) {
  if (state === ask) renderAsk();
  else if (state === ocr) renderOcr();
  else renderRegion();
  showFileInfo(state);
}

const choosers = { ask: chooseAsk, ocr: chooseOcr, region: chooseRegion };

export function setupVision() {
  const submits = { ask: submitAsk, ocr: submitOcr, region: submitRegion };
  for (const [name, choose] of Object.entries(choosers)) {
    $(`${name}-file`).addEventListener("change", (event) => choose(event.target.files[0] || null));
    $(`${name}-form`).addEventListener("submit", (event) => {
      event.preventDefault();
      submits[name]();
    });
  }
  $("ocr-download").addEventListener("click", downloadOcr);
  $("ocr-copy").addEventListener("click", copyOcr);
  bindDrag();
}

// Takes a file dropped on the page while a vision tab is shown; false on the transcription tab.
export function dropOnVision(file) {
  const name = shownPanel().id.replace(/^panel-/, "");
  if (!(name in choosers)) return false;
  if (!$(`${name}-fields`).disabled) choosers[name](file);
  return true;
}

export function renderVision(health) {
  if (health && health.upload) {
    sees = health.upload.sees !== false;
    maxUpload = health.upload.max_upload_bytes || null;
  }
  for (const state of [ask, ocr, region]) {
    $(`${state.name}-fields`).disabled = !sees;
    render(state);
  }
  for (const note of document.querySelectorAll("[data-blind]")) note.hidden = sees;
}
