// The annotator's screen: one item at a time, the next one leased and preloaded, keyboard first.
// Every answer carries a client-made id and is kept in localStorage until the server has it,
// so a retry, a reload or a dropped connection never loses or doubles a judgment.
(function () {
  "use strict";
  const root = document.getElementById("annotator");
  if (!root) return;
  const base = root.dataset.api.replace(/next\/$/, "");
  const kind = root.dataset.kind;
  const scale = root.dataset.scale;
  const pendingKey = "calibra-pending-" + root.dataset.study;
  const $ = (id) => document.getElementById(id);
  let current = null;
  const queue = [];
  let shownAt = 0;
  let chain = Promise.resolve();
  let filling = null;
  // Leases run beside the answers and carry a count from before the latest answer was stored:
  // once an answer's response has set the progress, only answers (and undo) may change it.
  let progressFromAnswers = false;
  // Items answered on this page: excluded from prefetching while their answers are in flight.
  const answered = [];
  function remember(itemId) { answered.push(itemId); if (answered.length > 20) answered.shift(); }
  function held() { return [current && current.item, ...queue.map((q) => q.item), ...answered].filter(Boolean); }

  function csrfToken() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  async function call(path, body) {
    const response = await fetch(base + path, {
      method: body === undefined ? "GET" : "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { status: response.status, data: data, retryAfter: Number(response.headers.get("Retry-After")) || 0 };
  }

  // A network error (status 0) or a server that asks to be asked again (503 while the database
  // restarts, 502/504 from a proxy, 429): wait, longer each time, at least its Retry-After.
  function retryable(status) { return status === 0 || status === 429 || status >= 500; }
  function backoff(r, attempt) {
    const ms = Math.max(Math.min(30000, 500 * 2 ** attempt), 1000 * (r.retryAfter || 0));
    return new Promise((ok) => setTimeout(ok, ms * (1 + Math.random() / 4)));
  }

  function say(text) { $("status").textContent = text; }

  function pending() {
    try { return JSON.parse(localStorage.getItem(pendingKey) || "[]"); } catch (e) { return []; }
  }
  function setPending(list) { localStorage.setItem(pendingKey, JSON.stringify(list)); }

  // Send one answer until the server has it; the same client_id makes resending safe.
  async function deliver(entry) {
    for (let attempt = 0; ; attempt++) {
      let r;
      try { r = await call(entry.path, entry.body); } catch (e) { r = { status: 0 }; }
      if (r.status === 200 || r.status === 201) {
        setPending(pending().filter((p) => p.body.client_id !== entry.body.client_id));
        if (r.data && r.data.progress) { progressFromAnswers = true; progress(r.data.progress); }
        return r;
      }
      if (!retryable(r.status)) {
        setPending(pending().filter((p) => p.body.client_id !== entry.body.client_id));
        say((r.data && r.data.detail) || "That answer was not accepted.");
        return r;
      }
      say("Connection problem: your answer is kept and will be sent again.");
      await backoff(r, attempt);
    }
  }

  function send(path, body) {
    const entry = { path: path, body: body };
    setPending(pending().concat([entry]));
    chain = chain.then(() => deliver(entry));
    return chain;
  }

  function progress(p) {
    const done = p.answered + p.skipped;
    $("progress").max = Math.max(p.target, 1);
    $("progress").value = done;
    $("progress-text").textContent = done + " of " + p.target;
  }

  function preload(item) {
    item.images.forEach((im) => { const img = new Image(); img.src = im.url; });
  }

  // Asking again is safe: the server hands back the lease it already gave.
  async function lease(exclude) {
    for (let attempt = 0; ; attempt++) {
      let r;
      try { r = await call("next/", { exclude: exclude }); } catch (e) { r = { status: 0 }; }
      if (r.status === 200) { if (attempt) say(""); return r.data; }
      if (!retryable(r.status) || attempt >= 20) {
        throw new Error((r.data && r.data.detail) || "Could not get the next item (" + r.status + ").");
      }
      say("Connection problem: asking for the next item again.");
      await backoff(r, attempt);
    }
  }

  function fill() {
    if (filling || queue.length || !current || current.done) return;
    filling = lease(held())
      .then((next) => { if (!next.done) { queue.push(next); preload(next); } })
      .catch(() => {})
      .finally(() => { filling = null; });
  }

  function show(item) {
    current = item;
    if (item.done) {
      $("task").hidden = true;
      $("done").hidden = false;
      $("completion-code").textContent = item.completion_code;
      if (item.progress && !progressFromAnswers) progress(item.progress);
      return;
    }
    item.client_id = item.client_id || crypto.randomUUID();
    $("done").hidden = true;
    $("task").hidden = false;
    $("prompt").textContent = item.prompt;
    item.images.forEach((im) => {
      const img = $("img-" + im.slot);
      img.src = im.url;
      img.alt = (im.slot === "single" ? "Image" : im.slot === "left" ? "Left image" : "Right image") +
        " for: " + item.prompt;
    });
    if (item.progress && !progressFromAnswers) progress(item.progress);
    shownAt = performance.now();
    fill();
  }

  async function advance() {
    if (queue.length) { show(queue.shift()); return; }
    if (filling) await filling;
    if (queue.length) { show(queue.shift()); return; }
    try { show(await lease(held())); }
    catch (e) { say(e.message); }
  }

  function answer(choice, extra) {
    if (!current || current.done) return;
    const body = Object.assign({ item: current.item, client_id: current.client_id, choice: choice,
      time_spent_ms: Math.round(performance.now() - shownAt) }, extra || {});
    remember(current.item);
    send("submit/", body);
    say("");
    advance();
  }

  function skip(reason) {
    if (!current || current.done) return;
    remember(current.item);
    send("skip/", { item: current.item, client_id: current.client_id, reason: reason });
    advance();
  }

  async function undo() {
    await chain;  // the last answer must have reached the server before it can be taken back
    const r = await call("undo/", {});
    if (r.status !== 200) { say((r.data && r.data.detail) || "Nothing to undo."); return; }
    if (current && !current.done) queue.unshift(current);
    const i = answered.indexOf(r.data.item);
    if (i >= 0) answered.splice(i, 1);
    say("Your last answer was taken back.");
    if (r.data.progress) progress(r.data.progress);
    show(r.data);
  }

  root.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.id === "undo") { undo(); return; }
    if (button.dataset.skip) { skip(button.dataset.skip); return; }
    if (button.dataset.choice) {
      const extra = {};
      if (button.dataset.reason) extra.reason = button.dataset.reason;
      if (button.dataset.score) extra.score = Number(button.dataset.score);
      answer(button.dataset.choice, extra);
    }
  });

  const keys = kind === "pairwise"
    ? { "1": ["left"], ArrowLeft: ["left"], "2": ["right"], ArrowRight: ["right"], "0": ["tie"],
        ArrowDown: ["tie"], g: ["tie", { reason: "both_good" }], b: ["tie", { reason: "both_bad" }] }
    : scale === "likert5"
      ? { "1": ["score", { score: 1 }], "2": ["score", { score: 2 }], "3": ["score", { score: 3 }],
          "4": ["score", { score: 4 }], "5": ["score", { score: 5 }] }
      : { y: ["aligned"], n: ["not_aligned"] };

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.repeat) return;
    if (event.target.closest && event.target.closest("input, textarea, select, summary")) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (key === "u") { event.preventDefault(); undo(); return; }
    if (key === "s") { event.preventDefault(); skip("unsure"); return; }
    const action = keys[key];
    if (!action || $("task").hidden) return;
    event.preventDefault();
    answer(action[0], action[1]);
  });

  // Answers left over from an earlier visit go out first, then the first item is shown.
  pending().forEach((entry) => { chain = chain.then(() => deliver(entry)); });
  chain.then(advance);
})();
