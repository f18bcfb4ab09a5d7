// Sweeps and studies: what the caller queued as grids, with their progress.

import { get, query } from "../api.js";
import { age, h, problemBox, progressCell, short } from "../dom.js";

/** "3 succeeded · 1 running" from a states count (zero counts left out). */
export function stateCounts(states) {
  const parts = Object.entries(states).filter(([, n]) => n > 0).map(([s, n]) => h("span", { class: `count state-text-${s}` }, `${n} ${s}`));
  return parts.length ? parts.flatMap((p, i) => (i ? [" · ", p] : [p])) : "no jobs";
}

export async function render(main, _params, q) {
  const sweepsAt = Number(q.get("sweeps") || 0);
  const studiesAt = Number(q.get("studies") || 0);
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Sweeps & studies")));
  const studies = h("section", { class: "card wide", id: "studies" }, h("h2", {}, "Studies"));
  const sweeps = h("section", { class: "card wide", id: "sweeps" }, h("h2", {}, "Sweeps"));
  main.append(studies, sweeps);
  const move = (key, offset) => {
    const next = new URLSearchParams(q);
    if (offset) next.set(key, offset); else next.delete(key);
    location.hash = `#/sweeps${next.toString() ? `?${next}` : ""}`;
  };
  const pager = (key, page, at) => (at === 0 && page.next_offset == null ? "" : h("div", { class: "pager" },
    h("button", { type: "button", disabled: at === 0, onclick: () => move(key, Math.max(0, at - page.limit)) }, "‹ Newer"),
    h("button", { type: "button", disabled: page.next_offset == null, onclick: () => move(key, page.next_offset) }, "Older ›")));

  const [studyPage, sweepPage] = await Promise.all([
    get(`/studies${query({ limit: 20, offset: studiesAt })}`).catch((err) => err),
    get(`/sweeps${query({ limit: 20, offset: sweepsAt })}`).catch((err) => err),
  ]);
  if (studyPage instanceof Error) studies.append(problemBox(studyPage, "Cannot list studies"));
  else if (!studyPage.items.length) studies.append(h("p", { class: "muted" }, "No studies yet. A study is one teacher and every (method, seed) student: POST /studies."));
  else studies.append(h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["study", "name", "methods", "seeds", "jobs", "progress", "created"].map((c) => h("th", {}, c)))),
    h("tbody", {}, studyPage.items.map((s) => h("tr", { "data-study": s.id },
      h("td", {}, h("a", { class: "mono", href: `#/studies/${s.id}` }, short(s.id))),
      h("td", {}, s.name || "–"), h("td", {}, s.methods.join(", ")), h("td", {}, s.seeds.join(", ")),
      h("td", { class: "small" }, stateCounts(s.states)),
      h("td", {}, progressCell(s.progress)), h("td", { title: s.created_at }, age(s.created_at))))))),
  pager("studies", studyPage, studiesAt));

  if (sweepPage instanceof Error) sweeps.append(problemBox(sweepPage, "Cannot list sweeps"));
  else if (!sweepPage.items.length) sweeps.append(h("p", { class: "muted" }, "No sweeps yet. A sweep queues one job per point of a grid over a spec: POST /sweeps."));
  else sweeps.append(h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["sweep", "grid", "jobs", "progress", "created"].map((c) => h("th", {}, c)))),
    h("tbody", {}, sweepPage.items.map((s) => h("tr", { "data-sweep": s.id },
      h("td", {}, h("a", { class: "mono", href: `#/sweeps/${s.id}` }, short(s.id))),
      h("td", { class: "small" }, Object.entries(s.grid).map(([k, v]) => `${k} ∈ {${v.map((x) => JSON.stringify(x)).join(", ")}}`).join(" × ")),
      h("td", { class: "small" }, stateCounts(s.states)),
      h("td", {}, progressCell(s.progress)), h("td", { title: s.created_at }, age(s.created_at))))))),
  pager("sweeps", sweepPage, sweepsAt));
  return null;
}
