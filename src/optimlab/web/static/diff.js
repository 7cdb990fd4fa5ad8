// Diff: the rule diff from optimlab.source, coloured line by line.
"use strict";

async function run() {
  try {
    const r = await api("diff", {
      a: document.getElementById("a").value,
      b: document.getElementById("b").value,
    });
    const box = document.getElementById("diff");
    if (r.same) {
      box.textContent = `${r.a} and ${r.b} run the same rule with the same flags`;
      rendered();
      return;
    }
    box.replaceChildren(
      ...r.diff.split("\n").map((line) => {
        const kind =
          line.startsWith("+++") || line.startsWith("---")
            ? "head"
            : line.startsWith("@@")
              ? "hunk"
              : line.startsWith("+")
                ? "add"
                : line.startsWith("-")
                  ? "del"
                  : "";
        return el("div", { class: kind, text: line || " " });
      }),
    );
    rendered();
  } catch (err) {
    console.warn(err.message);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const m = await meta();
  for (const o of m.optimizers) document.getElementById("names").append(el("option", { value: o.name }));
  document.getElementById("go").addEventListener("click", run);
  for (const id of ["a", "b"]) document.getElementById(id).addEventListener("change", run);
  run();
});
