"""A fake ModelScope hub for tests: an HTTP server on 127.0.0.1 that speaks the part of
ModelScope's ``/api/v1`` API that modelscope_hub (the client under modelscope 1.38+) uses to
log in, create repos, list and download their files and push (git-LFS batch, blob upload,
commit), with ModelScope's rules on tokens and private repos, and failures on demand.

    with FakeModelScopeHub() as hub:
        hub.add_repo("org/tiny", {"config.json": b"{}"})
        HubApi(endpoint=hub.url).download_repo("org/tiny", "model")

Repos have one branch, ``master``. A token goes as ``Authorization: Bearer`` or the
``m_session_id`` cookie; a token other than ``token`` is refused (401) everywhere, and a
private repo is refused (401) to anonymous readers. modelscope reads its timeouts and retry
counts from the environment once, at import: ``give_up_quickly()`` sets them so that it gives
up on a failing or silent server within seconds; ``isolate_client`` keeps a test away from the
user's login and cache.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import json
import os
import re
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MASTER = "master"
GIVE_UP_QUICKLY = {
    "MODELSCOPE_API_MAX_RETRIES": "1",  # at least 1; POST is never retried
    "MODELSCOPE_API_TIMEOUT": "2",
    "MODELSCOPE_API_CONNECT_TIMEOUT": "2",
    "MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "1",
    "MODELSCOPE_REPO_TREE_PAGE_TIMEOUT_SECONDS": "2",
    "MODELSCOPE_DOWNLOAD_MAX_RETRIES": "0",
    "MODELSCOPE_DOWNLOAD_TIMEOUT": "2",
    "MODELSCOPE_UPLOAD_BLOB_MAX_ATTEMPTS": "1",
    "MODELSCOPE_UPLOAD_BLOB_READ_TIMEOUT_SECONDS": "2",
    "MODELSCOPE_UPLOAD_COMMIT_MAX_ATTEMPTS": "1",
    "MODELSCOPE_UPLOAD_RECOVERY_ENABLED": "false",
    "MODELSCOPE_UPLOAD_FAILED_FILE_MAX_RETRY_ROUNDS": "1",
}
# Where modelscope finds a token or an endpoint other than the ones a test gives it.
CLIENT_SETTINGS = ("MODELSCOPE_API_TOKEN", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN",
                   "MODELSCOPE_PREFER_AI_SITE", "MODELSCOPE_CREDENTIALS_PATH", "MS_CACHE_HOME")


def give_up_quickly() -> None:
    """Set ``GIVE_UP_QUICKLY`` in the environment (where not set): call it before anything
    imports modelscope_hub, which reads these settings once."""
    for name, value in GIVE_UP_QUICKLY.items():
        os.environ.setdefault(name, value)


def isolate_client(monkeypatch: Any, home: Path) -> None:
    """For one test, give modelscope a fresh home (login, cache) under ``home`` and no token
    or endpoint from the environment. Fails if modelscope_hub was imported before
    ``give_up_quickly``, as its retries would then make failure tests slow."""
    for name in CLIENT_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELSCOPE_HOME", str(home))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(home / "cache"))
    constants = sys.modules.get("modelscope_hub.constants")
    if constants is not None and constants.DOWNLOAD_RETRY_TIMES != 0:
        raise RuntimeError("modelscope_hub runs without GIVE_UP_QUICKLY: it was imported "
                           "before give_up_quickly(), or the environment overrides it.")


# Business codes ModelScope puts in its answers' "Code" (modelscope_hub.errors maps them).
ALREADY_EXISTS = {"model": 10010101001, "dataset": 10020101001}
REPO = r"(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", re.compile(r"/api/v1/login"), "login"),
    ("GET", re.compile(r"/openapi/v1/users/me"), "whoami"),
    ("POST", re.compile(r"/api/v1/(?P<kind>models|datasets)"), "create_repo"),
    ("GET", re.compile(rf"/api/v1/{REPO}"), "repo_info"),
    ("GET", re.compile(rf"/api/v1/{REPO}/repo/(?:files|tree)"), "list_files"),
    ("GET", re.compile(rf"/api/v1/{REPO}/repo"), "file"),
    ("HEAD", re.compile(rf"/api/v1/{REPO}/repo"), "file"),
    ("POST", re.compile(rf"/api/v1/repos/{REPO}/info/lfs/objects/batch"), "lfs_batch"),
    ("PUT", re.compile(r"/lfs/(?P<oid>[0-9a-f]{64})"), "lfs_upload"),
    ("POST", re.compile(rf"/api/v1/repos/{REPO}/commit/(?P<rev>[^/]+)"), "commit"),
]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FakeRepo:
    """A repository: ``files`` is its content at ``master``; ``commits`` every commit's content."""

    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # oldest first

    @property
    def head(self) -> str:
        return next(reversed(self.commits))

    def commit(self, files: dict[str, bytes]) -> str:
        listing = sorted((path, sha256(data)) for path, data in files.items())
        oid = hashlib.sha1(json.dumps([len(self.commits), listing]).encode()).hexdigest()
        self.commits[oid] = dict(files)
        self.files = dict(files)
        return oid

    def at(self, revision: str) -> dict[str, bytes] | None:
        """The files at the branch ``master`` or a commit; None for an unknown revision."""
        if revision in (MASTER, self.head):
            return self.files
        return self.commits.get(revision)


@dataclass
class _Failure:
    count: int
    status: int
    delay: float
    path_contains: str


class _Reply(Exception):
    """An answer other than 200, raised from a route, in ModelScope's envelope."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"Code": code or status, "Message": message, "Success": False,
                     "RequestId": uuid.uuid4().hex}


def _ok(data: Any) -> dict:
    return {"Code": 200, "Data": data, "Message": "success", "Success": True,
            "RequestId": uuid.uuid4().hex}


class FakeModelScopeHub:
    """The fake hub. ``token`` is the only token it accepts; reading a public repo needs none."""

    user = "fake-user"

    def __init__(self, token: str = "ms-fake0000-1111-2222-3333-444455556666") -> None:
        self.token = token
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.blobs: dict[str, bytes] = {}  # git-LFS storage: sha256 -> content
        self.requests: list[tuple[str, str]] = []  # (method, path?query): FilePath=... names a file
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
        """Make the next ``count`` requests whose path (with its query, as in ``requests``)
        contains ``path_contains`` wait ``delay`` seconds, then answer ``status`` instead of
        their usual answer."""
        with self._lock:
            self._failures.append(_Failure(count, status, delay, path_contains))

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{repo_type}s/{repo_id}"

    def start(self) -> FakeModelScopeHub:
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)  # polled often: stop() returns at once
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes the requests still waiting out a delay
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def __enter__(self) -> FakeModelScopeHub:
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

    def _authenticated(self, token: str | None) -> bool:
        """False for an anonymous request; a token other than ours is refused outright."""
        if not token:
            return False
        if token != self.token:
            raise _Reply(401, "Authentication failed: the token is invalid or expired.")
        return True

    def _readable(self, kind: str, repo_id: str, authenticated: bool) -> FakeRepo:
        repo = self.repos.get((kind, repo_id))
        if repo is not None and repo.private and not authenticated:
            raise _Reply(401, f"{kind} {repo_id} is private: please log in first.")
        if repo is None:
            raise _Reply(404, f"{kind} {repo_id} does not exist.")
        return repo

    def _writable(self, kind: str, repo_id: str, authenticated: bool) -> FakeRepo:
        if not authenticated:
            raise _Reply(401, "User not logged in.")
        return self._readable(kind, repo_id, authenticated)

    @staticmethod
    def _files_at(repo: FakeRepo, revision: str, repo_id: str) -> dict[str, bytes]:
        files = repo.at(revision)
        if files is None:
            raise _Reply(404, f"Revision {revision} of {repo_id} does not exist.")
        return files

    def login(self, authenticated: bool, body: bytes, **_: Any) -> tuple[dict, dict]:
        """POST /login: the token in the body; answers the git token and the session cookie."""
        if json.loads(body or b"{}").get("AccessToken") != self.token:
            raise _Reply(401, "AccessToken is invalid or expired.")
        data = {"AccessToken": "fake-git-token", "Username": self.user,
                "Email": f"{self.user}@example.com"}
        return _ok(data), {"Set-Cookie": f"m_session_id={self.token}; Path=/"}

    def whoami(self, authenticated: bool, **_: Any) -> dict:
        if not authenticated:
            raise _Reply(401, "Missing or invalid token.")
        return {"success": True, "request_id": uuid.uuid4().hex,
                "data": {"username": self.user, "email": f"{self.user}@example.com"}}

    def create_repo(self, authenticated: bool, kind: str, body: bytes, content_type: str,
                    **_: Any) -> dict:
        if not authenticated:
            raise _Reply(401, "User not logged in.")
        repo_type = kind[:-1]
        if repo_type == "dataset":  # the dataset endpoint takes a multipart form
            fields = _form_fields(body, content_type)
            owner = fields.get("Owner")
        else:
            fields = json.loads(body)
            owner = fields.get("Path")
        repo_id = f"{owner}/{fields.get('Name')}"
        if (repo_type, repo_id) in self.repos:
            raise _Reply(400, "该名称已被注册使用，请重新命名", ALREADY_EXISTS[repo_type])
        visibility = int(fields.get("Visibility") or 5)  # 1 private, 3 internal, 5 public
        self.repos[(repo_type, repo_id)] = FakeRepo(private=visibility != 5)
        return _ok({"Path": owner, "Name": fields.get("Name"), "Visibility": visibility})

    def repo_info(self, authenticated: bool, kind: str, repo: str, **_: Any) -> dict:
        found = self._readable(kind[:-1], repo, authenticated)
        owner, name = repo.split("/")
        return _ok({"Path": owner, "Name": name, "Visibility": 1 if found.private else 5})

    def list_files(self, authenticated: bool, kind: str, repo: str, query: dict,
                   **_: Any) -> dict:
        """repo/files (models, all at once) and repo/tree (datasets, by pages)."""
        revision = query.get("Revision", [MASTER])[0]
        files = self._files_at(self._readable(kind[:-1], repo, authenticated), revision, repo)
        root = query.get("Root", [""])[0].strip("/")
        prefix = f"{root}/" if root else ""
        recursive = query.get("Recursive", ["False"])[0].lower() in ("true", "1")
        entries: dict[str, dict] = {}
        for path, data in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"Name": parts[depth - 1], "Path": folder,
                                                "Type": "tree", "Size": 0})
            if recursive or len(parts) == 1:
                entries[path] = {"Name": parts[-1], "Path": path, "Type": "blob",
                                 "Size": len(data), "Sha256": sha256(data)}
        listing = list(entries.values())
        if "PageNumber" in query:
            size = int(query.get("PageSize", ["200"])[0])
            start = (int(query["PageNumber"][0]) - 1) * size
            listing = listing[start:start + size]
        return _ok({"Files": listing})

    def file(self, authenticated: bool, kind: str, repo: str, query: dict,
             **_: Any) -> tuple[bytes, dict]:
        revision = query.get("Revision", [MASTER])[0]
        files = self._files_at(self._readable(kind[:-1], repo, authenticated), revision, repo)
        path = query.get("FilePath", [""])[0]
        if path not in files:
            raise _Reply(404, f"File {path} does not exist in {repo}.")
        return files[path], {"Content-Type": "application/octet-stream",
                             "Accept-Ranges": "bytes"}

    def lfs_batch(self, authenticated: bool, kind: str, repo: str, body: bytes,
                  **_: Any) -> dict:
        """Upload links for the objects the LFS storage lacks; those it holds go unmentioned."""
        self._writable(kind[:-1], repo, authenticated)
        objects = json.loads(body)["objects"]
        return {"transfer": "basic", "objects": [
            {"oid": o["oid"], "size": o["size"],
             "actions": {"upload": {"href": f"{self.url}/lfs/{o['oid']}"}}}
            for o in objects if o["oid"] not in self.blobs]}

    def lfs_upload(self, authenticated: bool, oid: str, body: bytes, **_: Any) -> dict:
        if not authenticated:
            raise _Reply(401, "User not logged in.")
        if sha256(body) != oid:
            raise _Reply(400, f"The content does not match the object id {oid}.")
        self.blobs[oid] = body
        return {"Code": 200, "Success": True}

    def commit(self, authenticated: bool, kind: str, repo: str, rev: str, body: bytes,
               **_: Any) -> dict:
        found = self._writable(kind[:-1], repo, authenticated)
        if rev != MASTER:
            raise _Reply(400, "The fake hub commits to the master branch only.")
        files = dict(found.files)
        for action in json.loads(body)["actions"]:
            path = action["path"]
            if action["action"] == "delete":
                files.pop(path, None)
            elif action["type"] == "lfs":
                if action["sha256"] not in self.blobs:
                    raise _Reply(400, f"LFS object {action['sha256']} of {path} was never "
                                      "uploaded.")
                files[path] = self.blobs[action["sha256"]]
            else:
                files[path] = base64.b64decode(action["content"])
        oid = found.commit(files)
        return _ok({"CommitId": oid, "Url": self.repo_url(kind[:-1], repo)})


def _form_fields(body: bytes, content_type: str) -> dict[str, str]:
    """The fields of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return {part.get_param("name", header="content-disposition"): part.get_content()
            for part in message.iter_parts()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' pools expect

    def do_GET(self) -> None:
        self._answer("GET")

    def do_HEAD(self) -> None:
        self._answer("HEAD")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests

    def _answer(self, method: str) -> None:
        hub: FakeModelScopeHub = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        path = unquote(url.path)
        body = self._body()
        # with the query: the file a download asks for is named there (FilePath=...)
        requested = f"{path}?{unquote(url.query)}" if url.query else path
        with hub._lock:
            hub.requests.append((method, requested))
        failure = hub._take_failure(requested)
        if failure is not None:
            if hub._stopping.wait(failure.delay):
                return
            self._send(failure.status, _Reply(failure.status, "injected failure").body, method)
            return
        try:
            status, (payload, headers) = 200, self._route(hub, method, path, url.query, body)
        except _Reply as reply:
            status, payload, headers = reply.status, reply.body, {}
        self._send(status, payload, method, headers)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _token(self) -> str | None:
        authorization = self.headers.get("Authorization") or ""
        if authorization.startswith("Bearer "):
            return authorization.removeprefix("Bearer ").strip()
        cookie = SimpleCookie(self.headers.get("Cookie") or "").get("m_session_id")
        return cookie.value if cookie else None

    def _route(self, hub: FakeModelScopeHub, method: str, path: str, query: str,
               body: bytes) -> tuple[Any, dict[str, str]]:
        for route_method, pattern, name in ROUTES:
            match = pattern.fullmatch(path)
            if route_method == method and match:
                with hub._lock:
                    result = getattr(hub, name)(
                        authenticated=hub._authenticated(self._token()), body=body,
                        query=parse_qs(query), content_type=self.headers.get("Content-Type", ""),
                        **match.groupdict())
                return result if isinstance(result, tuple) else (result, {})
        raise _Reply(404, f"The fake hub has no route for {method} {path}")

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
