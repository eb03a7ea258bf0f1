/* Playground: each answer is read from a streamed POST (server-sent events over fetch) and shown piece by
   piece as the engine writes it; the base model answers the same prompt beside the fine-tuned one. */
(function () {
  "use strict";
  var T = window.Tunehouse;
  var form = document.getElementById("playground");
  if (!form) return;
  var select = document.getElementById("pg-model");
  var compare = document.getElementById("pg-compare");
  var send = document.getElementById("pg-send");

  function pane(id) {
    return {
      box: document.getElementById("answer-" + id),
      name: document.getElementById("answer-" + id + "-model"),
      text: document.getElementById("answer-" + id + "-text"),
      meta: document.getElementById("answer-" + id + "-meta")
    };
  }
  var tuned = pane("tuned");
  var base = pane("base");

  function chosen() { return select.options[select.selectedIndex]; }

  function showNames() {
    var opt = chosen();
    tuned.name.textContent = opt ? opt.value : "";
    base.name.textContent = opt ? opt.getAttribute("data-base") : "";
    base.box.hidden = !compare.checked;
  }
  select.addEventListener("change", showNames);
  compare.addEventListener("change", showNames);

  function setState(p, state, meta) {
    p.box.setAttribute("data-state", state);
    if (meta !== undefined) p.meta.textContent = meta;
  }

  // Server-sent events from a fetch body: blocks split by a blank line, each an `event:` and a `data:` line.
  function ask(p, model, body) {
    p.text.textContent = "";
    p.text.setAttribute("data-pieces", "0");
    setState(p, "waiting", "Waiting for " + model + " (a model not yet loaded takes a moment)…");
    var payload = Object.assign({ model: model }, body);
    return fetch("/console/playground/chat", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": T.csrf },
      body: JSON.stringify(payload)
    }).then(function (r) {
      if (!r.ok) {
        return r.json().catch(function () { return { error: "HTTP " + r.status }; }).then(function (e) {
          setState(p, "error", e.error || ("HTTP " + r.status));
        });
      }
      var reader = r.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      var pieces = 0;
      function handle(block) {
        var event = "message", data = "";
        block.split("\n").forEach(function (line) {
          if (line.indexOf("event:") === 0) event = line.slice(6).trim();
          else if (line.indexOf("data:") === 0) data += line.slice(5).trim();
        });
        if (!data) return;
        var msg = JSON.parse(data);
        if (event === "start") setState(p, "streaming", "Answering…");
        else if (event === "delta") {
          pieces += 1;
          p.text.appendChild(T.el("span", { "class": "piece" }, msg.text));
          p.text.setAttribute("data-pieces", String(pieces));
        } else if (event === "done") {
          // An untrained model may answer in blank lines only: say so rather than show an empty box.
          var blank = p.text.textContent.trim() === "" ? " · the answer is only whitespace" : "";
          setState(p, "done", msg.completion_tokens + " tokens · finished: " + msg.finish_reason + blank);
        } else if (event === "error") setState(p, "error", msg.message);
      }
      function pump() {
        return reader.read().then(function (step) {
          if (step.done) {
            if (p.box.getAttribute("data-state") === "streaming") setState(p, "error", "The answer was cut off.");
            return;
          }
          buffer += decoder.decode(step.value, { stream: true });
          var cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            handle(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
          }
          return pump();
        });
      }
      return pump();
    }).catch(function (err) { setState(p, "error", String(err.message || err)); });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var opt = chosen();
    if (!opt) return;
    var body = {
      prompt: document.getElementById("pg-prompt").value,
      system: document.getElementById("pg-system").value,
      max_tokens: parseInt(document.getElementById("pg-max-tokens").value, 10) || 48,
      temperature: parseFloat(document.getElementById("pg-temperature").value) || 0
    };
    send.disabled = true;
    var asks = [ask(tuned, opt.value, body)];
    if (compare.checked) asks.push(ask(base, opt.getAttribute("data-base"), body));
    Promise.all(asks).then(function () { send.disabled = false; });
  });
  showNames();
})();
