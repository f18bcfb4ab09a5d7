// Small helpers to build the pages: an element builder, number and time formats,
// and the widgets every page shares (state badge, progress bar, problem box).

/**
 * h("a", {href: "#/jobs", class: "x", onclick: fn}, "text", child, ...)
 * Attributes starting with "on" become listeners; null/false attributes and
 * children are skipped; strings become text nodes (never parsed as HTML).
 */
export function h(tag, attrs = {}, ...children) {
  const el = tag === "svg" || tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.replace("svg:", ""))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string" && !(el instanceof SVGElement)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace el's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const missing = (value) => value === null || value === undefined || Number.isNaN(value);

/** A metric as the API stores it (percent): 46.512 -> "46.5"; pycocotools' -1
 * ("no object of that size") -> "n/a". */
export function pct(value, digits = 1) {
  if (missing(value)) return "–";
  return value === -1 ? "n/a" : value.toFixed(digits);
}

/** A signed difference in points: 1.23 -> "+1.2". */
export function delta(value, digits = 1) {
  if (missing(value)) return "–";
  const s = value.toFixed(digits);
  return value > 0 ? `+${s}` : s;
}

export function num(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

/** "3 s", "4 min", "2 h", "5 d" since an ISO time. */
export function age(iso, now = Date.now()) {
  if (!iso) return "–";
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(s < 36000 ? 1 : 0)} h`;
  return `${Math.round(s / 86400)} d`;
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function duration(fromIso, toIso) {
  if (!fromIso || !toIso) return "";
  const s = Math.max(0, (Date.parse(toIso) - Date.parse(fromIso)) / 1000);
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export const short = (id) => (id ? id.slice(0, 8) : "–");

export function stateBadge(state) {
  return h("span", { class: `state state-${state}`, title: state }, state);
}

export function progressBar(fraction, label) {
  const p = Math.max(0, Math.min(1, fraction || 0));
  return h("div", { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
    "aria-valuenow": String(Math.round(p * 100)), title: label || `${Math.round(p * 100)} %` },
  h("div", { class: "progress-fill", style: `width:${(p * 100).toFixed(1)}%` }));
}

/** A progress bar with its percentage, for a table cell. */
export function progressCell(fraction) {
  return h("div", { class: "progress-cell" }, progressBar(fraction), h("span", { class: "small muted" }, `${Math.round((fraction || 0) * 100)} %`));
}

/** The API's problem detail as the user should read it. */
export function problemBox(err, what) {
  const p = err.problem || {};
  const lines = (p.errors || []).map((e) => h("li", {}, e.field ? h("code", {}, e.field) : null, e.field ? ": " : "", e.message));
  return h("div", { class: "problem", role: "alert" },
    h("strong", {}, what ? `${what}: ` : "", err.status ? `${err.status} ${p.title || ""}` : (p.title || "error")),
    h("div", {}, p.detail || err.message),
    lines.length ? h("ul", {}, lines) : null);
}

export function empty(title, ...body) {
  return h("div", { class: "empty" }, h("h2", {}, title), ...body);
}

/** A modal yes/no question; resolves true when confirmed. */
export function confirmDialog(question, { confirm = "Confirm", danger = false } = {}) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "confirm" },
      h("form", { method: "dialog" },
        h("p", {}, question),
        h("div", { class: "actions" },
          h("button", { value: "no", type: "submit" }, "Keep"),
          h("button", { value: "yes", type: "submit", class: danger ? "danger" : "primary", "data-confirm": "yes" }, confirm))));
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "yes");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** Run fn every ms while the tab is visible; returns a stop function. */
export function every(ms, fn) {
  let timer = null;
  let busy = false;
  const tick = async () => {
    if (document.hidden || busy) return;
    busy = true;
    try { await fn(); } finally { busy = false; }
  };
  timer = setInterval(tick, ms);
  return () => clearInterval(timer);
}

/** Download text as a file named name. */
export function saveText(name, text, type = "text/csv") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
