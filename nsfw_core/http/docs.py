"""``GET /docs``: the OpenAPI document as a readable page that needs nothing from the network.

A small self-contained renderer (inline CSS and JavaScript, no CDN, no package): it reads
``/openapi.json`` from this server and lists each operation (method, path, summary, parameters,
request body and responses) and each schema, with ``$ref`` links.  Chosen over Swagger UI
(``swagger-ui-bundle`` on PyPI was last released in 2023 and ships ~10 MB of JavaScript):
the page is a few kilobytes, works offline and behind a strict Content-Security-Policy that
allows inline scripts, and cannot fall behind a bundled UI's security fixes.  No "try it out":
the curl examples in docs/http-api.md do that.
"""

from __future__ import annotations

import functools

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>NSFW image moderation API</title>
<style>
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
.op{background:#fff;border:1px solid #d9dde3;border-radius:6px;margin:12px 0}
.op summary{cursor:pointer;padding:10px 14px;font-weight:600;list-style:none}
.op .body{padding:0 14px 12px}
.m{display:inline-block;min-width:56px;text-align:center;border-radius:4px;color:#fff;font-size:12px;
padding:2px 6px;margin-right:8px}
.post{background:#2f855a}.get{background:#2b6cb0}.put{background:#b7791f}.delete{background:#c53030}
code,pre{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}
pre{background:#f0f2f5;padding:8px;border-radius:4px;overflow:auto;max-height:420px}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #e4e7eb;padding:4px 6px;text-align:left;
vertical-align:top}h2{margin-top:28px}h4{margin:12px 0 4px}a{color:#2b6cb0}
</style></head>
<body><header><h1 id="title">API</h1><div id="info"></div></header>
<main><p>Machine-readable: <a href="openapi.json">openapi.json</a></p>
<h2>Operations</h2><div id="ops">Loading…</div><h2>Schemas</h2><div id="schemas"></div></main>
<script>
"use strict";
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function refName(s) { return s && s.$ref ? s.$ref.split("/").pop() : null; }
function schemaView(s) {
  const name = refName(s);
  if (name) return el("a", {href: "#schema-" + name}, name);
  return el("pre", {}, JSON.stringify(s, null, 2));
}
function render(doc) {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.title = doc.info.title;
  const ops = document.getElementById("ops"); ops.textContent = "";
  for (const [path, methods] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(methods)) {
      const body = el("div", {class: "body"});
      if (op.description) body.append(el("p", {}, op.description));
      if ((op.parameters || []).length) {
        const t = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"),
                                           el("th", {}, "schema"), el("th", {}, "description")));
        for (const p of op.parameters) t.append(el("tr", {}, el("td", {}, el("code", {}, p.name)),
          el("td", {}, p.in), el("td", {}, schemaView(p.schema || {})), el("td", {}, p.description || "")));
        body.append(el("h4", {}, "Parameters"), t);
      }
      if (op.requestBody) {
        body.append(el("h4", {}, "Request body"));
        for (const [type, c] of Object.entries(op.requestBody.content || {}))
          body.append(el("div", {}, el("code", {}, type), " ", schemaView(c.schema || {})));
      }
      body.append(el("h4", {}, "Responses"));
      const t = el("table", {});
      for (const [status, r] of Object.entries(op.responses || {})) {
        const c = r.content ? Object.values(r.content)[0] : null;
        t.append(el("tr", {}, el("td", {}, el("code", {}, status)), el("td", {}, r.description || ""),
                 el("td", {}, c && c.schema ? schemaView(c.schema) : "")));
      }
      body.append(t);
      const m = el("span", {class: "m " + method}, method.toUpperCase());
      ops.append(el("details", {class: "op", id: "op-" + (op.operationId || path)},
        el("summary", {}, m, el("code", {}, path), "  ", op.summary || ""), body));
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, s] of Object.entries((doc.components || {}).schemas || {})) {
    schemas.append(el("details", {class: "op", id: "schema-" + name}, el("summary", {}, name),
      el("div", {class: "body"}, el("pre", {}, JSON.stringify(s, null, 2)))));
  }
  if (location.hash) { const t = document.querySelector(location.hash); if (t) { t.open = true; t.scrollIntoView(); } }
}
fetch("openapi.json").then(r => r.json()).then(render).catch(e => {
  document.getElementById("ops").textContent = "Could not load openapi.json: " + e;
});
</script></body></html>
"""


@functools.cache
def docs_page() -> str:
    return PAGE
