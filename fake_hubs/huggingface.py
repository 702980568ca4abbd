"""A fake Hugging Face Hub for tests: an HTTP server on 127.0.0.1 that speaks the part of the Hub
API huggingface_hub uses to download and push (whoami, create repo, repo info, file tree,
preupload, commit, resolve), with the Hub's rules on tokens and private repositories, and
failures on demand.

Every file is committed and served as a regular git blob (preupload never asks for LFS), so no
Xet or LFS storage is needed; a commit that insists on LFS is refused.

    with FakeHuggingFaceHub() as hub:
        hub.add_repo("org/tiny", {"config.json": b"{}"})
        snapshot_download("org/tiny", endpoint=hub.url)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MAIN = "main"
INVALID_TOKEN = "Invalid credentials in Authorization header"  # the Hub's words
# The routes, matched on the raw path: a revision arrives quoted (refs%2Fpr%2F1), so it has no "/".
REPO = r"(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("GET", re.compile(r"/api/whoami-v2"), "whoami"),
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("GET", re.compile(rf"/api/{REPO}(?:/revision/(?P<rev>[^/]+))?"), "repo_info"),
    ("GET", re.compile(rf"/api/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?"), "tree"),
    ("POST", re.compile(rf"/api/{REPO}/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(rf"/api/{REPO}/commit/(?P<rev>[^/]+)"), "commit"),
    ("GET", re.compile(r"/(?P<kind>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/"
                       r"(?P<path>.+)"), "resolve"),
    ("HEAD", re.compile(r"/(?P<kind>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/"
                        r"(?P<path>.+)"), "resolve"),
]


def isolate_client(monkeypatch: Any, home: Path) -> None:
    """For one test, give huggingface_hub a fresh home (cache, token file) under ``home``, no
    token and offline mode off. It reads its settings when imported, so its constants are set
    along with the environment (which a subprocess reads)."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    paths = {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HF_TOKEN_PATH": home / "token"}
    for name, path in paths.items():
        monkeypatch.setenv(name, str(path))
        monkeypatch.setattr(constants, name, str(path))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def git_blob_id(data: bytes) -> str:
    """The id git (and the Hub, as a file's oid and ETag) gives a file's content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    """A repository: ``files`` is its content at ``main``; ``commits`` every commit's content."""

    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # oldest first

    @property
    def head(self) -> str:
        return next(reversed(self.commits))

    def commit(self, files: dict[str, bytes]) -> str:
        listing = sorted((path, git_blob_id(data)) for path, data in files.items())
        oid = hashlib.sha1(json.dumps([len(self.commits), listing]).encode()).hexdigest()
        self.commits[oid] = dict(files)
        self.files = dict(files)
        return oid

    def at(self, revision: str) -> dict[str, bytes] | None:
        """The files at a branch (only ``main``) or a commit; None for an unknown revision."""
        if revision in (MAIN, self.head):
            return self.files
        return self.commits.get(revision)


@dataclass
class _Failure:
    count: int
    status: int
    delay: float
    path_contains: str


class _Reply(Exception):
    """An answer other than 200, raised from a route."""

    def __init__(self, status: int, error: str, code: str = "", body: dict | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.code = status, error, code
        self.body = {"error": error, **(body or {})}


class FakeHuggingFaceHub:
    """The fake Hub. ``token`` is the only token it accepts; reading a public repo needs none."""

    user = "fake-user"

    def __init__(self, token: str = "hf_FakeHubToken0123456789abcdef") -> None:
        self.token = token
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- the test's side ----

    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model",
                 private: bool = False) -> FakeRepo:
        """Create (or replace) a repository whose first commit holds ``files``."""
        repo = FakeRepo(private=private)
        repo.commit(files)
        with self._lock:
            self.repos[(repo_type, repo_id)] = repo
        return repo

    def fail_next(self, count: int, status: int = 500, delay: float = 0.0,
                  path_contains: str = "") -> None:
        """Make the next ``count`` requests whose path contains ``path_contains`` wait ``delay``
        seconds, then answer ``status`` instead of their usual answer."""
        with self._lock:
            self._failures.append(_Failure(count, status, delay, path_contains))

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"

    def start(self) -> FakeHuggingFaceHub:
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)  # polls for stop() every 50 ms
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes the requests still waiting out a delay
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def __enter__(self) -> FakeHuggingFaceHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- the server's side ----

    def _take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.count > 0 and failure.path_contains in path:
                    failure.count -= 1
                    return failure
        return None

    def _authenticated(self, authorization: str | None) -> bool:
        """False for an anonymous request; a token other than ours is refused outright."""
        if not authorization:
            return False
        if authorization != f"Bearer {self.token}":
            raise _Reply(401, INVALID_TOKEN)
        return True

    def _readable(self, kind: str, repo_id: str, authenticated: bool) -> FakeRepo:
        repo = self.repos.get((kind, repo_id))
        if repo is None or (repo.private and not authenticated):
            # Like the Hub: a private repo does not exist for those who may not see it.
            raise _Reply(404 if authenticated else 401, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, kind: str, repo_id: str, authenticated: bool) -> FakeRepo:
        if not authenticated:
            raise _Reply(401, "Invalid username or password.")
        return self._readable(kind, repo_id, authenticated)

    @staticmethod
    def _files_at(repo: FakeRepo, revision: str) -> dict[str, bytes]:
        files = repo.at(revision)
        if files is None:
            raise _Reply(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return files

    def whoami(self, authenticated: bool, **_: Any) -> dict:
        if not authenticated:
            raise _Reply(401, "Invalid username or password.")
        return {"type": "user", "name": self.user, "fullname": "Fake User", "orgs": [],
                "auth": {"type": "access_token",
                         "accessToken": {"displayName": "tests", "role": "write"}}}

    def create_repo(self, authenticated: bool, body: bytes, **_: Any) -> dict:
        if not authenticated:
            raise _Reply(401, "Invalid username or password.")
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
        url = self.repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.repos:
            raise _Reply(409, f"You already created this {repo_type} repo", body={"url": url})
        repo = FakeRepo(private=payload.get("visibility") == "private")
        repo.commit({})
        self.repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": repo_id}

    def validate_yaml(self, **_: Any) -> dict:
        return {"errors": [], "warnings": []}

    def repo_info(self, authenticated: bool, kind: str, repo: str, rev: str | None,
                  **_: Any) -> dict:
        repo_type = kind[:-1]
        found = self._readable(repo_type, repo, authenticated)
        files = self._files_at(found, rev or MAIN)
        sha = found.head if rev in (None, MAIN) else rev
        return {"id": repo, "sha": sha, "private": found.private,
                "siblings": [{"rfilename": path} for path in sorted(files)]}

    def tree(self, authenticated: bool, kind: str, repo: str, rev: str, path: str | None,
             query: dict, **_: Any) -> list:
        files = self._files_at(self._readable(kind[:-1], repo, authenticated), rev)
        prefix = f"{path.rstrip('/')}/" if path else ""
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        entries: dict[str, dict] = {}
        for name, data in sorted(files.items()):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder,
                                                "oid": git_blob_id(folder.encode()), "size": 0})
            if recursive or len(parts) == 1:
                entries[name] = {"type": "file", "path": name, "oid": git_blob_id(data),
                                 "size": len(data)}
        return list(entries.values())

    def preupload(self, authenticated: bool, kind: str, repo: str, rev: str, body: bytes,
                  **_: Any) -> dict:
        found = self._writable(kind[:-1], repo, authenticated)
        files = self._files_at(found, rev)
        return {"commitOid": found.head, "files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_id(files[f["path"]]) if f["path"] in files else None}
            for f in json.loads(body)["files"]]}

    def commit(self, authenticated: bool, kind: str, repo: str, rev: str, body: bytes,
               query: dict, **_: Any) -> dict:
        repo_type = kind[:-1]
        found = self._writable(repo_type, repo, authenticated)
        if rev != MAIN or "create_pr" in query:
            raise _Reply(400, "The fake hub commits to the main branch only.")
        files = dict(found.files)
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                parent = value.get("parentCommit")
                if parent and parent != found.head:
                    raise _Reply(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            else:  # lfsFile: this fake keeps no LFS storage
                raise _Reply(422, f"The fake hub does not accept '{key}' operations.")
        oid = found.commit(files)
        return {"success": True, "commitOid": oid, "pullRequestUrl": None,
                "commitUrl": f"{self.repo_url(repo_type, repo)}/commit/{oid}"}

    def resolve(self, authenticated: bool, kind: str | None, repo: str, rev: str, path: str,
                **_: Any) -> tuple[bytes, dict[str, str]]:
        found = self._readable("dataset" if kind else "model", repo, authenticated)
        files = self._files_at(found, rev)
        if path not in files:
            raise _Reply(404, "Entry not found", "EntryNotFound")
        data = files[path]
        return data, {"ETag": f'"{git_blob_id(data)}"', "Accept-Ranges": "bytes",
                      "X-Repo-Commit": found.head if rev == MAIN else rev,
                      "Content-Type": "application/octet-stream"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects

    def do_GET(self) -> None:
        self._answer("GET")

    def do_HEAD(self) -> None:
        self._answer("HEAD")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests

    def _answer(self, method: str) -> None:
        hub: FakeHuggingFaceHub = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with hub._lock:
            hub.requests.append((method, unquote(url.path)))
        failure = hub._take_failure(unquote(url.path))
        if failure is not None:
            if hub._stopping.wait(failure.delay):
                self.close_connection = True  # stopped while waiting: no answer
                return
            self._send(failure.status, {"error": f"injected failure {failure.status}"}, method)
            return
        try:
            status, payload, headers = 200, *self._route(hub, method, url, body)
        except _Reply as reply:
            status, payload = reply.status, reply.body
            headers = {"X-Error-Message": reply.error}
            if reply.code:
                headers["X-Error-Code"] = reply.code
        self._send(status, payload, method, headers)

    def _route(self, hub: FakeHuggingFaceHub, method: str, url: Any,
               body: bytes) -> tuple[Any, dict[str, str]]:
        for route_method, pattern, name in ROUTES:
            match = pattern.fullmatch(url.path)
            if route_method == method and match:
                arguments = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
                with hub._lock:
                    result = getattr(hub, name)(
                        authenticated=hub._authenticated(self.headers.get("Authorization")),
                        body=body, query=parse_qs(url.query), **arguments)
                return result if isinstance(result, tuple) else (result, {})
        raise _Reply(404, f"The fake hub has no route for {method} {url.path}")

    def _send(self, status: int, payload: Any, method: str,
              headers: dict[str, str] | None = None) -> None:
        headers = dict(headers or {})
        if isinstance(payload, bytes):
            data = payload
            start, end = self._range(len(data))
            if (start, end) != (0, len(data)):
                status, data = 206, data[start:end]
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(payload)}"
        else:
            data = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _range(self, size: int) -> tuple[int, int]:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match:
            return 0, size
        return int(match[1]), min(int(match[2]) + 1 if match[2] else size, size)
