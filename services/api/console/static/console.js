// RecForge console: the little the pages need beyond HTML. Every page works without it; with it, a job's
// progress moves live (server-sent events), board moves show a refusal in place instead of a new page,
// and the labelling screen takes its answers from the keyboard.
"use strict";

function showAlert(text) {
  const alert = document.getElementById("alert");
  if (!alert) return;
  alert.textContent = text;
  alert.hidden = false;
  alert.scrollIntoView({ block: "nearest" });
}

// Forms marked data-inline: sent in the background; an error's message appears in the page's alert.
document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-inline")) return;
  event.preventDefault();
  const button = form.querySelector("button[type=submit]");
  if (button) button.disabled = true;
  try {
    const response = await fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
      headers: { "Accept": "text/html" },
    });
    if (response.ok) {
      window.location.href = response.url;  // the page the form led to, loaded afresh
      return;
    }
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const message = page.getElementById("error-message");
    showAlert(`${response.status}: ${message ? message.textContent.trim() : response.statusText}`);
  } catch (error) {
    showAlert(`The server could not be reached: ${error}`);
  } finally {
    if (button) button.disabled = false;
  }
});

function text(id, value) {
  const node = document.getElementById(id);
  if (node) node.textContent = value;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

// A job page: follow the job's stream until it ends, then show the page as it is then.
function followJob(section) {
  const source = new EventSource(section.dataset.stream);
  let lastChart = 0;
  let phases = -1;
  source.addEventListener("job", async (event) => {
    const job = JSON.parse(event.data);
    const p = job.progress || {};
    const status = document.getElementById("job-status");
    if (status) { status.textContent = job.status; status.className = `badge ${job.status}`; }
    const bar = document.getElementById("job-progress");
    if (bar && p.total_steps) { bar.max = p.total_steps; bar.value = p.step || 0; }
    text("job-steps", `${p.step || 0} / ${p.total_steps || "?"} steps`);
    text("job-phase", p.phase || "waiting for a worker");
    text("job-loss", p.loss ?? "—");
    text("job-rate", p.pairs_per_s ?? "—");
    text("job-eta", duration(p.eta_s));
    text("job-compute", `${(job.compute_seconds / 60).toFixed(1)} of ${job.compute_limit_hours * 60} min`);
    const list = document.getElementById("job-phases");
    if (list && p.phases && p.phases.length !== phases) {
      phases = p.phases.length;
      list.replaceChildren(...p.phases.map((item) => {
        const li = document.createElement("li");
        li.textContent = `${item.phase} `;
        const at = document.createElement("span");
        at.className = "hint";
        at.textContent = item.at;
        li.append(at);
        return li;
      }));
    }
    const now = Date.now();
    if (p.loss_curve && now - lastChart > 3000) {
      lastChart = now;
      const reply = await fetch(`/ui/jobs/${section.dataset.job}/loss`, { credentials: "same-origin" });
      const chart = reply.ok && !reply.redirected ? await reply.text() : "";
      if (chart.startsWith("<svg")) document.getElementById("loss-figure").innerHTML = chart;
    }
    if (["succeeded", "failed", "cancelled"].includes(job.status)) {
      source.close();
      window.setTimeout(() => window.location.reload(), 800);
    }
  });
  source.addEventListener("end", () => source.close());
}

// The labelling screen: a grade's digit sends that grade (the buttons' data-key), s goes to the reason to
// skip (Enter there sends the skip, Esc leaves it). Keys typed in a field are the field's own.
function labelByKeys(section) {
  const hint = document.getElementById("keys-hint");
  if (hint) hint.hidden = false;
  const reason = document.getElementById("skip-reason");
  let sent = false;
  document.addEventListener("keydown", (event) => {
    if (sent || event.defaultPrevented || event.repeat || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLElement && (target.isContentEditable || target.closest("input, textarea, select"))) {
      if (event.key === "Escape" && target === reason) reason.blur();
      return;
    }
    if (event.key === "s" || event.key === "S") {
      if (!reason) return;
      event.preventDefault();  // the s is not typed into the reason
      reason.focus();
      return;
    }
    const button = section.querySelector(`button[data-key="${CSS.escape(event.key)}"]`);
    if (!button || !button.form) return;
    event.preventDefault();
    sent = true;  // one answer per pair: the next page brings the next pair
    button.form.requestSubmit(button);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.querySelector("[data-stream]");
  if (section) followJob(section);
  const labeling = document.querySelector("[data-labeling]");
  if (labeling) labelByKeys(labeling);
});
