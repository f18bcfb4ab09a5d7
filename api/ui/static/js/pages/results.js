// The leaderboard: GET /results with its filters, server-side sort and offset
// paging; grouped by configuration over seeds (group_by=config); CSV download;
// a chart of each distilled student between its baseline and its teacher.

import { get, query, request } from "../api.js";
import { gapChart, scatterChart } from "../charts.js";
import { DETECTORS, KINDS, METHODS, SORT_KEYS } from "../catalog.js";
import { delta, fill, h, pct, problemBox, saveText, short } from "../dom.js";

const PAGE = 50;
const num = (v, scale, digits, unit = "") => (v == null ? "–" : `${(v / scale).toFixed(digits)}${unit}`);
/** "0.42x FLOPs · 2.1x faster · -1.3 AP": what a distilled row keeps of its teacher for how much less. */
function versusTeacher(r, gap) {
  const parts = [];
  if (r.flops_ratio_vs_teacher != null) parts.push(`${r.flops_ratio_vs_teacher.toFixed(2)}x FLOPs`);
  if (r.speedup_vs_teacher != null) parts.push(`${r.speedup_vs_teacher.toFixed(1)}x faster`);
  const d = r[`delta_${gap}_vs_teacher`];
  if (d != null) parts.push(`${delta(d)} ${gap.toUpperCase()}`);
  return parts.length ? parts.join(" · ") : "–";
}
const pm = (mean, sd) => (mean == null ? "–" : `${mean.toFixed(1)}${sd == null ? "" : ` ± ${sd.toFixed(1)}`}`);

export async function render(main, _params, q) {
  const state = {
    dataset: q.get("dataset") || "", detector: q.get("detector") || "", method: q.get("method") || "",
    kind: q.get("kind") || "", study: q.get("study") || "", sweep: q.get("sweep") || "",
    sort: q.get("sort") || "-ap", offset: Number(q.get("offset") || 0), group: q.get("group") === "config",
  };
  const setQuery = (changes) => {
    const next = { ...state, ...changes };
    const params = { dataset: next.dataset, detector: next.detector, method: next.method, kind: next.kind, study: next.study, sweep: next.sweep,
      sort: next.sort === "-ap" ? "" : next.sort, offset: next.offset || "", group: next.group ? "config" : "" };
    location.hash = `#/results${query(params)}`;
  };
  const filters = () => ({ dataset: state.dataset, detector: state.detector, method: state.method, kind: state.kind, study: state.study, sweep: state.sweep });

  const select = (name, values) => h("label", {}, name, h("select", { "data-filter": name, onchange: (ev) => setQuery({ [name]: ev.target.value, offset: 0 }) },
    h("option", { value: "" }, "any"), values.map((v) => h("option", { value: v, selected: v === state[name] }, v))));
  const status = h("span", { class: "muted small" });
  const csv = h("button", { type: "button", id: "csv", onclick: downloadCsv }, "Download CSV");
  // Whose results these are: the caller's owner's, or every owner's (admins, or a
  // service run with PGD_RESULTS_VISIBILITY=everyone); GET /me says which.
  const scope = h("span", { class: "muted small", id: "results-scope" });
  get("/me").then((me) => {
    scope.textContent = me.results === "all" ? "every owner's results" : `${me.owner}'s results only`;
  }).catch(() => {});
  main.append(
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Leaderboard"), scope), h("div", { class: "head-actions" }, status, csv)),
    h("form", { class: "filters", onsubmit: (ev) => ev.preventDefault() },
      h("label", {}, "dataset", h("input", { "data-filter": "dataset", value: state.dataset, placeholder: "any", size: 14, onchange: (ev) => setQuery({ dataset: ev.target.value.trim(), offset: 0 }) })),
      select("detector", DETECTORS), select("method", METHODS), select("kind", KINDS),
      h("label", { class: "toggle" }, h("input", { type: "checkbox", id: "group", checked: state.group, onchange: (ev) => setQuery({ group: ev.target.checked, offset: 0 }) }), "group seeds"),
      state.study ? h("span", { class: "chip" }, `study ${short(state.study)} `, h("a", { href: "#/results", title: "clear" }, "×")) : null,
      state.sweep ? h("span", { class: "chip", id: "sweep-chip" }, `sweep ${short(state.sweep)} `, h("a", { href: "#/results", title: "clear" }, "×")) : null));
  const area = h("div", { id: "results-area" });
  const chart = h("section", { class: "card wide", id: "gap-chart" });
  const costs = h("section", { class: "card wide", id: "pareto" });
  main.append(area, chart, costs);

  async function downloadCsv() {
    csv.disabled = true;
    try {
      const params = { ...filters(), sort: state.sort, format: "csv" };
      if (state.group) params.group_by = "config";
      const text = await request(`/results${query(params)}`, { headers: { Accept: "text/csv" } });
      saveText(`pgd-results${state.group ? "-grouped" : ""}.csv`, text);
    } catch (err) {
      area.prepend(problemBox(err, "CSV export failed"));
    } finally {
      csv.disabled = false;
    }
  }

  const sortHeader = (key, label) => {
    if (!SORT_KEYS.includes(key)) return h("th", { class: "num" }, label);
    const active = state.sort.replace(/^-/, "") === key;
    const desc = state.sort.startsWith("-");
    const next = active && desc ? key : `-${key}`;
    return h("th", { class: `num sortable${active ? " active" : ""}`, "aria-sort": active ? (desc ? "descending" : "ascending") : "none" },
      h("button", { type: "button", class: "sort", "data-sort": key, onclick: () => setQuery({ sort: next, offset: 0 }) }, label, active ? (desc ? " ▼" : " ▲") : ""));
  };

  function pager(page) {
    return h("div", { class: "pager" },
      h("button", { type: "button", disabled: state.offset === 0, onclick: () => setQuery({ offset: Math.max(0, state.offset - PAGE) }) }, "‹ Previous"),
      h("span", { class: "muted small" }, `rows ${state.offset + 1}–${state.offset + page.items.length}`),
      h("button", { type: "button", disabled: page.next_offset == null, "data-next": "1", onclick: () => setQuery({ offset: page.next_offset }) }, "Next ›"));
  }

  function flatTable(items) {
    // COCO columns always; CrowdHuman's MR and JI too when a row has them. The
    // teacher / baseline columns follow AP unless every row is MR-only.
    const hasMr = items.some((r) => r.mr != null);
    const metrics = ["ap", "ap50", "ap75", "aps", "apm", "apl", ...(hasMr ? ["mr", "ji"] : [])];
    const gap = items.every((r) => r.ap == null && r.mr != null) ? "mr" : "ap";
    return h("div", { class: "table-wrap" }, h("table", { id: "results-table", class: "results" },
      h("thead", {}, h("tr", {}, h("th", {}, "job"), ["kind", "detector", "dataset"].map((c) => h("th", { class: "opt" }, c)), h("th", {}, "method"),
        metrics.map((m) => sortHeader(m, m.toUpperCase())),
        h("th", { class: "num" }, `teacher ${gap.toUpperCase()}`), h("th", { class: "num" }, `baseline ${gap.toUpperCase()}`),
        h("th", { class: "num" }, "Δ vs baseline"), h("th", { class: "num" }, "Δ vs teacher"),
        sortHeader("params", "params (M)"), sortHeader("flops", "GFLOPs"), sortHeader("latency_ms", "latency (ms)"),
        h("th", { class: "num" }, "vs teacher"))),
      h("tbody", {}, items.map((r) => h("tr", { "data-job": r.job_id },
        h("td", {}, h("a", { class: "mono", href: `#/jobs/${r.job_id}` }, short(r.job_id))),
        h("td", { class: "opt" }, r.kind), h("td", { class: "opt" }, r.detector), h("td", { class: "ellipsis opt", title: r.dataset }, r.dataset), h("td", {}, r.method),
        metrics.map((m) => h("td", { class: "num", "data-metric": m }, pct(r[m]))),
        h("td", { class: "num" }, pct(r[`teacher_${gap}`])), h("td", { class: "num" }, pct(r[`baseline_${gap}`])),
        h("td", { class: `num ${signClass(r[`delta_${gap}_vs_baseline`], gap)}` }, delta(r[`delta_${gap}_vs_baseline`])),
        h("td", { class: `num ${signClass(r[`delta_${gap}_vs_teacher`], gap)}` }, delta(r[`delta_${gap}_vs_teacher`])),
        h("td", { class: "num", "data-cost": "params" }, num(r.params, 1e6, 2)),
        h("td", { class: "num", "data-cost": "flops" }, num(r.flops, 1e9, 2)),
        h("td", { class: "num", "data-cost": "latency_ms", title: r.device ? `${r.device}, ${r.threads} threads; p90 ${num(r.latency_p90_ms, 1, 1)} ms` : "" }, num(r.latency_ms, 1, 1)),
        h("td", { class: "num small", "data-cost": "vs-teacher" }, versusTeacher(r, gap)))))));
  }

  function groupTable(items) {
    return h("div", { class: "table-wrap" }, h("table", { id: "results-table", class: "results grouped" },
      h("thead", {}, h("tr", {}, ["config", "kind", "detector", "dataset", "method", "n", "seeds"].map((c) => h("th", {}, c)),
        sortHeader("ap", "AP mean ± sd"), h("th", { class: "num" }, "AP95 CI"), h("th", { class: "num" }, "teacher AP"),
        h("th", { class: "num" }, "baseline AP"), h("th", { class: "num" }, "Δ AP (paired)"), h("th", { class: "num" }, "gap recovered"))),
      h("tbody", {}, items.map((g) => h("tr", { "data-config": g.config_hash },
        h("td", { class: "mono", title: g.config_hash }, g.config_hash.slice(0, 8)),
        h("td", {}, g.kind), h("td", {}, g.detector), h("td", { class: "ellipsis", title: g.dataset }, g.dataset), h("td", {}, g.method),
        h("td", { class: "num" }, String(g.n)), h("td", { class: "small" }, g.seeds.join(", ")),
        h("td", { class: "num", "data-metric": "ap" }, pm(g.ap_mean, g.ap_sd)),
        h("td", { class: "num small" }, g.ap_ci95_low == null ? "–" : `${g.ap_ci95_low.toFixed(1)}–${g.ap_ci95_high.toFixed(1)}`),
        h("td", { class: "num" }, pct(g.teacher_ap)), h("td", { class: "num" }, pct(g.baseline_ap_mean)),
        h("td", { class: `num ${signClass(g.delta_ap_mean, "ap")}` }, g.delta_ap_mean == null ? "–" : `${delta(g.delta_ap_mean)}${g.delta_ap_sd == null ? "" : ` ± ${g.delta_ap_sd.toFixed(1)}`} (n=${g.delta_ap_n})`),
        h("td", { class: "num" }, g.gap_recovered_ap == null ? "–" : `${(100 * g.gap_recovered_ap).toFixed(0)} %`))))));
  }

  let page;
  try {
    const params = { ...filters(), sort: state.sort, limit: PAGE, offset: state.offset };
    if (state.group) params.group_by = "config";
    page = await get(`/results${query(params)}`);
  } catch (err) {
    fill(area, problemBox(err, "Cannot load the leaderboard"), h("button", { type: "button", onclick: () => window.dispatchEvent(new HashChangeEvent("hashchange")) }, "Retry"));
    return null;
  }
  if (!page.items.length) {
    const filtered = Object.values(filters()).some(Boolean);
    fill(area, h("div", { class: "empty" }, h("h2", {}, filtered ? "No result matches these filters" : "No results yet"),
      h("p", {}, filtered ? h("a", { href: "#/results" }, "Clear the filters") : "A result appears here when a train, distill or evaluate job has finished its evaluation.")));
  } else {
    fill(area, state.group ? groupTable(page.items) : flatTable(page.items), pager(page));
    status.textContent = `${page.items.length} rows, sorted by ${state.sort.replace(/^-/, "")} ${state.sort.startsWith("-") ? "descending" : "ascending"}`;
  }
  performance.mark("pgd:first-screen");
  const gapRows = state.group
    ? page.items.map((g) => ({ label: `${g.detector} ${g.method} (n=${g.n})`, student: g.ap_mean, teacher: g.teacher_ap, baseline: g.baseline_ap_mean }))
    : page.items.map((r) => ({ label: `${r.detector} ${r.method} ${short(r.job_id)}`, student: r.ap, teacher: r.teacher_ap, baseline: r.baseline_ap }));
  const width = Math.round(Math.min(900, Math.max(340, chart.clientWidth - 34)));
  fill(chart, gapChart(gapRows.filter((r) => r.teacher != null && r.baseline != null).slice(0, 20), { width }));
  await paretoCharts(costs, state, page.items);
  return null;
}

/** "good" / "bad" for a delta's colour: higher AP is better, lower MR is better. */
function signClass(value, metric) {
  if (value == null || value === 0) return "";
  return (metric === "mr" ? value < 0 : value > 0) ? "good" : "bad";
}

/**
 * Accuracy against latency and against FLOPs for one detector on one dataset (the
 * filters', or the page's when all its rows share them), each with its Pareto front
 * from GET /results/pareto.
 */
async function paretoCharts(section, state, items) {
  const detectors = new Set(items.map((r) => r.detector));
  const datasets = new Set(items.map((r) => r.dataset));
  const detector = state.detector || (detectors.size === 1 ? [...detectors][0] : "");
  const dataset = state.dataset || (datasets.size === 1 ? [...datasets][0] : "");
  if (!detector || !dataset) {
    fill(section, h("h2", {}, "Accuracy against cost"), h("p", { class: "muted" }, "Choose a detector and a dataset to see the accuracy/cost front."));
    return;
  }
  const metric = items.length && items.every((r) => r.ap == null && r.ap_mean == null && (r.mr != null || r.mr_mean != null)) ? "mr" : "ap";
  const axes = [["latency_ms", "latency (ms)", false], ["flops", "GFLOPs", true]];
  try {
    const fronts = await Promise.all(axes.map(([cost]) => get(`/results/pareto${query({ detector, dataset, cost, metric })}`)));
    // Latencies of two machines compare machines: keep the device most results were timed on.
    const devices = Object.keys(fronts[0].devices);
    if (devices.length > 1) fronts[0] = await get(`/results/pareto${query({ detector, dataset, cost: "latency_ms", metric, device: devices[0] })}`);
    const figures = fronts.map((f, i) => {
      const [cost, axis, logX] = axes[i];
      const scale = cost === "flops" ? 1e9 : 1;
      const where = cost === "latency_ms" && (f.device || devices.length === 1) ? ` on ${f.device || devices[0]}` : "";
      const fig = scatterChart(
        f.points.map((p) => ({ x: p.cost / scale, y: p.metric, job: p.job_id, label: `${p.method} ${short(p.job_id)}`, front: p.on_front })),
        { title: `${metric.toUpperCase()} against ${axis}${where}`, xLabel: axis, yLabel: metric.toUpperCase(), logX, lowerIsBetter: f.lower_is_better });
      fig.dataset.cost = cost;
      return fig;
    });
    fill(section, h("h2", {}, `Accuracy against cost: ${detector} on ${dataset}`), h("div", { class: "pareto" }, figures));
  } catch (err) {
    fill(section, problemBox(err, "Cannot load the accuracy/cost front"));
  }
}
