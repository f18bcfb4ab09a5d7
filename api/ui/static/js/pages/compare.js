// Compare two to six jobs: their evaluation side by side, each metric's curves
// overlaid (one chart per metric, one line per job) and their specs as a diff.

import { get, query } from "../api.js";
import { color, lineChart } from "../charts.js";
import { fill, h, pct, problemBox, short, stateBadge } from "../dom.js";
import { chartGroups } from "./job.js";

/** {"a.b": 1, ...}: every leaf of a JSON value by dotted path. */
export function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (!keys.length && prefix) out[prefix] = "{}";
    for (const k of keys) flatten(value[k], prefix ? `${prefix}.${k}` : k, out);
  } else {
    out[prefix] = JSON.stringify(value);
  }
  return out;
}

export async function render(main, _params, q) {
  const raw = [...new Set((q.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean))];
  // Job ids only: anything else never reaches a URL path.
  const ids = raw.filter((id) => /^[\w-]{1,64}$/.test(id));
  const input = h("input", { id: "compare-ids", value: ids.join(","), placeholder: "job ids, comma-separated", size: 60 });
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Compare jobs")),
    h("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/compare?ids=${input.value.replace(/\s+/g, "")}`; } },
      h("label", {}, "jobs", input), h("button", { type: "submit" }, "Compare")));
  if (ids.length !== raw.length) {
    main.append(h("div", { class: "problem" }, `Not a job id: ${raw.filter((id) => !ids.includes(id)).join(", ")}`));
    return null;
  }
  if (ids.length < 2 || ids.length > 6) {
    main.append(h("div", { class: "empty" }, h("h2", {}, ids.length > 6 ? "Six jobs at most" : "Pick two to six jobs"),
      h("p", {}, "Tick them in the ", h("a", { href: "#/jobs" }, "jobs table"), " and press “Compare selected”, or paste their ids above.")));
    return null;
  }
  let jobs;
  try {
    jobs = await Promise.all(ids.map((id) => get(`/jobs/${id}`)));
  } catch (err) {
    main.append(problemBox(err, "Cannot load a job"));
    return null;
  }
  const [metrics, results] = await Promise.all([
    Promise.all(jobs.map((j) => get(`/jobs/${j.id}/metrics`).then((b) => b.series).catch(() => ({})))),
    Promise.all(jobs.map((j) => get(`/results${query({ job: j.id, limit: 1 })}`).then((p) => p.items[0] || null).catch(() => null))),
  ]);
  const name = (j, i) => `${short(j.id)} ${j.method}`;

  // Evaluation side by side.
  const keys = ["ap", "ap50", "ap75", "aps", "apm", "apl", "mr", "ji"].filter((m) => results.some((r) => r && r[m] != null));
  main.append(h("section", { class: "card wide" }, h("h2", {}, "Jobs"), h("div", { class: "table-wrap" }, h("table", { id: "compare-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "job"), h("th", {}, "state"), h("th", {}, "kind"), h("th", {}, "detector"), h("th", {}, "method"), keys.map((m) => h("th", { class: "num" }, m.toUpperCase())))),
    h("tbody", {}, jobs.map((j, i) => h("tr", {},
      h("td", {}, h("i", { class: "swatch", style: `background:${color(i)}` }), h("a", { class: "mono", href: `#/jobs/${j.id}` }, short(j.id))),
      h("td", {}, stateBadge(j.state)), h("td", {}, j.kind), h("td", {}, j.detector), h("td", {}, j.method),
      keys.map((m) => h("td", { class: "num" }, results[i] ? pct(results[i][m]) : "–")))))))));

  // Curves overlaid.
  const names = [...new Set(metrics.flatMap((s) => Object.keys(s)))].sort();
  const width = Math.round(Math.min(640, Math.max(320, main.clientWidth - 66)));
  const charts = chartGroups(names).flatMap(([, group]) => group).map((metric) =>
    lineChart(jobs.map((j, i) => ({ name: name(j, i), color: color(i), points: (metrics[i][metric] || []).map((p) => ({ x: p.step, y: p.value })) })),
      { title: metric, yLabel: metric, height: 220, width }));
  main.append(h("section", { class: "card wide", id: "compare-curves" }, h("h2", {}, "Curves"),
    names.length ? h("div", { class: "charts" }, charts) : h("p", { class: "muted" }, "None of these jobs has metric points yet.")));

  // Spec diff.
  const flat = jobs.map((j) => flatten(j.spec));
  const paths = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  const differs = (p) => new Set(flat.map((f) => f[p] ?? "—")).size > 1;
  const diffBody = h("tbody", {});
  const showAll = h("input", { type: "checkbox", id: "show-all" });
  const drawDiff = () => fill(diffBody, paths.filter((p) => showAll.checked || differs(p)).map((p) =>
    h("tr", { class: differs(p) ? "differs" : "" }, h("td", { class: "mono small" }, p), flat.map((f) => h("td", { class: "mono small" }, f[p] ?? "—")))));
  showAll.addEventListener("change", drawDiff);
  drawDiff();
  main.append(h("section", { class: "card wide", id: "spec-diff" }, h("h2", {}, "Spec differences"),
    h("label", { class: "toggle" }, showAll, "show identical fields too"),
    h("div", { class: "table-wrap" }, h("table", { class: "diff" },
      h("thead", {}, h("tr", {}, h("th", {}, "field"), jobs.map((j, i) => h("th", {}, name(j, i))))), diffBody)),
    paths.some(differs) ? null : h("p", { class: "muted" }, "The specs are identical.")));
  return null;
}
