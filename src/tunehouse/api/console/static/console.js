/* Tunehouse console: shared helpers and dataset validation before submission. No build step. */
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function renderReport(report) {
    var box = el("div", { "class": "report " + (report.ok ? "ok" : "bad") });
    var head = el("p");
    head.appendChild(el("strong", {}, report.filename));
    var problems = report.errors.length + (report.more_errors || 0);
    head.appendChild(document.createTextNode(report.ok
      ? ": valid — " + report.rows + " rows, format " + report.format
      : ": " + problems + " problem(s); fix them before submitting"));
    box.appendChild(head);
    if (report.errors.length) {
      var list = el("ul", { "class": "line-errors" });
      report.errors.forEach(function (e) {
        var li = el("li");
        li.appendChild(document.createTextNode((e.line ? "Line " + e.line : "File") + " · "));
        li.appendChild(el("code", {}, e.field));
        li.appendChild(document.createTextNode(": " + e.message));
        list.appendChild(li);
      });
      if (report.more_errors) list.appendChild(el("li", {}, "… and " + report.more_errors + " more"));
      box.appendChild(list);
    }
    return box;
  }

  // Every file input marked data-validate is checked line by line by the server's validator as soon as
  // files are chosen; an invalid choice blocks the form (setCustomValidity) and shows the line errors.
  function watchUpload(input) {
    var target = document.getElementById(input.getAttribute("data-validate"));
    input.addEventListener("change", function () {
      input.setCustomValidity("");
      input.removeAttribute("aria-invalid");
      target.textContent = "";
      if (!input.files || !input.files.length) return;
      target.appendChild(el("p", { "class": "muted" }, "Checking " + input.files.length + " file(s)…"));
      var body = new FormData();
      Array.prototype.forEach.call(input.files, function (f) { body.append("file", f, f.name); });
      input.setCustomValidity("Still checking the file(s)…");
      fetch("/console/files/validate", {
        method: "POST", body: body, credentials: "same-origin", headers: { "X-CSRF-Token": csrf }
      }).then(function (r) {
        if (!r.ok) throw new Error("validation request failed (" + r.status + ")");
        return r.json();
      }).then(function (data) {
        target.textContent = "";
        var bad = 0;
        data.files.forEach(function (rep) { if (!rep.ok) bad += 1; target.appendChild(renderReport(rep)); });
        target.setAttribute("data-checked", bad ? "invalid" : "valid");
        if (bad) {
          input.setCustomValidity(bad + " file(s) have errors; see the list below.");
          input.setAttribute("aria-invalid", "true");
        } else {
          input.setCustomValidity("");
          document.dispatchEvent(new CustomEvent("tunehouse:validated", { detail: data.files }));
        }
      }).catch(function (err) {
        input.setCustomValidity("");
        target.textContent = "";
        target.appendChild(el("p", { "class": "error" }, String(err.message || err)));
      });
    });
  }

  document.querySelectorAll("input[type=file][data-validate]").forEach(watchUpload);
  window.Tunehouse = { csrf: csrf, el: el };
})();
