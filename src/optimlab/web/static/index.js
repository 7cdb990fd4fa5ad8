// The front page: one card per demo.
"use strict";

const ABOUT = {
  race: "Optimizers racing on the canyon, Rosenbrock, Reddi's problem and more: sliders, play, share it.",
  precondition: "Condition number and rotation sliders: why Adam's diagonal scaling is not preconditioning.",
  breakit: "Remove bias correction, warmup, decoupled decay, clipping, β₂ or ε: real ablations rerun.",
  schedules: "Shape a learning-rate schedule and see the multiplier and the lr.",
  sweep: "Final loss against learning rate, and how wide each optimizer's good band is.",
  memory: "Bytes per rank for a model size, precision, optimizer and ZeRO stage.",
  diff: "Two optimizers' update rules and the lines in which they differ.",
  claims: "The lessons' claims, measured, with verdicts; filter and re-measure.",
};

document.addEventListener("DOMContentLoaded", () => {
  const cards = document.getElementById("pages");
  for (const [path, title] of PAGES) {
    cards.append(
      el(
        "div",
        { class: "card" },
        el("h2", {}, el("a", { href: "/" + path, text: title })),
        el("p", { text: ABOUT[path] }),
      ),
    );
  }
  rendered();
});
