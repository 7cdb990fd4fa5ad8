// Claims: the catalogue, filterable; measuring runs the real experiments (reduced size) on the server.
"use strict";

const measured = {};

function rows(catalogue) {
  const text = document.getElementById("filter").value.toLowerCase();
  const verdict = document.getElementById("verdict").value;
  return catalogue.filter((c) => {
    const m = measured[c.id];
    const hay = (c.id + " " + c.claim + " " + c.experiment).toLowerCase();
    const byVerdict = !verdict || (verdict === "unmeasured" ? !m : m && m.verdict === verdict);
    return hay.includes(text) && byVerdict;
  });
}

function draw(catalogue) {
  const table = document.getElementById("claims");
  const head = el(
    "tr",
    {},
    ...["claim", "the lesson says", "experiment", "measured", "verdict"].map((h) => el("th", { text: h })),
  );
  table.replaceChildren(
    head,
    ...rows(catalogue).map((c) => {
      const m = measured[c.id];
      return el(
        "tr",
        { "data-id": c.id },
        el("td", { text: c.id }),
        el("td", { text: c.claim }),
        el("td", { class: "about", text: c.experiment }),
        el("td", { text: m ? m.measured : "—" }),
        el(
          "td",
          {},
          m
            ? el("strong", {
                class: "verdict-" + m.verdict,
                text: m.verdict + (m.condition ? ": " + m.condition : ""),
              })
            : el("button", { text: "measure", onclick: () => measure(catalogue, [c.id]) }),
        ),
      );
    }),
  );
  rendered();
}

async function measure(catalogue, ids) {
  busy(true);
  try {
    const most = (await meta()).limits.claims;
    for (let i = 0; i < ids.length; i += most) {
      // a few claims a request: each request stays short
      const r = await api("claims", { ids: ids.slice(i, i + most) });
      for (const row of r.claims) measured[row.id] = row;
      draw(catalogue);
    }
  } catch (err) {
    console.warn(err.message);
  } finally {
    busy(false);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const catalogue = (await meta()).claims;
  for (const id of ["filter", "verdict"])
    document.getElementById(id).addEventListener("input", () => draw(catalogue));
  document.getElementById("measure-shown").addEventListener("click", () =>
    measure(
      catalogue,
      rows(catalogue).map((c) => c.id),
    ),
  );
  draw(catalogue);
});
