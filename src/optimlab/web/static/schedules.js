// Schedules: pick one, shape its arguments; the curve is evaluated by optimlab.schedules on the server.
"use strict";

function argInput(arg) {
  const text = Array.isArray(arg.default)
    ? "[" + arg.default.join(",") + "]"
    : arg.default === null
      ? ""
      : String(arg.default);
  return el(
    "label",
    {},
    arg.name + (arg.required ? "*" : "") + " ",
    el("input", { "data-arg": arg.name, value: text, size: Math.max(5, text.length + 1) }),
  );
}

function value(text) {
  const t = text.trim();
  if (t === "") return undefined;
  if (t === "True" || t === "true") return true;
  if (t === "False" || t === "false") return false;
  if (t.startsWith("["))
    return t
      .slice(1, -1)
      .split(",")
      .filter((x) => x.trim())
      .map(Number);
  const n = Number(t);
  return Number.isNaN(n) ? t : n;
}

async function run() {
  const body = { name: document.getElementById("name").value, args: {} };
  for (const input of document.querySelectorAll("[data-arg]")) {
    const v = value(input.value);
    if (v !== undefined) body.args[input.dataset.arg] = v;
  }
  const warmup = Number(document.getElementById("warmup").value);
  if (warmup) body.warmup = warmup;
  const lr = Number(document.getElementById("lr").value);
  if (lr > 0) body.lr = lr;
  const steps = Number(document.getElementById("steps").value);
  if (steps) body.steps = steps;
  try {
    const r = await api("schedule", body);
    const traces = [{ type: "scatter", mode: "lines", x: r.t, y: r.values, name: r.kind }];
    if (r.lr)
      traces.push({
        type: "scatter",
        mode: "lines",
        x: r.t,
        y: r.lr,
        name: "lr",
        yaxis: "y2",
        line: { dash: "dot" },
      });
    Plotly.react(
      "curve",
      traces,
      {
        margin: { l: 60, r: 60, t: 20, b: 45 },
        xaxis: { title: "t (optimizer updates taken)" },
        yaxis: { title: r.kind },
        yaxis2: { title: "lr", overlaying: "y", side: "right", exponentformat: "power" },
        shapes: r.key_steps
          .filter((t) => t > 0 && t < r.steps)
          .map((t) => ({
            type: "line",
            x0: t,
            x1: t,
            yref: "paper",
            y0: 0,
            y1: 1,
            line: { color: "#bbb", dash: "dot" },
          })),
        legend: { orientation: "h", y: 1.1 },
      },
      { responsive: true },
    );
    document.getElementById("repr").textContent = r.repr;
    rendered();
  } catch (err) {
    console.warn(err.message);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const m = await meta();
  const select = document.getElementById("name");
  for (const s of m.schedules) select.append(el("option", { value: s.name, text: s.name }));
  select.value = "cosine";
  const rerun = debounce(run, 150);
  const shapeArgs = () => {
    const s = m.schedules.find((x) => x.name === select.value);
    document.getElementById("args").replaceChildren(...s.args.map(argInput));
    document.getElementById("doc").textContent = s.doc;
    for (const input of document.querySelectorAll("[data-arg]")) input.addEventListener("input", rerun);
  };
  select.addEventListener("change", () => {
    shapeArgs();
    run();
  });
  for (const id of ["warmup", "lr", "steps"]) document.getElementById(id).addEventListener("input", rerun);
  shapeArgs();
  run();
});
