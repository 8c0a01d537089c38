// One run: its lifecycle as a timeline, a chart per soak check, the backup,
// notifications and escalation, the runbook link, the events as a log, and
// the actions the caller's roles allow (approve, abort, acknowledge).
//
// Loading, so that nothing is missed and nothing is read twice:
// 1. the run's view, whose `last_seq` is where the live stream will start;
// 2. its events but the samples (`?exclude=check_sample`), for the log;
// 3. each soak check's series (downsampled; `through` says up to which seq);
// 4. the event stream after `last_seq`: events the log or a series already
//    holds are skipped by their seq.
"use strict";

(() => {
  const { el, fill, api, badge, me, timeEl, clock, duration, num, bytes, banner } = PG;
  const id = document.body.dataset.run;
  const root = document.getElementById("run");
  const SERIES_POINTS = 600;

  // Every event kind the daemon writes: EventSource hands an event named
  // `event: NAME` only to a listener of that name. (A unit test in
  // src/web keeps this list complete.)
  const EVENT_NAMES = [
    "run_started", "waiting_for_window", "window_open", "lock_busy", "lock_acquired",
    "baseline_measured", "backup_started", "backup_written", "backup_verified", "backup_failed",
    "backup_pruned", "migration_started", "migration_retry", "migration_applied", "migration_failed",
    "verify_passed", "verify_failed", "soak_started", "check_sample", "check_verdict", "soak_finished",
    "rollback_started", "rollback_retry", "rollback_step_done", "backup_restored", "rollback_finished",
    "rollback_failed", "dry_run", "run_submitted", "run_approved", "abort_requested", "acknowledged",
    "run_resumed", "gate_started", "gate_open", "gate_closed", "explain_measured", "explain_checked",
    "undo_requested", "undo_approved", "undo_started", "undo_finished", "rehearsal_started", "rehearsal_finished",
    "run_finished",
  ];

  // The lifecycle, in order; `always` stages show even before they happen.
  const STAGES = [
    { step: "rehearsal", label: "Rehearsal" },
    { step: "window", label: "Window", always: true },
    { step: "lock", label: "Lock", always: true },
    { step: "baseline", label: "Baseline", always: true },
    { step: "gate", label: "Low-traffic gate" },
    { step: "backup", label: "Backup", always: true },
    { step: "migrate", label: "Migrate", always: true },
    { step: "explain", label: "EXPLAIN gate" },
    { step: "soak", label: "Soak", always: true },
    { step: "rollback", label: "Rollback" },
    { step: "confirm", label: "Confirmation" },
  ];
  const FAILURES = new Set(["backup_failed", "migration_failed", "verify_failed", "rollback_failed", "gate_closed"]);

  const headEl = el("section", { class: "run-head", "aria-labelledby": "run-title" });
  const actionsEl = el("div", { class: "actions", id: "actions" });
  const actionResult = el("p", { id: "action-result", role: "status", class: "notice", hidden: true });
  const timelineEl = el("ol", { class: "timeline", id: "timeline" });
  const chartsEl = el("div", { class: "charts", id: "charts" });
  const noCharts = el("p", { class: "muted", id: "no-charts" }, "No soak samples yet.");
  const backupEl = el("div", { id: "backup" });
  const notifyEl = el("div", { id: "notifications" });
  const logEl = el("ol", { class: "log", id: "log" });
  const liveEl = el("span", { class: "live muted", id: "live", role: "status" });

  // What the on-call looks at first comes first: the run, what can be done
  // about it, the checks; then how it got here.
  fill(root,
    headEl,
    el("section", { "aria-label": "Actions" }, actionsEl, actionResult),
    el("section", { "aria-labelledby": "h-checks" }, el("h2", { id: "h-checks" }, "Soak checks ", liveEl), noCharts, chartsEl),
    el("div", { class: "two" },
      el("section", { "aria-labelledby": "h-timeline" }, el("h2", { id: "h-timeline" }, "Lifecycle"), timelineEl),
      el("div", {},
        el("section", { "aria-labelledby": "h-backup" }, el("h2", { id: "h-backup" }, "Backup"), backupEl),
        el("section", { "aria-labelledby": "h-notify" }, el("h2", { id: "h-notify" }, "Notifications and escalation"), notifyEl),
        el("section", { "aria-labelledby": "h-runbook" }, el("h2", { id: "h-runbook" }, "Runbook"),
          el("p", {}, el("a", { href: "/runs/" + id + "/runbook", id: "runbook-link" }, "The runbook of this run"),
            ": what changes, how to tell it is unhealthy, how to undo it by hand, who gets paged.")))),
    el("section", { "aria-labelledby": "h-log" }, el("h2", { id: "h-log" }, "Events"), logEl));

  let view = null;
  const events = [];
  let lastLogSeq = 0;
  const charts = new Map();
  let source = null;

  // ---- the run's view: header, actions, notifications --------------------

  async function loadView() {
    view = await api("GET", "/v1/runs/" + id);
    renderHead();
    renderActions();
    renderNotifications();
    renderTimeline();
    return view;
  }

  let viewTimer = null;
  function refreshViewSoon() {
    clearTimeout(viewTimer);
    viewTimer = setTimeout(() => loadView().catch(showError), 300);
  }

  function row(label, ...value) {
    return el("div", {}, el("dt", {}, label), el("dd", {}, ...value));
  }

  function renderHead() {
    const v = view;
    document.title = v.plan.name + " · run " + v.id + " · pgshepherd";
    const progress = v.progress && v.progress.samples_planned
      ? v.progress.samples_taken + " of " + v.progress.samples_planned + " samples, " + duration(v.progress.elapsed_ms)
      : null;
    fill(headEl,
      el("h1", { id: "run-title" }, el("span", { class: "plan-name" }, v.plan.name), " ", el("span", { class: "muted" }, "on "), el("span", { class: "target" }, v.target)),
      el("p", { class: "status-line" }, badge(v.phase), " ", v.outcome ? badge(v.outcome) : null, " ",
        el("span", { class: "muted" }, "state " + v.state.replace(/_/g, " ") + (v.step ? ", step " + v.step : ""))),
      v.reason ? el("p", { class: "reason notice" + (v.outcome === "succeeded" ? "" : " warn"), id: "run-reason" }, v.reason) : null,
      el("dl", { class: "facts" },
        row("Run", el("code", {}, v.id)),
        row("Plan file", el("code", {}, v.plan.path), v.plan.migration_set ? " · migrations " : "", v.plan.migration_set ? el("code", {}, v.plan.migration_set) : null),
        row("Submitted", v.submitted_by, " · ", timeEl(v.submitted_at)),
        v.rehearsal ? row("Rehearsal", rehearsalFacts(v.rehearsal)) : null,
        row("Approval", v.requires_approval ? (v.approved_by ? ["approved by ", v.approved_by, " · ", timeEl(v.approved_at)] : "required, not given yet") : "not required"),
        v.abort_requested_by ? row("Abort", "requested by ", v.abort_requested_by, " · ", timeEl(v.abort_requested_at)) : null,
        row("Acknowledged", v.acked_by ? [v.acked_by, " · ", timeEl(v.acked_at)] : "no"),
        v.started_at ? row("Started", timeEl(v.started_at)) : null,
        v.finished_at ? row("Finished", timeEl(v.finished_at)) : null,
        progress ? row("Soak", progress) : null,
        v.applied && v.applied.length ? row("Applied", v.applied.join(", ")) : null,
        v.owner ? row("Daemon", v.owner, " (epoch " + v.epoch + ")") : null));
  }

  // The rehearsal on a scratch copy (`rehearsal: required`): its status, its
  // result in words, and each difference the down scripts left.
  function rehearsalFacts(r) {
    const kind = r.status === "passed" ? "ok" : r.status === "failed" ? "failed" : r.status === "running" ? "running" : "pending";
    const parts = [badge(r.status, kind)];
    if (r.attempts > 1) parts.push(" attempt " + r.attempts);
    if (r.summary && r.status === "passed") parts.push(" ", r.summary);
    if (r.status === "failed") {
      const list = el("ul", { class: "differences", id: "rehearsal-differences" },
        (r.differences || []).map((d) => el("li", {}, d.message)));
      if (r.reason) list.append(el("li", {}, r.reason));
      parts.push(list);
    }
    return parts;
  }

  // ---- actions --------------------------------------------------------------

  // Re-rendered only when what decides them changes, and never under an open
  // confirmation (a live update must not pull a button from under a click).
  let actionsKey = null;
  let confirming = false;

  function renderActions(force) {
    const v = view;
    const rehearsal = v.rehearsal ? v.rehearsal.status : null;
    const key = JSON.stringify([v.phase, v.acked_by, v.submitted_by, !!v.started_at, rehearsal]);
    if (!force && (confirming || key === actionsKey)) return;
    actionsKey = key;
    confirming = false;
    const items = [];
    const mine = v.submitted_by === me.user;
    if (v.phase === "rehearsing" && rehearsal === "failed") {
      items.push(el("p", { class: "notice error", id: "rehearsal-failed" }, "The rehearsal failed, so this run cannot be approved: abort it, fix the down scripts and submit again."));
    } else if (v.phase === "rehearsing") {
      items.push(el("p", { class: "muted", id: "rehearsing" }, "Being rehearsed on a scratch copy (up, down, up): approval opens when it passes."));
    }
    if (v.phase === "pending_approval") {
      if (me.canApprove && !mine) {
        items.push(el("button", { type: "button", id: "approve", class: "primary", onclick: () => act("approve", "Approved.") }, "Approve"));
      } else if (me.canApprove && mine) {
        items.push(el("p", { class: "notice", id: "four-eyes" }, "You submitted this run: someone else with the approve role must approve it (four eyes)."));
      } else {
        items.push(el("p", { class: "muted", id: "awaiting-approval" }, "Waiting for approval by someone with the approve role."));
      }
    }
    if (v.phase !== "finished" && (me.canApprove || (me.canSubmit && mine))) {
      items.push(el("button", { type: "button", id: "abort", class: "danger", onclick: confirmAbort }, "Abort…"));
    }
    if ((me.canSubmit || me.canApprove) && !v.acked_by) {
      items.push(el("button", { type: "button", id: "ack", onclick: () => act("ack", "Acknowledged: escalation stopped.") }, "Acknowledge"));
    }
    fill(actionsEl, items);
  }

  function confirmAbort() {
    const before = !view.started_at;
    const dialog = el("div", { class: "confirm card", role: "group", "aria-labelledby": "abort-q", id: "abort-confirmation" },
      el("p", { id: "abort-q" }, el("strong", {}, "Abort this run? "),
        before ? "It has not started: it stops at once and changes nothing."
          : "Before the change it stops; during the change or the soak, the plan's rollback runs."),
      el("button", { type: "button", id: "abort-confirm", class: "danger", onclick: () => act("abort", "Abort requested.") }, "Yes, abort the run"),
      " ",
      el("button", { type: "button", id: "abort-cancel", onclick: () => { renderActions(true); document.getElementById("abort")?.focus(); } }, "Keep it running"));
    confirming = true;
    fill(actionsEl, dialog);
    document.getElementById("abort-cancel").focus();
  }

  async function act(action, done) {
    for (const b of actionsEl.querySelectorAll("button")) b.disabled = true;
    let outcome;
    try {
      // The answer is the run's view as the action left it.
      view = await api("POST", "/v1/runs/" + id + "/" + action);
      outcome = [done, "ok"];
    } catch (e) {
      outcome = [action + " refused (" + e.status + "): " + e.message, "error"];
      try {
        view = await api("GET", "/v1/runs/" + id);
      } catch (_) {
        // Keep the view we had.
      }
    }
    renderHead();
    renderActions(true);
    renderNotifications();
    say(...outcome);
  }

  function say(text, kind) {
    actionResult.className = "notice " + kind;
    fill(actionResult, text);
    actionResult.hidden = false;
  }

  // ---- timeline ------------------------------------------------------------

  function renderTimeline() {
    const finished = events.find((e) => e.event === "run_finished");
    const byStep = new Map();
    for (const e of events) {
      // A daemon's rehearsal (before approval) has no step of the run's own.
      const step = e.step || (e.event.startsWith("rehearsal_") ? "rehearsal" : null);
      if (!step) continue;
      if (!byStep.has(step)) byStep.set(step, []);
      byStep.get(step).push(e);
    }
    // A healthy confirmation writes only samples, which the log leaves out:
    // it ran from the end of the rollback to the end of the run.
    const rolledBack = events.find((e) => e.event === "rollback_finished");
    if (rolledBack && !byStep.has("confirm") && (finished || (view && view.step === "confirm"))) {
      byStep.set("confirm", [rolledBack, finished].filter(Boolean).map((e) => ({ ts: e.ts, event: "confirm", step: "confirm" })));
    }
    const reached = STAGES.map((s) => byStep.has(s.step));
    const lastReached = reached.lastIndexOf(true);
    const items = [];
    STAGES.forEach((s, i) => {
      const evs = byStep.get(s.step) || [];
      if (!evs.length && !s.always) return;
      let state;
      if (!evs.length) state = finished ? "skipped" : "pending";
      else if (evs.some((e) => FAILURES.has(e.event) || ((e.event === "soak_finished" || e.event === "rehearsal_finished") && !e.passed) || e.event === "check_verdict")) state = "failed";
      else if (s.step === "confirm" && finished && finished.outcome !== "rolled_back") state = "failed";
      else if (i < lastReached || finished) state = "done";
      else state = "running";
      const first = evs[0];
      const last = evs[evs.length - 1];
      const span = first && last && last !== first ? duration(new Date(last.ts) - new Date(first.ts)) : "";
      items.push(el("li", { class: "stage s-" + state, "data-step": s.step, "data-state": state },
        badge(stateWord(state, s.step), state === "failed" ? "failed" : state),
        el("span", { class: "stage-name" }, s.label),
        first ? el("span", { class: "stage-time" }, timeEl(first.ts, clock(first.ts)), span ? " · " + span : "") : null,
        stageNote(s.step, evs)));
    });
    items.push(el("li", { class: "stage s-" + (finished ? "outcome" : "pending"), "data-step": "outcome", "data-state": finished ? finished.outcome : "pending" },
      finished ? badge(finished.outcome) : badge("pending"),
      el("span", { class: "stage-name" }, "Outcome"),
      finished ? el("span", { class: "stage-time" }, timeEl(finished.ts, clock(finished.ts))) : null,
      finished && finished.reason ? el("span", { class: "stage-note" }, finished.reason) : null));
    fill(timelineEl, items);
  }

  function stateWord(state, step) {
    if (state === "failed" && step === "soak") return "breach";
    return state === "running" ? "in progress" : state;
  }

  function stageNote(step, evs) {
    const last = evs[evs.length - 1];
    if (!last) return null;
    const note = (t) => el("span", { class: "stage-note" }, t);
    switch (step) {
      case "rehearsal": {
        const f = evs.find((e) => e.event === "rehearsal_finished");
        if (!f) return note("on a scratch copy, attempt " + last.attempt);
        if (f.passed) return note("up, down, up: catalog identical");
        const n = (f.differences || []).length;
        return note(n ? n + " difference" + (n === 1 ? "" : "s") + " after the down scripts" : f.reason || "did not pass");
      }
      case "window": {
        const w = evs.find((e) => e.event === "waiting_for_window");
        return w ? note("opens " + PG.time(w.opens_at) + " (" + w.cron + ", " + w.timezone + ")") : null;
      }
      case "lock": {
        const a = evs.find((e) => e.event === "lock_acquired");
        return a ? note("waited " + duration(a.waited_ms)) : note("busy");
      }
      case "migrate": {
        const applied = evs.filter((e) => e.event === "migration_applied").map((e) => "V" + e.version);
        return applied.length ? note("applied " + applied.join(", ")) : null;
      }
      case "soak": {
        const f = evs.find((e) => e.event === "soak_finished");
        const v = evs.find((e) => e.event === "check_verdict");
        if (v) return note(v.message);
        return f ? note(f.passed ? "passed" : f.reason || "did not pass") : null;
      }
      case "rollback": {
        const f = evs.find((e) => e.event === "rollback_finished" || e.event === "rollback_failed");
        return f ? note(f.event === "rollback_failed" ? f.reason : "back at the starting version: " + (f.at_starting_version ? "yes" : "no")) : null;
      }
      default:
        return null;
    }
  }

  // ---- backup --------------------------------------------------------------

  function renderBackup() {
    const written = events.filter((e) => e.event === "backup_written").pop();
    const verified = events.filter((e) => e.event === "backup_verified").pop();
    const failed = events.filter((e) => e.event === "backup_failed").pop();
    const restored = events.filter((e) => e.event === "backup_restored").pop();
    if (!written && !failed) {
      fill(backupEl, el("p", { class: "muted" }, events.some((e) => e.step === "migrate")
        ? "No backup was taken: the plan has backups disabled."
        : "No backup yet."));
      return;
    }
    const rows = [];
    if (written) {
      rows.push(row("File", el("code", {}, written.path)));
      rows.push(row("Size", bytes(written.size_bytes)));
      rows.push(row("sha256", el("code", { class: "hash" }, written.sha256)));
    }
    rows.push(row("Verified", verified
      ? [badge("verified", "ok"), " read back in full, " + verified.tables + " tables, " + duration(verified.duration_ms)]
      : failed ? [badge("failed"), " ", failed.reason] : [badge("pending"), " not yet"]));
    if (restored) rows.push(row("Restored", timeEl(restored.ts), " · " + duration(restored.duration_ms)));
    fill(backupEl, el("dl", { class: "facts narrow" }, rows));
  }

  // ---- notifications and escalation ----------------------------------------

  function renderNotifications() {
    const v = view;
    const parts = [];
    const esc = v.escalation;
    if (esc) {
      parts.push(el("p", { id: "escalation" }, el("strong", {}, "Escalation "), esc.policy, " (", esc.trigger.replace(/_/g, " "), "): ",
        badge(esc.status, esc.status === "active" ? "needs_human" : esc.status === "acknowledged" ? "ok" : "stopped"),
        esc.status === "active" ? [" next: level " + esc.next_level + " ", timeEl(esc.next_at)] : "",
        esc.acked_by ? [" by " + esc.acked_by + " ", timeEl(esc.acked_at)] : "",
        esc.paged.length ? " · paged: " + esc.paged.join(", ") : ""));
    } else {
      parts.push(el("p", { class: "muted" }, "No escalation."));
    }
    if (v.notifications.length) {
      parts.push(el("table", { class: "notifications" },
        el("thead", {}, el("tr", {}, ["When", "Channel", "Notice", "Status"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, v.notifications.map((n) => el("tr", {},
          el("td", {}, timeEl(n.created_at, clock(n.created_at))),
          el("td", {}, n.channel),
          el("td", {}, el("span", { class: "sev sev-" + n.severity }, n.severity), " ", n.title),
          el("td", {}, badge(n.status, n.status === "delivered" ? "ok" : n.status === "pending" ? "pending" : "failed"),
            n.attempts > 1 ? " ×" + n.attempts : "",
            n.last_error ? el("div", { class: "reason" }, n.last_error) : null))))));
    } else {
      parts.push(el("p", { class: "muted" }, "No notifications."));
    }
    fill(notifyEl, parts);
  }

  // ---- the events log ------------------------------------------------------

  function describe(e) {
    switch (e.event) {
      case "run_submitted": return "submitted by " + e.submitted_by + (e.requires_approval ? "; needs approval" : "");
      case "run_approved": return "approved by " + e.approved_by;
      case "abort_requested": return "abort requested by " + e.requested_by;
      case "acknowledged": return "acknowledged by " + e.acked_by;
      case "run_resumed": return "taken by " + e.owner + " (epoch " + e.epoch + ") from " + e.from_state;
      case "run_started": return "plan " + e.plan_name + " on " + e.target + "; pending " + (e.pending || []).join(", ");
      case "waiting_for_window": return "window opens " + e.opens_at;
      case "window_open": return e.closes_at ? "window open until " + e.closes_at : "window open";
      case "lock_acquired": return "lock acquired after " + duration(e.waited_ms);
      case "baseline_measured": return e.check + " baseline " + num(e.baseline) + " (" + e.valid_samples + " valid samples)";
      case "backup_written": return e.path + " · " + bytes(e.size_bytes) + " · sha256 " + e.sha256;
      case "backup_verified": return "read back in full: " + e.tables + " tables, sha256 " + e.sha256;
      case "migration_started": return "V" + e.version + " " + e.file;
      case "migration_applied": return "V" + e.version + " applied in " + duration(e.duration_ms);
      case "soak_started": return "soak " + duration(e.duration_s * 1000) + " every " + duration(e.interval_s * 1000) + ": " + e.checks.map((c) => c.check).join(", ");
      case "check_verdict": return e.message + " → " + e.decision.replace(/_/g, " ");
      case "soak_finished": return e.passed ? "passed after " + duration(e.elapsed_s * 1000) : "did not pass: " + (e.reason || "");
      case "rollback_started": return "rollback (" + e.strategy + "): " + e.cause;
      case "rollback_finished": return "rolled back; at the starting version: " + (e.at_starting_version ? "yes" : "no");
      case "run_finished": return e.outcome.replace(/_/g, " ") + (e.reason ? ": " + e.reason : "");
      default: {
        // Everything else: its plain fields, as text.
        const skip = new Set(["ts", "run_id", "event", "step", "seq"]);
        return Object.entries(e)
          .filter(([k, v]) => !skip.has(k) && v !== null && typeof v !== "object")
          .map(([k, v]) => k + " " + v)
          .join(" · ");
      }
    }
  }

  function logItem(e) {
    const failed = FAILURES.has(e.event) || e.event === "check_verdict" || (e.event === "soak_finished" && !e.passed);
    return el("li", { "data-seq": e.seq, "data-event": e.event, class: failed ? "bad" : "" },
      timeEl(e.ts, clock(e.ts)), " ",
      e.step ? el("span", { class: "step" }, e.step) : null, " ",
      el("span", { class: "event-name" }, e.event.replace(/_/g, " ")), " ",
      el("span", { class: "event-text" }, describe(e)));
  }

  function addEvent(e) {
    if (e.seq <= lastLogSeq) return false;
    lastLogSeq = e.seq;
    events.push(e);
    logEl.appendChild(logItem(e));
    return true;
  }

  async function loadLog() {
    let after = 0;
    for (;;) {
      const page = await api("GET", "/v1/runs/" + id + "/events?exclude=check_sample&limit=1000&after=" + after);
      page.forEach(addEvent);
      if (page.length < 1000) break;
      after = page[page.length - 1].seq;
    }
  }

  // ---- charts ----------------------------------------------------------------

  function soakStarted() {
    return events.find((e) => e.event === "soak_started" && e.step === "soak");
  }

  function soakOver() {
    return events.some((e) => (e.event === "soak_finished" && e.step === "soak") || e.event === "rollback_started" || e.event === "run_finished");
  }

  function markSoakOver() {
    const over = soakOver();
    for (const c of charts.values()) c.setEnded(over);
  }

  function chartFor(name, info) {
    let c = charts.get(name);
    if (!c) {
      const plan = (soakStarted()?.checks || []).find((p) => p.check === name) || {};
      c = new PGChart.Chart(Object.assign({
        check: name, source: plan.source, baseline: plan.baseline, consecutive: plan.consecutive,
        soak_duration_s: soakStarted()?.duration_s, points: [], samples: 0, through: 0,
      }, info || {}));
      c.setEnded(soakOver());
      charts.set(name, c);
      chartsEl.appendChild(c.root);
      noCharts.hidden = true;
    } else if (info) {
      c.update(info);
    }
    return c;
  }

  async function loadSeries(name) {
    let s;
    try {
      s = await api("GET", "/v1/runs/" + id + "/checks/" + encodeURIComponent(name) + "/series?points=" + SERIES_POINTS);
    } catch (e) {
      showError(e);
      return;
    }
    const c = chartFor(name, s);
    c.through = Math.max(c.through, s.through);
    c.setPoints(s.points, s);
  }

  // A page left open on a long soak appends every live sample: once a chart
  // holds twice what the server sends, it is fetched again, thinned there.
  const rethinning = new Set();
  function rethinIfLong(name) {
    const c = chartFor(name);
    if (c.points.length <= 2 * SERIES_POINTS || rethinning.has(name)) return;
    rethinning.add(name);
    loadSeries(name).finally(() => rethinning.delete(name));
  }

  // ---- live ------------------------------------------------------------------

  function onEvent(e) {
    if (e.event === "check_sample") {
      if (e.step === "soak") {
        chartFor(e.check).addSample(e);
        rethinIfLong(e.check);
      }
      return;
    }
    if (!addEvent(e)) return;
    if (e.event === "soak_started" && e.step === "soak") {
      for (const c of e.checks) chartFor(c.check, { source: c.source, baseline: c.baseline, consecutive: c.consecutive, soak_duration_s: e.duration_s });
    }
    if (e.event === "check_verdict" && e.step === "soak") chartFor(e.check).setVerdict(e.message, e.decision);
    renderTimeline();
    renderBackup();
    markSoakOver();
    refreshViewSoon();
    if (e.event === "run_finished") stopLive("finished");
  }

  function startLive(after) {
    source = new EventSource("/v1/runs/" + id + "/events?after=" + after);
    const handle = (m) => {
      try {
        onEvent(JSON.parse(m.data));
      } catch (err) {
        console.error("bad event", err);
      }
    };
    for (const name of EVENT_NAMES) source.addEventListener(name, handle);
    source.addEventListener("open", () => fill(liveEl, "● live"));
    source.addEventListener("error", async (m) => {
      if (m.data) banner("The event stream failed: " + JSON.parse(m.data).error, "error");
      if (source.readyState === EventSource.CLOSED) {
        // Refused (the session ended?) rather than dropped: ask the API why.
        fill(liveEl, "not live");
        await loadView().catch(showError);
      } else {
        fill(liveEl, "reconnecting…");
      }
    });
  }

  function stopLive(why) {
    if (source) source.close();
    source = null;
    fill(liveEl, why === "finished" ? "" : "not live");
  }

  function showError(e) {
    if (e.status !== 401) banner("Could not load the run: " + e.message, "error");
  }

  async function start() {
    await loadView();
    const since = view.last_seq;
    await loadLog();
    // Soak checks only (a gate or a confirmation samples too).
    const names = new Set((soakStarted()?.checks || []).map((c) => c.check));
    for (const c of view.checks.filter((c) => c.step === "soak")) names.add(c.check);
    // Placed in the plan's order first, whichever series answers first.
    for (const name of names) chartFor(name);
    await Promise.all([...names].map(loadSeries));
    renderTimeline();
    renderBackup();
    if (view.phase !== "finished") startLive(since);
    // For benches/web.sh: the page is drawn (view, log, every chart).
    performance.mark("pgshepherd:loaded");
    root.dataset.loaded = "true";
  }

  start().catch(showError);
})();
