"""The HTML report's stylesheet and script, inlined into every page (no network at view time).

The script reads the report from ``<script id="report-data" type="application/json">`` and
builds the page with ``createElement`` and ``textContent`` only, so no logged value is ever
parsed as markup. Charts are SVG drawn here; each has an id and its marks a class, which the
browser test counts.
"""

from __future__ import annotations

CSS = """
:root { --ok: #2e7d32; --bad: #ef6c00; --err: #c62828; --prim: #1565c0; --cand: #8e24aa;
  --sec: #00897b; --line: #ddd; --muted: #666; --bg: #fafafa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
  color: #222; background: var(--bg); }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.muted { color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 14px 0; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 14px; min-width: 150px; }
.card .value { font-size: 20px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; }
.chart { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
.chart svg { display: block; width: 100%; height: auto; }
.chart text { font-size: 11px; fill: #333; }
.legend { display: flex; gap: 16px; flex-wrap: wrap; font-size: 12px; margin: 4px 8px; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px;
  border-radius: 2px; vertical-align: middle; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left;
  vertical-align: top; }
th { background: #f0f0f0; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
details.endpoint { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  margin: 6px 0; }
details.endpoint > summary { cursor: pointer; padding: 8px 12px; display: grid;
  grid-template-columns: minmax(200px, 1fr) repeat(5, 110px); gap: 8px; align-items: center; }
details.endpoint > summary .name { font-family: ui-monospace, monospace; word-break: break-all; }
details.endpoint > .body { padding: 4px 16px 16px; }
.rate-ok { color: var(--ok); } .rate-warn { color: var(--bad); } .rate-bad { color: var(--err); }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
pre { white-space: pre-wrap; word-break: break-all; margin: 0; }
.example { border: 1px solid var(--line); border-radius: 6px; margin: 10px 0; padding: 8px; }
.example-head { margin-bottom: 6px; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.side { border: 1px solid var(--line); border-radius: 4px; padding: 6px 8px; }
.side h4 { margin: 0 0 4px; font-size: 13px; }
.side.primary h4 { color: var(--prim); } .side.candidate h4 { color: var(--cand); }
tr.kind-changed td.val { background: #fff3cd; }
tr.kind-added td.val.cand, tr.kind-removed td.val.prim { background: #ffe0e0; }
tr.kind-added td.val.prim, tr.kind-removed td.val.cand { background: #f3f3f3; }
tr.kind-type td.val { background: #e3f2fd; }
.diff-add { background: #e6ffed; display: block; }
.diff-del { background: #ffeef0; display: block; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11px;
  color: #fff; background: var(--muted); }
.badge.mismatch { background: var(--bad); } .badge.candidate_error { background: var(--err); }
select { font: inherit; padding: 2px 4px; }
"""

JS = r"""
"use strict";
(function () {
  const SVGNS = "http://www.w3.org/2000/svg";
  const STATE_KEY = "shadowproxy-report-state";
  const MAX_CHART_ENDPOINTS = 40;
  // SVG presentation attributes take no CSS variables, hence literal colours.
  const C = {ok: "#2e7d32", bad: "#ef6c00", err: "#c62828", prim: "#1565c0", cand: "#8e24aa",
             sec: "#00897b", none: "transparent"};
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const root = document.getElementById("report");

  function put(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of (children || []).flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const el = (tag, attrs, ...children) => put(document.createElement(tag), attrs, children);
  const sv = (tag, attrs, ...children) =>
    put(document.createElementNS(SVGNS, tag), attrs, children);

  function num(n) { return n === null || n === undefined ? "-" : n.toLocaleString("en-US"); }
  function pct(r) {
    if (r === null || r === undefined) return "-";
    if (r === 0 || r === 1) return (r * 100).toFixed(0) + "%";
    if (r >= 0.001 && r <= 0.999) return (r * 100).toFixed(2) + "%";
    // Only a rate of exactly 1 is 100%: 99.9999% is shown as 99.999%, not rounded up.
    if (r > 0.999) return Math.min(r * 100, 99.999).toFixed(3) + "%";
    return (r * 100).toPrecision(3) + "%";
  }
  function ms(v) {
    if (v === null || v === undefined) return "-";
    return v < 100 ? v.toPrecision(3) : Math.round(v).toLocaleString("en-US");
  }
  function ratio(v) { return v === null || v === undefined ? "-" : v.toFixed(2) + "x"; }
  function shown(holder, side) {
    const text = holder[side + "_text"];
    if (text !== undefined && !text.startsWith("{") && !text.startsWith("[")) return text;
    const value = holder[side];
    if (value === undefined) return "";
    return typeof value === "string" ? JSON.stringify(value) : JSON.stringify(value, null, 1);
  }
  function rateClass(report) {
    if (!report.compared) return "muted";
    const bad = (report.mismatches + report.candidate_errors) / report.compared;
    return bad === 0 ? "rate-ok" : bad < 0.01 ? "rate-warn" : "rate-bad";
  }
  function swatch(color) {
    const s = el("span", {class: "swatch"});
    s.style.background = color;
    return s;
  }

  function header() {
    const w = data.window, input = data.input;
    const lines = [el("h1", {text: "shadowproxy report"})];
    const span = w.first ? `${w.first} to ${w.last}` : "no exchanges";
    lines.push(el("div", {class: "muted", text:
      `${num(input.exchanges)} exchanges, ${span}; generated ${data.generated_at}`}));
    const filters = [];
    if (w.since) filters.push(`since ${w.since}`);
    if (w.until) filters.push(`until ${w.until}`);
    if (w.endpoints.length) filters.push(`endpoints ${w.endpoints.join(", ")}`);
    if (filters.length) {
      lines.push(el("div", {class: "muted", text: "filters: " + filters.join("; ")}));
    }
    if (input.sources.length) {
      lines.push(el("div", {class: "muted mono", text: "logs: " + input.sources.join(", ")}));
    }
    const skipped = [];
    if (input.corrupted) skipped.push(`${num(input.corrupted)} corrupted lines`);
    if (input.invalid) skipped.push(`${num(input.invalid)} invalid records`);
    if (input.filtered_out) skipped.push(`${num(input.filtered_out)} filtered out`);
    if (skipped.length) {
      lines.push(el("div", {class: "rate-warn", text: "skipped: " + skipped.join(", ")}));
    }
    return lines;
  }

  function cards() {
    const o = data.overall, lat = o.latency_ms;
    const card = (value, label, cls) =>
      el("div", {class: "card"}, el("div", {class: "value " + (cls || ""), text: value}),
         el("div", {class: "label", text: label}));
    return el("div", {class: "cards", id: "overall"},
      card(num(o.compared), "compared"),
      card(pct(o.match_rate), "match rate", rateClass(o)),
      card(num(o.mismatches), "mismatches"),
      card(num(o.candidate_errors), "candidate errors"),
      card(`${ms(lat.primary.p99)} / ${ms(lat.candidate.p99)}`, "p99 ms primary / candidate"),
      card(ratio(lat.p99_ratio), "p99 latency ratio"));
  }

  function legend(items) {
    return el("div", {class: "legend"},
      items.map(([color, label]) => el("span", {}, swatch(color), label)));
  }

  function matchRateChart() {
    const rows = data.endpoints.slice(0, MAX_CHART_ENDPOINTS);
    const labelW = 330, barW = 540, rowH = 22, top = 8;
    const height = top + rows.length * rowH + 8;
    const svg = sv("svg", {id: "chart-match-rate", viewBox: `0 0 ${labelW + barW + 90} ${height}`,
      role: "img", "aria-label": "match rate per endpoint"});
    rows.forEach((r, i) => {
      const y = top + i * rowH;
      const label = r.endpoint.length > 48 ? r.endpoint.slice(0, 47) + "…" : r.endpoint;
      svg.appendChild(sv("text", {x: labelW - 6, y: y + 14, "text-anchor": "end", text: label},
        sv("title", {text: r.endpoint})));
      let x = labelW;
      const parts = [["match", r.matches, C.ok], ["mismatch", r.mismatches, C.bad],
                     ["candidate error", r.candidate_errors, C.err]];
      for (const [name, count, color] of parts) {
        if (!count || !r.compared) continue;
        const w = Math.max(1, (count / r.compared) * barW);
        svg.appendChild(sv("rect", {class: "bar bar-" + name.replace(" ", "-"), x: x, y: y + 3,
          width: w, height: rowH - 6, fill: color},
          sv("title", {text: `${r.endpoint}: ${num(count)} ${name} ` +
                             `(${pct(count / r.compared)})`})));
        x += w;
      }
      svg.appendChild(sv("text", {x: labelW + barW + 6, y: y + 14, text: pct(r.match_rate)}));
    });
    const box = el("div", {class: "chart"}, svg,
      legend([[C.ok, "match"], [C.bad, "mismatch"], [C.err, "candidate error"]]));
    if (data.endpoints.length > rows.length) {
      box.appendChild(el("div", {class: "muted",
        text: `${data.endpoints.length - rows.length} more endpoints in the table below`}));
    }
    return box;
  }

  function latencyChart(report, id) {
    const bins = data.latency_bins_ms, hist = report.latency_ms.histogram;
    const series = [["primary", C.prim], ["candidate", C.cand],
                    ["secondary", C.sec]].filter(([name]) => hist[name]);
    let lo = bins.length, hi = 0;
    for (const [name] of series) {
      hist[name].forEach((n, i) => { if (n) { lo = Math.min(lo, i); hi = Math.max(hi, i); } });
    }
    if (lo > hi) { lo = 0; hi = bins.length - 1; }
    lo = Math.max(0, lo - 1); hi = Math.min(bins.length - 1, hi + 1);
    const left = 50, width = 820, plotH = 200, top = 10, n = hi - lo + 1;
    const step = width / Math.max(1, n - 1);
    const shares = series.map(([name]) => {
      const total = hist[name].reduce((a, b) => a + b, 0) || 1;
      return hist[name].slice(lo, hi + 1).map((c) => c / total);
    });
    const ymax = Math.max(0.01, ...shares.flat());
    const svg = sv("svg", {id: id, class: "latency",
      viewBox: `0 0 ${left + width + 20} ${plotH + 50}`,
      role: "img", "aria-label": "latency distribution"});
    svg.appendChild(sv("line", {x1: left, y1: top + plotH, x2: left + width, y2: top + plotH,
      stroke: "#999"}));
    for (const f of [0.5, 1]) {
      const y = top + plotH - f * plotH;
      svg.appendChild(sv("text", {x: left - 6, y: y + 4, "text-anchor": "end",
        text: pct(f * ymax)}));
      svg.appendChild(sv("line", {x1: left, y1: y, x2: left + width, y2: y, stroke: "#eee"}));
    }
    for (let i = 0; i < n; i += Math.max(1, Math.round(n / 8))) {
      svg.appendChild(sv("text", {x: left + i * step, y: top + plotH + 16, "text-anchor": "middle",
        text: "≤" + ms(bins[lo + i])}));
    }
    svg.appendChild(sv("text", {x: left + width / 2, y: top + plotH + 36, "text-anchor": "middle",
      text: "latency (ms, log scale)"}));
    series.forEach(([name, color], s) => {
      const points = shares[s].map((v, i) =>
        `${(left + i * step).toFixed(1)},${(top + plotH - (v / ymax) * plotH).toFixed(1)}`);
      svg.appendChild(sv("polyline", {class: "series series-" + name, points: points.join(" "),
        fill: "none", stroke: color, "stroke-width": 2}));
    });
    const items = series.map(([name, color]) => {
      const l = report.latency_ms[name];
      return [color, `${name}: p50 ${ms(l.p50)} · p95 ${ms(l.p95)} · ` +
                     `p99 ${ms(l.p99)} ms (${num(l.count)})`];
    });
    items.push([C.none, `p99 ratio ${ratio(report.latency_ms.p99_ratio)}`]);
    return [svg, legend(items)];
  }

  function latencySection() {
    const select = el("select", {id: "latency-endpoint", "aria-label": "endpoint"},
      el("option", {value: "", text: "all endpoints"}),
      data.endpoints.map((r, i) => el("option", {value: String(i), text: r.endpoint})));
    const box = el("div", {class: "chart", id: "latency-box"});
    function draw() {
      const report = select.value === "" ? data.overall : data.endpoints[Number(select.value)];
      box.replaceChildren(...latencyChart(report, "chart-latency"));
    }
    select.addEventListener("change", draw);
    return {select, box, draw};
  }

  function timeChart() {
    const ts = data.timeseries, buckets = ts.buckets;
    const left = 50, width = 820, plotH = 180, top = 10;
    const svg = sv("svg", {id: "chart-timeseries",
      viewBox: `0 0 ${left + width + 20} ${plotH + 50}`,
      role: "img", "aria-label": "mismatches over time"});
    const ymax = Math.max(1, ...buckets.map((b) => b.mismatches + b.candidate_errors));
    const bw = width / Math.max(1, buckets.length);
    svg.appendChild(sv("line", {x1: left, y1: top + plotH, x2: left + width, y2: top + plotH,
      stroke: "#999"}));
    svg.appendChild(sv("text", {x: left - 6, y: top + 8, "text-anchor": "end", text: num(ymax)}));
    svg.appendChild(sv("text", {x: left - 6, y: top + plotH, "text-anchor": "end", text: "0"}));
    buckets.forEach((b, i) => {
      const x = left + i * bw, w = Math.max(0.5, bw - (bw > 3 ? 1 : 0));
      const tip = `${b.start}: ${num(b.mismatches)} mismatches, ` +
        `${num(b.candidate_errors)} candidate errors of ${num(b.compared)}`;
      const hm = (b.mismatches / ymax) * plotH, he = (b.candidate_errors / ymax) * plotH;
      svg.appendChild(sv("rect", {class: "bar bar-mismatch", x: x, y: top + plotH - hm, width: w,
        height: hm, fill: C.bad}, sv("title", {text: tip})));
      svg.appendChild(sv("rect", {class: "bar bar-candidate-error", x: x, y: top + plotH - hm - he,
        width: w, height: he, fill: C.err}, sv("title", {text: tip})));
    });
    if (buckets.length) {
      svg.appendChild(sv("text", {x: left, y: top + plotH + 16, text: buckets[0].start}));
      svg.appendChild(sv("text", {x: left + width, y: top + plotH + 16, "text-anchor": "end",
        text: buckets[buckets.length - 1].start}));
    }
    return el("div", {class: "chart"}, svg,
      legend([[C.bad, "mismatches"], [C.err, "candidate errors"],
              [C.none, `${ts.bucket_seconds} s per bar`]]));
  }

  function table(head, rows, numeric) {
    const cls = (i) => (numeric && numeric.includes(i) ? "num" : null);
    const cell = (c, i) => (c instanceof Node ? c : el("td", {class: cls(i), text: c}));
    return el("table", {},
      el("thead", {}, el("tr", {}, head.map((h, i) => el("th", {class: cls(i), text: h})))),
      el("tbody", {}, rows.map((r) => (r instanceof Node ? r : el("tr", {}, r.map(cell))))));
  }

  function kinds(k) { return Object.entries(k).map(([name, n]) => `${name} ${num(n)}`).join(", "); }

  function pathsTable(paths) {
    const head = ["where", "path", "exchanges", "occurrences", "kinds", "example primary",
                  "example candidate"];
    return table(head,
      paths.map((p) => {
        const ex = p.example || {};
        return el("tr", {class: "kind-" + (ex.kind || "changed")},
          el("td", {text: p.where}), el("td", {class: "mono", text: p.path || "-"}),
          el("td", {class: "num", text: num(p.exchanges)}),
          el("td", {class: "num", text: num(p.occurrences)}), el("td", {text: kinds(p.kinds)}),
          el("td", {class: "val prim"}, el("pre", {text: shown(ex, "primary")})),
          el("td", {class: "val cand"}, el("pre", {text: shown(ex, "candidate")})));
      }), [2, 3]);
  }

  function side(name, s) {
    const rows = [];
    if (s) {
      for (const key of ["status", "latency_ms", "bytes", "error", "detail"]) {
        if (!(key in s) || s[key] === null) continue;
        const value = key === "latency_ms" ? ms(s[key]) : String(s[key]);
        rows.push(el("div", {}, el("span", {class: "muted", text: key + ": "}),
          el("span", {class: "mono", text: value})));
      }
    }
    return el("div", {class: "side " + name}, el("h4", {text: name}), rows);
  }

  function excerpt(text) {
    return el("pre", {class: "excerpt"}, text.split("\n").map((line) =>
      el("span", {text: line + "\n",
        class: line.startsWith("+") ? "diff-add" : line.startsWith("-") ? "diff-del" : null})));
  }

  function example(ex) {
    const diffs = ex.differences || [];
    return el("div", {class: "example"},
      el("div", {class: "example-head"},
        el("span", {class: "badge " + ex.outcome, text: ex.outcome}), " ",
        el("span", {class: "mono", text: `${ex.method} ${ex.path}`}),
        el("span", {class: "muted", text: `  id ${ex.id} · ${ex.ts}`})),
      el("div", {class: "sides"}, side("primary", ex.primary), side("candidate", ex.candidate)),
      diffs.length ? table(["where", "path", "kind", "primary", "candidate"], diffs.map((d) =>
        el("tr", {class: "diff kind-" + d.kind},
          el("td", {text: d.where}), el("td", {class: "mono", text: d.path || "-"}),
          el("td", {text: d.kind}),
          el("td", {class: "val prim"}, el("pre", {text: shown(d, "primary")})),
          el("td", {class: "val cand"}, el("pre", {text: shown(d, "candidate")}))))) : null,
      ex.difference_count > diffs.length ?
        el("div", {class: "muted", text: `${num(ex.difference_count)} differences in all`}) : null,
      ex.excerpt ? excerpt(ex.excerpt) : null);
  }

  function drillDown(r, index) {
    const lat = r.latency_ms;
    const backends = ["primary", "candidate", "secondary"].filter((b) => lat[b]);
    const parts = [
      el("h3", {text: "Latency (ms)"}),
      table(["backend", "count", "mean", "p50", "p95", "p99", "max"], backends.map((b) =>
        [b, num(lat[b].count), ms(lat[b].mean), ms(lat[b].p50), ms(lat[b].p95), ms(lat[b].p99),
         ms(lat[b].max)]), [1, 2, 3, 4, 5, 6]),
      el("div", {class: "chart"}, latencyChart(r, "chart-latency-" + index)),
    ];
    const pairs = r.status_pairs.map((p) => [`${p.primary} -> ${p.candidate}`, num(p.count)]);
    if (r.status_pairs_other) pairs.push(["other pairs", num(r.status_pairs_other)]);
    parts.push(el("h3", {text: "Status pairs (primary -> candidate)"}),
      table(["pair", "count"], pairs, [1]));
    if (Object.keys(r.candidate_error_kinds).length) {
      parts.push(el("h3", {text: "Candidate errors"}), table(["kind", "count"],
        Object.entries(r.candidate_error_kinds).map(([k, n]) => [k, num(n)]), [1]));
    }
    if (r.paths.length) {
      parts.push(el("h3", {text: "Differing paths"}), pathsTable(r.paths));
      if (r.paths_other_exchanges) parts.push(el("div", {class: "muted",
        text: `untracked paths in ${num(r.paths_other_exchanges)} more exchanges`}));
    }
    if (r.noise_paths.length) {
      parts.push(el("h3", {text: "Noise (ignored differences)"}), pathsTable(r.noise_paths));
    }
    if (r.examples.length) {
      parts.push(el("h3", {text: "Example exchanges"}), r.examples.map(example));
    }
    return parts;
  }

  function endpointList(state) {
    return data.endpoints.map((r, i) => {
      const d = el("details", {class: "endpoint", "data-index": i},
        el("summary", {},
          el("span", {class: "name", text: r.endpoint}),
          el("span", {class: "num", text: num(r.compared) + " compared"}),
          el("span", {class: "num " + rateClass(r), text: pct(r.match_rate) + " match"}),
          el("span", {class: "num", text: num(r.mismatches) + " mismatches"}),
          el("span", {class: "num", text: num(r.candidate_errors) + " errors"}),
          el("span", {class: "num", text: "p99 " + ratio(r.latency_ms.p99_ratio)})));
      const body = el("div", {class: "body"});
      d.appendChild(body);
      d.addEventListener("toggle", () => {
        if (d.open && !body.childNodes.length) body.replaceChildren(...drillDown(r, i).flat());
      });
      if (state.open && state.open.includes(r.endpoint)) d.open = true;
      return d;
    });
  }

  function loadState() {
    try { return JSON.parse(sessionStorage.getItem(STATE_KEY) || "{}"); } catch (e) { return {}; }
  }
  function saveState(latency) {
    const open = [...document.querySelectorAll("details.endpoint[open]")]
      .map((d) => data.endpoints[Number(d.dataset.index)].endpoint);
    const index = latency.select.value;
    const chosen = index === "" ? null : data.endpoints[Number(index)].endpoint;
    const state = {open, latency: chosen, scroll: window.scrollY};
    try {
      sessionStorage.setItem(STATE_KEY, JSON.stringify(state));
    } catch (e) { /* storage may be disabled; refreshing then only loses the open panels */ }
  }

  const state = loadState();
  const latency = latencySection();
  if (state.latency) {
    const index = data.endpoints.findIndex((r) => r.endpoint === state.latency);
    if (index >= 0) latency.select.value = String(index);
  }
  latency.draw();
  root.replaceChildren(...header(), cards(),
    el("h2", {text: "Match rate per endpoint"}), matchRateChart(),
    el("h2", {}, "Latency distribution ", latency.select), latency.box,
    el("h2", {text: "Mismatches over time"}), timeChart(),
    el("h2", {text: "Endpoints, worst first"}),
    ...(data.endpoints.length ? endpointList(state)
      : [el("p", {class: "muted", text: "no exchanges to report"})]));
  const refresh = Number(document.body.dataset.refresh || 0);
  if (refresh > 0) {
    if (state.scroll) window.scrollTo(0, state.scroll);
    window.setTimeout(() => { saveState(latency); window.location.reload(); }, refresh * 1000);
  }
  document.body.dataset.rendered = "true";
})();
"""
