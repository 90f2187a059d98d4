// tunelab dashboard: the few things a server-rendered page cannot do alone. No framework, no build.
"use strict";

const csrf = () => document.querySelector("main").dataset.csrf;

// A run's loss curve, live: metrics.jsonl lines arrive as server-sent events until the run ends.
// The x axis runs from step 0 to the last step logged, and a short series is also drawn as dots: a run
// shorter than train.log_every logs its loss once, at its last step, and a one-point line has no length.
const DOTS_UP_TO = 50;

function lossChart(figure) {
  const svg = figure.querySelector("svg");
  const series = { train: [], val: [] };
  const draw = () => {
    const points = [...series.train, ...series.val];
    if (!points.length) return;
    const ys = points.map((p) => p[1]);
    const x1 = Math.max(...points.map((p) => p[0]), 1);
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 0.05 * (Math.abs(y0) || 1), y1 + 0.05 * (Math.abs(y1) || 1)];
    const at = ([x, y]) => [40 + (1150 * x) / x1, 210 - (200 * (y - y0)) / (y1 - y0)];
    const marks = ([name, ps]) =>
      `<polyline class="${name}" points="${ps.map((p) => at(p).join(",")).join(" ")}"></polyline>` +
      (ps.length > DOTS_UP_TO ? "" : ps.map((p) => {
        const [cx, cy] = at(p);
        return `<circle class="${name}" cx="${cx}" cy="${cy}" r="4"><title>step ${p[0]}: ${p[1]}</title></circle>`;
      }).join(""));
    svg.innerHTML = Object.entries(series).filter(([, ps]) => ps.length).map(marks).join("") +
      `<text x="4" y="12">${y1.toPrecision(4)}</text><text x="4" y="208">${y0.toPrecision(4)}</text>` +
      `<text x="40" y="218">step 0</text><text x="1196" y="218" text-anchor="end">step ${x1}</text>`;
    figure.dataset.points = String(series.train.length);
  };
  const source = new EventSource(figure.dataset.source);
  source.onmessage = (event) => {
    const row = JSON.parse(event.data);
    if (typeof row.loss === "number") series.train.push([row.step, row.loss]);
    if (typeof row.val_loss === "number") series.val.push([row.step, row.val_loss]);
    draw();
  };
  source.addEventListener("end", () => {
    source.close();
    if (!series.train.length && !series.val.length) {
      svg.innerHTML = '<text x="600" y="110" text-anchor="middle">No loss was logged.</text>';
    }
    figure.dataset.ended = "true";
  });
  source.onerror = () => source.close();
}

// Review: a, b, t, x choose; 1-5 set the score; not while typing a comment.
function reviewKeys(form) {
  const keys = { a: "left", b: "right", t: "tie", x: "both_bad" };
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("textarea, input, select") || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (keys[key]) {
      event.preventDefault();
      form.requestSubmit(form.querySelector(`button[value="${keys[key]}"]`));
    } else if ("12345".includes(key) && key.length === 1) {
      form.querySelector('select[name="score"]').value = key;
    }
  });
}

// Playground: one model, or two side by side, through the server's chat completion.
function playground(form) {
  const ask = async (model, target, message) => {
    target.textContent = "…";
    const response = await fetch("/playground/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify({ model, messages: [{ role: "user", content: message }],
        max_tokens: Number(form.max_tokens.value), temperature: Number(form.temperature.value) }),
    });
    const body = await response.json();
    target.textContent = `${model}\n\n${response.ok ? body.content : "error: " + body.error}`;
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const message = form.message.value;
    ask(form.model.value, document.getElementById("answer-a"), message);
    if (form.other.value) ask(form.other.value, document.getElementById("answer-b"), message);
    else document.getElementById("answer-b").textContent = "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const chart = document.getElementById("loss-chart");
  if (chart) lossChart(chart);
  const rate = document.getElementById("rate");
  if (rate) reviewKeys(rate);
  const play = document.getElementById("playground");
  if (play) playground(play);
});
