// The REST API as the dashboard calls it: the same public routes any client uses.
// The token lives in sessionStorage (this tab only, gone when it closes) and goes
// out as a Bearer header; it never appears in a URL.

/** States a job never leaves. */
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

const TOKEN_KEY = "pgd.token";
const WHO_KEY = "pgd.who";

/** An error the API answered with (RFC 9457 problem detail), or status 0 when unreachable. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
  /** {field: message} from a 422's "errors" list. */
  fieldErrors() {
    const out = {};
    for (const e of this.problem.errors || []) {
      const field = e.field || "";
      out[field] = out[field] ? `${out[field]}; ${e.message}` : e.message;
    }
    return out;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function who() {
  const raw = sessionStorage.getItem(WHO_KEY);
  return raw ? JSON.parse(raw) : null;
}

export function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(WHO_KEY);
  window.dispatchEvent(new CustomEvent("pgd:signed-out", { detail: { reason } }));
}

/** Check a token against GET /me and keep it for this tab; throws ApiError. */
export async function signIn(secret) {
  const me = await request("/me", { token: secret, quiet: true });
  sessionStorage.setItem(TOKEN_KEY, secret);
  sessionStorage.setItem(WHO_KEY, JSON.stringify(me));
  return me;
}

async function problemOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object") return body;
  } catch {
    // not JSON: a proxy's page, say
  }
  return { title: response.statusText, status: response.status, detail: text.slice(0, 200) };
}

/**
 * Call the API. Returns parsed JSON (or text for text/* answers, a Blob with
 * {blob: true}). A 401 signs the tab out (the token is unknown, revoked or
 * expired) unless {quiet: true}.
 */
export async function request(path, { method = "GET", body, headers = {}, token: secret, quiet = false, blob = false, signal } = {}) {
  const auth = secret ?? token();
  const init = { method, headers: { Accept: "application/json", ...headers }, signal };
  if (auth) init.headers.Authorization = `Bearer ${auth}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { title: "API unreachable", detail: `the API at ${location.origin} does not answer` });
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401 && !quiet) signOut(problem.detail || "the token was refused");
    throw new ApiError(response.status, problem);
  }
  if (blob) return response.blob();
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) return response.json();
  return response.text();
}

export const get = (path, options) => request(path, options);
export const post = (path, body, options = {}) => request(path, { ...options, method: "POST", body });

/** A query string from an object, skipping empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => q.append(key, v));
    else q.set(key, value);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/**
 * Server-sent events of GET /jobs/{id}/events, read with fetch so that the token
 * goes in a header (EventSource cannot send one). Reconnects with Last-Event-ID
 * until the stream ends normally (the job finished) or stop() is called.
 */
export function jobEvents(jobId, onEvent) {
  const controller = new AbortController();
  let lastId = null;
  let stopped = false;

  async function once() {
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${token()}` };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await fetch(`/jobs/${jobId}/events`, { headers, signal: controller.signal });
    if (!response.ok) throw new ApiError(response.status, await problemOf(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = { event: "message", data: "" };
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "id") event.id = val;
          else if (field === "event") event.event = val;
          else if (field === "data") event.data += (event.data ? "\n" : "") + val;
        }
        if (!event.data) continue;
        if (event.id) lastId = event.id;
        onEvent(event.event, JSON.parse(event.data));
      }
    }
  }

  let finished = false;
  const handler = onEvent;
  onEvent = (name, data) => {
    if (name === "state" && TERMINAL.has(data.state)) finished = true;
    handler(name, data);
  };

  (async () => {
    let delay = 1000;
    while (!stopped) {
      try {
        await once();
        // The server ends the stream once the job has finished, or after its
        // longest stream time: then reconnect where it stopped.
        if (finished) return;
        delay = 1000;
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        if (err.status === 401) return signOut("the token was refused");
        if (err.status && err.status < 500) return;
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 15000);
      }
    }
  })();

  return { stop() { stopped = true; controller.abort(); } };
}
