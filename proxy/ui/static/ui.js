// rrproxy's web UI: the little interaction the server-rendered pages need. No framework.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="rrproxy-csrf"]').content;
  const prefix = "/_rrproxy/ui";
  const flash = (text) => { document.getElementById("flash").textContent = text; };

  // State changes: JSON with the page's CSRF token, from this origin only.
  async function act(action, body) {
    const response = await fetch(prefix + "/actions/" + action, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Rrproxy-Csrf": csrf },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error((answer.error && answer.error.message) || response.statusText);
    }
    return answer;
  }

  document.addEventListener("click", async (event) => {
    const target = event.target.closest("button");
    if (!target) return;
    try {
      if (target.dataset.deleteCassette !== undefined) {
        const name = target.dataset.deleteCassette;
        if (!confirm("Delete cassette " + name + " and everything recorded in it?")) return;
        await act("delete-cassette", { name });
        if (target.dataset.then) { location.href = target.dataset.then; return; }
        target.closest("tr").remove();
        flash("Deleted cassette " + name + ".");
      } else if (target.dataset.deleteInteraction !== undefined) {
        if (!confirm("Delete this interaction?")) return;
        await act("delete-interaction", { id: Number(target.dataset.deleteInteraction) });
        location.href = target.dataset.then;
      } else if (target.dataset.copy) {
        const text = document.querySelector(target.dataset.copy).value;
        try { await navigator.clipboard.writeText(text); } catch (e) {
          const area = document.querySelector(target.dataset.copy);
          area.select(); document.execCommand("copy");
        }
        flash("Copied the request as a curl command (credentials are [REDACTED] in the store: put yours back).");
      } else if (target.id === "run-apply") {
        const mode = document.getElementById("mode-select").value;
        const cassette = document.getElementById("cassette-input").value;
        await act("mode", { mode });
        await act("cassette", { name: cassette });
        flash("Mode " + mode + ", cassette " + cassette + " (a new replay run).");
      } else if (target.id === "run-reset") {
        await act("reset", {});
        flash("A new replay run: every counter back to zero.");
      }
    } catch (error) {
      flash("Failed: " + error.message);
    }
  });

  // Parts of the interaction page read after its first screen: the LLM summary, and the
  // timeline of a long stream. The fragments are the server's own HTML.
  for (const id of ["summary", "timeline"]) {
    const part = document.getElementById(id);
    if (!part || !part.dataset.src) continue;
    const title = part.querySelector("h2").outerHTML;
    fetch(part.dataset.src, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(r.statusText))))
      .then((html) => { part.innerHTML = (id === "timeline" ? title : "") + html; })
      .catch(() => { part.innerHTML = title + "<p class=muted>could not be read</p>"; });
  }

  // A WebSocket message's bytes, read when its row is opened (the page carries none).
  document.addEventListener("toggle", (event) => {
    const part = event.target;
    if (!part.open || !part.dataset || !part.dataset.bytes || part.dataset.read) return;
    part.dataset.read = "1";
    const pre = part.querySelector("pre");
    fetch(part.dataset.bytes, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(new Error(r.statusText))))
      .then((text) => { pre.textContent = text; })
      .catch(() => { pre.textContent = "could not be read"; delete part.dataset.read; });
  }, true);

  // The live page: recordings over SSE, each timeline growing as its events arrive.
  const live = document.getElementById("live");
  if (live) {
    const template = document.getElementById("live-item");
    const status = document.getElementById("live-status");
    const items = new Map();
    const NS = "http://www.w3.org/2000/svg";
    const feed = new EventSource(live.dataset.feed);
    feed.onopen = () => { status.textContent = "connected"; };
    feed.onerror = () => { status.textContent = "reconnecting…"; };
    feed.addEventListener("interaction", (e) => {
      const d = JSON.parse(e.data);
      const node = template.content.firstElementChild.cloneNode(true);
      node.dataset.id = d.id;
      const link = node.querySelector(".link");
      link.href = d.link;
      link.textContent = d.method + " " + d.url + " (" + d.cassette + ")";
      node.querySelector(".state").textContent = d.outcome;
      live.prepend(node);
      items.set(d.id, { node, max: 1000 });
    });
    feed.addEventListener("events", (e) => {
      const d = JSON.parse(e.data);
      const item = items.get(d.id);
      if (!item) return;
      const svg = item.node.querySelector("svg");
      const marks = svg.querySelector(".marks");
      const list = item.node.querySelector(".live-events");
      for (const mark of d.marks) {  // the new events, 50 ms to a mark
        const rect = document.createElementNS(NS, "rect");
        const h = Math.min(60, 8 + Math.sqrt(mark.size));
        rect.setAttribute("class", "mark");
        rect.setAttribute("x", mark.t);
        rect.setAttribute("y", 64 - h);
        rect.setAttribute("height", h);
        rect.appendChild(document.createElementNS(NS, "title")).textContent =
          mark.events + " event(s), " + mark.size + " bytes";
        marks.appendChild(rect);
        item.max = Math.max(item.max, (mark.t + 50) * 1.1);
      }
      for (const ev of d.latest) {  // the latest few, as text
        const li = document.createElement("li");
        li.value = ev.n;
        li.textContent = ev.t.toFixed(1) + " ms " + (ev.name ? ev.name + " " : "") + ev.data;
        list.appendChild(li);
        if (list.children.length > 200) list.firstElementChild.remove();
      }
      svg.setAttribute("viewBox", "0 -4 " + item.max + " 70");
      for (const rect of marks.children) rect.setAttribute("width", Math.max(item.max / 500, 50));
      item.node.querySelector(".axis-label").textContent =
        d.total + " events · 0 to " + Math.round(item.max) + " ms";
      list.scrollTop = list.scrollHeight;
    });
    feed.addEventListener("end", (e) => {
      const d = JSON.parse(e.data);
      const item = items.get(d.id);
      if (item) item.node.querySelector(".state").textContent = d.outcome + ", " + d.events + " events";
    });
  }
})();
