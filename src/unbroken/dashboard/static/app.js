// unbroken dashboard: live regions by polling, charts on <canvas>, confirmations.
// No dependencies and no build step. The server renders everything; this script only
// swaps the regions marked data-live with fresh copies of the same page, and draws charts
// from the JSON the page carries.
(() => {
  "use strict";

  const body = document.body;
  const pollMs = Number(body.dataset.pollMs) || 3000;
  const live = document.getElementById("live");

  // --- charts ---------------------------------------------------------------------------
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function fmtNum(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(v >= 1e4 ? 0 : 1) + "k";
    return String(Math.round(v * 10) / 10);
  }

  function fmtTime(iso, spanS) {
    const d = new Date(iso);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return spanS > 36 * 3600 ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + hm : hm;
  }

  function chartData(canvas) {
    const source = document.getElementById(canvas.dataset.source);
    try {
      return source ? JSON.parse(source.textContent) : null;
    } catch (e) {
      return null;
    }
  }

  function draw(canvas) {
    const data = chartData(canvas);
    if (!data) return;
    const rect = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(rect.width * dpr));
    canvas.height = Math.max(1, Math.round(rect.height * dpr));
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const w = rect.width, h = rect.height;
    ctx.clearRect(0, 0, w, h);

    const pts = data.points || [];
    const kind = canvas.dataset.chart;
    const pad = { l: 44, r: 10, t: 10, b: 24 };
    const iw = w - pad.l - pad.r, ih = h - pad.t - pad.b;
    const n = Math.max(pts.length, 1);
    const step = iw / n;
    const colors = { line: cssVar("--line"), muted: cssVar("--muted"), ok: cssVar("--ok"), bad: cssVar("--bad") };
    // Failure rate scales to its peak (at least 5 %), so a small rate is still readable.
    const peakRate = Math.max(0, ...pts.map((p) => (p.ok + p.failed ? p.failed / (p.ok + p.failed) : 0)));
    const max = kind === "failure"
      ? [0.04, 0.08, 0.2, 0.4, 0.6, 0.8, 1].find((m) => m >= peakRate) || 1 // round quarters
      : niceMax(Math.max(0, ...pts.map((p) => p.ok + p.failed)));

    // Grid and y labels.
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const y = Math.round(pad.t + ih - (ih * i) / 4) + 0.5;
      ctx.strokeStyle = colors.line;
      ctx.beginPath();
      ctx.moveTo(pad.l, y);
      ctx.lineTo(w - pad.r, y);
      ctx.stroke();
      ctx.fillStyle = colors.muted;
      const v = (max * i) / 4;
      ctx.fillText(kind === "failure" ? +(v * 100).toFixed(1) + "%" : fmtNum(v), pad.l - 8, y);
    }
    // X labels: start, middle, end.
    if (pts.length) {
      const span = (new Date(pts[pts.length - 1].t) - new Date(pts[0].t)) / 1000;
      ctx.textBaseline = "top";
      [[0, "left"], [Math.floor(pts.length / 2), "center"], [pts.length - 1, "right"]].forEach(([i, align]) => {
        ctx.textAlign = align;
        const x = align === "left" ? pad.l : align === "right" ? w - pad.r : pad.l + i * step + step / 2;
        ctx.fillText(fmtTime(pts[i].t, span), x, pad.t + ih + 7);
      });
    }

    if (kind === "failure") {
      // Area and line; no point where nothing finished (a gap, not a zero).
      const xy = pts.map((p, i) => {
        const done = p.ok + p.failed;
        return done ? [pad.l + i * step + step / 2, pad.t + ih - (ih * p.failed) / done / max] : null;
      });
      const runs = [];
      let run = [];
      xy.forEach((q) => { if (q) run.push(q); else if (run.length) { runs.push(run); run = []; } });
      if (run.length) runs.push(run);
      for (const r of runs) {
        ctx.beginPath();
        ctx.moveTo(r[0][0], pad.t + ih);
        r.forEach(([x, y]) => ctx.lineTo(x, y));
        ctx.lineTo(r[r.length - 1][0], pad.t + ih);
        ctx.closePath();
        ctx.globalAlpha = 0.15;
        ctx.fillStyle = colors.bad;
        ctx.fill();
        ctx.globalAlpha = 1;
        ctx.beginPath();
        r.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
        ctx.strokeStyle = colors.bad;
        ctx.lineWidth = 2;
        ctx.lineJoin = "round";
        ctx.stroke();
        if (r.length === 1) {
          ctx.fillStyle = colors.bad;
          ctx.fillRect(r[0][0] - 2, r[0][1] - 2, 4, 4);
        }
      }
    } else {
      // Stacked bars: succeeded below, failed on top.
      const bw = Math.max(1, step * 0.72);
      pts.forEach((p, i) => {
        const x = pad.l + i * step + (step - bw) / 2;
        const hOk = (ih * p.ok) / max, hBad = (ih * p.failed) / max;
        ctx.fillStyle = colors.ok;
        ctx.fillRect(x, pad.t + ih - hOk, bw, hOk);
        ctx.fillStyle = colors.bad;
        ctx.fillRect(x, pad.t + ih - hOk - hBad, bw, hBad);
      });
    }
    canvas._geom = { pts, pad, step, kind };
    canvas.dataset.rendered = String(pts.length);
  }

  function drawAll() {
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  }

  function tooltip(e) {
    const canvas = e.target;
    const g = canvas._geom;
    const tip = canvas.parentElement.querySelector(".tip");
    if (!g || !tip) return;
    const rect = canvas.getBoundingClientRect();
    const i = Math.floor((e.clientX - rect.left - g.pad.l) / g.step);
    const p = g.pts[i];
    if (!p) { tip.hidden = true; return; }
    const done = p.ok + p.failed;
    const when = new Date(p.t).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    tip.textContent = g.kind === "failure"
      ? `${when} · ${done ? ((100 * p.failed) / done).toFixed(1) + "% of " + done : "no attempts"}`
      : `${when} · ${p.ok} ok · ${p.failed} failed${p.dead ? " · " + p.dead + " dead" : ""}`;
    tip.hidden = false;
    const x = Math.min(e.clientX - rect.left + 12, rect.width - tip.offsetWidth - 4);
    tip.style.left = Math.max(0, x) + "px";
    tip.style.top = "4px";
  }

  document.addEventListener("mousemove", (e) => {
    if (e.target instanceof HTMLCanvasElement && e.target.dataset.chart) tooltip(e);
  });
  document.addEventListener("mouseout", (e) => {
    if (e.target instanceof HTMLCanvasElement) {
      const tip = e.target.parentElement.querySelector(".tip");
      if (tip) tip.hidden = true;
    }
  });

  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawAll, 120);
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", drawAll);

  // --- live regions ---------------------------------------------------------------------
  let busy = false;

  function keepOpenDetails(from, to) {
    const was = from.querySelectorAll("details");
    to.querySelectorAll("details").forEach((d, i) => {
      if (was[i]) d.open = was[i].open;
    });
  }

  async function refresh() {
    const regions = document.querySelectorAll("[data-live][id]");
    if (!regions.length || busy || document.hidden) return;
    busy = true;
    try {
      const res = await fetch(location.href, {
        headers: { "X-Unbroken-Poll": "1" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (!res.ok) throw new Error("HTTP " + res.status);
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      let charts = false;
      regions.forEach((el) => {
        // Leave alone a region the user is typing or clicking in.
        if (el.contains(document.activeElement) && document.activeElement !== body) return;
        const fresh = doc.getElementById(el.id);
        if (!fresh || fresh.innerHTML === el.innerHTML) return;
        keepOpenDetails(el, fresh);
        el.replaceWith(fresh);
        if (fresh.matches("script[type='application/json']")) charts = true;
      });
      if (charts) drawAll();
      if (live) {
        live.classList.remove("stale", "pulse");
        void live.offsetWidth; // restart the pulse animation
        live.classList.add("pulse");
        live.title = "Live: updated " + new Date().toLocaleTimeString();
      }
    } catch (err) {
      if (live) {
        live.classList.add("stale");
        live.title = "Not updating: " + err.message;
      }
    } finally {
      busy = false;
    }
  }

  setInterval(refresh, pollMs);
  document.addEventListener("visibilitychange", () => {
    if (live) live.classList.toggle("paused", document.hidden);
    if (!document.hidden) refresh();
  });

  // --- confirmations for single actions (bulk ones have their own page) ------------------
  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      e.preventDefault();
    }
  });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", drawAll);
  else drawAll();
})();
