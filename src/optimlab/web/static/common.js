// What every page shares: the navigation, calling the API, drawing races. No optimizer math here:
// every number drawn comes from the server, which computes it with optimlab.
"use strict";

const PAGES = [
  ["race", "Race"],
  ["precondition", "Feel preconditioning"],
  ["breakit", "Break It"],
  ["schedules", "Schedules"],
  ["sweep", "LR sweep"],
  ["memory", "Memory planner"],
  ["diff", "Diff"],
  ["claims", "Claims"],
];
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function nav() {
  const here = document.body.dataset.page;
  const bar = document.getElementById("nav");
  bar.append(el("a", { href: "/", class: "brand", text: "optimlab playground" }));
  for (const [path, title] of PAGES) {
    bar.append(el("a", { href: "/" + path, text: title, class: path === here ? "here" : "" }));
  }
}

// POST a request; on a refusal show the server's message (it names the field) and throw.
async function api(path, body) {
  const box = document.getElementById("error");
  const response = await fetch("/api/" + path, {
    method: body === undefined ? "GET" : "POST",
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) {
    const detail = Array.isArray(answer.detail)
      ? answer.detail
          .map((d) => (d.loc || []).filter((x) => x !== "body").join(".") + ": " + d.msg)
          .join("\n")
      : String(answer.detail);
    if (box) {
      box.textContent = detail;
      box.hidden = false;
    }
    throw new Error(detail);
  }
  if (box) box.hidden = true;
  return answer;
}

let metaCache = null;
async function meta() {
  if (!metaCache) metaCache = await api("meta");
  return metaCache;
}

// Count finished renders on the body, so a test (or a curious reader) can tell a plot was redrawn.
function rendered() {
  document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
}

function busy(on) {
  document.body.classList.toggle("busy", on);
}

// Call fn at most once per `ms`, with the latest arguments: sliders fire many events.
function debounce(fn, ms = 250) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function short(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
  if (typeof v === "boolean") return v ? "True" : "False";
  if (Array.isArray(v)) return "(" + v.map(short).join(",") + ")";
  return v === null ? "None" : String(v);
}

// --- races: contour with paths, loss curves -------------------------------------------------------

// Display scale of the contours only: a signed log of the gap to the minimum value.
function shade(z, base) {
  const d = z - base;
  return Math.sign(d) * Math.log10(1 + Math.abs(d));
}

function pathTraces(result, surface, frame) {
  const traces = [];
  if (result.dim === 2 && surface) {
    const base = surface.min_value ?? 0;
    traces.push({
      type: "contour",
      x: surface.axes[0],
      y: surface.axes[1],
      hoverinfo: "none",
      z: surface.loss.map((row) => row.map((z) => (z === null ? null : shade(z, base)))),
      colorscale: "Greys",
      reversescale: true,
      showscale: false,
      ncontours: 30,
      contours: { coloring: "heatmap" },
      opacity: 0.55,
      name: "loss",
    });
    traces.push({
      type: "scatter",
      mode: "markers",
      x: result.minima.map((m) => m[0]),
      y: result.minima.map((m) => m[1]),
      marker: { symbol: "star", size: 12, color: "gold", line: { color: "black", width: 1 } },
      name: "minimum",
      hoverinfo: "skip",
    });
  }
  result.runs.forEach((run, i) => {
    const upto = run.positions.slice(0, frame + 1).filter((p) => p[0] !== null);
    const color = COLORS[i % COLORS.length];
    const xs = result.dim === 2 ? upto.map((p) => p[0]) : upto.map((_, t) => t);
    const ys = result.dim === 2 ? upto.map((p) => p[1]) : upto.map((p) => p[0]);
    traces.push({
      type: "scatter",
      mode: "lines",
      x: xs,
      y: ys,
      name: run.optimizer,
      line: { color, width: 2 },
      legendgroup: run.optimizer,
    });
    traces.push({
      type: "scatter",
      mode: "markers",
      x: xs.slice(-1),
      y: ys.slice(-1),
      showlegend: false,
      marker: { color, size: 9, line: { color: "white", width: 1 } },
      legendgroup: run.optimizer,
      hoverinfo: "skip",
    });
  });
  return traces;
}

function pathLayout(result, surface) {
  const common = {
    margin: { l: 50, r: 10, t: 30, b: 40 },
    legend: { orientation: "h", y: -0.15 },
    title: { text: result.landscape + ": " + result.formula, font: { size: 13 } },
    uirevision: result.landscape,
  };
  if (result.dim === 2) {
    return {
      ...common,
      xaxis: {
        title: "x",
        range: surface ? surface.axes[0].slice(0, 1).concat(surface.axes[0].slice(-1)) : undefined,
      },
      yaxis: { title: "y", range: surface ? [surface.axes[1][0], surface.axes[1].at(-1)] : undefined },
    };
  }
  return {
    ...common,
    xaxis: { title: "step" },
    yaxis: { title: "x" },
    shapes: result.minima.map((m) => ({
      type: "line",
      xref: "paper",
      x0: 0,
      x1: 1,
      y0: m[0],
      y1: m[0],
      line: { dash: "dot", color: "goldenrod" },
    })),
  };
}

function lossTraces(result) {
  const gap = result.min_value !== null;
  return result.runs.map((run, i) => ({
    type: "scatter",
    mode: "lines",
    name: run.optimizer,
    x: run.losses.map((_, t) => t),
    y: run.losses.map((v) => (v === null ? null : gap ? v - result.min_value : v)),
    line: { color: COLORS[i % COLORS.length], width: 2 },
  }));
}

function lossLayout(result, frame) {
  const gap = result.min_value !== null;
  const positive = result.runs.every((r) =>
    r.losses.every((v) => v === null || !gap || v - result.min_value > 0),
  );
  return {
    margin: { l: 60, r: 10, t: 30, b: 40 },
    showlegend: false,
    title: { text: gap ? "loss − minimum" : "loss", font: { size: 13 } },
    xaxis: { title: "step" },
    yaxis: { type: gap && positive ? "log" : "linear", exponentformat: "power" },
    shapes: [
      {
        type: "line",
        x0: frame,
        x1: frame,
        yref: "paper",
        y0: 0,
        y1: 1,
        line: { color: "#888", dash: "dot" },
      },
    ],
  };
}

function resultTable(result, target) {
  const rows = result.runs.map((r) =>
    el(
      "tr",
      {},
      el("td", { text: r.optimizer }),
      el("td", { text: r.settings }),
      el("td", { text: r.stopped ? "gone at step " + r.stopped : short(r.final_loss) }),
      el("td", { text: r.distance === null ? "—" : short(r.distance) }),
      el("td", { text: r.final_position ? "(" + r.final_position.map(short).join(", ") + ")" : "—" }),
    ),
  );
  target.replaceChildren(
    el(
      "table",
      {},
      el(
        "tr",
        {},
        ...["optimizer", "settings", "final loss", "distance to min", "final position"].map((h) =>
          el("th", { text: h }),
        ),
      ),
      ...rows,
    ),
  );
}

document.addEventListener("DOMContentLoaded", nav);
