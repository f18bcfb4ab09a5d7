// The dashboard's shell: sign-in gate, navigation and a hash router
// ("#/jobs", "#/jobs/<id>", "#/results", ...). Each page module exports
// render(main, params, query) and may return a function that stops its timers.

import { signOut, token, who } from "./api.js";
import { fill, h } from "./dom.js";

const ROUTES = [
  [/^\/signin$/, "signin", () => import("./pages/signin.js")],
  [/^\/jobs$/, "jobs", () => import("./pages/jobs.js")],
  [/^\/jobs\/([\w-]+)$/, "jobs", () => import("./pages/job.js")],
  [/^\/results$/, "results", () => import("./pages/results.js")],
  [/^\/compare$/, "compare", () => import("./pages/compare.js")],
  [/^\/sweeps$/, "sweeps", () => import("./pages/sweeps.js")],
  [/^\/sweeps\/([\w-]+)$/, "sweeps", () => import("./pages/sweep.js")],
  [/^\/studies\/([\w-]+)$/, "sweeps", () => import("./pages/study.js")],
  [/^\/submit$/, "submit", () => import("./pages/submit.js")],
];

const main = document.getElementById("main");
const banner = document.getElementById("banner");
let stopPage = null;
let generation = 0;

/** Show a message above the page (null hides it). */
export function notice(message, kind = "info") {
  banner.hidden = !message;
  banner.className = `banner banner-${kind}`;
  banner.textContent = message || "";
}

function parse() {
  const raw = location.hash.replace(/^#/, "") || "/jobs";
  const [path, qs = ""] = raw.split("?");
  return { path, query: new URLSearchParams(qs) };
}

function chrome(section) {
  const me = who();
  const signedIn = Boolean(token() && me);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  if (signedIn) {
    document.getElementById("who-name").textContent = me.is_admin ? `${me.owner} (admin)` : me.owner;
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === section);
  }
}

async function route() {
  const mine = ++generation;
  if (stopPage) { stopPage(); stopPage = null; }
  const { path, query } = parse();
  if (!token() && path !== "/signin") {
    sessionStorage.setItem("pgd.after-signin", location.hash || "#/jobs");
    location.replace("#/signin");
    return;
  }
  const match = ROUTES.map(([re, section, load]) => [path.match(re), section, load]).find(([m]) => m);
  chrome(match ? match[1] : "");
  if (!match) {
    fill(main, h("div", { class: "empty" }, h("h2", {}, "No such page"), h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs"))));
    return;
  }
  const [m, , load] = match;
  let page;
  try {
    page = await load();
  } catch (err) {
    // The page's module could not be fetched: the API serving it is down.
    if (mine !== generation) return;
    fill(main, h("div", { class: "problem", role: "alert", id: "load-failed" }, h("strong", {}, "API unreachable: "),
      `this page could not be loaded from ${location.origin}. `, h("button", { type: "button", onclick: route }, "Retry")));
    return;
  }
  if (mine !== generation) return; // the user navigated on meanwhile
  // Each render draws into a view of its own: one the user has left (it may
  // still be awaiting the API) writes into a detached element, never the new page.
  const view = h("div", { class: "view" });
  fill(main, view);
  main.focus({ preventScroll: true });
  let stop = null;
  try {
    stop = (await page.render(view, m.slice(1), query)) || null;
  } catch (err) {
    if (err.name === "AbortError") return;
    console.error(err);
    if (mine === generation) fill(view, h("div", { class: "problem" }, h("strong", {}, "This page failed: "), String(err.message || err)));
  }
  if (mine === generation) stopPage = stop;
  else if (stop) stop();
}

window.addEventListener("hashchange", route);
window.addEventListener("pgd:signed-out", (ev) => {
  const reason = ev.detail && ev.detail.reason;
  if (reason) notice(`Signed out: ${reason}. Sign in with a valid token.`, "warn");
  if (!location.hash.startsWith("#/signin")) {
    sessionStorage.setItem("pgd.after-signin", location.hash || "#/jobs");
    location.hash = "#/signin";
  } else {
    route();
  }
});
document.getElementById("sign-out").addEventListener("click", () => {
  signOut(null);
  notice(null);
});

route();
