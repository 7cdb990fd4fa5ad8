// The memory planner: optimlab.memory.plan on the server, drawn as stacked bars per ZeRO stage.
"use strict";

const SUFFIX = { K: 1e3, M: 1e6, B: 1e9, G: 1e9, T: 1e12 };

function count(text) {
  const t = text.trim().replace(/_/g, "");
  const last = t.slice(-1).toUpperCase();
  return SUFFIX[last] ? Number(t.slice(0, -1)) * SUFFIX[last] : Number(t);
}

async function run() {
  const zero = Number(document.getElementById("zero").value);
  const ranks = Number(document.getElementById("ranks").value) || 1;
  const body = {
    params: count(document.getElementById("params").value),
    optimizer: document.getElementById("optimizer").value,
    precision: document.getElementById("precision").value,
    zero,
    ranks,
  };
  try {
    const r = await api("memory", body);
    const labels = r.stages.map(
      (s) =>
        `ZeRO-${s.zero}` + (s.ranks > 1 ? ` on ${s.ranks} ranks` : "") + (s.zero === zero ? " (chosen)" : ""),
    );
    const traces = r.components.map((c, i) => ({
      type: "bar",
      name: c.replace("_", " "),
      x: labels,
      y: r.stages.map((s) => s.per_rank[c] / 1e9),
      marker: { color: COLORS[i % COLORS.length] },
    }));
    Plotly.react(
      "bars",
      traces,
      {
        barmode: "stack",
        margin: { l: 60, r: 10, t: 20, b: 60 },
        yaxis: { title: "GB per rank (10⁹ bytes)" },
        legend: { orientation: "h", y: 1.12 },
      },
      { responsive: true },
    );
    document.getElementById("table").textContent = r.table;
    rendered();
  } catch (err) {
    console.warn(err.message);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const m = await meta();
  for (const p of m.precisions) document.getElementById("precision").append(el("option", { text: p }));
  document.getElementById("precision").value = "bf16-mixed";
  for (const o of m.optimizers) document.getElementById("names").append(el("option", { value: o.name }));
  const rerun = debounce(run, 200);
  for (const id of ["params", "optimizer", "precision", "zero", "ranks"]) {
    document.getElementById(id).addEventListener("input", rerun);
  }
  run();
});
