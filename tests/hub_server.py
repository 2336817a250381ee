"""A small, stdlib-only HTTP server that speaks enough of the Hugging Face Hub API for tests.

It lets the real ``huggingface_hub`` client (``snapshot_download``, ``hf_hub_download``,
``HfApi.model_info`` / ``repo_info``, ``get_safetensors_metadata``) run against local folders:

* ``GET /api/models/{repo}[/revision/{rev}]``: repo info with ``sha`` and ``siblings``.
* ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the file listing ``snapshot_download`` filters.
* ``HEAD|GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag`` (git blob sha1) and the
  body. LFS files (weights) answer ``302`` to a "CDN" (a second port, so another origin) with
  ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``, as the Hub does.
* ``HEAD|GET /cdn/{repo}/resolve/{commit}/{file}``: the CDN. Both file routes honour ``Range``.
* ``GET /api/agent-harnesses``: an empty registry (the client fetches it for its user agent).

Misses answer 404 with ``X-Error-Code`` ``RepoNotFound``, ``RevisionNotFound`` or
``EntryNotFound``, so the client raises its own exceptions.

``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE``
once, when imported. Run the client in a subprocess with ``HF_ENDPOINT=server.endpoint``;
in-process, the public ``endpoint=`` argument works too, but the client still sends its
user-agent registry lookup to the endpoint it read at import time.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_INFO = re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?")
_TREE = re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?")
_RESOLVE = re.compile(rf"(?P<cdn>/cdn)?/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class HubFile:
    path: Path
    size: int
    sha256: str
    git_oid: str
    lfs: bool

    def entry(self) -> dict[str, Any]:
        """Metadata as in a tree listing (``path`` and ``type`` are added by the caller)."""
        lfs = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return {"oid": self.git_oid, "size": self.size, **({"lfs": lfs} if self.lfs else {})}


@dataclass(frozen=True)
class Revision:
    repo_id: str
    name: str
    commit: str
    files: dict[str, HubFile]


@dataclass
class _Fault:
    pattern: str
    status: int
    drop_after: int | None
    times: int | None
    delay: float | None = None


class _HubError(Exception):
    def __init__(self, code: str, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.code, self.commit = code, commit


def _scan(repo_id: str, name: str, folder: Path, lfs_suffixes: tuple[str, ...]) -> Revision:
    files: dict[str, HubFile] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        git_oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = path.suffix in lfs_suffixes
        rel = path.relative_to(folder).as_posix()
        files[rel] = HubFile(path, len(data), hashlib.sha256(data).hexdigest(), git_oid, lfs)
    listing = "".join(f"{rel} {f.sha256}\n" for rel, f in files.items())
    commit = hashlib.sha1(f"{repo_id}\n{name}\n{listing}".encode()).hexdigest()
    return Revision(repo_id, name, commit, files)


class HubServer:
    """Serve ``{repo_id: folder}`` or ``{repo_id: {revision: folder}}`` on 127.0.0.1, free port.

    A bare folder is the ``main`` branch. Each revision gets a deterministic 40-hex commit sha;
    the branch name and the sha both resolve. Use as a context manager or ``start()``/``stop()``.
    """

    def __init__(
        self,
        repos: Mapping[str, Path | Mapping[str, Path]],
        *,
        lfs_suffixes: tuple[str, ...] = LFS_SUFFIXES,
    ) -> None:
        self.repos: dict[str, dict[str, Revision]] = {}
        for repo_id, revs in repos.items():
            folders = {"main": revs} if isinstance(revs, Path) else revs
            self.repos[repo_id] = {
                name: _scan(repo_id, name, Path(folder), lfs_suffixes)
                for name, folder in folders.items()
            }
        self.endpoint = self.cdn_endpoint = ""
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str, str | None]] = []
        self._faults: list[_Fault] = []
        # file name -> another file whose bytes answer Range requests (a header read remotely)
        # while a whole-file GET gets the real one: a server whose two answers disagree.
        self.ranges_from: dict[str, Path] = {}
        self._servers: list[tuple[_HTTPServer, threading.Thread]] = []

    def commit(self, repo_id: str, revision: str = "main") -> str:
        return self.repos[repo_id][revision].commit

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, url-decoded path without query)`` of every request served, in order."""
        with self._lock:
            return [(method, path) for method, path, _ in self._requests]

    def requested_files(self, method: str = "GET") -> list[str]:
        """Repo file paths asked for with ``method`` on the resolve and CDN routes, in order."""
        with self._lock:
            return [file for m, _, file in self._requests if m == method and file is not None]

    def fail(
        self,
        pattern: str,
        *,
        status: int = 500,
        drop_after: int | None = None,
        times: int | None = None,
        delay: float | None = None,
    ) -> None:
        """Fail requests whose decoded path matches the fnmatch ``pattern``.

        Answer ``status``, or with ``drop_after`` send that many body bytes of a file GET and close
        the connection, or with ``delay`` answer normally after that many seconds (a client with
        a shorter timeout gives up first). ``times`` limits how many requests fail (default: all).
        """
        with self._lock:
            self._faults.append(_Fault(pattern, status, drop_after, times, delay))

    def start(self) -> HubServer:
        assert not self._servers, "already started"
        for _ in range(2):  # the Hub, then the "CDN": another origin, so a redirect to it is final
            httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
            httpd.hub = self
            # A short poll interval keeps stop() fast (shutdown() waits for the next poll).
            thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
            thread.start()
            self._servers.append((httpd, thread))
        hub, cdn = (f"http://127.0.0.1:{httpd.server_address[1]}" for httpd, _ in self._servers)
        self.endpoint, self.cdn_endpoint = hub, cdn
        return self

    def stop(self) -> None:
        """Stop serving; ``endpoint`` keeps its value (connections to it are then refused)."""
        for httpd, thread in self._servers:
            httpd.shutdown()
            httpd.server_close()
            thread.join()
        self._servers.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(
        self, exc: type[BaseException] | None, val: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _record(self, method: str, path: str, file: str | None) -> None:
        with self._lock:
            self._requests.append((method, path, file))

    def _take_fault(self, path: str, *, body: bool) -> _Fault | None:
        """Use up the first live fault for ``path``: a status fault, or with ``body`` a drop."""
        with self._lock:
            for fault in self._faults:
                is_drop = fault.drop_after is not None
                if (
                    is_drop == body
                    and fault.times != 0
                    and fnmatch.fnmatchcase(path, fault.pattern)
                ):
                    fault.times = None if fault.times is None else fault.times - 1
                    return fault
        return None

    def _lookup(self, repo_id: str, revision: str) -> Revision:
        if repo_id not in self.repos:
            raise _HubError("RepoNotFound", f"Repository {repo_id} not found")
        revs = self.repos[repo_id]
        by_sha = {rev.commit: rev for rev in revs.values()}
        if (rev := revs.get(revision) or by_sha.get(revision)) is None:
            raise _HubError("RevisionNotFound", f"Invalid rev id: {revision}")
        return rev


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        raw = urlsplit(self.path)
        hub, path = self.server.hub, unquote(raw.path)
        resolve = _RESOLVE.fullmatch(raw.path)
        hub._record(self.command, path, unquote(resolve["file"]) if resolve else None)
        if fault := hub._take_fault(path, body=False):
            if fault.delay is None:
                self._json(fault.status, {"error": "injected failure"})
                return
            time.sleep(fault.delay)
        try:
            if raw.path == "/api/agent-harnesses":
                self._json(200, {"standardEnvVars": [], "harnesses": {}})
            elif m := _TREE.fullmatch(raw.path):
                rev = hub._lookup(unquote(m["repo"]), unquote(m["rev"]))
                recursive = "recursive=true" in raw.query.lower()
                self._json(200, self._tree(rev, unquote(m["path"] or ""), recursive))
            elif m := _INFO.fullmatch(raw.path):
                self._json(
                    200, self._info(hub._lookup(unquote(m["repo"]), unquote(m["rev"] or "main")))
                )
            elif resolve:
                self._resolve(
                    hub._lookup(unquote(resolve["repo"]), unquote(resolve["rev"])), resolve
                )
            else:
                self._json(404, {"error": f"no route for {path}"})
        except _HubError as err:
            headers = {"X-Error-Code": err.code, "X-Error-Message": str(err)}
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            self._json(404, {"error": str(err)}, headers)

    def _info(self, rev: Revision) -> dict[str, Any]:
        siblings = []
        for path, f in rev.files.items():
            lfs = {"lfs": {"size": f.size, "sha256": f.sha256, "pointerSize": 134}} if f.lfs else {}
            siblings.append({"rfilename": path, "size": f.size, "blobId": f.git_oid, **lfs})
        repo_id = rev.repo_id
        return {
            "id": repo_id,
            "modelId": repo_id,
            "sha": rev.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }

    def _tree(self, rev: Revision, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        files: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for path, f in rev.files.items():
            if path.startswith(prefix):
                parts = path[len(prefix) :].split("/")
                depth = len(parts) if recursive else min(2, len(parts))
                dirs.update(prefix + "/".join(parts[:i]) for i in range(1, depth))
                if recursive or len(parts) == 1:
                    files.append({"type": "file", "path": path, **f.entry()})
        if prefix and not files and not dirs:
            raise _HubError("EntryNotFound", f"{prefix} does not exist on {rev.name}", rev.commit)
        return files + [
            {
                "type": "directory",
                "path": d,
                "oid": hashlib.sha1(f"{rev.commit}:{d}".encode()).hexdigest(),
            }
            for d in sorted(dirs)
        ]

    def _resolve(self, rev: Revision, m: re.Match[str]) -> None:
        name = unquote(m["file"])
        if (f := rev.files.get(name)) is None:
            raise _HubError("EntryNotFound", f"{name} does not exist on {rev.name}", rev.commit)
        headers = {"X-Repo-Commit": rev.commit, "ETag": f'"{f.sha256 if f.lfs else f.git_oid}"'}
        if f.lfs and not m["cdn"]:
            cdn = self.server.hub.cdn_endpoint
            location = f"{cdn}/cdn/{m['repo']}/resolve/{rev.commit}/{m['file']}"
            headers |= {
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(f.size),
                "Location": location,
            }
            self._send(302, b"", headers)
            return
        data, status, headers["Accept-Ranges"] = f.path.read_bytes(), 200, "bytes"
        if (r := _RANGE.fullmatch(self.headers.get("Range", "").strip())) and any(r.groups()):
            data = self.server.hub.ranges_from.get(name, f.path).read_bytes()
            size = len(data)
            start = int(r[1]) if r[1] else max(size - int(r[2]), 0)
            end = min(int(r[2]), size - 1) if r[1] and r[2] else size - 1
            if start > end:
                self._send(416, b"", headers | {"Content-Range": f"bytes */{size}"})
                return
            data, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        path = unquote(urlsplit(self.path).path)
        fault = self.server.hub._take_fault(path, body=True) if self.command == "GET" else None
        self._send(status, data, headers, fault.drop_after if fault else None)

    def _json(self, status: int, payload: object, headers: Mapping[str, str] | None = None) -> None:
        self._send(
            status,
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def _send(
        self, status: int, body: bytes, headers: Mapping[str, str], drop_after: int | None = None
    ) -> None:
        """Send a response; with ``drop_after``, close after that many body bytes."""
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body if drop_after is None else body[:drop_after])
