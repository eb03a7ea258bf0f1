/* New-run form: the hyperparameter fields follow the chosen model, train mode and method. */
(function () {
  "use strict";
  var form = document.getElementById("run-form");
  var specNode = document.getElementById("capabilities");
  if (!form || !specNode) return;
  var spec = JSON.parse(specNode.textContent);
  var el = window.Tunehouse.el;
  var box = document.getElementById("hp-fields");

  function fmt(v) { return Number.isInteger(v) || Math.abs(v) >= 1 ? String(v) : String(+v.toPrecision(6)); }
  function checked(name) { var n = form.querySelector('input[name="' + name + '"]:checked'); return n ? n.value : ""; }
  function modelName() { var n = form.querySelector('[name="model"]'); return n ? n.value : ""; }

  function field(p, value) {
    var wrap = el("div", { "class": "hp-field", "data-key": p.key });
    var id = "hp-" + p.key, hint = id + "-hint";
    wrap.appendChild(el("label", { "for": id }, p.key));
    var input;
    if (p.type === "bool" || p.type === "str") {
      input = el("select", { id: id, name: "hp." + p.key, "aria-describedby": hint });
      input.appendChild(el("option", { value: "" }, "default (" + String(p.default) + ")"));
      p.check_value.forEach(function (c) {
        var o = el("option", { value: String(c) }, String(c));
        if (value === String(c)) o.selected = true;
        input.appendChild(o);
      });
      wrap.appendChild(input);
      wrap.appendChild(el("p", { "class": "hint", id: hint }, "one of " + p.check_value.map(String).join(", ")));
    } else if (p.type === "modules") {
      input = el("input", {
        id: id, name: "hp." + p.key, type: "text", placeholder: String(p.default), "aria-describedby": hint
      });
      input.value = value;
      wrap.appendChild(input);
      wrap.appendChild(el("p", { "class": "hint", id: hint },
        "all-linear, or module names separated by commas (e.g. q_proj, v_proj)"));
    } else if (p.check_type === "choice") {
      input = el("select", { id: id, name: "hp." + p.key, "aria-describedby": hint });
      input.appendChild(el("option", { value: "" }, "default (" + fmt(p.default) + ")"));
      p.check_value.forEach(function (c) {
        var o = el("option", { value: fmt(c) }, fmt(c));
        if (value !== "" && Number(value) === c) o.selected = true;
        input.appendChild(o);
      });
      wrap.appendChild(input);
      wrap.appendChild(el("p", { "class": "hint", id: hint }, "one of " + p.check_value.map(fmt).join(", ")));
    } else {
      input = el("input", {
        id: id, name: "hp." + p.key, type: "number", inputmode: "decimal",
        step: p.type === "int" ? "1" : "any", min: String(p.check_value[0]), max: String(p.check_value[1]),
        placeholder: String(p.default), "aria-describedby": hint
      });
      input.value = value;
      wrap.appendChild(input);
      wrap.appendChild(el("p", { "class": "hint", id: hint },
        p.type + " in [" + fmt(p.check_value[0]) + ", " + fmt(p.check_value[1]) + "], default " + fmt(p.default)));
    }
    return wrap;
  }

  function rebuild() {
    var params = ((spec[modelName()] || {})[checked("train_mode")] || {})[checked("method")];
    if (!params) return;
    var current = {};
    box.querySelectorAll("[name^='hp.']").forEach(function (n) { current[n.name.slice(3)] = n.value; });
    box.textContent = "";
    params.forEach(function (p) { box.appendChild(field(p, current[p.key] || "")); });
  }

  form.addEventListener("change", function (ev) {
    var name = ev.target.getAttribute("name");
    if (name === "model" || name === "train_mode" || name === "method") rebuild();
  });
})();

/* New-run form: the chosen dataset's first conversation as the model's chat template renders it, with the
   tokens a run trains on highlighted (POST /console/preview; the server renders it in a child process). */
(function () {
  "use strict";
  var form = document.getElementById("run-form");
  var box = document.getElementById("data-preview");
  if (!form || !box || !window.Tunehouse) return;
  var el = window.Tunehouse.el;
  var body = document.getElementById("preview-body");
  var upload = document.getElementById("upload");
  var CONVERSATIONS = { chat: true, prompt_response: true };
  var source = null;  // the ticked file's checkbox, or a File chosen for upload
  var seq = 0;  // answers to superseded requests are dropped

  function checked(name) { var n = form.querySelector('input[name="' + name + '"]:checked'); return n ? n.value : ""; }
  function modelName() { var n = form.querySelector('[name="model"]'); return n ? n.value : ""; }
  function ticked() { return form.querySelector('input[name="datasets"]:checked'); }
  function chosenUpload() { return upload && upload.files && upload.files.length ? upload.files[0] : null; }

  function hide() { seq += 1; box.hidden = true; body.textContent = ""; }

  function show(nodes) {
    body.textContent = "";
    nodes.forEach(function (n) { body.appendChild(n); });
    box.hidden = false;
  }

  function firstLine(file) {
    return file.slice(0, 1 << 20).text().then(function (text) {
      var lines = text.split(/\r?\n/);
      for (var i = 0; i < lines.length; i++) { if (lines[i].trim()) return lines[i]; }
      return "";
    });
  }

  function render(name, data) {
    var caption = el("p", { "class": "hint" });
    caption.appendChild(document.createTextNode("The first conversation of "));
    caption.appendChild(el("strong", {}, name));
    caption.appendChild(document.createTextNode(" as " + modelName() + "'s chat template renders it. "));
    var legend = el("span", { "class": "legend" });
    legend.appendChild(el("mark", { "class": "trained" }, "highlighted"));
    legend.appendChild(document.createTextNode(" = trained"));
    caption.appendChild(legend);
    var pre = el("pre", { "class": "rendering", id: "preview-rendering" });
    data.segments.forEach(function (s) {
      pre.appendChild(s.trained ? el("mark", { "class": "trained" }, s.text) : document.createTextNode(s.text));
    });
    var nodes = [caption, pre, el("p", { "class": "preview-count", id: "preview-count" },
      data.trained_tokens + " of " + data.tokens + " tokens trained")];
    if (data.warning) nodes.push(el("p", { "class": "warning" }, data.warning));
    return nodes;
  }

  function refresh() {
    var mine = ++seq;
    var isFile = source && source.nodeType === 1;
    if (!source || !modelName() || checked("train_mode") !== "sft" ||
        (isFile && !CONVERSATIONS[source.getAttribute("data-format")])) { hide(); return; }
    var name = isFile ? source.getAttribute("data-filename") : source.name;
    show([el("p", { "class": "muted" }, "Rendering the first conversation of " + name + "…")]);
    var payload = new FormData();
    payload.append("model", modelName());
    var ready;
    if (isFile) {
      payload.append("file", source.value);
      ready = Promise.resolve();
    } else {
      ready = firstLine(source).then(function (line) { payload.append("line", line); });
    }
    ready.then(function () {
      return fetch("/console/preview", {
        method: "POST", body: payload, credentials: "same-origin",
        headers: { "X-CSRF-Token": window.Tunehouse.csrf }
      });
    }).then(function (r) {
      return r.json().catch(function () { return { error: "preview request failed (" + r.status + ")" }; });
    }).then(function (data) {
      if (mine !== seq) return;
      if (data.error) {
        show([el("div", { "class": "error", role: "alert" }, "No preview: " + data.error)]);
      } else if (data.segments) {
        show(render(name, data));
      } else {
        hide();  // text or preference rows: nothing is masked, nothing to show
      }
    }).catch(function (err) {
      if (mine === seq) show([el("div", { "class": "error", role: "alert" }, String(err.message || err))]);
    });
  }

  form.addEventListener("change", function (ev) {
    var t = ev.target, name = t.getAttribute("name");
    if (name === "datasets") {
      if (t.checked) source = t;
      else if (source === t) source = ticked() || chosenUpload();
    } else if (t === upload) {
      source = chosenUpload() || ticked();
    } else if (name !== "model" && name !== "train_mode") {
      return;
    }
    refresh();
  });
  source = chosenUpload() || ticked();  // a form re-rendered after an error keeps its choices
  if (source) refresh();
})();
