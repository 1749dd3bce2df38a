#!/usr/bin/env python3
"""A small Kubernetes API server for slicetrace's tests (Python stdlib only).

It speaks the real wire protocol for what the agent (kube-rs) and kubectl
use, so both can be pointed at it with ``--server=http://127.0.0.1:PORT``:

* discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis`` (legacy, plain JSON;
  aggregated-discovery Accept types fall back to it, as kubectl expects from
  an older server); ``/openapi/v2`` and ``/openapi/v3`` answer 404 like a server
  with OpenAPI disabled;
* pods (namespaced) and nodes (cluster-scoped): get, list and watch, with
  ``fieldSelector`` (``=``, ``==``, ``!=`` on dotted paths such as
  ``spec.nodeName``), simple ``labelSelector``, ``resourceVersion``
  (``resourceVersionMatch=Exact`` on a compacted version answers HTTP 410),
  and ``watch=1|true`` streams: chunked, newline-delimited JSON events
  ADDED / MODIFIED / DELETED / BOOKMARK / ERROR, honouring
  ``allowWatchBookmarks``, ``timeoutSeconds`` and ``sendInitialEvents``.
  An object that stops (starts) matching the selector is sent as DELETED
  (ADDED), like the real watch cache;
* ``Accept: application/json;as=Table;...`` answers ``meta.k8s.io/v1`` Tables
  (what ``kubectl get`` asks for), in lists and in watch events;
* ``PATCH /api/v1/nodes/NAME``: labels only (``kubectl label node``);
* ``PATCH /api/v1/nodes/NAME/status``: merge / strategic-merge (conditions
  merged by ``type``) and JSON patch; each patch is recorded.

Control endpoints for tests (always answered, even while "down"):

* ``POST /_test/pods``: add or modify pods (a Pod, a list, or a PodList);
* ``DELETE /_test/pods/NS/NAME``;
* ``POST /_test/nodes``: add or modify a node;
* ``POST /_test/gone``: compact the history; open watches get an ERROR event
  with Status 410 "too old resource version" and end, and resuming from an
  older resourceVersion gets the same. ``?http=1``: additionally the next
  list/watch request is answered with HTTP 410;
* ``POST /_test/down[?mode=503|reset]``: simulate an unreachable API: open
  watches are cut (no final chunk) and requests get 503 (default) or have
  their connection closed without an answer; ``POST /_test/up`` ends it;
* ``GET /_test/patches``: the node-status patches received
  (path, content type, body);
* ``GET /_test/stats``: request counts (lists, watches, gets, gone sent).

Usage: ``k8s_api_server.py --port 0 [--fixtures DIR] [--bookmark-interval S]``.
The first stdout line is the chosen port.
"""

import argparse
import copy
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

GIT_VERSION = "v1.33.0"


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_obj(code, reason, message):
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def lookup(obj, path):
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def parse_field_selector(sel):
    reqs = []
    if not sel:
        return reqs
    for term in sel.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            reqs.append((k.strip(), "!=", v.strip()))
        elif "==" in term:
            k, v = term.split("==", 1)
            reqs.append((k.strip(), "=", v.strip()))
        elif "=" in term:
            k, v = term.split("=", 1)
            reqs.append((k.strip(), "=", v.strip()))
        else:
            raise ValueError("invalid field selector term %r" % term)
    return reqs


def parse_label_selector(sel):
    reqs = []
    if not sel:
        return reqs
    for term in sel.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            reqs.append((k.strip(), "!=", v.strip()))
        elif "==" in term:
            k, v = term.split("==", 1)
            reqs.append((k.strip(), "=", v.strip()))
        elif "=" in term:
            k, v = term.split("=", 1)
            reqs.append((k.strip(), "=", v.strip()))
        elif term.startswith("!"):
            reqs.append((term[1:].strip(), "!exists", None))
        else:
            reqs.append((term, "exists", None))
    return reqs


def matches(obj, ns, fields, labels):
    if obj is None:
        return False
    md = obj.get("metadata", {})
    if ns is not None and md.get("namespace") != ns:
        return False
    for k, op, v in fields:
        actual = lookup(obj, k)
        actual = "" if actual is None else str(actual)
        if op == "=" and actual != v:
            return False
        if op == "!=" and actual == v:
            return False
    obj_labels = md.get("labels") or {}
    for k, op, v in labels:
        if op == "exists" and k not in obj_labels:
            return False
        if op == "!exists" and k in obj_labels:
            return False
        if op == "=" and obj_labels.get(k) != v:
            return False
        if op == "!=" and obj_labels.get(k) == v:
            return False
    return True


def age(obj):
    ts = obj.get("metadata", {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    try:
        t = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<unknown>"
    secs = int((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds())
    if secs < 120:
        return "%ds" % max(secs, 0)
    if secs < 7200:
        return "%dm" % (secs // 60)
    return "%dh" % (secs // 3600)


def table_for(kind, objs, rv, include_object):
    if kind == "Pod":
        cols = [
            ("Name", "string", "name"),
            ("Ready", "string", ""),
            ("Status", "string", ""),
            ("Restarts", "string", ""),
            ("Age", "string", ""),
        ]
    else:
        cols = [
            ("Name", "string", "name"),
            ("Status", "string", ""),
            ("Roles", "string", ""),
            ("Age", "string", ""),
            ("Version", "string", ""),
        ]
    rows = []
    for o in objs:
        md = o.get("metadata", {})
        if kind == "Pod":
            statuses = (o.get("status") or {}).get("containerStatuses") or []
            total = len((o.get("spec") or {}).get("containers") or []) or len(statuses)
            ready = sum(1 for s in statuses if s.get("ready"))
            restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
            cells = [
                md.get("name"),
                "%d/%d" % (ready, total),
                (o.get("status") or {}).get("phase", "Unknown"),
                str(restarts),
                age(o),
            ]
        else:
            conds = (o.get("status") or {}).get("conditions") or []
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            cells = [md.get("name"), "Ready" if ready else "NotReady", "<none>", age(o), GIT_VERSION]
        row = {"cells": cells}
        if include_object == "Object":
            row["object"] = o
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": md,
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": str(rv)},
        "columnDefinitions": [
            {"name": n, "type": t, "format": f, "description": n, "priority": 0} for n, t, f in cols
        ],
        "rows": rows,
    }


def wants_table(accept):
    return accept is not None and "as=Table" in accept and "g=meta.k8s.io" in accept


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge_node(node, patch):
    """Merge patch, except status.conditions merge by their `type` key."""
    conds_patch = None
    if isinstance(patch, dict) and isinstance(patch.get("status"), dict):
        conds_patch = patch["status"].get("conditions")
        patch = copy.deepcopy(patch)
        patch["status"].pop("conditions", None)
        patch["status"].pop("$setElementOrder/conditions", None)
    out = merge_patch(node, patch)
    if isinstance(conds_patch, list):
        status = out.setdefault("status", {})
        conds = list(status.get("conditions") or [])
        for c in conds_patch:
            for i, old in enumerate(conds):
                if old.get("type") == c.get("type"):
                    conds[i] = merge_patch(old, c)
                    break
            else:
                conds.append(c)
        status["conditions"] = conds
    return out


def json_patch(doc, ops):
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent.setdefault(p, {})
        last = parts[-1] if parts else None
        kind = op["op"]
        if kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                del parent[int(last)]
            else:
                parent.pop(last, None)
        elif kind == "test":
            pass
        else:
            raise ValueError("unsupported json patch op %r" % kind)
    return doc


class State:
    def __init__(self, bookmark_interval):
        self.cond = threading.Condition()
        self.rv = 100
        self.compacted_rv = 0
        self.objects = {"Pod": {}, "Node": {}}
        self.events = []  # (rv, kind, type, old, new)
        self.down = False
        self.down_mode = "503"
        self.down_gen = 0
        self.gone_gen = 0
        self.http_gone_next = False
        self.patches = []
        self.stats = {"list": 0, "watch": 0, "get": 0, "gone_sent": 0, "http_gone_sent": 0}
        self.bookmark_interval = bookmark_interval

    # -- object store (caller holds no lock) --
    def _key(self, kind, obj):
        md = obj.get("metadata", {})
        return (md.get("namespace") if kind == "Pod" else None, md.get("name"))

    def upsert(self, kind, obj):
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", "v1")
        obj["kind"] = kind
        md = obj.setdefault("metadata", {})
        if kind == "Pod":
            md.setdefault("namespace", "default")
        else:
            md.pop("namespace", None)
        with self.cond:
            key = self._key(kind, obj)
            old = self.objects[kind].get(key)
            if old is not None:
                md.setdefault("uid", old["metadata"].get("uid"))
                md.setdefault("creationTimestamp", old["metadata"].get("creationTimestamp"))
            md.setdefault("uid", str(uuid.uuid4()))
            md.setdefault("creationTimestamp", now_rfc3339())
            self.rv += 1
            md["resourceVersion"] = str(self.rv)
            self.objects[kind][key] = obj
            self.events.append((self.rv, kind, "MODIFIED" if old else "ADDED", old, obj))
            self.cond.notify_all()
            return obj

    def delete(self, kind, ns, name):
        with self.cond:
            old = self.objects[kind].pop((ns if kind == "Pod" else None, name), None)
            if old is None:
                return None
            self.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self.events.append((self.rv, kind, "DELETED", old, gone))
            self.cond.notify_all()
            return gone


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "slicetrace-fake-apiserver"
    state = None  # set in main()

    def log_message(self, fmt, *args):
        if os.environ.get("K8S_FAKE_VERBOSE"):
            sys.stderr.write("k8s-fake: %s\n" % (fmt % args))

    # -- helpers --
    def send_json(self, code, obj, content_type="application/json"):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(body)

    def send_status(self, code, reason, message):
        self.send_json(code, status_obj(code, reason, message))

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def refuse_if_down(self):
        st = self.state
        if not st.down:
            return False
        if st.down_mode == "reset":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        self.send_status(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        return True

    # -- verbs --
    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def do_PATCH(self):
        self.route("PATCH")

    def do_PUT(self):
        self.route("PUT")

    def route(self, method):
        url = urlparse(self.path)
        path = url.path.rstrip("/") or "/"
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        parts = [unquote(p) for p in path.split("/")[1:]]
        try:
            if parts and parts[0] == "_test":
                return self.control(method, parts[1:], q)
            if self.refuse_if_down():
                return
            return self.api(method, path, parts, q)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - answer like a server, keep serving
            try:
                self.send_status(500, "InternalError", "fake apiserver: %r" % (e,))
            except OSError:
                self.close_connection = True

    def control(self, method, parts, q):
        st = self.state
        if method == "POST" and parts == ["pods"]:
            body = json.loads(self.read_body() or b"null")
            items = body.get("items") if isinstance(body, dict) and "items" in body else body
            if isinstance(items, dict):
                items = [items]
            out = [st.upsert("Pod", p) for p in items]
            return self.send_json(200, {"items": out})
        if method == "DELETE" and len(parts) == 3 and parts[0] == "pods":
            gone = st.delete("Pod", parts[1], parts[2])
            if gone is None:
                return self.send_status(404, "NotFound", "pods %r not found" % parts[2])
            return self.send_json(200, gone)
        if method == "POST" and parts == ["nodes"]:
            body = json.loads(self.read_body() or b"null")
            return self.send_json(200, st.upsert("Node", body))
        if method == "POST" and parts == ["gone"]:
            with st.cond:
                st.compacted_rv = st.rv
                st.gone_gen += 1
                st.http_gone_next = q.get("http") in ("1", "true")
                st.cond.notify_all()
            return self.send_json(200, {"compacted": st.compacted_rv})
        if method == "POST" and parts == ["down"]:
            with st.cond:
                st.down = True
                st.down_mode = q.get("mode", "503")
                st.down_gen += 1
                st.cond.notify_all()
            return self.send_json(200, {"down": True, "mode": st.down_mode})
        if method == "POST" and parts == ["up"]:
            with st.cond:
                st.down = False
                st.cond.notify_all()
            return self.send_json(200, {"down": False})
        if method == "GET" and parts == ["patches"]:
            with st.cond:
                return self.send_json(200, {"items": list(st.patches)})
        if method == "GET" and parts == ["stats"]:
            with st.cond:
                return self.send_json(200, dict(st.stats, rv=st.rv, compacted_rv=st.compacted_rv))
        return self.send_status(404, "NotFound", "unknown control endpoint")

    def api(self, method, path, parts, q):
        st = self.state
        if method == "GET" and path == "/version":
            return self.send_json(200, {
                "major": "1", "minor": "33", "gitVersion": GIT_VERSION,
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
                "platform": "linux/amd64",
            })
        if method == "GET" and path in ("/healthz", "/livez", "/readyz"):
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        if method == "GET" and path == "/api":
            return self.send_json(200, {
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            })
        if method == "GET" and path == "/apis":
            return self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if method == "GET" and path == "/api/v1":
            verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
            return self.send_json(200, {
                "kind": "APIResourceList", "groupVersion": "v1",
                "resources": [
                    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
                     "verbs": verbs, "shortNames": ["po"], "categories": ["all"]},
                    {"name": "pods/status", "singularName": "", "namespaced": True, "kind": "Pod",
                     "verbs": ["get", "patch", "update"]},
                    {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
                     "verbs": verbs, "shortNames": ["no"]},
                    {"name": "nodes/status", "singularName": "", "namespaced": False, "kind": "Node",
                     "verbs": ["get", "patch", "update"]},
                    {"name": "namespaces", "singularName": "namespace", "namespaced": False,
                     "kind": "Namespace", "verbs": ["get", "list", "watch"], "shortNames": ["ns"]},
                ],
            })
        if path.startswith("/openapi/"):
            return self.send_status(404, "NotFound", "the server could not find the requested resource")

        # /api/v1/pods, /api/v1/namespaces/NS/pods[/NAME], /api/v1/nodes[/NAME[/status]]
        if len(parts) >= 3 and parts[0] == "api" and parts[1] == "v1":
            rest = parts[2:]
            ns = None
            if rest[0] == "namespaces" and len(rest) >= 3:
                ns = rest[1]
                rest = rest[2:]
            kind = {"pods": "Pod", "nodes": "Node"}.get(rest[0])
            if kind is None or (kind == "Node" and ns is not None):
                return self.send_status(404, "NotFound", "the server could not find the requested resource")
            if len(rest) == 1:
                if method != "GET":
                    return self.send_status(405, "MethodNotAllowed", "method not allowed")
                if q.get("watch") in ("1", "true"):
                    return self.watch(kind, ns, q)
                return self.list(kind, ns, q)
            name = rest[1]
            key = (ns, name) if kind == "Pod" else (None, name)
            if method == "GET" and (len(rest) == 2 or (len(rest) == 3 and rest[2] == "status")):
                with st.cond:
                    st.stats["get"] += 1
                    obj = st.objects[kind].get(key)
                if obj is None:
                    return self.send_status(404, "NotFound", '%s "%s" not found' % (rest[0], name))
                if wants_table(self.headers.get("Accept")):
                    rv = obj["metadata"].get("resourceVersion", "")
                    return self.send_json(200, table_for(kind, [obj], rv, q.get("includeObject")),
                                          "application/json;as=Table;v=v1;g=meta.k8s.io")
                return self.send_json(200, obj)
            if len(rest) == 3 and rest[2] == "status" and method == "PATCH" and kind == "Node":
                return self.patch_node_status(name)
            if len(rest) == 2 and method == "PATCH" and kind == "Node":
                return self.patch_node(name)
        return self.send_status(404, "NotFound", "the server could not find the requested resource")

    def selectors(self, q):
        return parse_field_selector(q.get("fieldSelector", "")), parse_label_selector(q.get("labelSelector", ""))

    def list(self, kind, ns, q):
        st = self.state
        try:
            fields, labels = self.selectors(q)
        except ValueError as e:
            return self.send_status(400, "BadRequest", str(e))
        with st.cond:
            st.stats["list"] += 1
            if st.http_gone_next:
                st.http_gone_next = False
                st.stats["http_gone_sent"] += 1
                gone = True
            else:
                gone = False
                rv_req = q.get("resourceVersion", "")
                if q.get("resourceVersionMatch") == "Exact" and rv_req.isdigit() and int(rv_req) < st.compacted_rv:
                    gone = True
            items = [copy.deepcopy(o) for o in st.objects[kind].values() if matches(o, ns, fields, labels)]
            rv = st.rv
        if gone:
            return self.send_status(410, "Expired", "too old resource version: %s (%d)" % (q.get("resourceVersion", ""), st.compacted_rv))
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        if wants_table(self.headers.get("Accept")):
            return self.send_json(200, table_for(kind, items, rv, q.get("includeObject")),
                                  "application/json;as=Table;v=v1;g=meta.k8s.io")
        for o in items:
            o.pop("apiVersion", None)
            o.pop("kind", None)
        return self.send_json(200, {
            "kind": kind + "List", "apiVersion": "v1",
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        })

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def write_event(self, typ, obj, table, include_object):
        if table and typ in ("ADDED", "MODIFIED", "DELETED"):
            obj = table_for(obj["kind"], [obj], obj["metadata"].get("resourceVersion", ""), include_object)
        self.write_chunk(json.dumps({"type": typ, "object": obj}).encode() + b"\n")

    def watch(self, kind, ns, q):
        st = self.state
        try:
            fields, labels = self.selectors(q)
        except ValueError as e:
            return self.send_status(400, "BadRequest", str(e))
        table = wants_table(self.headers.get("Accept"))
        include_object = q.get("includeObject")
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true")
        initial = q.get("sendInitialEvents") in ("1", "true")
        timeout = float(q.get("timeoutSeconds") or 1800)
        rv_req = q.get("resourceVersion", "")
        with st.cond:
            st.stats["watch"] += 1
            if st.http_gone_next:
                st.http_gone_next = False
                st.stats["http_gone_sent"] += 1
                http_gone = True
            else:
                http_gone = False
            down_gen = st.down_gen
            gone_gen = st.gone_gen
            too_old = rv_req.isdigit() and int(rv_req) != 0 and int(rv_req) < st.compacted_rv
            pending = []
            if rv_req in ("", "0") or initial:
                snap = [copy.deepcopy(o) for o in st.objects[kind].values() if matches(o, ns, fields, labels)]
                snap.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
                pending = [("ADDED", o) for o in snap]
                cursor = st.rv
                if initial and bookmarks:
                    pending.append(("BOOKMARK", {
                        "kind": kind, "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(st.rv),
                                     "annotations": {"k8s.io/initial-events-end": "true"}},
                    }))
            else:
                cursor = int(rv_req) if rv_req.isdigit() else st.rv
        if http_gone:
            return self.send_status(410, "Expired", "too old resource version: %s (%d)" % (rv_req, st.compacted_rv))
        ctype = "application/json;as=Table;v=v1;g=meta.k8s.io" if table else "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if too_old:
            self.send_gone(rv_req)
            return None
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + st.bookmark_interval
        for typ, o in pending:
            self.write_event(typ, o, table, include_object)
        while True:
            out = []
            cut = gone = False
            with st.cond:
                while True:
                    if st.down_gen != down_gen:
                        cut = True
                        break
                    if st.gone_gen != gone_gen:
                        gone = True
                        break
                    out = [e for e in st.events if e[0] > cursor and e[1] == kind]
                    now = time.monotonic()
                    if out or now >= deadline or (bookmarks and now >= next_bookmark):
                        break
                    st.cond.wait(min(deadline, next_bookmark if bookmarks else deadline) - now)
                current_rv = st.rv
            if cut:
                # An unreachable server: the stream just stops, no final chunk.
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return None
            if gone:
                self.send_gone(str(cursor))
                return None
            for rv, _kind, typ, old, new in out:
                cursor = rv
                was, now_match = matches(old, ns, fields, labels), matches(new, ns, fields, labels)
                if typ == "DELETED":
                    if was:
                        self.write_event("DELETED", new, table, include_object)
                elif was and now_match:
                    self.write_event("MODIFIED", new, table, include_object)
                elif now_match:
                    self.write_event("ADDED", new, table, include_object)
                elif was:
                    self.write_event("DELETED", new, table, include_object)
            now = time.monotonic()
            if bookmarks and now >= next_bookmark:
                next_bookmark = now + st.bookmark_interval
                cursor = max(cursor, current_rv)
                self.write_event("BOOKMARK", {"kind": kind, "apiVersion": "v1",
                                              "metadata": {"resourceVersion": str(cursor)}}, False, None)
            if now >= deadline:
                self.write_chunk(b"")
                return None

    def send_gone(self, rv):
        st = self.state
        with st.cond:
            st.stats["gone_sent"] += 1
            compacted = st.compacted_rv
        err = status_obj(410, "Expired", "too old resource version: %s (%d)" % (rv, compacted))
        self.write_chunk(json.dumps({"type": "ERROR", "object": err}).encode() + b"\n")
        self.write_chunk(b"")

    def patch_node(self, name):
        """PATCH /api/v1/nodes/NAME (what `kubectl label node` sends): only
        metadata.labels may change here (a null value removes the label)."""
        st = self.state
        try:
            body = json.loads(self.read_body() or b"null") or {}
        except ValueError:
            return self.send_status(400, "BadRequest", "patch body is not JSON")
        with st.cond:
            node = st.objects["Node"].get((None, name))
        if node is None:
            return self.send_status(404, "NotFound", 'nodes "%s" not found' % name)
        merged = copy.deepcopy(node)
        labels = merged["metadata"].setdefault("labels", {})
        for k, v in ((body.get("metadata") or {}).get("labels") or {}).items():
            if v is None:
                labels.pop(k, None)
            else:
                labels[k] = v
        return self.send_json(200, st.upsert("Node", merged))

    def patch_node_status(self, name):
        st = self.state
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        raw = self.read_body()
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            return self.send_status(400, "BadRequest", "patch body is not JSON")
        with st.cond:
            st.patches.append({"path": self.path, "content_type": ctype, "body": body})
            node = st.objects["Node"].get((None, name))
        if node is None:
            return self.send_status(404, "NotFound", 'nodes "%s" not found' % name)
        try:
            if ctype == "application/json-patch+json":
                new = json_patch(node, body)
            elif ctype == "application/strategic-merge-patch+json":
                new = strategic_merge_node(node, body)
            elif ctype in ("application/merge-patch+json", "application/apply-patch+yaml"):
                new = merge_patch(node, body)
            else:
                return self.send_status(415, "UnsupportedMediaType", "the body of the request was in an unknown format")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return self.send_status(422, "Invalid", "patch failed: %s" % e)
        # Only status may change through the status subresource.
        merged = copy.deepcopy(node)
        merged["status"] = new.get("status", {})
        return self.send_json(200, st.upsert("Node", merged))


def load_fixtures(state, d):
    if not d:
        return
    for fname, kind in (("pods.json", "Pod"), ("nodes.json", "Node")):
        p = os.path.join(d, fname)
        if not os.path.exists(p):
            continue
        with open(p) as f:
            data = json.load(f)
        items = data.get("items", []) if isinstance(data, dict) else data
        for o in items:
            state.upsert(kind, o)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--fixtures", help="directory with pods.json and/or nodes.json")
    ap.add_argument("--bookmark-interval", type=float, default=5.0, help="seconds between BOOKMARK events")
    args = ap.parse_args()
    state = State(args.bookmark_interval)
    load_fixtures(state, args.fixtures)
    Handler.state = state
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    print(srv.server_address[1], flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
