// SVG charts for the dashboard: line charts of metric series and a "gap" chart of
// students between their no-KD baseline and their teacher. No library: each
// chart is a few paths, scaled with nice round ticks, sized by its viewBox.

import { h } from "./dom.js";

const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#4b5563"];
export const color = (i) => PALETTE[i % PALETTE.length];

const s = (tag, attrs, ...children) => h(`svg:${tag}`, attrs, ...children);

/** About `count` round tick values covering [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (lo === hi) {
    const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

/**
 * A line chart. series: [{name, points: [{x, y}], color?}]; points in x order.
 * Returns a <figure> whose <svg> holds one <path class="series"> per series with
 * data-name and data-points (the number of points drawn).
 */
export function lineChart(series, { title = "", xLabel = "iteration", yLabel = "", width = 640, height = 260 } = {}) {
  const pad = { left: 56, right: 16, top: 12, bottom: 36 };
  const finite = series.flatMap((sr) => sr.points.filter((p) => Number.isFinite(p.y) && Number.isFinite(p.x)));
  const fig = h("figure", { class: "chart" }, title ? h("figcaption", {}, title) : null);
  if (!finite.length) {
    fig.append(h("p", { class: "muted chart-empty" }, "no points yet"));
    return fig;
  }
  const xs = finite.map((p) => p.x);
  const ys = finite.map((p) => p.y);
  const xt = ticks(Math.min(...xs), Math.max(...xs), 6);
  const yt = ticks(Math.min(...ys), Math.max(...ys), 5);
  const x0 = Math.min(xt[0], ...xs), x1 = Math.max(xt[xt.length - 1], ...xs);
  const y0 = Math.min(yt[0], ...ys), y1 = Math.max(yt[yt.length - 1], ...ys);
  const W = width - pad.left - pad.right, H = height - pad.top - pad.bottom;
  const sx = (x) => pad.left + (x1 === x0 ? W / 2 : ((x - x0) / (x1 - x0)) * W);
  const sy = (y) => pad.top + (y1 === y0 ? H / 2 : (1 - (y - y0) / (y1 - y0)) * H);

  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title || yLabel, class: "chart-svg" });
  const grid = s("g", { class: "grid" });
  for (const v of yt) {
    grid.append(s("line", { x1: pad.left, x2: width - pad.right, y1: sy(v), y2: sy(v) }));
    grid.append(s("text", { x: pad.left - 6, y: sy(v) + 4, "text-anchor": "end" }, label(v)));
  }
  for (const v of xt) {
    grid.append(s("line", { x1: sx(v), x2: sx(v), y1: pad.top, y2: height - pad.bottom, class: "x" }));
    grid.append(s("text", { x: sx(v), y: height - pad.bottom + 16, "text-anchor": "middle" }, label(v)));
  }
  svg.append(grid);
  svg.append(s("text", { x: pad.left + W / 2, y: height - 4, "text-anchor": "middle", class: "axis-label" }, xLabel));
  if (yLabel) svg.append(s("text", { x: 12, y: pad.top + H / 2, "text-anchor": "middle", class: "axis-label", transform: `rotate(-90 12 ${pad.top + H / 2})` }, yLabel));

  series.forEach((sr, i) => {
    const pts = sr.points.filter((p) => Number.isFinite(p.y) && Number.isFinite(p.x));
    const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join("");
    const stroke = sr.color || color(i);
    svg.append(s("path", { d, class: "series", stroke, fill: "none", "data-name": sr.name, "data-points": String(pts.length) }));
    if (pts.length === 1) svg.append(s("circle", { cx: sx(pts[0].x), cy: sy(pts[0].y), r: 3, fill: stroke }));
  });

  // Hover: a vertical rule and each series' value at the nearest x.
  const rule = s("line", { class: "hover-rule", y1: pad.top, y2: height - pad.bottom, visibility: "hidden" });
  svg.append(rule);
  const readout = h("div", { class: "chart-readout muted" }, "\u00a0");
  svg.addEventListener("mousemove", (ev) => {
    const box = svg.getBoundingClientRect();
    const x = x0 + ((((ev.clientX - box.left) / box.width) * width - pad.left) / W) * (x1 - x0);
    const parts = series.map((sr) => {
      let best = null;
      for (const p of sr.points) if (!best || Math.abs(p.x - x) < Math.abs(best.x - x)) best = p;
      return best ? `${sr.name} @ ${best.x}: ${label(best.y)}` : null;
    }).filter(Boolean);
    rule.setAttribute("x1", sx(Math.max(x0, Math.min(x1, x))));
    rule.setAttribute("x2", sx(Math.max(x0, Math.min(x1, x))));
    rule.setAttribute("visibility", "visible");
    readout.textContent = parts.join(" · ");
  });
  svg.addEventListener("mouseleave", () => { rule.setAttribute("visibility", "hidden"); readout.textContent = "\u00a0"; });

  fig.append(svg);
  if (series.length > 1) {
    fig.append(h("div", { class: "legend" }, series.map((sr, i) =>
      h("span", {}, h("i", { style: `background:${sr.color || color(i)}` }), sr.name))));
  }
  fig.append(readout);
  return fig;
}

/**
 * Each distilled student on one row: a bar from its no-KD baseline to its teacher,
 * a dot at the student, and the share of the gap it recovered,
 * (student - baseline) / (teacher - baseline). rows: [{label, student, teacher, baseline}].
 */
export function gapChart(rows, { metric = "AP", width = 900 } = {}) {
  const usable = rows.filter((r) => [r.student, r.teacher, r.baseline].every(Number.isFinite));
  const fig = h("figure", { class: "chart" }, h("figcaption", {}, `${metric}: no-KD baseline ▸ student ▸ teacher`));
  if (!usable.length) {
    fig.append(h("p", { class: "muted chart-empty" }, "no distilled result with a teacher and a baseline on this page"));
    return fig;
  }
  const narrow = width < 600;
  const row = 26, pad = { left: narrow ? 120 : 190, right: narrow ? 70 : 100, top: 8, bottom: 28 };
  const height = pad.top + pad.bottom + row * usable.length;
  const values = usable.flatMap((r) => [r.student, r.teacher, r.baseline]);
  const xt = ticks(Math.min(...values), Math.max(...values), 6);
  const x0 = Math.min(xt[0], ...values), x1 = Math.max(xt[xt.length - 1], ...values);
  const W = width - pad.left - pad.right;
  const sx = (x) => pad.left + (x1 === x0 ? W / 2 : ((x - x0) / (x1 - x0)) * W);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart-svg gap", style: `max-width:${width}px`, role: "img", "aria-label": `${metric} gap chart` });
  for (const v of xt) {
    svg.append(s("line", { class: "gridline", x1: sx(v), x2: sx(v), y1: pad.top, y2: height - pad.bottom }));
    svg.append(s("text", { class: "tick", x: sx(v), y: height - 10, "text-anchor": "middle" }, label(v)));
  }
  usable.forEach((r, i) => {
    const y = pad.top + row * i + row / 2;
    const gap = r.teacher - r.baseline;
    const share = gap !== 0 ? (r.student - r.baseline) / gap : null;
    const g = s("g", { class: "gap-row", "data-share": share === null ? "" : share.toFixed(4) });
    g.append(s("text", { x: pad.left - 8, y: y + 4, "text-anchor": "end", class: "row-label" }, r.label));
    g.append(s("line", { x1: sx(r.baseline), x2: sx(r.teacher), y1: y, y2: y, class: "gap-bar" }));
    g.append(s("circle", { cx: sx(r.baseline), cy: y, r: 4, class: "dot-baseline" }, s("title", {}, `baseline ${label(r.baseline)}`)));
    g.append(s("circle", { cx: sx(r.teacher), cy: y, r: 4, class: "dot-teacher" }, s("title", {}, `teacher ${label(r.teacher)}`)));
    g.append(s("circle", { cx: sx(r.student), cy: y, r: 5, class: "dot-student" }, s("title", {}, `student ${label(r.student)}`)));
    const shareText = share === null ? "–" : `${(100 * share).toFixed(0)} %${narrow ? "" : " of gap"}`;
    g.append(s("text", { x: width - pad.right + 8, y: y + 4, class: "share" }, shareText));
    svg.append(g);
  });
  fig.append(svg);
  fig.append(h("div", { class: "legend" },
    h("span", {}, h("i", { class: "key-baseline" }), "no-KD baseline"),
    h("span", {}, h("i", { class: "key-student" }), "student"),
    h("span", {}, h("i", { class: "key-teacher" }), "teacher")));
  return fig;
}

/**
 * Accuracy against cost: one dot per result (class "point", data-job), the ones on
 * the Pareto front filled (class "point front"), and the front as a staircase
 * (<path class="front" data-points=n>): from each front point the next one costs
 * more and scores better. points: [{x, y, job, label, front}]; front points in
 * increasing x. logX: a log scale for costs that span orders of magnitude.
 */
export function scatterChart(points, { title = "", xLabel = "", yLabel = "", width = 440, height = 280, logX = false, lowerIsBetter = false } = {}) {
  const pad = { left: 52, right: 14, top: 12, bottom: 38 };
  const usable = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y) && (!logX || p.x > 0));
  const fig = h("figure", { class: "chart scatter" }, title ? h("figcaption", {}, title) : null);
  if (!usable.length) {
    fig.append(h("p", { class: "muted chart-empty" }, "no measured result yet"));
    return fig;
  }
  const fx = (x) => (logX ? Math.log10(x) : x);
  const xs = usable.map((p) => fx(p.x));
  const ys = usable.map((p) => p.y);
  const xt = logX ? [] : ticks(Math.min(...xs), Math.max(...xs), 5);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (logX) {
    x0 = Math.floor(x0 * 2) / 2;
    x1 = Math.ceil(x1 * 2) / 2;
    if (x1 === x0) x1 = x0 + 0.5;
    for (let v = Math.ceil(x0); v <= x1; v += 1) xt.push(v);
    // Less than two decades in view: round values inside it (0.5, 1, 2, ...), not 10^-0.5.
    if (xt.length < 2) xt.splice(0, xt.length, ...ticks(10 ** x0, 10 ** x1, 4).filter((v) => v > 0).map(Math.log10));
  } else {
    x0 = Math.min(x0, xt[0]);
    x1 = Math.max(x1, xt[xt.length - 1]);
  }
  const yt = ticks(Math.min(...ys), Math.max(...ys), 5);
  const y0 = Math.min(yt[0], ...ys), y1 = Math.max(yt[yt.length - 1], ...ys);
  const W = width - pad.left - pad.right, H = height - pad.top - pad.bottom;
  const sx = (v) => pad.left + (x1 === x0 ? W / 2 : ((v - x0) / (x1 - x0)) * W);
  const sy = (y) => pad.top + (y1 === y0 ? H / 2 : (1 - (y - y0) / (y1 - y0)) * H);
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title || `${yLabel} against ${xLabel}`, class: "chart-svg" });
  const grid = s("g", { class: "grid" });
  for (const v of yt) {
    grid.append(s("line", { x1: pad.left, x2: width - pad.right, y1: sy(v), y2: sy(v) }));
    grid.append(s("text", { x: pad.left - 6, y: sy(v) + 4, "text-anchor": "end" }, label(v)));
  }
  for (const v of xt) {
    grid.append(s("line", { x1: sx(v), x2: sx(v), y1: pad.top, y2: height - pad.bottom, class: "x" }));
    grid.append(s("text", { x: sx(v), y: height - pad.bottom + 16, "text-anchor": "middle" }, label(logX ? 10 ** v : v)));
  }
  svg.append(grid);
  svg.append(s("text", { x: pad.left + W / 2, y: height - 4, "text-anchor": "middle", class: "axis-label" }, xLabel + (logX ? " (log)" : "")));
  if (yLabel) svg.append(s("text", { x: 12, y: pad.top + H / 2, "text-anchor": "middle", class: "axis-label", transform: `rotate(-90 12 ${pad.top + H / 2})` }, yLabel));
  const front = usable.filter((p) => p.front).sort((a, b) => a.x - b.x);
  if (front.length) {
    // A staircase: each front point holds until the next, cheaper-to-better step.
    let d = `M${sx(fx(front[0].x)).toFixed(1)},${sy(front[0].y).toFixed(1)}`;
    for (let i = 1; i < front.length; i += 1) {
      d += `H${sx(fx(front[i].x)).toFixed(1)}V${sy(front[i].y).toFixed(1)}`;
    }
    d += `H${(width - pad.right).toFixed(1)}`;
    svg.append(s("path", { d, class: "front", fill: "none", "data-points": String(front.length) }));
  }
  for (const p of usable) {
    svg.append(s("circle", { cx: sx(fx(p.x)), cy: sy(p.y), r: p.front ? 5 : 4, class: p.front ? "point front" : "point", "data-job": p.job },
      s("title", {}, `${p.label}: ${label(p.y)} at ${label(p.x)}`)));
  }
  fig.append(svg);
  fig.append(h("div", { class: "legend" },
    h("span", {}, h("i", { class: "key-front" }), `Pareto front (${lowerIsBetter ? "lower" : "higher"} ${yLabel} is better)`),
    h("span", {}, h("i", { class: "key-point" }), "other results")));
  return fig;
}
