// The jobs page (templates/dashboard/jobs.html): while any job shown is queued or running,
// poll the jobs API every 2 s and update each row in place (no reload); stop when none is.
// Without this script the page still works: the forms post to the server, a reload updates.
//
// What this script and the browser test rely on (keep stable):
//   #jobs                         data-poll-ms (interval), data-generation-api, data-scoring-api
//                                 (GET /api/generation-jobs/ and /api/scoring-jobs/: lists of
//                                 {id, status, done_images, total_images, error, ...})
//   #job-status-labels            <script type="application/json">: {status value: label}
//   #jobs-poll-state              says whether live updates are on
//   #jobs-live                    role=status aria-live=polite: "Generation job 7 finished
//                                 (8 / 8 images).", "... failed: <error>", "... was cancelled."
//   #jobs-action-error            role=alert: why a retry or cancel was refused (409)
//   tr#job-<kind>-<id>            kind: generation | scoring; data-job-kind, data-job-id,
//                                 data-status (queued | running | succeeded | failed | cancelled)
//     [data-field=status]         the status label
//     progress[data-field=progress]  value = done_images, max = total_images (1 when 0)
//     [data-field=done], [data-field=total]  the counts
//     [data-field=error]          the error text; hidden when empty
//     form[data-action=retry]     POST .../retry/; hidden unless failed or cancelled
//     form[data-action=cancel]    POST .../cancel/; hidden unless queued or running
(function () {
  "use strict";
  const root = document.getElementById("jobs");
  if (!root) return;
  const ACTIVE = ["queued", "running"];
  const RETRYABLE = ["failed", "cancelled"];
  const interval = Number(root.dataset.pollMs) || 2000;
  const apis = { generation: root.dataset.generationApi, scoring: root.dataset.scoringApi };
  const labelsNode = document.getElementById("job-status-labels");
  const labels = labelsNode ? JSON.parse(labelsNode.textContent) : {};
  const live = document.getElementById("jobs-live");
  const pollState = document.getElementById("jobs-poll-state");
  let timer = null;
  let failures = 0;
  let busy = false;

  function rows() { return Array.from(root.querySelectorAll("tr[data-job-id]")); }
  function anyActive() { return rows().some((tr) => ACTIVE.includes(tr.dataset.status)); }
  function field(tr, name) { return tr.querySelector('[data-field="' + name + '"]'); }
  function title(kind) { return kind.charAt(0).toUpperCase() + kind.slice(1); }

  function announce(text) {
    // Cleared first so that the same words said twice are read twice.
    live.textContent = "";
    window.setTimeout(() => { live.textContent = text; }, 50);
  }

  function update(tr, job) {
    const before = tr.dataset.status;
    const bar = field(tr, "progress");
    bar.max = Math.max(job.total_images, 1);
    bar.value = job.done_images;
    field(tr, "done").textContent = job.done_images;
    field(tr, "total").textContent = job.total_images;
    const status = field(tr, "status");
    status.textContent = labels[job.status] || job.status;
    status.className = "job-status job-status-" + job.status;
    const error = field(tr, "error");
    error.textContent = job.error || "";
    error.hidden = !job.error;
    tr.querySelector('form[data-action="retry"]').hidden = !RETRYABLE.includes(job.status);
    tr.querySelector('form[data-action="cancel"]').hidden = !ACTIVE.includes(job.status);
    tr.dataset.status = job.status;
    if (before === job.status || !ACTIVE.includes(before)) return;
    const name = title(tr.dataset.jobKind) + " job " + job.id;
    if (job.status === "succeeded") {
      announce(name + " finished (" + job.done_images + " / " + job.total_images + " images).");
    } else if (job.status === "failed") {
      announce(name + " failed: " + (job.error || "no error recorded") + ".");
    } else if (job.status === "cancelled") {
      announce(name + " was cancelled.");
    }
  }

  async function fetchJobs(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error("the jobs API answered " + response.status);
    return response.json();
  }

  async function poll() {
    timer = null;
    if (document.hidden || busy) return;  // resumed by visibilitychange
    busy = true;
    try {
      const [generation, scoring] = await Promise.all([fetchJobs(apis.generation), fetchJobs(apis.scoring)]);
      [["generation", generation], ["scoring", scoring]].forEach(([kind, list]) => {
        list.forEach((job) => {
          const tr = document.getElementById("job-" + kind + "-" + job.id);
          if (tr) update(tr, job);
        });
      });
      failures = 0;
    } catch (e) {
      failures += 1;
      pollState.textContent = "Live updates paused (" + e.message + "); trying again.";
    } finally {
      busy = false;
    }
    schedule();
  }

  function schedule() {
    if (timer !== null) return;
    if (!anyActive()) {
      pollState.textContent = "No job is queued or running.";
      return;
    }
    if (failures === 0) {
      pollState.textContent = "Some jobs are queued or running: this page updates itself every " +
        Math.round(interval / 1000) + " seconds.";
    }
    // Back off after failures (a lost connection, a logout), up to 30 s.
    timer = window.setTimeout(poll, Math.min(30000, interval * 2 ** failures));
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !busy) poll();
  });

  schedule();
})();
