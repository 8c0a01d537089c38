// One soak check's chart, as SVG built with DOM methods (no library): the
// value over the soak, every threshold in force (absolute or baseline +
// delta, as the verdict rules computed it), the baseline, breaching samples
// as triangles and inconclusive ones as hollow diamonds on the axis (shape and
// colour both), the breaches in a row against the consecutive rule, and the
// verdict's text when one fired (the check_verdict event's own message).
//
// Points come from GET /v1/runs/{id}/checks/{name}/series (downsampled on the
// server, every breach and inconclusive sample kept) and then one by one from
// the run's event stream.
"use strict";

const PGChart = (() => {
  const { el, svg, fill, num } = PG;
  const W = 720;
  const H = 240;
  const M = { left: 64, right: 18, top: 16, bottom: 30 };
  // Ordinary samples get a dot of their own only while they are few.
  const DOTS_UP_TO = 150;

  function mmss(s) {
    s = Math.max(0, Math.round(s));
    const m = Math.floor(s / 60);
    return m + ":" + String(s % 60).padStart(2, "0");
  }

  function niceStep(raw) {
    if (!(raw > 0) || !isFinite(raw)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / power;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
  }

  function legendItem(cls, label) {
    const icon = svg("svg", { width: 22, height: 12, viewBox: "0 0 22 12", "aria-hidden": "true" });
    if (cls === "breach") icon.appendChild(svg("path", { class: "breach", d: "M11 1 L16 11 L6 11 Z" }));
    else if (cls === "inconclusive") icon.appendChild(svg("path", { class: "inconclusive", d: "M11 1 L16 6 L11 11 L6 6 Z" }));
    else icon.appendChild(svg("line", { class: cls, x1: 1, y1: 6, x2: 21, y2: 6 }));
    return el("li", {}, icon, " ", label);
  }

  class Chart {
    // info: {check, source, bounds, baseline, consecutive, soak_duration_s,
    // thresholds, points, samples, in_a_row, verdict}
    constructor(info) {
      this.check = info.check;
      this.duration = info.soak_duration_s || 0;
      this.consecutive = info.consecutive || null;
      this.points = [];
      this.samples = 0;
      this.breaches = 0;
      this.inconclusive = 0;
      this.lastSeq = 0;
      this.through = info.through || 0;
      this.pending = false;
      // While the soak runs the time axis is the planned soak, so the chart
      // shows how far it has got; once it is over, the time it actually ran.
      this.ended = false;

      this.title = el("h3", {}, info.check);
      this.sourceEl = el("p", { class: "source" });
      this.summary = el("p", { class: "summary", "aria-live": "off" });
      this.verdictEl = el("p", { class: "verdict", role: "alert", hidden: true });
      this.plot = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "plot", role: "img" });
      this.legend = el("ul", { class: "legend", "aria-label": "Legend" },
        legendItem("value", "value"), legendItem("threshold", "threshold"), legendItem("baseline", "baseline"),
        legendItem("breach", "breach"), legendItem("inconclusive", "inconclusive (no value)"));
      this.root = el("figure", { class: "chart", "data-check": info.check },
        this.title, this.sourceEl, this.plot, this.legend, this.summary, this.verdictEl);
      this.update(info);
      this.setPoints(info.points || [], info);
    }

    // What the chart draws around the points (from the series or a sample).
    update(info) {
      if (info.source) fill(this.sourceEl, info.source);
      if (info.bounds) this.bounds = info.bounds;
      if (info.thresholds !== undefined && info.thresholds !== null) this.thresholds = info.thresholds;
      if (info.baseline !== undefined) this.baseline = info.baseline;
      if (info.consecutive) this.consecutive = info.consecutive;
      if (info.soak_duration_s) this.duration = info.soak_duration_s;
      if (info.in_a_row !== undefined) this.inARow = info.in_a_row;
      if (info.verdict) this.setVerdict(info.verdict.message, info.verdict.decision);
    }

    // A series from the server: its points (downsampled) and its counts
    // (before downsampling).
    // Live samples newer than the series (`through`) are kept after it.
    setPoints(points, s) {
      const through = s.through === undefined ? Infinity : s.through;
      const newer = this.points ? this.points.filter((p) => p.seq > through) : [];
      this.points = points.concat(newer);
      this.samples = (s.samples || 0) + newer.length;
      this.breaches = (s.breaching || 0) + newer.filter((p) => p.kind === "breach").length;
      this.inconclusive = (s.inconclusive || 0) + newer.filter((p) => p.kind === "inconclusive").length;
      for (const p of points) this.lastSeq = Math.max(this.lastSeq, p.seq);
      this.schedule();
    }

    // One check_sample event from the stream (ignored if the series had it).
    addSample(e) {
      if (e.seq <= this.through || e.seq <= this.lastSeq) return;
      const kind = !e.valid ? "inconclusive" : e.breaching ? "breach" : "ok";
      const p = { seq: e.seq, t: e.elapsed_s || 0, value: e.value === undefined ? null : e.value, kind, in_a_row: (e.counts && e.counts.breaches_in_a_row) || 0 };
      this.points.push(p);
      this.samples++;
      if (kind === "breach") this.breaches++;
      if (kind === "inconclusive") this.inconclusive++;
      this.lastSeq = e.seq;
      this.update({ bounds: e.bounds, thresholds: e.thresholds, baseline: e.baseline, in_a_row: p.in_a_row });
      this.schedule();
    }

    setEnded(ended) {
      if (this.ended === ended) return;
      this.ended = ended;
      this.schedule();
    }

    setVerdict(message, decision) {
      if (!message) return;
      fill(this.verdictEl, el("strong", {}, "Verdict: "), message, decision ? " → " + decision.replace(/_/g, " ") : "");
      this.verdictEl.hidden = false;
      this.root.classList.add("breached");
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.render();
      });
    }

    render() {
      const pts = this.points;
      const values = pts.filter((p) => p.value !== null && p.value !== undefined).map((p) => p.value);
      const limits = (this.bounds || []).map((b) => b.limit).filter((v) => isFinite(v));
      const refs = values.concat(limits, this.baseline !== null && this.baseline !== undefined ? [this.baseline] : []);
      // A loop, not Math.min(...refs): spreading a long array overflows the
      // engine's argument limit.
      let lo = refs.length ? Infinity : 0;
      let hi = refs.length ? -Infinity : 1;
      for (const v of refs) {
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      if (hi === lo) {
        const d = Math.abs(hi) * 0.1 || 1;
        lo -= d;
        hi += d;
      }
      // Round ticks (1, 2 or 5 times a power of ten) that enclose everything.
      const step = niceStep((hi - lo) / 4);
      lo = Math.floor(lo / step) * step;
      hi = Math.ceil(hi / step) * step;
      if (hi - lo < step * 2) hi = lo + step * 2;
      const lastT = pts.length ? pts[pts.length - 1].t : 0;
      const tEnd = Math.max(this.ended ? lastT : this.duration || 0, lastT, 1);
      const x = (t) => M.left + (t / tEnd) * (W - M.left - M.right);
      const y = (v) => M.top + (1 - (v - lo) / (hi - lo)) * (H - M.top - M.bottom);
      const bottom = H - M.bottom;

      const g = [];
      // Axes and grid.
      for (let i = 0; lo + i * step <= hi + step / 2; i++) {
        const v = lo + i * step;
        g.push(svg("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y(v), y2: y(v) }));
        g.push(svg("text", { class: "tick", x: M.left - 6, y: y(v) + 4, "text-anchor": "end" }, num(Number(v.toPrecision(12)))));
      }
      for (const t of [0, tEnd / 2, tEnd]) {
        g.push(svg("text", { class: "tick", x: x(t), y: H - 10, "text-anchor": t === 0 ? "start" : t === tEnd ? "end" : "middle" }, mmss(t)));
      }
      g.push(svg("line", { class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: bottom }));
      g.push(svg("line", { class: "axis", x1: M.left, x2: W - M.right, y1: bottom, y2: bottom }));

      // Thresholds and the baseline.
      for (const b of this.bounds || []) {
        if (!isFinite(b.limit)) continue;
        g.push(svg("line", { class: "threshold", "data-limit": b.limit, "data-rule": b.rule, x1: M.left, x2: W - M.right, y1: y(b.limit), y2: y(b.limit) }));
        g.push(svg("text", { class: "label threshold-label", x: M.left + 4, y: y(b.limit) - 4 }, b.text));
      }
      if (this.baseline !== null && this.baseline !== undefined && isFinite(this.baseline)) {
        g.push(svg("line", { class: "baseline", x1: M.left, x2: W - M.right, y1: y(this.baseline), y2: y(this.baseline) }));
        g.push(svg("text", { class: "label baseline-label", x: W - M.right - 4, y: y(this.baseline) - 4, "text-anchor": "end" }, "baseline " + num(this.baseline)));
      }

      // The value: one line, broken where a sample had none.
      let d = "";
      let pen = false;
      for (const p of pts) {
        if (p.value === null || p.value === undefined) {
          pen = false;
          continue;
        }
        d += (pen ? "L" : "M") + x(p.t).toFixed(1) + " " + y(p.value).toFixed(1);
        pen = true;
      }
      if (d) g.push(svg("path", { class: "value", d }));
      const ordinary = pts.filter((p) => p.kind === "ok");
      if (ordinary.length <= DOTS_UP_TO) {
        for (const p of ordinary) g.push(svg("circle", { class: "sample", cx: x(p.t), cy: y(p.value), r: 2.5 }));
      }
      // Marks last, on top.
      for (const p of pts) {
        if (p.kind === "breach") {
          const cx = x(p.t);
          const cy = p.value === null || p.value === undefined ? bottom - 7 : y(p.value);
          g.push(svg("path", { class: "breach mark", d: `M${cx} ${cy - 7} L${cx + 6} ${cy + 4} L${cx - 6} ${cy + 4} Z` },
            svg("title", {}, "breach at " + mmss(p.t) + ": " + num(p.value) + " (" + p.in_a_row + " in a row)")));
        } else if (p.kind === "inconclusive") {
          const cx = x(p.t);
          const cy = bottom - 6;
          g.push(svg("path", { class: "inconclusive mark", d: `M${cx} ${cy - 6} L${cx + 5} ${cy} L${cx} ${cy + 6} L${cx - 5} ${cy} Z` },
            svg("title", {}, "inconclusive at " + mmss(p.t))));
        }
      }
      fill(this.plot, g);

      const last = pts.length ? pts[pts.length - 1] : null;
      const inARow = this.inARow || 0;
      const label = this.check + ": " + this.samples + " samples, " + this.breaches + " breaching, " + this.inconclusive + " inconclusive" +
        (last ? "; latest " + (last.value === null ? "inconclusive" : num(last.value)) : "") +
        (this.thresholds ? "; thresholds " + this.thresholds : "");
      this.plot.setAttribute("aria-label", label);
      this.root.dataset.samples = String(this.samples);
      this.root.dataset.lastSeq = String(this.lastSeq);
      fill(this.summary,
        el("span", {}, "latest ", el("strong", {}, last ? (last.value === null ? "inconclusive" : num(last.value)) : "—")),
        " · ", el("span", { class: "in-a-row" + (inARow > 0 ? " hot" : "") }, inARow + " breach" + (inARow === 1 ? "" : "es") + " in a row" + (this.consecutive ? " (verdict at " + this.consecutive + ")" : "")),
        " · ", this.samples + " samples, " + this.breaches + " breaching, " + this.inconclusive + " inconclusive",
        this.thresholds ? el("span", { class: "muted" }, " · " + this.thresholds) : null);
    }
  }

  return { Chart };
})();
