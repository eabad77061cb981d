/// The monitor's one page. Its script draws the view the path names (`/` the cluster, `/hosts/NAME` a
/// host, `/tasks` the task list) from `/api/status`, and draws again whenever `/api/stream` reports an event.
enum Page {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <title>ParallelVM monitor</title>
        <style>
        body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d232a; background: #f5f7f9; }
        header { background: #1f3b57; color: #fff; padding: 10px 20px; display: flex; gap: 24px; align-items: baseline; }
        header h1 { font-size: 17px; margin: 0; }
        header a { color: #cfe3f7; text-decoration: none; }
        header a.current { color: #fff; font-weight: 600; }
        #live { margin-left: auto; font-size: 12px; }
        main { padding: 16px 20px; }
        .cards { display: flex; gap: 12px; margin-bottom: 16px; flex-wrap: wrap; }
        .card { background: #fff; border: 1px solid #d8dee4; border-radius: 6px; padding: 8px 14px; min-width: 90px; }
        .card b { display: block; font-size: 22px; }
        table { border-collapse: collapse; background: #fff; border: 1px solid #d8dee4; margin-bottom: 18px; }
        th, td { padding: 5px 12px; border-bottom: 1px solid #eaeef2; text-align: left; }
        th { background: #eef2f6; font-weight: 600; }
        .bar { height: 10px; background: #dde4ea; border-radius: 5px; width: 320px; overflow: hidden; }
        .bar div { height: 100%; background: #2e7d4f; }
        .state-running { color: #1f6fb2; } .state-succeeded { color: #2e7d4f; }
        .state-failed, .state-crashed, .state-timedOut { color: #b3261e; } .state-killed { color: #8a4b00; }
        button.kill { background: #b3261e; color: #fff; border: 0; border-radius: 4px; padding: 2px 10px; cursor: pointer; }
        #message { color: #b3261e; min-height: 1.4em; }
        h2 { font-size: 15px; margin: 18px 0 8px; }
        </style>
        </head>
        <body>
        <header>
          <h1>ParallelVM</h1>
          <a id="nav-cluster" href="/">Cluster</a>
          <a id="nav-tasks" href="/tasks">Tasks</a>
          <span id="live">connecting…</span>
        </header>
        <main><div id="message"></div><div id="view"></div></main>
        <script>
        const token = new URLSearchParams(location.search).get("token");
        const withToken = (path) => token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path;
        const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
        const time = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "";
        for (const a of document.querySelectorAll("header a")) a.href = withToken(a.getAttribute("href"));
        const path = decodeURIComponent(location.pathname);
        document.getElementById(path.startsWith("/tasks") ? "nav-tasks" : "nav-cluster").classList.add("current");

        function cards(s) {
          const o = s.tasks.outcomes;
          let html = '<div class="cards">' +
            [["submitted", s.tasks.submitted], ["running", s.tasks.running], ["done", s.tasks.done],
             ["failed", (o.failed || 0) + (o.crashed || 0) + (o.timedOut || 0)], ["killed", o.killed || 0]]
            .map(([k, v]) => `<div class="card" id="count-${k}">${k}<b>${v}</b></div>`).join("") + "</div>";
          if (s.dispatch) {
            const d = s.dispatch, pct = d.total ? Math.round(100 * d.done / d.total) : 0;
            html += `<p id="dispatch" data-finished="${d.finished}">Dispatch: ${d.done}${d.total ? " / " + d.total : ""} jobs` +
              `${d.finished ? " (finished)" : ""}</p>` + (d.total ? `<div class="bar"><div style="width:${pct}%"></div></div>` : "");
          }
          return html;
        }

        function hostLink(name) { return `<a href="${withToken("/hosts/" + encodeURIComponent(name))}">${esc(name)}</a>`; }

        function taskRow(t, kill) {
          return `<tr class="task" data-task="${esc(t.id)}" data-state="${esc(t.state)}"><td>${esc(t.id)}</td><td>${esc(t.function)}</td>` +
            `<td>${esc(t.arguments)}</td><td>${hostLink(t.host)}</td><td>${time(t.started)}</td>` +
            `<td class="state-${esc(t.state)}">${esc(t.state)}${t.detail ? ": " + esc(t.detail) : ""}</td>` +
            `<td>${kill && t.state === "running" ? `<button class="kill" data-task="${esc(t.id)}">kill</button>` : time(t.ended)}</td></tr>`;
        }

        function taskTables(s, host) {
          const mine = (t) => !host || t.host === host;
          const head = "<tr><th>task</th><th>function</th><th>arguments</th><th>host</th><th>started</th><th>state</th><th></th></tr>";
          return "<h2>Running</h2><table id=\"running\">" + head + s.running.filter(mine).map((t) => taskRow(t, true)).join("") + "</table>" +
            "<h2>Finished</h2><table id=\"finished\">" + head + s.finished.filter(mine).map((t) => taskRow(t, false)).join("") + "</table>";
        }

        function render(s) {
          let html = cards(s);
          if (path.startsWith("/hosts/")) {
            const name = path.slice(7), h = s.hosts.find((h) => h.name === name);
            if (!h) { html += `<p>No host named ${esc(name)}.</p>`; }
            else {
              html += `<h2>Host ${esc(h.name)}${h.up ? "" : " (down)"}</h2><table id="slots"><tr><th>slot</th><th>state</th><th>task</th></tr>` +
                (h.spawner ? "<tr><td>0</td><td>spawner</td><td>0:0</td></tr>" : "") +
                h.slotList.map((x) => `<tr><td>${x.slot}</td><td>${x.task ? "busy" : "free"}</td><td>${esc(x.task || "")}</td></tr>`).join("") +
                "</table>" + taskTables(s, h.name);
            }
          } else if (path.startsWith("/tasks")) {
            html += taskTables(s, null);
          } else {
            html += '<h2>Hosts</h2><table id="hosts"><tr><th>host</th><th>slots</th><th>busy</th><th>done</th><th>state</th></tr>' +
              s.hosts.map((h) => `<tr class="host" data-host="${esc(h.name)}"><td>${hostLink(h.name)}</td><td>${h.slots}</td>` +
                `<td>${h.busy}</td><td>${h.done}</td><td>${h.up ? "up" : "down"}</td></tr>`).join("") + "</table>";
          }
          document.getElementById("view").innerHTML = html;
        }

        let pending = false;
        async function refresh() {
          pending = false;
          try {
            const answer = await fetch(withToken("/api/status"));
            if (!answer.ok) { document.getElementById("message").textContent = (await answer.json()).error; return; }
            render(await answer.json());
          } catch (e) { document.getElementById("live").textContent = "disconnected"; }
        }
        function soon() { if (!pending) { pending = true; setTimeout(refresh, 150); } }

        document.addEventListener("click", async (e) => {
          const button = e.target.closest("button.kill");
          if (!button) return;
          button.disabled = true;
          const answer = await fetch(withToken(`/api/tasks/${button.dataset.task}/kill`), {method: "POST"});
          document.getElementById("message").textContent = answer.ok ? "" : (await answer.json()).error;
          soon();
        });

        const stream = new EventSource(withToken("/api/stream"));
        stream.onopen = () => { document.getElementById("live").textContent = "live"; soon(); };
        stream.onerror = () => { document.getElementById("live").textContent = "disconnected"; };
        stream.addEventListener("vm", soon);
        refresh();
        </script>
        </body>
        </html>
        """#
}
