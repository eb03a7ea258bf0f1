/* Run page: charts from the points rendered into the page, then live over server-sent events. */
(function () {
  "use strict";
  var dataNode = document.getElementById("run-data");
  if (!dataNode) return;
  var data = JSON.parse(dataNode.textContent);
  var el = window.Tunehouse.el;
  var lastSeq = data.last_seq;

  // step → value, per series; a resumed run may report a step again, and the latest value wins.
  var series = { train_loss: new Map(), eval_loss: new Map(), learning_rate: new Map(), tokens_per_second: new Map() };

  var charts = {
    loss: { fig: document.getElementById("chart-loss"), keys: ["train_loss", "eval_loss"], names: ["train", "validation"],
            colors: ["#2563eb", "#c2410c"], unit: "loss" },
    lr: { fig: document.getElementById("chart-lr"), keys: ["learning_rate"], names: ["learning rate"],
          colors: ["#7c3aed"], unit: "lr" },
    tps: { fig: document.getElementById("chart-tps"), keys: ["tokens_per_second"], names: ["tokens/s"],
           colors: ["#047857"], unit: "tokens/s" }
  };

  function columns(chart) {
    var steps = new Set();
    chart.keys.forEach(function (k) { series[k].forEach(function (_, s) { steps.add(s); }); });
    var xs = Array.from(steps).sort(function (a, b) { return a - b; });
    var cols = [xs];
    chart.keys.forEach(function (k) {
      cols.push(xs.map(function (s) { return series[k].has(s) ? series[k].get(s) : null; }));
    });
    return cols;
  }

  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (v !== 0 && Math.abs(v) < 1e-2) return v.toExponential(2);
    return Math.abs(v) >= 1e5 ? Math.round(v).toLocaleString() : String(+v.toPrecision(4));
  }

  function makePlot(chart) {
    if (typeof uPlot === "undefined") return null;
    var target = chart.fig.querySelector(".plot");
    var width = Math.max(260, target.clientWidth || 320);
    var opts = {
      width: width, height: 200,
      scales: { x: { time: false } },
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      axes: [{ label: "step", size: 36 }, { size: 66, values: function (u, vals) { return vals.map(fmt); } }],
      series: [{ label: "step" }].concat(chart.keys.map(function (k, i) {
        return {
          label: chart.names[i], stroke: chart.colors[i], width: 2, spanGaps: true,
          dash: k === "eval_loss" ? [6, 4] : undefined,
          points: { show: k === "eval_loss" ? true : undefined, size: 6 }
        };
      }))
    };
    var plot = new uPlot(opts, columns(chart), target);
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        var w = Math.max(260, target.clientWidth);
        if (Math.abs(w - plot.width) > 4) plot.setSize({ width: w, height: 200 });
      }).observe(target);
    }
    return plot;
  }

  function refresh(chart) {
    var cols = columns(chart);
    var points = 0;
    for (var i = 1; i < cols.length; i++) cols[i].forEach(function (v) { if (v !== null) points += 1; });
    if (!chart.plot && points) chart.plot = makePlot(chart);
    else if (chart.plot) chart.plot.setData(cols);
    chart.fig.setAttribute("data-points", String(points));
    var latest = chart.keys.map(function (k, i) {
      var xs = Array.from(series[k].keys());
      if (!xs.length) return null;
      var s = Math.max.apply(null, xs);
      return chart.names[i] + " " + fmt(series[k].get(s)) + " at step " + s;
    }).filter(Boolean);
    var text = points ? points + " points; latest " + latest.join(", ") : "No points yet.";
    chart.fig.querySelector(".chart-summary").textContent = text;
    chart.fig.querySelector(".plot").setAttribute("aria-label", chart.fig.querySelector("figcaption").textContent.trim() + ": " + text);
  }

  var pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    window.requestAnimationFrame(function () {
      pending = false;
      Object.keys(charts).forEach(function (k) { refresh(charts[k]); });
    });
  }

  function addPoint(p) {
    Object.keys(series).forEach(function (k) { if (typeof p[k] === "number") series[k].set(p.step, p[k]); });
  }

  data.points.forEach(addPoint);
  Object.keys(charts).forEach(function (k) { refresh(charts[k]); });

  function setText(id, value) { var n = document.getElementById(id); if (n) n.textContent = value; }

  function appendLog(item) {
    var log = document.getElementById("event-log");
    var li = el("li", { "class": "ev-" + item.type, "data-seq": String(item.seq) });
    li.appendChild(el("time", { datetime: item.time }, item.time_text));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(el("span", { "class": "ev-type" }, item.type));
    li.appendChild(document.createTextNode(" " + item.text));
    log.appendChild(li);
  }

  function renderCheckpoints(rows) {
    var body = document.querySelector("#checkpoints tbody");
    body.textContent = "";
    rows.forEach(function (c) {
      var tr = el("tr", { "data-step": String(c.step) });
      tr.appendChild(el("td", {}, c.step));
      tr.appendChild(el("td", {}, Object.keys(c.metrics).map(function (k) { return k + " " + c.metrics[k]; }).join(", ")));
      tr.appendChild(el("td", { title: c.path }, c.created));
      body.appendChild(tr);
    });
    document.getElementById("no-checkpoints").hidden = rows.length > 0;
  }

  function renderOutput(m) {
    if (!m) return;
    var box = document.getElementById("output-model");
    box.textContent = "";
    var dl = el("dl", { "class": "facts" });
    [["Name", m.name], ["Kind", m.kind], ["Path", m.path]].forEach(function (pair) {
      var div = el("div");
      div.appendChild(el("dt", {}, pair[0]));
      var dd = el("dd");
      if (pair[0] === "Name") dd.appendChild(el("a", { href: "/console/models#model-" + m.name }, m.name));
      else dd.appendChild(el("code", {}, pair[1]));
      div.appendChild(dd);
      dl.appendChild(div);
    });
    box.appendChild(dl);
  }

  function applySnapshot(s) {
    var badge = document.getElementById("run-state");
    if (badge.getAttribute("data-state") !== s.state) {
      badge.className = "badge state-" + s.state;
      badge.setAttribute("data-state", s.state);
      badge.textContent = s.state;
    }
    setText("run-error", s.error);
    var bar = document.getElementById("run-progress");
    bar.max = s.total_steps || 1;
    bar.value = s.total_steps ? s.step : 0;
    setText("run-step", s.step);
    setText("run-total", s.total_steps || "?");
    setText("run-percent", s.progress);
    setText("run-tps", s.tokens_per_second);
    setText("run-eta", s.eta);
    setText("run-train-loss", s.train_loss);
    setText("run-eval-loss", s.eval_loss);
    if (s.finished_at) setText("run-finished", s.finished_at);
    document.querySelectorAll("form[data-action]").forEach(function (f) {
      f.hidden = !s.actions[f.getAttribute("data-action")];
    });
    if (s.checkpoints) renderCheckpoints(s.checkpoints);
    renderOutput(s.output_model);
  }

  if (data.snapshot.terminal || !window.EventSource) return;
  var source = new EventSource(data.stream + "?after=" + lastSeq);
  source.addEventListener("event", function (msg) {
    var ev = JSON.parse(msg.data);
    if (ev.seq <= lastSeq) return;
    lastSeq = ev.seq;
    if (ev.point) { addPoint(ev.point); schedule(); }
    if (ev.log) appendLog(ev.log);
  });
  source.addEventListener("run", function (msg) { applySnapshot(JSON.parse(msg.data)); });
  source.addEventListener("end", function () {
    source.close();
    setText("live-note", "The run has ended.");
  });
})();
