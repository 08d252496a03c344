// The rating page: one task at a time from /api/<protocol>/next, answers to /api/<protocol>/answer.
// Everything the page learns about an image is an opaque URL: real and generated look the same here.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const LABELS = { "real-or-fake": [["real", "Real (F / \u2190)"], ["fake", "Fake (J / \u2192)"]],
                   "pairwise": [["left", "Left (F / \u2190)"], ["right", "Right (J / \u2192)"]] };
  let protocol = null, task = null, shownAt = 0, busy = true;
  // data-state on #rate says whether the page waits for an answer (the same for every task)
  function setBusy(value) { busy = value; $("rate").dataset.state = value ? "busy" : "waiting"; }

  function show(id) { for (const s of ["intro", "rate", "done"]) $(s).hidden = s !== id; }
  function fail(message) { $("error").textContent = message; $("error").hidden = false; }
  async function getJSON(url, options) {
    const response = await fetch(url, Object.assign({ credentials: "same-origin", cache: "no-store" }, options || {}));
    if (!response.ok) throw new Error(response.status + " " + (await response.text()));
    return response.json();
  }

  async function start() {
    const state = await getJSON("/api/state");
    protocol = state.protocol;
    $("instructions-" + protocol).hidden = false;
    $("name").value = state.name;
    LABELS[protocol].forEach(([, label], i) => { $("choice-" + i).textContent = label; });
    if (state.done > 0 && state.done >= state.total) return finish(state.done);
    show("intro");
    busy = false;
    $("start").focus();
  }

  async function begin() {
    busy = true;
    const name = $("name").value.trim();
    if (name) await getJSON("/api/name", { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify({ name: name }) });
    show("rate");
    await next();
  }

  function finish(count) { $("done-count").textContent = count; show("done"); busy = true; }

  async function next() {
    setBusy(true);
    const data = await getJSON("/api/" + protocol + "/next");
    $("progress").textContent = data.done + " / " + data.total;
    if (data.task === null) return finish(data.done);
    task = data.task;
    $("question").textContent = data.question;
    const box = $("images");
    box.className = "images" + (data.images.length === 2 ? " two" : "");
    const images = data.images.map((url, i) => {
      const img = new Image();
      img.alt = "image " + (i + 1);
      img.src = url;
      if (data.images.length === 2) img.addEventListener("click", () => choose(i));
      return img;
    });
    await Promise.all(images.map((img) => img.decode().catch(() => undefined)));
    box.replaceChildren(...images);
    shownAt = performance.now();
    setBusy(false);
  }

  async function choose(i) {
    if (busy || task === null) return;
    setBusy(true);
    const body = { task: task, answer: LABELS[protocol][i][0], response_ms: Math.round(performance.now() - shownAt) };
    try {
      await getJSON("/api/" + protocol + "/answer", { method: "POST", headers: { "Content-Type": "application/json" },
                                                      body: JSON.stringify(body) });
      $("error").hidden = true;
    } catch (e) {
      if (!String(e.message).startsWith("409")) { fail("Could not save the answer (" + e.message + "): try again."); setBusy(false); return; }
    }
    await next();
  }

  $("start").addEventListener("click", () => { if (!busy) begin().catch((e) => fail(e.message)); });
  $("choice-0").addEventListener("click", () => choose(0));
  $("choice-1").addEventListener("click", () => choose(1));
  document.addEventListener("keydown", (event) => {
    if (!$("intro").hidden) {
      if (event.key === "Enter" && !busy) { event.preventDefault(); begin().catch((e) => fail(e.message)); }
      return;
    }
    if ($("rate").hidden || event.repeat) return;
    const key = event.key.toLowerCase();
    if (key === "f" || key === "arrowleft") { event.preventDefault(); choose(0); }
    else if (key === "j" || key === "arrowright") { event.preventDefault(); choose(1); }
  });
  start().catch((e) => { show("rate"); fail(e.message); });
})();
