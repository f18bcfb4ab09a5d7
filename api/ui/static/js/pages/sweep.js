// One sweep: its grid with each cell's job, state and result, refreshed while running.

import { TERMINAL, get, query } from "../api.js";
import { every, fill, h, pct, problemBox, progressBar, short, stateBadge } from "../dom.js";
import { stateCounts } from "./sweeps.js";

/** The value at a dotted path of a spec ("distill.alpha"). */
export function at(spec, path) {
  return path.split(".").reduce((v, k) => (v && typeof v === "object" ? v[k] : undefined), spec);
}

/** Every job of the sweep (a sweep has at most 256), following the cursor. */
async function allJobs(sweepId) {
  const items = [];
  let cursor = "";
  do {
    const page = await get(`/jobs${query({ sweep: sweepId, limit: 200, cursor })}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return { items };
}

export async function render(main, [sweepId]) {
  main.append(h("div", { class: "page-head" }, h("h1", {}, "Sweep ", h("span", { class: "mono" }, short(sweepId))),
    h("div", { class: "head-actions" }, h("a", { class: "button", href: `#/jobs?sweep=${sweepId}` }, "Its jobs"), h("a", { class: "button", href: `#/results?sweep=${sweepId}` }, "Its results"))));
  const area = h("div", {});
  main.append(area);
  let done = false;
  let lastSnapshot = "";

  async function load() {
    let sweep, jobs, results;
    try {
      [sweep, jobs, results] = await Promise.all([
        get(`/sweeps/${sweepId}`),
        allJobs(sweepId),
        get(`/results${query({ sweep: sweepId, limit: 500, sort: "-ap" })}`),
      ]);
    } catch (err) {
      fill(area, problemBox(err, "Cannot load the sweep"));
      return;
    }
    // Nothing changed since the last refresh: keep the page (and the reader's focus).
    const snapshot = JSON.stringify([sweep, jobs.items.map((j) => [j.id, j.state, j.progress]), results.items.map((r) => [r.job_id, r.ap, r.mr])]);
    if (snapshot === lastSnapshot) return;
    lastSnapshot = snapshot;
    const byJob = Object.fromEntries(results.items.map((r) => [r.job_id, r]));
    const paths = Object.keys(sweep.grid);
    const metric = results.items.some((r) => r.mr != null) ? "mr" : "ap";
    const cell = (job) => (job ? h("div", { class: "cell", "data-job": job.id },
      h("a", { class: "mono small", href: `#/jobs/${job.id}` }, short(job.id)), " ", stateBadge(job.state),
      h("div", { class: "cell-value", "data-metric": metric }, byJob[job.id] ? `${metric.toUpperCase()} ${pct(byJob[job.id][metric])}` : progressBar(job.progress))) : h("span", { class: "muted" }, "–"));
    const key = (job) => JSON.stringify(paths.map((p) => at(job.spec, p)));
    const jobOf = Object.fromEntries(jobs.items.map((j) => [key(j), j]));

    const parts = [h("section", { class: "card wide" }, h("h2", {}, "Progress"), progressBar(sweep.progress), h("p", { class: "small" }, stateCounts(sweep.states), ` of ${sweep.total}`))];
    if (paths.length === 2) {
      const [rows, cols] = paths;
      parts.push(h("section", { class: "card wide" }, h("h2", {}, `Grid: ${rows} × ${cols}`), h("div", { class: "table-wrap" }, h("table", { class: "grid-table", id: "sweep-grid" },
        h("thead", {}, h("tr", {}, h("th", {}, `${rows} \\ ${cols}`), sweep.grid[cols].map((c) => h("th", {}, JSON.stringify(c))))),
        h("tbody", {}, sweep.grid[rows].map((r) => h("tr", {}, h("th", {}, JSON.stringify(r)),
          sweep.grid[cols].map((c) => h("td", {}, cell(jobOf[JSON.stringify([r, c])]))))))))));
    } else {
      parts.push(h("section", { class: "card wide" }, h("h2", {}, "Grid"), h("div", { class: "table-wrap" }, h("table", { id: "sweep-grid" },
        h("thead", {}, h("tr", {}, paths.map((p) => h("th", {}, p)), h("th", {}, "job"))),
        h("tbody", {}, jobs.items.map((j) => h("tr", {}, paths.map((p) => h("td", { class: "mono small" }, JSON.stringify(at(j.spec, p)))), h("td", {}, cell(j)))))))));
    }
    fill(area, parts);
    // From the sweep's own counts, not from the rows drawn.
    done = Object.entries(sweep.states).every(([state, n]) => n === 0 || TERMINAL.has(state));
  }
  await load();
  return every(3000, () => (done ? null : load()));
}
