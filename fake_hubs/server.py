"""What the fake hubs share: repositories with a history, an HTTP server on 127.0.0.1 that logs
each request, answers failures on demand and dispatches the rest to the hub's routes, and the
sending of JSON or (ranges of) file content.

A hub is a subclass of ``FakeHub`` whose methods marked ``@route`` answer requests: each
returns the JSON payload or the file's bytes (optionally with headers), or raises a ``Reply``,
in the hub's own error envelope, for an answer other than 200.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, NamedTuple, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

Answer = TypeVar("Answer", bound=Callable[..., Any])


class Route(NamedTuple):
    method: str
    pattern: re.Pattern[str]
    login: bool


def route(method: str, pattern: str, login: bool = False) -> Callable[[Answer], Answer]:
    """Make a hub's method answer the ``method`` requests whose raw path matches ``pattern``
    whole (a quoted part, such as a revision refs%2Fpr%2F1, holds no "/"). With ``login``, an
    anonymous request is refused (401) first. The method gets the named groups of the pattern,
    ``authenticated``, ``body``, ``query`` (parsed) and ``content_type``."""

    def mark(answer: Answer) -> Answer:
        answer.routes = [*getattr(answer, "routes", ()),  # type: ignore[attr-defined]
                         Route(method, re.compile(pattern), login)]
        return answer

    return mark


@dataclass
class FakeRepo:
    """A repository: ``files`` is its content on its one branch; ``commits`` every commit's
    content, oldest first."""

    branch: str
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return next(reversed(self.commits))

    def commit(self, files: dict[str, bytes]) -> str:
        listing = sorted((path, hashlib.sha256(data).hexdigest()) for path, data in files.items())
        oid = hashlib.sha1(json.dumps([len(self.commits), listing]).encode()).hexdigest()
        self.commits[oid] = dict(files)
        self.files = dict(files)
        return oid

    def at(self, revision: str) -> dict[str, bytes] | None:
        """The files at the branch or a commit; None for an unknown revision."""
        if revision == self.branch or revision == self.head:
            return self.files
        return self.commits.get(revision)


def walk(files: dict[str, bytes], folder: str, recursive: bool) -> list[tuple[str, bytes | None]]:
    """The entries of a file tree under ``folder`` (all of them, or only its own): (path, None)
    for a folder, before the first file in it; (path, content) for a file."""
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    entries: dict[str, bytes | None] = {}
    for path, data in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        for depth in range(1, len(parts)):  # the folders on the way
            if recursive or depth == 1:
                entries.setdefault(prefix + "/".join(parts[:depth]), None)
        if recursive or len(parts) == 1:
            entries[path] = data
    return list(entries.items())


class Reply(Exception):
    """An answer other than 200, raised from a route: its status, JSON body and headers."""

    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        super().__init__(body)
        self.status, self.body, self.headers = status, body, headers or {}


@dataclass
class _Failure:
    count: int
    status: int
    delay: float
    path_contains: str


class FakeHub(ABC):
    """A fake hub's server. ``token`` is the only token it accepts; ``requests`` lists the
    (method, path) of every request, the path with its query where ``logs_query``."""

    branch: ClassVar[str]  # a repository's one branch
    login_required: ClassVar[str]  # the hub's answer to an anonymous request that needs a token
    logs_query: ClassVar[bool] = False
    user = "fake-user"
    _routes: ClassVar[list[tuple[Route, str]]]  # with the name of the method that answers

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._routes = [(r, name) for name, member in vars(cls).items()
                       for r in getattr(member, "routes", ())]

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self._failures: list[_Failure] = []
        self._lock = threading.RLock()  # a route, which holds it, may call add_repo
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- the test's side ----

    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model",
                 private: bool = False) -> FakeRepo:
        """Create (or replace) a repository whose first commit holds ``files``."""
        repo = FakeRepo(self.branch, private=private)
        repo.commit(files)
        with self._lock:
            self.repos[(repo_type, repo_id)] = repo
        return repo

    def fail_next(self, count: int, status: int = 500, delay: float = 0.0,
                  path_contains: str = "") -> None:
        """Make the next ``count`` requests whose path (as in ``requests``) contains
        ``path_contains`` wait ``delay`` seconds, then answer ``status`` instead of their usual
        answer."""
        with self._lock:
            self._failures.append(_Failure(count, status, delay, path_contains))

    def start(self) -> Self:
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- what each hub does its own way ----

    @abstractmethod
    def fetched_files(self) -> set[str]:
        """The paths of the files downloaded so far."""

    @abstractmethod
    def _authenticated(self, headers: Message) -> bool:
        """False for an anonymous request; raises a ``Reply`` for a token other than ours."""

    @abstractmethod
    def _error(self, status: int, message: str) -> Reply:
        """An answer other than 200, in the hub's own envelope."""

    # ---- the server's side ----

    def _take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.count > 0 and failure.path_contains in path:
                    failure.count -= 1
                    return failure
        return None

    def _call_route(self, method: str, path: str, query: str, headers: Message,
                    body: bytes) -> tuple[Any, dict[str, str]]:
        """The route's answer: (JSON payload or file content, headers)."""
        for (route_method, pattern, login), name in self._routes:
            match = pattern.fullmatch(path)
            if route_method == method and match:
                arguments = {k: unquote(v) if v else v for k, v in match.groupdict().items()}
                with self._lock:
                    authenticated = self._authenticated(headers)
                    if login and not authenticated:
                        raise self._error(401, self.login_required)
                    result = getattr(self, name)(
                        authenticated=authenticated, body=body, query=parse_qs(query),
                        content_type=headers.get("Content-Type", ""), **arguments)
                return result if isinstance(result, tuple) else (result, {})
        raise self._error(404, f"The fake hub has no route for {method} {unquote(path)}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the hub clients' connection pools expect

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
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        body = self._body()
        requested = unquote(url.path)
        if hub.logs_query and url.query:
            requested += f"?{unquote(url.query)}"
        with hub._lock:
            hub.requests.append((method, requested))
        failure = hub._take_failure(requested)
        if failure is not None:
            if hub._stopping.wait(failure.delay):
                self.close_connection = True  # stopped while waiting: no answer
                return
            reply = hub._error(failure.status, f"injected failure {failure.status}")
            self._send(reply.status, reply.body, method, reply.headers)
            return
        try:
            status, (payload, headers) = 200, hub._call_route(method, url.path, url.query,
                                                              self.headers, body)
        except Reply as reply:
            status, payload, headers = reply.status, reply.body, reply.headers
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
