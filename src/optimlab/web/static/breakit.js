// Break It: each switch re-runs one real ablation (reduced size) and shows its number beside the claim.
"use strict";

function card(a) {
  const box = el("input", { type: "checkbox", id: "break-" + a.name });
  const result = el("div", { class: "result" });
  const plot = el("div", { class: "plot small", id: "plot-" + a.name, hidden: "" });
  box.addEventListener("change", async () => {
    if (!box.checked) {
      result.replaceChildren(el("p", { text: "intact: switch it to remove " + a.removed }));
      Plotly.purge(plot);
      plot.hidden = true;
      rendered();
      return;
    }
    result.replaceChildren(el("p", { text: "running the ablation…" }));
    busy(true);
    try {
      const r = await api("breakit", { name: a.name });
      const unit = r.unit ? " " + r.unit : "";
      result.replaceChildren(
        el(
          "p",
          {},
          el("span", { class: "number", text: short(r.value) + unit }),
          " measured → ",
          el("strong", { class: "verdict-" + r.verdict, text: r.verdict }),
        ),
        el("p", { text: r.summary }),
        el("p", {
          class: "about",
          text: `reduced size: ${r.details.seeds ?? 1} seed(s), ${short(r.seconds)} s`,
        }),
      );
      const p = r.panel;
      plot.hidden = false;
      const traces = Object.entries(p.curves).map(([label, c], i) => ({
        type: "scatter",
        mode: "lines",
        name: label,
        x: c.x,
        y: c.y,
        line: { color: COLORS[i % COLORS.length] },
      }));
      const shapes = p.hline
        ? [
            {
              type: "line",
              xref: "paper",
              x0: 0,
              x1: 1,
              y0: p.hline[0],
              y1: p.hline[0],
              line: { dash: "dash", color: "grey" },
            },
          ]
        : [];
      Plotly.react(
        plot,
        traces,
        {
          margin: { l: 55, r: 10, t: 30, b: 40 },
          title: { text: p.title, font: { size: 12 } },
          xaxis: { title: p.xlabel, type: p.logx ? "log" : "linear" },
          yaxis: { title: p.ylabel, type: p.logy ? "log" : "linear", exponentformat: "power" },
          legend: { font: { size: 10 } },
          shapes,
        },
        { responsive: true },
      );
      rendered();
    } catch (err) {
      result.replaceChildren(el("p", { class: "error", text: err.message }));
    } finally {
      busy(false);
    }
  });
  return el(
    "div",
    { class: "card" },
    el("h2", {}, el("label", {}, box, " break it: remove " + a.removed)),
    el("p", {}, el("strong", { text: "The lesson's claim: " }), a.claim),
    el("p", { class: "about" }, el("strong", { text: "Measured: " }), a.measure),
    el("p", { class: "about" }, el("strong", { text: "Verdict rule: " }), a.rule),
    result,
    plot,
  );
}

document.addEventListener("DOMContentLoaded", async () => {
  const m = await meta();
  const cards = document.getElementById("ablations");
  for (const a of m.ablations) cards.append(card(a));
  rendered();
});
