// pgshepherd web page: what every page's script shares.
//
// Rules every script here follows:
// - data from the API (plan, check and target names, reasons, SQL, messages)
//   only ever enters the page as text: el() appends strings as text nodes and
//   sets attributes with setAttribute; nothing assigns innerHTML;
// - the page only hides what the caller's roles cannot do; the API decides
//   (roles, four eyes) and its refusal is shown as it comes;
// - requests that change something carry the session's CSRF token.
"use strict";

const PG = (() => {
  const body = document.body;
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const me = {
    user: body.dataset.user || "",
    canApprove: body.dataset.canApprove === "true",
    canSubmit: body.dataset.canSubmit === "true",
  };

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    return build(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  function build(node, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") {
        node.addEventListener(k.slice(2), v);
      } else if (k === "class" && !(node instanceof SVGElement)) {
        node.className = v;
      } else {
        node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  // Replace node's children.
  function fill(node, ...children) {
    return append(clear(node), children);
  }

  // One message line at the top of <main>, for the session or the connection.
  function banner(text, kind) {
    let b = document.getElementById("banner");
    if (!b) {
      b = el("p", { id: "banner", role: "status" });
      document.getElementById("main").prepend(b);
    }
    b.className = "notice " + (kind || "");
    if (text) {
      fill(b, text);
      b.hidden = false;
    } else {
      b.hidden = true;
    }
  }

  // The session ended (expired, signed out elsewhere, daemon restarted): say
  // so, with the way back to this very page.
  function signedOut() {
    banner("Your session has ended (it expired, you signed out elsewhere, or the daemon restarted). ", "error");
    const back = "/signin?next=" + encodeURIComponent(location.pathname + location.search);
    append(document.getElementById("banner"), [el("a", { href: back, id: "signin-again" }, "Sign in again"), "."]);
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // Call the API with the session cookie: the answer's JSON, or an ApiError
  // with the API's own message.
  async function api(method, path) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrfMeta ? csrfMeta.content : "";
    let r;
    try {
      r = await fetch(path, { method, headers, credentials: "same-origin", cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, "the daemon did not answer (" + e.message + ")");
    }
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (r.status === 401) signedOut();
    if (!r.ok) {
      throw new ApiError(r.status, (data && data.error) || "HTTP " + r.status);
    }
    return data;
  }

  // Formatting. Times are shown in the browser's zone, with the UTC instant
  // in the element's title.
  function time(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  }

  function clock(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleTimeString(undefined, { hour12: false });
  }

  function timeEl(iso, text) {
    if (!iso) return el("span", { class: "muted" }, "—");
    return el("time", { datetime: iso, title: iso }, text || time(iso));
  }

  function duration(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "";
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m " + (s % 60) + "s";
    const h = Math.floor(m / 60);
    if (h < 48) return h + "h " + (m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }

  function age(iso) {
    if (!iso) return "";
    return duration(Date.now() - new Date(iso).getTime()) + " ago";
  }

  function num(v) {
    if (v === null || v === undefined) return "—";
    if (!isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
    return String(Math.round(v * 1000) / 1000);
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? v : v.toFixed(1)) + " " + units[i] + (i ? " (" + n.toLocaleString() + " bytes)" : "");
  }

  // A status word with a shape as well as a colour (never colour alone).
  const SHAPES = {
    succeeded: "✓", rolled_back: "↺", needs_human: "!", stopped: "■",
    rehearsing: "⟲", pending_approval: "…", queued: "◷", active: "▶", finished: "●",
    ok: "✓", breach: "▲", inconclusive: "◇", failed: "✕", pending: "○", done: "✓", running: "▶", skipped: "–",
  };

  function badge(word, kind) {
    const k = kind || word;
    return el("span", { class: "badge b-" + k }, el("span", { "aria-hidden": "true" }, SHAPES[k] || "•"), " ", String(word).replace(/_/g, " "));
  }

  return { me, el, svg, append, clear, fill, banner, signedOut, api, ApiError, time, clock, timeEl, duration, age, num, bytes, badge };
})();
