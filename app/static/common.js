// What the page's scripts share: the language catalogues, the API (its key, its errors), and saving or copying
// text. app.js (transcription) and vision.js (images and video) both import it; neither holds a copy.
"use strict";

export const $ = (id) => document.getElementById(id);
export const STORE = "qwen-asr";
export const KEYS = {
  jobs: `${STORE}.jobs`,
  apiKey: `${STORE}.api-key`,
  lang: `${STORE}.lang`,
  selected: `${STORE}.selected`,
  removed: `${STORE}.removed`,
  tab: `${STORE}.tab`,
};

// ---------------------------------------------------------------------------------------------------------------
// Language catalogues: every visible string is in app/static/i18n/<language>.json.

let catalogue = {};
let english = {};
// The page's language; importers read it live.
export let lang = "en";

export function t(key, params = {}) {
  const text = catalogue[key] ?? english[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}

async function loadCatalogue(code) {
  const response = await fetch(`/static/i18n/${code}.json`);
  if (!response.ok) throw new Error(`no catalogue for ${code}`);
  return response.json();
}

export async function loadEnglish() {
  english = await loadCatalogue("en");
}

export async function useLanguage(code) {
  catalogue = code === "en" ? english : await loadCatalogue(code);
  lang = code;
}

export function formatBytes(bytes) {
  const units = ["byte", "kilobyte", "megabyte", "gigabyte", "terabyte"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  // Bytes in words ("24 bytes"), the rest as symbols; a no-break space keeps a figure and its unit on one line.
  const display = unit === 0 ? "long" : "short";
  const format = new Intl.NumberFormat(lang, { style: "unit", unit: units[unit], unitDisplay: display, maximumFractionDigits: 1 });
  return format.format(value).replace(/ /g, "\u00a0");
}

// ---------------------------------------------------------------------------------------------------------------
// The API: the key rides on every call, and an error body's message is shown as the server wrote it.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = 0, detail = message) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    // The server's own words, without the page's in front of them.
    this.detail = detail;
  }
}

export function apiKey() {
  return localStorage.getItem(KEYS.apiKey) || "";
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export function errorOf(status, text, retryAfter = 0) {
  let code = `http_${status}`;
  let message = t("error_status", { status });
  let detail = message;
  try {
    // Both envelopes (the native one and OpenAI's) keep code and message under "error".
    const error = JSON.parse(text).error || {};
    code = error.code || code;
    message = detail = error.message || message;
    // The common refusals in the page's language, with the server's own words after them.
    if (english[`error_${code}`]) message = `${t(`error_${code}`)} (${message})`;
  } catch {
    // Not JSON (a proxy's page): the status says enough.
  }
  return new ApiError(status, code, message, retryAfter, detail);
}

// What to do when the server refuses the key (app.js asks for another).
let keyRefused = () => {};

export function onKeyRefused(handler) {
  keyRefused = handler;
}

export async function api(path, init = {}) {
  const sent = apiKey();
  let response;
  try {
    response = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  } catch {
    throw new ApiError(0, "network", t("error_network"));
  }
  if (!response.ok) {
    const error = errorOf(response.status, await response.text(), Number(response.headers.get("Retry-After")) || 0);
    // A refusal of a key that has since been replaced says nothing about the new one.
    if (error.status === 401 && sent === apiKey()) keyRefused();
    throw error;
  }
  return response;
}

export function attachmentName(header, fallback) {
  if (!header) return fallback;
  // RFC 6266: filename*=UTF-8''<percent-encoded> wins over filename=<token or quoted string>.
  const extended = /(?:^|;)\s*filename\*\s*=\s*UTF-8''([^;\s]+)/i.exec(header);
  if (extended) {
    try {
      return decodeURIComponent(extended[1]);
    } catch {
      // A malformed escape: fall back to the plain name.
    }
  }
  const plain = /(?:^|;)\s*filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/i.exec(header);
  if (!plain) return fallback;
  return plain[1] !== undefined ? plain[1].replace(/\\(.)/g, "$1") : plain[2];
}

// ---------------------------------------------------------------------------------------------------------------
// Files and the clipboard.

export function saveBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

// Whether the text reached the clipboard.
export async function copyToClipboard(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Without a secure page there is no clipboard API: copy through a selection instead.
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    return copied;
  }
}
