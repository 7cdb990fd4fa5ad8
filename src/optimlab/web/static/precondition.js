// Feel preconditioning: κ and rotation sliders over the quadratic; the race is computed by the server.
"use strict";

let result = null,
  surface = null;

function landscapeText() {
  const kappa = Number((10 ** Number(document.getElementById("kappa").value)).toPrecision(3));
  const angle = Number(document.getElementById("angle").value);
  document.getElementById("kappa-value").textContent = String(kappa);
  document.getElementById("angle-value").textContent = angle + "°";
  return { kappa, angle, text: `quadratic:kappa=${kappa},angle=${angle}` };
}

async function run() {
  const { kappa, angle, text } = landscapeText();
  busy(true);
  try {
    const steps = Number(document.getElementById("steps").value) || 60;
    [result, surface] = await Promise.all([
      api("precondition", { kappa, angle, steps }),
      api("surface", { landscape: text }),
    ]);
    Plotly.react("paths", pathTraces(result, surface, result.steps), pathLayout(result, surface), {
      responsive: true,
    });
    Plotly.react("losses", lossTraces(result), lossLayout(result, result.steps), { responsive: true });
    resultTable(result, document.getElementById("table"));
    const skipped = Object.entries(result.skipped);
    document.getElementById("skipped").textContent = skipped.length
      ? "Not raced here: " + skipped.map(([n, why]) => `${n} (${why})`).join("; ")
      : (await meta()).full_matrix.length
        ? ""
        : "No full-matrix optimizer (Shampoo, SOAP, Muon) is registered yet.";
    rendered();
  } catch (err) {
    console.warn(err.message);
  } finally {
    busy(false);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const rerun = debounce(run, 200);
  for (const id of ["kappa", "angle"])
    document.getElementById(id).addEventListener("input", () => {
      landscapeText();
      rerun();
    });
  document.getElementById("steps").addEventListener("change", rerun);
  run();
});
