// The runs list: newest first, filtered by phase and target (kept in the
// page's URL so a filtered view can be shared), refreshed every few seconds
// from GET /v1/runs.
"use strict";

(() => {
  const { el, fill, api, badge, age, timeEl, banner } = PG;
  const REFRESH_MS = 5000;
  const PHASES = [
    ["", "every phase"],
    ["open", "open (not finished)"],
    ["rehearsing", "rehearsing"],
    ["pending_approval", "pending approval"],
    ["queued", "queued"],
    ["active", "active"],
    ["finished", "finished"],
  ];

  const root = document.getElementById("runs");
  const params = new URLSearchParams(location.search);

  const phase = el("select", { id: "f-phase", name: "phase" },
    PHASES.map(([v, label]) => el("option", { value: v, selected: params.get("phase") === v }, label)));
  const target = el("input", { id: "f-target", name: "target", type: "search", value: params.get("target") || "", placeholder: "any target", spellcheck: "false" });
  const status = el("span", { class: "muted", id: "runs-updated", role: "status" });
  const filters = el("form", { class: "filters", role: "search", onsubmit: (e) => { e.preventDefault(); apply(); } },
    el("label", { for: "f-phase" }, "Phase"), phase,
    el("label", { for: "f-target" }, "Target"), target,
    el("button", { type: "submit" }, "Filter"),
    status);
  phase.addEventListener("change", apply);

  const tbody = el("tbody");
  const table = el("table", { class: "runs", id: "runs-table" },
    el("caption", { class: "visually-hidden" }, "Runs, newest first"),
    el("thead", {}, el("tr", {},
      ["Run", "Plan", "Target", "Phase", "Step", "Submitted by", "Age", "Outcome"].map((h) => el("th", { scope: "col" }, h)))),
    tbody);
  const empty = el("p", { class: "muted", hidden: true, id: "runs-empty" }, "No runs match.");
  fill(root, filters, table, empty);

  function apply() {
    const p = new URLSearchParams();
    if (phase.value) p.set("phase", phase.value);
    if (target.value.trim()) p.set("target", target.value.trim());
    const q = p.toString();
    history.replaceState(null, "", q ? "?" + q : location.pathname);
    refresh();
  }

  function row(run) {
    const outcome = run.outcome ? badge(run.outcome) : el("span", { class: "muted" }, "—");
    return el("tr", { "data-run": run.id },
      el("td", {}, el("a", { href: "/runs/" + encodeURIComponent(run.id), class: "run-link" }, el("code", {}, run.id))),
      el("td", { class: "plan" }, run.plan.name),
      el("td", {}, run.target),
      el("td", {}, badge(run.phase)),
      el("td", {}, run.step || "—"),
      el("td", {}, run.submitted_by),
      el("td", {}, timeEl(run.submitted_at, age(run.submitted_at))),
      el("td", {}, outcome, run.reason ? el("div", { class: "reason" }, run.reason) : null));
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    const p = new URLSearchParams(location.search);
    p.set("limit", "200");
    try {
      const data = await api("GET", "/v1/runs?" + p.toString());
      fill(tbody, data.runs.map(row));
      empty.hidden = data.runs.length > 0;
      fill(status, "updated " + PG.clock(new Date().toISOString()));
      banner(null);
    } catch (e) {
      if (e.status !== 401) banner("Could not load the runs: " + e.message, "error");
      if (e.status === 401) return;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  refresh();
})();
