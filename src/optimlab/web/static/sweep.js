// The LR sweep: optimlab.lab.sweeps on the server; here only the drawing.
"use strict";

async function run() {
  const body = {
    optimizers: document.getElementById("optimizers").value.split(/[\s]+/).filter(Boolean),
    lrs: document.getElementById("lrs").value,
    steps: Number(document.getElementById("steps").value),
    seeds: Number(document.getElementById("seeds").value),
    metric: document.getElementById("metric").value,
  };
  busy(true);
  try {
    const r = await api("sweep", body);
    const traces = [];
    Object.entries(r.optimizers).forEach(([name, o], i) => {
      const color = COLORS[i % COLORS.length];
      traces.push({ type: "scatter", mode: "lines+markers", name, x: r.lrs, y: o.median, line: { color } });
      if (o.band)
        traces.push({
          type: "scatter",
          mode: "lines",
          x: o.band,
          y: [o.best_loss, o.best_loss],
          line: { color, width: 8 },
          opacity: 0.35,
          name: `${name} band (${short(o.width_decades)} decades)`,
        });
    });
    Plotly.react(
      "curve",
      traces,
      {
        margin: { l: 60, r: 10, t: 20, b: 45 },
        xaxis: { title: "learning rate", type: "log", exponentformat: "power" },
        yaxis: { title: "final " + r.metric, type: "log" },
      },
      { responsive: true },
    );
    document.getElementById("table").textContent = r.table;
    rendered();
  } catch (err) {
    console.warn(err.message);
  } finally {
    busy(false);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("go").addEventListener("click", run);
  run();
});
