// The race page: the whole state lives in the URL (?landscape=…&opt=…&opt=…&steps=…&start=x,y).
"use strict";

const state = { landscape: "canyon", opts: ["sgd", "momentum", "adam"], steps: null, start: null };
let result = null,
  surface = null,
  frame = 0,
  timer = null,
  slidersFor = "";

function readUrl() {
  const q = new URLSearchParams(location.search);
  if (q.get("landscape")) state.landscape = q.get("landscape");
  if (q.getAll("opt").length) state.opts = q.getAll("opt");
  if (q.get("steps")) state.steps = Number(q.get("steps"));
  if (q.get("start")) state.start = q.get("start").split(",").map(Number);
}

function writeUrl() {
  const q = new URLSearchParams();
  q.set("landscape", state.landscape);
  state.opts.forEach((o) => q.append("opt", o));
  if (state.steps) q.set("steps", state.steps);
  if (state.start) q.set("start", state.start.map(short).join(","));
  history.replaceState(null, "", "?" + q.toString());
}

// 'adam:lr=0.1,betas=(0.9,0.99)' -> ['adam', {lr: '0.1', betas: '(0.9,0.99)'}]: text kept as written.
function splitText(text) {
  const [name, rest = ""] = text.split(/:(.*)/s);
  const pieces = [];
  let depth = 0,
    cur = "";
  for (const ch of rest) {
    depth += "([".includes(ch) - ")]".includes(ch);
    if (ch === "," && depth === 0) {
      pieces.push(cur);
      cur = "";
    } else cur += ch;
  }
  if (cur.trim()) pieces.push(cur);
  const given = {};
  for (const p of pieces) {
    const [k, v] = p.split(/=(.*)/s);
    given[k.trim()] = (v || "").trim();
  }
  return [name.trim(), given];
}

function joinText(name, given) {
  const parts = Object.entries(given).map(([k, v]) => k + "=" + v);
  return parts.length ? name + ":" + parts.join(",") : name;
}

// One slider (or checkbox) per hyperparameter the run used; moving it rewrites that optimizer's text.
function sliderFor(i, key, value, index = null) {
  const label = index === null ? key : `${key}[${index}]`;
  const shown = el("span", { class: "value", text: short(value) });
  const set = (v) => {
    const [name, given] = splitText(state.opts[i]);
    if (index === null) given[key] = short(v);
    else {
      const tuple = given[key]
        ? given[key]
            .replace(/[()[\]\s]/g, "")
            .split(",")
            .map(Number)
        : result.runs[i].hyper[key].slice();
      tuple[index] = v;
      given[key] = short(tuple);
    }
    state.opts[i] = joinText(name, given);
    shown.textContent = short(v);
    document.querySelectorAll(".opt-text")[i].value = state.opts[i];
    rerun();
  };
  if (typeof value === "boolean") {
    const box = el("input", { type: "checkbox", "data-key": label, onchange: (e) => set(e.target.checked) });
    box.checked = value;
    return el("label", { class: "knob" }, box, " " + label);
  }
  let input;
  if (value > 0 && (key === "lr" || key === "eps" || value >= 1) && index === null) {
    const lg = Math.log10(value);
    input = el("input", {
      type: "range",
      min: lg - 3,
      max: lg + 2,
      step: 0.01,
      value: lg,
      "data-key": label,
      oninput: (e) => set(Number((10 ** Number(e.target.value)).toPrecision(3))),
    });
  } else {
    const [lo, hi] = value < 0 ? [-1, 0] : [0, 0.9999];
    input = el("input", {
      type: "range",
      min: lo,
      max: hi,
      step: 0.0001,
      value,
      "data-key": label,
      oninput: (e) => set(Number(e.target.value)),
    });
  }
  return el("label", { class: "knob" }, label + " ", input, shown);
}

function drawOptimizers() {
  const list = document.getElementById("opt-list");
  list.replaceChildren();
  state.opts.forEach((text, i) => {
    const row = el("div", { class: "opt", style: `border-left-color: ${COLORS[i % COLORS.length]}` });
    const input = el("input", {
      class: "opt-text",
      value: text,
      size: 34,
      onchange: (e) => {
        state.opts[i] = e.target.value.trim();
        slidersFor = "";
        rerun();
      },
    });
    row.append(
      input,
      el("button", {
        text: "remove",
        onclick: () => {
          state.opts.splice(i, 1);
          slidersFor = "";
          drawOptimizers();
          rerun();
        },
      }),
    );
    const run = result && result.runs[i];
    if (run) {
      const knobs = el("div", { class: "knobs" });
      for (const [key, value] of Object.entries(run.hyper)) {
        if (Array.isArray(value)) {
          value.forEach((v, j) => {
            if (typeof v === "number" && v >= 0 && v < 1) knobs.append(sliderFor(i, key, v, j));
          });
        } else if (typeof value === "number" || typeof value === "boolean")
          knobs.append(sliderFor(i, key, value));
      }
      row.append(knobs);
    }
    list.append(row);
  });
}

async function loadSurface() {
  surface = await api("surface", { landscape: state.landscape });
}

function draw() {
  Plotly.react("paths", pathTraces(result, surface, frame), pathLayout(result, surface), {
    responsive: true,
  });
  Plotly.react("losses", lossTraces(result), lossLayout(result, frame), { responsive: true });
  document.getElementById("frame").max = result.steps;
  document.getElementById("frame").value = frame;
  document.getElementById("frame-label").textContent = `step ${frame} / ${result.steps}`;
}

// Run the race in `state`; false if the server refused it (its message is shown in the error box).
async function run() {
  busy(true);
  try {
    const body = { landscape: state.landscape, optimizers: state.opts };
    if (state.steps) body.steps = state.steps;
    if (state.start) body.start = state.start;
    const answer = await api("race", body);
    result = answer;
    frame = result.steps;
    writeUrl();
    const signature = state.landscape + "|" + state.opts.map((o) => splitText(o)[0]).join(",");
    if (signature !== slidersFor) {
      slidersFor = signature;
      drawOptimizers();
    }
    draw();
    resultTable(result, document.getElementById("table"));
    rendered();
    return true;
  } catch (err) {
    console.warn(err.message);
    return false;
  } finally {
    busy(false);
  }
}
const rerun = debounce(run, 200);

function play() {
  const button = document.getElementById("play");
  if (timer) {
    clearInterval(timer);
    timer = null;
    button.textContent = "play";
    return;
  }
  if (frame >= result.steps) frame = 0;
  button.textContent = "pause";
  const stride = Math.max(1, Math.round(result.steps / 150));
  timer = setInterval(() => {
    frame = Math.min(result.steps, frame + stride);
    draw();
    if (frame >= result.steps) play();
  }, 40);
}

async function init() {
  readUrl();
  const m = await meta();
  const select = document.getElementById("landscape");
  for (const L of m.landscapes)
    select.append(el("option", { value: L.name, text: `${L.name}: ${L.formula}` }));
  const names = document.getElementById("names");
  for (const o of m.optimizers) names.append(el("option", { value: o.name, text: o.idea }));
  const [name, given] = splitText(state.landscape);
  select.value = name;
  document.getElementById("landscape-params").value = Object.entries(given)
    .map(([k, v]) => k + "=" + v)
    .join(",");
  const about = () => {
    const L = m.landscapes.find((x) => x.name === select.value);
    document.getElementById("about").textContent = L ? L.about : "";
    document.getElementById("landscape-params").placeholder = L
      ? Object.entries(L.params)
          .map(([k, v]) => `${k}=${v}`)
          .join(",") || "(no parameters)"
      : "";
  };
  about();
  const changeLandscape = async () => {
    const params = document.getElementById("landscape-params").value.trim();
    state.landscape = select.value + (params ? ":" + params : "");
    state.start = null;
    slidersFor = "";
    about();
    try {
      await loadSurface();
    } catch (err) {
      return;
    }
    run();
  };
  select.addEventListener("change", () => {
    document.getElementById("landscape-params").value = "";
    changeLandscape();
  });
  document.getElementById("landscape-params").addEventListener("change", changeLandscape);
  document.getElementById("add").addEventListener("click", async () => {
    const text = document.getElementById("add-text").value.trim();
    if (!text) return;
    state.opts.push(text);
    slidersFor = "";
    drawOptimizers();
    if (!(await run())) {
      state.opts.pop(); // refused (the error box says why): the race stays as it was
      drawOptimizers();
    }
  });
  const steps = document.getElementById("steps");
  if (state.steps) steps.value = state.steps;
  steps.addEventListener("change", () => {
    state.steps = steps.value ? Number(steps.value) : null;
    run();
  });
  document.getElementById("reset-start").addEventListener("click", () => {
    state.start = null;
    run();
  });
  document.getElementById("play").addEventListener("click", play);
  document.getElementById("step").addEventListener("click", () => {
    if (timer) play();
    frame = Math.min(result.steps, frame >= result.steps ? 0 : frame + 1);
    draw();
  });
  document.getElementById("frame").addEventListener("input", (e) => {
    frame = Number(e.target.value);
    draw();
  });
  document
    .getElementById("share")
    .addEventListener("click", () => navigator.clipboard?.writeText(location.href));
  drawOptimizers();
  try {
    await loadSurface();
  } catch (err) {
    return;
  }
  await run();
  document.getElementById("paths").on("plotly_click", (event) => {
    const p = event.points[0];
    state.start = result.dim === 2 ? [p.x, p.y] : [p.y];
    run();
  });
}

document.addEventListener("DOMContentLoaded", init);
