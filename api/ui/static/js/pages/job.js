// One job: spec, state timeline, live loss and lr curves, evaluation metrics with
// the teacher and baseline, PR / MR-FPPI plots, log tail, artifacts, cancel, retry.

import { TERMINAL, get, jobEvents, post, query, request } from "../api.js";
import { lineChart } from "../charts.js";
import { age, confirmDialog, delta, duration, every, fill, h, pct, problemBox, progressBar, saveText, short, stateBadge, when } from "../dom.js";

const CANCELLABLE = new Set(["waiting", "queued", "running"]);
const RETRYABLE = new Set(["failed", "cancelled"]);
const HEADLINE = ["ap", "ap50", "ap75", "aps", "apm", "apl", "mr", "ji"];

/** This row minus its baseline for one metric: the API's own delta where it gives
 * one (ap, mr, ji), else the difference; "n/a" where either side has none (-1). */
export function deltaCell(r, m) {
  const given = r[`delta_${m}_vs_baseline`];
  if (given !== undefined) return delta(given);
  const own = r[m], base = r[`baseline_${m}`];
  if (own == null || base == null) return "–";
  if (own === -1 || base === -1) return "n/a";
  return delta(own - base);
}

/** Insert a point keeping the series in step order; a step logged again (a resumed
 * attempt) replaces the earlier value. */
export function addPoint(points, x, y) {
  let i = points.length;
  while (i > 0 && points[i - 1].x > x) i--;
  if (i > 0 && points[i - 1].x === x) points[i - 1].y = y;
  else points.splice(i, 0, { x, y });
}

/** Metric series split into charts: losses, learning rate, the rest. */
export function chartGroups(names) {
  const losses = names.filter((n) => /loss/i.test(n));
  const lr = names.filter((n) => /(^|[/_])lr$|learning_rate/i.test(n));
  const rest = names.filter((n) => !losses.includes(n) && !lr.includes(n));
  return [["losses", losses], ["learning rate", lr], ...rest.map((n) => [n, [n]])].filter(([, g]) => g.length);
}

export async function render(main, [jobId]) {
  let job;
  try {
    job = await get(`/jobs/${jobId}`);
  } catch (err) {
    main.append(h("div", { class: "page-head" }, h("h1", {}, `Job ${short(jobId)}`)), problemBox(err, "Cannot load the job"),
      h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs")));
    return null;
  }
  const stops = [];
  const head = h("div", { class: "page-head" });
  const actionResult = h("div", { id: "action-result" });
  const summary = h("section", { class: "card", id: "summary" });
  const timeline = h("section", { class: "card", id: "timeline" });
  const evaluation = h("section", { class: "card", id: "evaluation" }, h("h2", {}, "Evaluation"), h("p", { class: "muted" }, "Loading…"));
  const curves = h("section", { class: "card wide", id: "curves" }, h("h2", {}, "Training curves"));
  const plots = h("section", { class: "card wide", id: "plots" });
  const logs = h("section", { class: "card wide", id: "logs" });
  const artifacts = h("section", { class: "card", id: "artifacts" });
  const spec = h("section", { class: "card", id: "spec" });
  // While the job runs its curves matter most; once it has finished, its result.
  const body = TERMINAL.has(job.state) ? [evaluation, curves, plots] : [curves, evaluation, plots];
  main.append(head, actionResult, h("div", { class: "grid2" }, summary, timeline), ...body, logs, h("div", { class: "grid2" }, artifacts, spec));

  function drawHead() {
    const buttons = [];
    if (CANCELLABLE.has(job.state) && !job.cancel_requested) buttons.push(h("button", { type: "button", class: "danger", id: "cancel", onclick: cancel }, "Cancel"));
    if (RETRYABLE.has(job.state)) buttons.push(h("button", { type: "button", class: "primary", id: "retry", onclick: retry }, "Retry"));
    buttons.push(h("a", { class: "button", href: `#/compare?ids=${job.id}` }, "Compare…"));
    fill(head, h("h1", {}, "Job ", h("span", { class: "mono" }, short(job.id)), " ", stateBadge(job.state)), h("div", { class: "head-actions" }, buttons));
  }

  /** "2 GPUs (NCCL), 8 images per iteration: 4 per GPU" from the spec. */
  function runsOn(spec) {
    const n = spec.processes || 1;
    const gpu = spec.device !== "cpu";
    const unit = gpu ? "GPU" : "CPU process";
    const where = `${n} ${unit}${n > 1 ? "es".slice(gpu ? 1 : 0) : ""}${n > 1 ? (gpu ? " (NCCL)" : " (gloo)") : ""}`;
    const batch = spec.schedule && spec.schedule.batch_size;
    if (job.kind === "evaluate" || !batch) return where;
    return n > 1 ? `${where}, ${batch} images per iteration: ${batch / n} per ${gpu ? "GPU" : "process"}` : `${where}, ${batch} images per iteration`;
  }

  function drawSummary() {
    const link = (label, href) => (href ? h("a", { href }, label) : "–");
    const rows = [
      ["id", h("span", { class: "mono" }, job.id)],
      ["kind", job.kind], ["detector", job.detector], ["dataset", job.dataset], ["method", job.method],
      ["owner", job.owner],
      ["runs on", runsOn(job.spec)],
      ["progress", h("div", { class: "progress-line" }, progressBar(job.progress), h("span", { id: "progress-text" }, `${(job.progress * 100).toFixed(1)} %`))],
      ["attempt", `${job.attempt} of ${job.max_attempts}`],
      ["teacher job", job.teacher_job_id ? link(short(job.teacher_job_id), `#/jobs/${job.teacher_job_id}`) : "–"],
      ["sweep", job.sweep_id ? link(short(job.sweep_id), `#/sweeps/${job.sweep_id}`) : "–"],
      ["spec hash", h("span", { class: "mono small" }, job.spec_hash.slice(0, 16))],
    ];
    fill(summary, h("h2", {}, "Summary"), h("dl", { class: "kv" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }

  function drawTimeline() {
    const steps = [[job.teacher_job_id && !job.started_at && job.state === "waiting" ? "waiting for teacher" : "created", job.created_at, "queued"]];
    if (job.started_at) steps.push([`started (attempt ${job.attempt})`, job.started_at, "running"]);
    if (job.cancel_requested) steps.push(["cancel requested", null, "cancelling"]);
    if (job.finished_at) steps.push([job.state, job.finished_at, job.state]);
    else steps.push([`now: ${job.state}`, null, job.state]);
    const items = steps.map(([label, at, state], i) => h("li", { class: `tl tl-${state}` },
      h("span", { class: "tl-dot" }),
      h("div", {}, h("strong", {}, label), at ? h("span", { class: "muted small" }, ` ${when(at)}`) : null,
        i > 0 && at && steps[i - 1][1] ? h("span", { class: "muted small" }, ` (+${duration(steps[i - 1][1], at)})`) : null)));
    const failure = job.reason || job.message
      ? h("div", { class: job.state === "failed" ? "problem" : "note", id: "failure" },
        h("strong", {}, job.reason || "note"), job.message ? h("pre", { class: "message" }, job.message) : null)
      : null;
    fill(timeline, h("h2", {}, "Timeline"), h("ol", { class: "timeline" }, items), failure,
      h("p", { class: "muted small" }, `updated ${age(job.updated_at)} ago`));
  }

  function drawSpec() {
    fill(spec, h("h2", {}, "Spec"),
      h("div", { class: "head-actions" }, h("button", { type: "button", onclick: () => saveText(`job-${short(job.id)}-spec.json`, JSON.stringify(job.spec, null, 2), "application/json") }, "Download JSON")),
      h("pre", { class: "json", id: "spec-json" }, JSON.stringify(job.spec, null, 2)));
  }

  function drawAll() { drawHead(); drawSummary(); drawTimeline(); }

  async function act(what, path) {
    fill(actionResult);
    try {
      job = await post(path);
      drawAll();
      watch();
    } catch (err) {
      fill(actionResult, problemBox(err, `${what} refused`));
    }
  }
  async function cancel() {
    const running = job.state === "running";
    if (await confirmDialog(running ? "Ask the worker to stop this running job? It keeps its checkpoints." : "Cancel this job before it starts?", { confirm: "Cancel job", danger: true })) {
      await act("Cancel", `/jobs/${job.id}/cancel`);
    }
  }
  async function retry() {
    if (await confirmDialog(`Run this job again (attempt ${job.attempt + 1}), resuming from its last checkpoint?`, { confirm: "Retry" })) {
      await act("Retry", `/jobs/${job.id}/retry`);
    }
  }

  // Evaluation: this job's leaderboard row (with its teacher's and baseline's numbers).
  async function drawEvaluation() {
    let page;
    try {
      page = await get(`/results${query({ job: job.id, limit: 1 })}`);
    } catch (err) {
      fill(evaluation, h("h2", {}, "Evaluation"), problemBox(err, "Cannot load the result"));
      return;
    }
    const r = page.items[0];
    if (!r) {
      fill(evaluation, h("h2", {}, "Evaluation"), h("p", { class: "muted" }, TERMINAL.has(job.state) ? "This job has no evaluation result." : "Not evaluated yet: the result appears when the job has finished."));
      return;
    }
    const metrics = HEADLINE.filter((m) => r[m] !== null);
    const distilled = r.teacher_job_id !== null;
    const tr = (label, get) => h("tr", {}, h("th", {}, label), metrics.map((m) => h("td", { class: "num", "data-metric": m }, get(m))));
    fill(evaluation, h("h2", {}, "Evaluation"),
      h("div", { class: "table-wrap" }, h("table", { class: "metrics", id: "eval-table" },
        h("thead", {}, h("tr", {}, h("th", {}, ""), metrics.map((m) => h("th", { class: "num" }, m.toUpperCase())))),
        h("tbody", {},
          tr("this job", (m) => pct(r[m])),
          distilled ? tr("teacher", (m) => pct(r[`teacher_${m}`])) : null,
          distilled ? tr("no-KD baseline", (m) => pct(r[`baseline_${m}`])) : null,
          distilled ? tr("Δ vs baseline", (m) => deltaCell(r, m)) : null))),
      distilled && r.teacher_ap != null && r.baseline_ap != null && r.teacher_ap !== r.baseline_ap
        ? h("p", { id: "gap" }, `Recovered ${(100 * (r.ap - r.baseline_ap) / (r.teacher_ap - r.baseline_ap)).toFixed(0)} % of the AP gap between the no-KD baseline and the teacher.`)
        : null,
      h("p", { class: "muted small" }, "AP in percent (COCO); MR is the log-average miss rate (lower is better)."));
  }

  // Curves: every metric point from GET /metrics, then live points from the events stream.
  const series = {};
  let redraw = null;
  function drawCurves() {
    redraw = null;
    const names = Object.keys(series).sort();
    const width = Math.round(Math.min(640, Math.max(320, curves.clientWidth - 34)));
    const charts = chartGroups(names).map(([title, group]) =>
      lineChart(group.map((n) => ({ name: n, points: series[n] })), { title, width, yLabel: group.length === 1 ? group[0] : "" }));
    fill(curves, h("h2", {}, "Training curves"), names.length ? h("div", { class: "charts" }, charts) : h("p", { class: "muted" }, "No metric points yet."));
  }
  const scheduleRedraw = () => { if (!redraw) redraw = setTimeout(drawCurves, 500); };
  // Live points that arrive before GET /metrics has answered wait here, then merge.
  let early = [];
  async function loadCurves() {
    try {
      const body = await get(`/jobs/${job.id}/metrics`);
      for (const [name, points] of Object.entries(body.series)) series[name] = points.map((p) => ({ x: p.step, y: p.value }));
      for (const p of early) addPoint(series[p.name] ||= [], p.step, p.value);
      early = null;
      drawCurves();
    } catch (err) {
      early = null;
      fill(curves, h("h2", {}, "Training curves"), problemBox(err, "Cannot load the metrics"));
    }
  }

  async function blobUrl(name) {
    const blob = await request(`/jobs/${job.id}/artifacts/${name.split("/").map(encodeURIComponent).join("/")}`, { blob: true });
    return URL.createObjectURL(blob);
  }
  const objectUrls = [];
  async function drawArtifacts() {
    let list;
    try {
      list = await get(`/jobs/${job.id}/artifacts`);
    } catch (err) {
      fill(artifacts, h("h2", {}, "Artifacts"), problemBox(err, "Cannot list the artifacts"));
      return;
    }
    const download = async (a) => {
      const url = await blobUrl(a.name);
      const link = h("a", { href: url, download: a.name.split("/").pop() });
      document.body.append(link); link.click(); link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 5000);
    };
    const size = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : n >= 1e3 ? `${(n / 1e3).toFixed(1)} kB` : `${n} B`);
    fill(artifacts, h("h2", {}, "Artifacts"), list.length
      ? h("table", { class: "compact" }, h("tbody", {}, list.map((a) => h("tr", {},
        h("td", { class: "ellipsis" }, a.name), h("td", {}, a.kind), h("td", { class: "num" }, size(a.size)),
        h("td", {}, h("button", { type: "button", class: "small", onclick: () => download(a).catch((err) => artifacts.append(problemBox(err, "Download failed"))) }, "Download"))))))
      : h("p", { class: "muted" }, "None yet."));
    const images = list.filter((a) => a.kind === "plot" && /\.(png|svg|jpe?g)$/i.test(a.name));
    if (images.length) {
      const figs = [];
      for (const a of images) {
        try {
          const url = await blobUrl(a.name);
          objectUrls.push(url);
          figs.push(h("figure", { class: "plot" }, h("img", { src: url, alt: a.name, loading: "lazy" }), h("figcaption", {}, a.name.replace(/^plots\//, ""))));
        } catch (err) {
          figs.push(problemBox(err, a.name));
        }
      }
      fill(plots, h("h2", {}, job.dataset.toLowerCase().includes("crowd") ? "MR-FPPI and PR plots" : "Precision-recall plots"), h("div", { class: "plots" }, figs));
    } else {
      fill(plots, h("h2", {}, "Plots"), h("p", { class: "muted" }, TERMINAL.has(job.state)
        ? "This job has no plot (it ended before its evaluation, or it evaluated nothing)."
        : "The PR (or MR-FPPI) plot appears when the evaluation has run."));
    }
  }

  async function drawLogs() {
    let text;
    try {
      text = await get(`/jobs/${job.id}/logs${query({ tail: 200 })}`);
    } catch (err) {
      fill(logs, h("h2", {}, "Log"), err.status === 404 ? h("p", { class: "muted" }, "No log yet.") : problemBox(err, "Cannot read the log"));
      return;
    }
    const shown = document.getElementById("log-tail");
    if (shown && logs.contains(shown) && shown.textContent === text) return;
    const pre = h("pre", { class: "log", id: "log-tail", tabindex: "0" }, text);
    fill(logs, h("h2", {}, "Log (last 200 lines)"), pre);
    pre.scrollTop = pre.scrollHeight;
  }

  let events = null;
  let poll = null;
  let refreshes = 0;
  function watch() {
    if (events) { events.stop(); events = null; }
    if (poll) { poll(); poll = null; }
    if (TERMINAL.has(job.state)) return;
    events = jobEvents(job.id, async (name, data) => {
      if (name === "metric") {
        if (early) early.push(data);
        else { addPoint(series[data.name] ||= [], data.step, data.value); scheduleRedraw(); }
      } else if (name === "state") {
        const was = job.state;
        if (data.state === job.state && data.progress === job.progress && data.attempt === job.attempt) return;
        Object.assign(job, { state: data.state, progress: data.progress, attempt: data.attempt });
        drawAll();
        if (was !== data.state) {
          // The full row (reason, timestamps); an answer older than the latest is dropped.
          const mine = ++refreshes;
          const fresh = await get(`/jobs/${job.id}`).catch(() => null);
          if (!fresh || mine !== refreshes) return;
          job = fresh;
          drawAll();
          if (TERMINAL.has(job.state)) { drawEvaluation(); drawArtifacts(); drawLogs(); }
        }
      }
    });
    poll = every(3000, () => (TERMINAL.has(job.state) ? null : drawLogs()));
  }
  stops.push(() => { if (events) events.stop(); if (poll) poll(); if (redraw) clearTimeout(redraw); objectUrls.forEach((u) => URL.revokeObjectURL(u)); });

  drawAll();
  drawSpec();
  // The stream first: points stored while the page loads are buffered, not lost.
  watch();
  await Promise.all([drawEvaluation(), loadCurves(), drawArtifacts(), drawLogs()]);
  return () => stops.forEach((f) => f());
}
