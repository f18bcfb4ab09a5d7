// Submit: a preset's spec as a form (every field editable), sent to POST /jobs.
// The API validates it; a 422's field errors are shown beside their inputs.

import { ApiError, get, post } from "../api.js";
import { fill, h, problemBox } from "../dom.js";
import { DETECTORS, KINDS, METHODS } from "../catalog.js";
import { flatten } from "./compare.js";

/** Fields offered as a choice: the values the API accepts. */
const CHOICES = { kind: KINDS, detector: DETECTORS, method: METHODS, device: ["cuda", "cpu"] };
/** The preset a new visitor starts from: one that runs on a CPU-only machine. */
const DEFAULT_PRESET = "tiny-fcos-student";

/** A fresh Idempotency-Key (crypto.randomUUID needs a secure context). */
function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** Set the value at a dotted path, creating objects on the way. */
function setPath(obj, path, value) {
  const keys = path.split(".");
  let node = obj;
  for (const k of keys.slice(0, -1)) {
    if (!node[k] || typeof node[k] !== "object") node[k] = {};
    node = node[k];
  }
  node[keys[keys.length - 1]] = value;
}

/** What an input's text means, given the preset's value at that field. */
export function parseField(text, original) {
  const t = text.trim();
  if (typeof original === "number") return t === "" ? null : Number.isFinite(Number(t)) ? Number(t) : t;
  if (typeof original === "string") return t;
  if (t === "") return null;
  try { return JSON.parse(t); } catch { return t; }
}

export async function render(main, _params, q) {
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Submit a job")));
  let presets;
  try {
    presets = await get("/presets");
  } catch (err) {
    main.append(problemBox(err, "Cannot load the presets"));
    return null;
  }
  const known = (name) => name && presets.some((p) => p.name === name);
  const chosen = known(q.get("preset")) ? q.get("preset") : known(DEFAULT_PRESET) ? DEFAULT_PRESET : presets[0].name;
  const picker = h("select", { id: "preset", onchange: (ev) => { location.hash = `#/submit?preset=${ev.target.value}`; } },
    presets.map((p) => h("option", { value: p.name, selected: p.name === chosen }, p.name)));
  const preset = presets.find((p) => p.name === chosen);
  const flat = flatten(preset.spec);
  const originals = {};
  for (const path of Object.keys(flat)) originals[path] = path.split(".").reduce((v, k) => (v == null ? v : v[k]), preset.spec);

  const inputs = {};
  const errors = {};
  const sections = {};
  for (const path of Object.keys(flat)) {
    const original = originals[path];
    const section = path.includes(".") ? path.split(".")[0] : "run";
    let input;
    if (typeof original === "boolean") {
      input = h("input", { type: "checkbox", checked: original });
    } else if (CHOICES[path] && CHOICES[path].includes(original)) {
      input = h("select", {}, CHOICES[path].map((v) => h("option", { value: v, selected: v === original }, v)));
    } else {
      const text = original === null || original === undefined ? "" : typeof original === "string" ? original : JSON.stringify(original);
      input = h("input", { type: "text", value: text, placeholder: original === null ? "null (JSON)" : "", size: 18, inputmode: typeof original === "number" ? "decimal" : null });
    }
    input.id = `f-${path}`;
    input.dataset.field = path;
    inputs[path] = input;
    errors[path] = h("div", { class: "field-error", "data-error-for": path, id: `e-${path}` });
    input.setAttribute("aria-describedby", `e-${path}`);
    (sections[section] ||= []).push(h("div", { class: "field" }, h("label", { for: input.id }, path.replace(`${section}.`, "")), input, errors[path]));
  }
  const top = h("div", { id: "submit-result" });
  const submit = h("button", { type: "submit", class: "primary", id: "submit" }, "Submit job");
  const form = h("form", { class: "spec-form", novalidate: true },
    h("div", { class: "filters" }, h("label", {}, "preset", picker), h("span", { class: "muted small" }, "Edit any field; the API validates the whole spec.")),
    top,
    h("div", { class: "sections" }, Object.entries(sections).map(([name, fields]) => h("fieldset", {}, h("legend", {}, name), fields))),
    h("div", { class: "actions" }, submit));
  main.append(form);
  let key = newKey();
  form.addEventListener("input", () => { key = newKey(); });

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    fill(top);
    for (const el of Object.values(errors)) fill(el);
    for (const el of Object.values(inputs)) el.removeAttribute("aria-invalid");
    const spec = {};
    for (const [path, input] of Object.entries(inputs)) {
      const value = input.type === "checkbox" ? input.checked : input.tagName === "SELECT" ? input.value : parseField(input.value, originals[path]);
      setPath(spec, path, value);
    }
    submit.disabled = true;
    try {
      const job = await post("/jobs", spec, { headers: { "Idempotency-Key": key } });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      const unplaced = [];
      for (const e of err.problem.errors || []) {
        // The input of the field, or of the nearest enclosing one the form has.
        let path = e.field;
        while (path && !errors[path]) path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
        if (path) {
          errors[path].append(h("div", {}, e.field === path ? e.message : `${e.field}: ${e.message}`));
          inputs[path].setAttribute("aria-invalid", "true");
        } else {
          unplaced.push(e);
        }
      }
      top.append(problemBox(unplaced.length || !err.problem.errors ? err : { ...err, problem: { ...err.problem, errors: [] } }, "Not submitted"));
      const firstBad = Object.values(inputs).find((el) => el.getAttribute("aria-invalid"));
      if (firstBad) firstBad.focus();
    } finally {
      submit.disabled = false;
    }
  });
  return null;
}
