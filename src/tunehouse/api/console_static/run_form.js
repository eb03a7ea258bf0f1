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
    if (p.check_type === "choice") {
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
