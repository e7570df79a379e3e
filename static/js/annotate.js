// The annotator's screen: one item at a time, the next one leased and preloaded, keyboard first.
// Every answer carries a client-made id and is kept in localStorage until the server has it,
// so a retry, a reload or a dropped connection never loses or doubles a judgment.
// An item takes answers only while all of its images are on screen, and each answer names the
// lease it was given under, so the server applies exactly the sides the annotator saw.
(function () {
  "use strict";
  const root = document.getElementById("annotator");
  if (!root) return;
  const base = root.dataset.api.replace(/next\/$/, "");
  const kind = root.dataset.kind;
  const scale = root.dataset.scale;
  const user = root.dataset.user;
  // Per user and study: on a shared computer one annotator's unsent answers never go out under
  // another's session. (The old per-study key is never read: whose answers it holds is unknown.)
  const pendingKey = "calibra-pending-" + user + "-" + root.dataset.study;
  const $ = (id) => document.getElementById(id);
  const stacked = window.matchMedia("(max-width: 640px)");  // the two images one above the other
  let current = null;
  const queue = [];
  let shownAt = 0;  // when the item on screen was shown: its prompt, then again once its images are
  let position = null;  // the number of the item on screen in the annotator's share, for the announcement
  // Set once the server refuses this annotator, not one answer: "signed-out" (401, or 403 other
  // than a pause: the session ended) or "paused" (403 paused by the researcher or the accuracy
  // check). From then on no answer is taken, and nothing pending is dropped.
  let stopped = null;
  let chain = Promise.resolve();
  let advancing = Promise.resolve();  // the move to the next item after an answer
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

  // The token of the session this page was opened in, kept: once someone signs in in another tab
  // (a sign-in rotates it) the server refuses this page (403) instead of taking its answers as theirs.
  const csrf = csrfToken();

  async function call(path, body) {
    const response = await fetch(base + path, {
      method: body === undefined ? "GET" : "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
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

  // "info" for news (a retry, an undo), "error" only for what went wrong; the same polite live region.
  function say(text, tone) {
    const status = $("status");
    status.textContent = text;
    status.className = "status" + (text ? " " + (tone || "info") : "");
  }

  // A refusal of the annotator rather than of one answer: keep the answers, stop, and say why.
  function refusal(r) {
    if (r.status === 401) return "signed-out";
    if (r.status === 403) return r.data && r.data.error === "paused" ? "paused" : "signed-out";
    if (r.status === 409 && r.data && r.data.error === "study_not_open") return "not-open";
    return null;
  }

  function stop(why, detail) {
    if (stopped) return;
    stopped = why;
    current = null;
    queue.length = 0;
    const task = $("task");
    const hadFocus = task.contains(document.activeElement);
    task.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    task.hidden = true;
    $("done").hidden = true;
    say("");
    const notice = $(why === "paused" || why === "not-open" ? why : "signed-out");
    if (why === "paused") $("paused-reason").textContent = detail ? "Reason given: " + detail : "";
    notice.hidden = false;
    const heading = notice.querySelector("h2");
    if (hadFocus || document.activeElement === document.body) heading.focus({ preventScroll: false });
  }

  function pending() {
    try { return JSON.parse(localStorage.getItem(pendingKey) || "[]"); } catch (e) { return []; }
  }
  function setPending(list) { localStorage.setItem(pendingKey, JSON.stringify(list)); }
  function unpend(entry) { setPending(pending().filter((p) => p.body.client_id !== entry.body.client_id)); }

  // The server refused an answer given to an outdated display of its item (shown again since, in
  // another tab or after the lease lapsed, with its sides drawn anew): nothing was stored.
  const STALE = "That answer was not stored: the item was shown again since (in another tab, or after " +
    "a long pause), perhaps with its images the other way round. It is shown again now: answer it as you see it.";

  // Send one answer until the server has it; the same client_id makes resending safe.
  async function deliver(entry) {
    for (let attempt = 0; ; attempt++) {
      if (stopped) return { status: 0 };  // kept in the browser, sent on the next visit
      let r;
      try { r = await call(entry.path, entry.body); } catch (e) { r = { status: 0 }; }
      if (r.status === 200 || r.status === 201) {
        unpend(entry);
        if (r.data && r.data.progress) { progressFromAnswers = true; progress(r.data.progress); }
        return r;
      }
      const why = refusal(r);
      if (why) { stop(why, r.data && r.data.detail); return r; }
      if (r.status === 409 && r.data && r.data.error === "stale_display") {
        unpend(entry);
        say(STALE, "error");
        showAgain(entry.body.item);
        return r;
      }
      if (!retryable(r.status)) {  // this answer only, e.g. 409 when the item's lease has expired
        unpend(entry);
        say("That answer was not accepted: " + ((r.data && r.data.detail) || "error " + r.status) + ".", "error");
        return r;
      }
      say("Connection problem: your answer is kept and will be sent again.", "info");
      await backoff(r, attempt);
    }
  }

  function send(path, body) {
    const entry = { path: path, body: body, user: user };
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
      const why = refusal(r);
      if (why) { stop(why, r.data && r.data.detail); throw new Error(why); }
      if (!retryable(r.status) || attempt >= 20) {
        const error = new Error((r.data && r.data.detail) || "error " + r.status);
        error.code = r.data && r.data.error;
        throw error;
      }
      say("Connection problem: asking for the next item again.", "info");
      await backoff(r, attempt);
    }
  }

  // Any failure, including 409 too_many_leases (other tabs hold the study's most items at once),
  // only means no preload for now: the next item is asked for when it is needed.
  function fill() {
    if (stopped || filling || queue.length || !current || current.done) return;
    filling = lease(held())
      .then((next) => {
        if (!next.done && !stopped && !(current && current.item === next.item)) { queue.push(next); preload(next); }
      })
      .catch(() => {})
      .finally(() => { filling = null; });
  }

  function sideName(slot) {
    if (slot === "single") return "Image";
    if (stacked.matches) return slot === "left" ? "Top image" : "Bottom image";
    return slot === "left" ? "Left image" : "Right image";
  }
  function altTexts() {
    if (!current || current.done) return;
    current.images.forEach((im) => { $("img-" + im.slot).alt = sideName(im.slot) + " for: " + current.prompt; });
  }
  if (stacked.addEventListener) stacked.addEventListener("change", altTexts);
  const images = document.querySelector("#task .images");
  // An item takes answers only once each of its images has loaded and is decoded on screen. The
  // element is checked against the URL this item asked for (retries add to it), so a late load
  // of an earlier item's image unlocks nothing.
  function imageLoaded(img) {
    const item = current;
    const url = img.dataset.url;
    if (stopped || !item || item.done || item.shown || !url) return;
    const wanted = item.images.find((im) => im.slot === img.dataset.slot);
    if (!wanted || wanted.url !== url || img.src.replace(/[?&]retry=\d+$/, "") !== new URL(url, location.href).href) return;
    img.decode().then(() => {
      if (current !== item || img.dataset.url !== url || item.shown) return;
      item.decoded.add(wanted.slot);
      if (item.decoded.size === item.images.length) imagesShown(item);
    }, () => {});  // its src changed meanwhile (a retry, the next item) or it failed: the error path says so
  }
  function loading(on) {
    images.classList.toggle("loading", on);
    images.setAttribute("aria-busy", on ? "true" : "false");
    $("loading").hidden = !on;
    // Skipping because an image did not load, and undo, stay possible while loading.
    document.querySelectorAll("#task button[data-choice], #task button[data-skip=unsure]").forEach((b) => { b.disabled = on; });
  }
  const WAIT = "Wait for the images to be shown: answers are taken from then on.";
  function imagesShown(item) {
    item.shown = true;
    shownAt = performance.now();  // the time spent on an item counts from when it could be seen
    loading(false);
    if ($("status").textContent === WAIT) say("");
  }
  document.querySelectorAll("#task img[data-slot]").forEach((img) => img.addEventListener("load", () => imageLoaded(img)));
  // An image of the item on screen that fails (its file is missing, the connection dropped):
  // say so, in the error colour, and point at the skip that records why.
  // A failure that passes (a busy server's 503, a dropped connection) is retried twice first.
  document.querySelectorAll("#task img[data-slot]").forEach((img) => img.addEventListener("error", () => {
    if (stopped || !current || current.done || !img.dataset.url) return;
    const url = img.dataset.url;
    const tries = Number(img.dataset.tries || 0);
    if (tries < 2) {
      img.dataset.tries = String(tries + 1);
      setTimeout(() => {
        if (img.dataset.url === url) img.src = url + (url.includes("?") ? "&" : "?") + "retry=" + (tries + 1);
      }, 500 * (tries + 1));
      return;
    }
    $("loading").hidden = true;  // not loading any more: the status line says what failed
    say(sideName(img.dataset.slot) + " did not load. Reload the page, or skip this item with \u201cImage did not load\u201d.", "error");
  }));

  // A new item never inherits a pressed button: focus goes to its description (read out by a
  // screen reader, and Enter or Space there answers nothing), and the live region names it.
  function announce(item) {
    if (position === null) position = Number($("progress").value) + 1;
    $("announce").textContent = "Item " + position + ": " + item.prompt;
    focusOn($("prompt"));
  }
  function focusOn(element) {
    const active = document.activeElement;
    if (!active || active === document.body || $("task").contains(active)) element.focus({ preventScroll: true });
  }

  function show(item) {
    if (stopped) return;
    current = item;
    if (item.done) {
      $("task").hidden = true;
      $("done").hidden = false;
      $("completion-code").textContent = item.completion_code || "";
      $("completion").hidden = !item.completion_code;  // none when there was nothing left to do
      $("no-items").hidden = !!item.completion_code;
      if (item.progress && !progressFromAnswers) progress(item.progress);
      $("announce").textContent = "You are done.";
      focusOn($("done-h"));
      return;
    }
    item.client_id = item.client_id || crypto.randomUUID();
    item.shown = false;
    item.decoded = new Set();
    loading(true);  // hides the previous item's images at once: no old pixels under the new prompt
    $("done").hidden = true;
    $("task").hidden = false;
    $("prompt").textContent = item.prompt;
    item.images.forEach((im) => {
      const img = $("img-" + im.slot);
      img.removeAttribute("src");
      img.dataset.url = im.url;
      img.dataset.tries = "0";
      img.src = im.url;
    });
    altTexts();
    if (item.progress && !progressFromAnswers) progress(item.progress);
    shownAt = performance.now();
    announce(item);
    fill();
  }

  async function advance() {
    if (stopped) return;
    if (queue.length) { show(queue.shift()); return; }
    if (filling) await filling;
    if (queue.length) { show(queue.shift()); return; }
    await leaseAndShow();
  }

  async function leaseAndShow() {
    try { show(await lease(held())); }
    catch (e) {
      if (stopped) return;
      // Nothing to show: the answered item must not stay on screen taking answers.
      current = null;
      $("task").hidden = true;
      say(e.code === "too_many_leases"
        ? "You have as many items of this study open as it allows, in other tabs or windows. Close them, then reload this page."
        : "Could not get the next item (" + e.message + "). Reload the page to try again.", "error");
    }
  }

  // After a stale_display refusal: the item comes back now, as the server holds it (its current
  // lease and sides); the item that was on screen is kept to come next.
  async function showAgain(itemId) {
    const i = answered.indexOf(itemId);
    if (i >= 0) answered.splice(i, 1);
    await advancing;
    if (stopped) return;
    if (current && !current.done) queue.unshift(current);
    current = null;
    advancing = leaseAndShow();
  }

  // Answers are taken only for an item whose images are all shown.
  function answerable() {
    if (stopped || !current || current.done) return false;
    if (!current.shown) say(WAIT, "info");
    return current.shown;
  }

  // Each item is answered once: until the next one is shown, current is empty.
  function answer(choice, extra) {
    if (!answerable()) return;
    const body = Object.assign({ item: current.item, lease: current.lease, client_id: current.client_id,
      choice: choice, time_spent_ms: Math.round(performance.now() - shownAt) }, extra || {});
    remember(current.item);
    current = null;
    if (position !== null) position += 1;
    send("submit/", body);
    say("");
    advancing = advance();
  }

  function skip(reason) {
    if (reason === "image_not_loaded" ? stopped || !current || current.done : !answerable()) return;
    remember(current.item);
    const body = { item: current.item, lease: current.lease, client_id: current.client_id, reason: reason };
    current = null;
    if (position !== null) position += 1;
    send("skip/", body);
    say("");
    advancing = advance();
  }

  async function undo() {
    if (stopped) return;
    await chain;  // the last answer must have reached the server before it can be taken back
    await advancing;  // and the next item be on screen, to be held back while the last one is shown
    if (stopped) return;
    let r;
    try { r = await call("undo/", {}); } catch (e) { r = { status: 0 }; }
    const why = refusal(r);
    if (why) { stop(why, r.data && r.data.detail); return; }
    if (r.status !== 200) {
      say(r.status === 0 ? "Connection problem: nothing was taken back." : (r.data && r.data.detail) || "Nothing to undo.",
        r.status === 0 ? "error" : "info");
      return;
    }
    if (current && !current.done) queue.unshift(current);
    const i = answered.indexOf(r.data.item);
    if (i >= 0) answered.splice(i, 1);
    say("Your last answer was taken back.", "info");
    if (r.data.progress) progress(r.data.progress);
    position = r.data.progress ? r.data.progress.answered + r.data.progress.skipped + 1 : Math.max(1, position - 1);
    show(r.data);
  }

  root.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.id === "undo") { undo(); return; }
    if (button.dataset.skip || button.dataset.choice) button.blur();  // the next item is not answered by Enter
    if (button.dataset.skip) { skip(button.dataset.skip); return; }
    if (button.dataset.choice) {
      const extra = {};
      if (button.dataset.reason) extra.reason = button.dataset.reason;
      if (button.dataset.score) extra.score = Number(button.dataset.score);
      answer(button.dataset.choice, extra);
    }
  });

  // No arrow key that scrolls the page (up, down) answers anything.
  const keys = kind === "pairwise"
    ? { "1": ["left"], ArrowLeft: ["left"], "2": ["right"], ArrowRight: ["right"], "0": ["tie"],
        g: ["tie", { reason: "both_good" }], b: ["tie", { reason: "both_bad" }] }
    : scale === "likert5"
      ? { "1": ["score", { score: 1 }], "2": ["score", { score: 2 }], "3": ["score", { score: 3 }],
          "4": ["score", { score: 4 }], "5": ["score", { score: 5 }] }
      : { y: ["aligned"], n: ["not_aligned"] };

  function typing(target) {
    return !!(target && (target.isContentEditable ||
      (target.closest && target.closest("input, textarea, select, [contenteditable]:not([contenteditable=false])"))));
  }

  // Enter or Space on an answer button just after a new item appeared was meant for the old one
  // (and none answers before the images are shown; "Image did not load" may).
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    const button = event.target.closest && event.target.closest("button[data-choice], button[data-skip]");
    const early = !current || performance.now() - shownAt < 300 ||
      (!current.shown && button && button.dataset.skip !== "image_not_loaded");
    if (button && early) {
      event.preventDefault();
      event.stopPropagation();
    }
  }, true);

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.repeat || event.defaultPrevented) return;
    if (typing(event.target)) return;  // a focused summary or button still gets the shortcuts
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (stopped) return;
    if (key === "u") { event.preventDefault(); undo(); return; }
    if (key === "s") { event.preventDefault(); skip("unsure"); return; }
    const action = keys[key];
    if (!action || $("task").hidden) return;
    event.preventDefault();
    answer(action[0], action[1]);
  });

  // This user's answers left over from an earlier visit go out first, then the first item is shown.
  pending().filter((entry) => entry.user === user).forEach((entry) => { chain = chain.then(() => deliver(entry)); });
  advancing = chain.then(advance);
})();
