// One study: the teacher, each method x seed student with its state and result,
// and the results grouped over seeds (mean ± sd, paired delta, gap recovered).

import { get, query, request } from "../api.js";
import { delta, every, fill, h, pct, problemBox, progressBar, short, stateBadge } from "../dom.js";
import { stateCounts } from "./sweeps.js";

export async function render(main, [studyId]) {
  const head = h("div", { class: "page-head" });
  const area = h("div", {});
  main.append(head, area);
  let chartUrl = null;
  let chartKey = "";
  let done = false;
  let lastSnapshot = "";

  async function load() {
    let study, results;
    try {
      [study, results] = await Promise.all([get(`/studies/${studyId}`), get(`/results${query({ study: studyId, limit: 500 })}`)]);
    } catch (err) {
      fill(area, problemBox(err, "Cannot load the study"));
      return;
    }
    // Nothing changed since the last refresh: keep the page (and the reader's focus).
    const snapshot = JSON.stringify([study, null, results.items.map((r) => [r.job_id, r.ap, r.mr])]);
    if (snapshot === lastSnapshot) return;
    lastSnapshot = snapshot;
    fill(head, h("h1", {}, "Study ", study.name || h("span", { class: "mono" }, short(study.id))),
      h("div", { class: "head-actions" }, h("a", { class: "button", href: `#/results?study=${study.id}&group=config` }, "Grouped results")));
    const byJob = Object.fromEntries(results.items.map((r) => [r.job_id, r]));
    const metric = results.items.some((r) => r.mr != null) ? "mr" : "ap";
    const teacher = study.jobs.find((j) => j.role === "teacher");
    const students = study.jobs.filter((j) => j.role === "student");
    const cell = (j) => (j ? h("div", { class: "cell", "data-job": j.id }, h("a", { class: "mono small", href: `#/jobs/${j.id}` }, short(j.id)), " ", stateBadge(j.state),
      h("div", { class: "cell-value" }, byJob[j.id] ? `${metric.toUpperCase()} ${pct(byJob[j.id][metric])}` : progressBar(j.progress))) : "–");
    const find = (m, s) => students.find((j) => j.method === m && j.seed === s);
    const grid = h("table", { class: "grid-table", id: "study-grid" },
      h("thead", {}, h("tr", {}, h("th", {}, "method \\ seed"), study.seeds.map((s) => h("th", {}, String(s))))),
      h("tbody", {}, study.methods.map((m) => h("tr", {}, h("th", {}, m), study.seeds.map((s) => h("td", {}, cell(find(m, s))))))));
    const table = h("table", { id: "study-table" },
      h("thead", {}, h("tr", {}, ["role", "method"].map((c) => h("th", {}, c)), ["n", `${metric.toUpperCase()} mean ± sd`, "Δ vs no-KD (paired)", "gap recovered"].map((c) => h("th", { class: "num" }, c)))),
      h("tbody", {}, study.table.map((g) => h("tr", {},
        h("td", {}, g.role), h("td", {}, g.method), h("td", { class: "num" }, String(g.n)),
        h("td", { class: "num" }, g[`${metric}_mean`] == null ? "–" : `${g[`${metric}_mean`].toFixed(1)}${g[`${metric}_sd`] == null ? "" : ` ± ${g[`${metric}_sd`].toFixed(1)}`}`),
        h("td", { class: "num" }, g[`delta_${metric}_mean`] == null ? "–" : `${delta(g[`delta_${metric}_mean`])} (n=${g[`delta_${metric}_n`]})`),
        h("td", { class: "num" }, g[`gap_recovered_${metric}`] == null ? "–" : `${(100 * g[`gap_recovered_${metric}`]).toFixed(0)} %`)))));
    const chart = h("figure", { class: "plot" });
    fill(area,
      h("section", { class: "card wide" }, h("h2", {}, "Progress"), progressBar(study.progress), h("p", { class: "small" }, stateCounts(study.states), ` of ${study.total}`),
        teacher ? h("p", {}, "Teacher: ", cell(teacher))
          : h("p", {}, "Teacher: ", /^[0-9a-f-]{36}$/.test(study.request.teacher_ref || "")
            ? h("a", { class: "mono", href: `#/jobs/${study.request.teacher_ref}` }, short(study.request.teacher_ref))
            : h("span", { class: "mono" }, study.request.teacher_ref || "–"))),
      h("section", { class: "card wide" }, h("h2", {}, "Students"), h("div", { class: "table-wrap" }, grid)),
      h("section", { class: "card wide" }, h("h2", {}, "Results over seeds"), study.table.length ? h("div", { class: "table-wrap" }, table) : h("p", { class: "muted" }, "No results yet."), chart));
    if (study.table.length) {
      // The chart only changes with the table: reuse it between refreshes.
      const key = JSON.stringify(study.table);
      if (key === chartKey && chartUrl) {
        chart.append(h("img", { src: chartUrl, alt: `${metric} per method` }));
        done = study.done;
        return;
      }
      chartKey = key;
      try {
        const blob = await request(`/studies/${study.id}/chart.png${query({ metric })}`, { blob: true });
        if (chartUrl) URL.revokeObjectURL(chartUrl);
        chartUrl = URL.createObjectURL(blob);
        chart.append(h("img", { src: chartUrl, alt: `${metric} per method` }));
      } catch (err) {
        chart.append(problemBox(err, "Chart"));
      }
    }
    done = study.done;
  }
  await load();
  const stop = every(5000, () => (done ? null : load()));
  return () => { stop(); if (chartUrl) URL.revokeObjectURL(chartUrl); };
}
