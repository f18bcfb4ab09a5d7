// Jobs: the table of GET /jobs with its filters and cursor paging, refreshed
// every 2 s while the tab is visible, and a selection to compare.

import { get, query } from "../api.js";
import { DETECTORS, KINDS, METHODS, STATES } from "../catalog.js";
import { age, every, fill, h, problemBox, progressCell, short, stateBadge } from "../dom.js";

const FILTERS = [
  ["state", STATES],
  ["kind", KINDS],
  ["detector", DETECTORS],
  ["method", METHODS],
];
const PAGE = 50;
export const REFRESH_MS = 2000;

export async function render(main, _params, q) {
  const filters = Object.fromEntries(["state", "kind", "detector", "dataset", "method", "sweep", "study"].map((k) => [k, q.get(k) || ""]));
  const cursor = q.get("cursor") || "";
  const selected = new Set();

  const setQuery = (changes) => {
    const next = new URLSearchParams(q);
    for (const [k, v] of Object.entries(changes)) {
      if (v) next.set(k, v); else next.delete(k);
    }
    location.hash = `#/jobs${next.toString() ? `?${next}` : ""}`;
  };

  const controls = h("form", { class: "filters", onsubmit: (ev) => ev.preventDefault() },
    FILTERS.map(([name, values]) => h("label", {}, name,
      h("select", { name, "data-filter": name, onchange: (ev) => setQuery({ [name]: ev.target.value, cursor: "", back: "" }) },
        h("option", { value: "" }, "any"),
        values.map((v) => h("option", { value: v, selected: v === filters[name] }, v))))),
    h("label", {}, "dataset",
      h("input", { name: "dataset", "data-filter": "dataset", value: filters.dataset, placeholder: "any", size: 14,
        onchange: (ev) => setQuery({ dataset: ev.target.value.trim(), cursor: "", back: "" }) })),
    filters.sweep ? h("span", { class: "chip" }, `sweep ${short(filters.sweep)} `, h("a", { href: "#/jobs", title: "clear" }, "×")) : null,
    filters.study ? h("span", { class: "chip" }, `study ${short(filters.study)} `, h("a", { href: "#/jobs", title: "clear" }, "×")) : null);

  const compare = h("button", { type: "button", disabled: true, onclick: () => { location.hash = `#/compare?ids=${[...selected].join(",")}`; } }, "Compare selected");
  const status = h("span", { class: "muted small", id: "jobs-status" });
  const body = h("tbody", { id: "jobs-body" });
  const pager = h("div", { class: "pager" });
  const area = h("div", { id: "jobs-area" });
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), h("div", { class: "head-actions" }, status, compare, h("a", { class: "button primary", href: "#/submit" }, "New job"))),
    controls,
    area);

  const table = h("div", { class: "table-wrap" }, h("table", { class: "jobs", id: "jobs-table" },
    h("thead", {}, h("tr", {},
      h("th", { class: "check" }, ""), ["job", "state"].map((c) => h("th", {}, c)),
      ["kind", "detector", "dataset"].map((c) => h("th", { class: "opt" }, c)), ["method", "progress"].map((c) => h("th", {}, c)),
      h("th", { class: "num opt" }, "attempt"), h("th", { class: "num" }, "age"), h("th", { class: "opt" }, "owner"))),
    body));

  const row = (job) => h("tr", { "data-job": job.id, "data-state": job.state },
    h("td", { class: "check" }, h("input", { type: "checkbox", "aria-label": `select ${short(job.id)}`, checked: selected.has(job.id),
      onchange: (ev) => {
        if (ev.target.checked) selected.add(job.id); else selected.delete(job.id);
        compare.disabled = selected.size < 2 || selected.size > 6;
        compare.textContent = `Compare selected (${selected.size})`;
      } })),
    h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, short(job.id))),
    h("td", {}, stateBadge(job.state), job.reason ? h("span", { class: "reason", title: job.message || "" }, job.reason) : null),
    h("td", { class: "opt" }, job.kind),
    h("td", { class: "opt" }, job.detector),
    h("td", { class: "ellipsis opt", title: job.dataset }, job.dataset),
    h("td", {}, job.method),
    h("td", {}, progressCell(job.progress)),
    h("td", { class: "num opt", title: `attempt ${job.attempt}; a lost worker is retried up to ${job.max_attempts} times` }, String(job.attempt)),
    h("td", { class: "num", title: job.created_at }, age(job.created_at)),
    h("td", { class: "ellipsis opt" }, job.owner));

  let first = true;
  let drawn = "";
  async function load() {
    let page;
    try {
      page = await get(`/jobs${query({ ...filters, limit: PAGE, cursor })}`);
    } catch (err) {
      if (first) fill(area, problemBox(err, "Cannot list jobs"), h("button", { type: "button", onclick: () => load() }, "Retry"));
      else status.textContent = `not refreshed: ${err.message}`;
      return;
    }
    if (!page.items.length && !cursor) {
      const filtered = Object.values(filters).some(Boolean);
      fill(area, filtered
        ? h("div", { class: "empty" }, h("h2", {}, "No job matches these filters"), h("p", {}, h("a", { href: "#/jobs" }, "Clear the filters")))
        : h("div", { class: "empty" }, h("h2", {}, "No jobs yet"),
          h("p", {}, "Submit one from a preset on the ", h("a", { href: "#/submit" }, "Submit"), " page, or from a terminal:"),
          h("pre", {}, "curl -X POST -H \"Authorization: Bearer $PGD_TOKEN\" \\\n  -H 'Content-Type: application/json' -d @spec.json \"$PGD_URL/jobs\"")));
    } else {
      // Redraw only what changed, so focus and hover survive the refresh.
      const snapshot = JSON.stringify(page.items.map((j) => [j.id, j.state, j.reason, j.progress, j.attempt, age(j.created_at)]));
      if (snapshot !== drawn) {
        drawn = snapshot;
        fill(body, page.items.map(row));
      }
      if (!table.isConnected) fill(area, table, pager);
      // The cursors of the newer pages, "~" for the newest, so "Newer" can walk back.
      const back = (q.get("back") || "").split(".").filter(Boolean);
      const previous = back[back.length - 1];
      fill(pager,
        h("button", { type: "button", disabled: !cursor, "data-prev": "1",
          onclick: () => setQuery({ cursor: previous === "~" ? "" : previous, back: back.slice(0, -1).join(".") }) }, "‹ Newer"),
        h("span", { class: "muted small" }, `page ${back.length + 1}`),
        h("button", { type: "button", disabled: !page.next_cursor, "data-next": "1",
          onclick: () => setQuery({ cursor: page.next_cursor, back: [...back, cursor || "~"].join(".") }) }, "Older ›"));
    }
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (first) {
      first = false;
      performance.mark("pgd:first-screen");
    }
  }

  await load();
  return every(REFRESH_MS, load);
}
