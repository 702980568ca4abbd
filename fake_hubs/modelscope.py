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
import sys
import uuid
from email.message import Message
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from fake_hubs.server import FakeHub, FakeRepo, Reply, route, walk

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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Reply(Reply):
    """An answer other than 200, in ModelScope's envelope."""

    def __init__(self, status: int, message: str, code: int | None = None) -> None:
        super().__init__(status, {"Code": code or status, "Message": message, "Success": False,
                                  "RequestId": uuid.uuid4().hex})


def _ok(data: Any) -> dict:
    return {"Code": 200, "Data": data, "Message": "success", "Success": True,
            "RequestId": uuid.uuid4().hex}


class FakeModelScopeHub(FakeHub):
    """The fake hub. ``token`` is the only token it accepts; reading a public repo needs none.
    ``requests`` holds each path with its query: a download names its file there (FilePath=...).
    """

    branch = MASTER
    login_required = "User not logged in."
    logs_query = True

    def __init__(self, token: str = "ms-fake0000-1111-2222-3333-444455556666") -> None:
        super().__init__(token)
        self.blobs: dict[str, bytes] = {}  # git-LFS storage: sha256 -> content

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{repo_type}s/{repo_id}"

    def fetched_files(self) -> set[str]:
        """The files downloaded so far: a download names its file in the query."""
        return {path.split("FilePath=", 1)[1].split("&")[0] for method, path in self.requests
                if method == "GET" and "FilePath=" in path}

    def _error(self, status: int, message: str) -> Reply:
        return _Reply(status, message)

    def _authenticated(self, headers: Message) -> bool:
        authorization = headers.get("Authorization") or ""
        if authorization.startswith("Bearer "):
            token = authorization.removeprefix("Bearer ").strip()
        else:
            cookie = SimpleCookie(headers.get("Cookie") or "").get("m_session_id")
            token = cookie.value if cookie else None
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

    @staticmethod
    def _files_at(repo: FakeRepo, revision: str, repo_id: str) -> dict[str, bytes]:
        files = repo.at(revision)
        if files is None:
            raise _Reply(404, f"Revision {revision} of {repo_id} does not exist.")
        return files

    @route("POST", r"/api/v1/login")
    def login(self, authenticated: bool, body: bytes, **_: Any) -> tuple[dict, dict]:
        """POST /login: the token in the body; answers the git token and the session cookie."""
        if json.loads(body or b"{}").get("AccessToken") != self.token:
            raise _Reply(401, "AccessToken is invalid or expired.")
        data = {"AccessToken": "fake-git-token", "Username": self.user,
                "Email": f"{self.user}@example.com"}
        return _ok(data), {"Set-Cookie": f"m_session_id={self.token}; Path=/"}

    @route("GET", r"/openapi/v1/users/me", login=True)
    def whoami(self, **_: Any) -> dict:
        return {"success": True, "request_id": uuid.uuid4().hex,
                "data": {"username": self.user, "email": f"{self.user}@example.com"}}

    @route("POST", r"/api/v1/(?P<kind>models|datasets)", login=True)
    def create_repo(self, kind: str, body: bytes, content_type: str, **_: Any) -> dict:
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
        # no first commit, unlike add_repo: the first push makes it
        self.repos[(repo_type, repo_id)] = FakeRepo(MASTER, private=visibility != 5)
        return _ok({"Path": owner, "Name": fields.get("Name"), "Visibility": visibility})

    @route("GET", rf"/api/v1/{REPO}")
    def repo_info(self, authenticated: bool, kind: str, repo: str, **_: Any) -> dict:
        found = self._readable(kind[:-1], repo, authenticated)
        owner, name = repo.split("/")
        return _ok({"Path": owner, "Name": name, "Visibility": 1 if found.private else 5})

    @route("GET", rf"/api/v1/{REPO}/repo/(?:files|tree)")
    def list_files(self, authenticated: bool, kind: str, repo: str, query: dict,
                   **_: Any) -> dict:
        """repo/files (models, all at once) and repo/tree (datasets, by pages)."""
        revision = query.get("Revision", [MASTER])[0]
        files = self._files_at(self._readable(kind[:-1], repo, authenticated), revision, repo)
        recursive = query.get("Recursive", ["False"])[0].lower() in ("true", "1")
        listing = [{"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "tree", "Size": 0}
                   if data is None else
                   {"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "blob",
                    "Size": len(data), "Sha256": sha256(data)}
                   for path, data in walk(files, query.get("Root", [""])[0], recursive)]
        if "PageNumber" in query:
            size = int(query.get("PageSize", ["200"])[0])
            start = (int(query["PageNumber"][0]) - 1) * size
            listing = listing[start:start + size]
        return _ok({"Files": listing})

    @route("GET", rf"/api/v1/{REPO}/repo")
    @route("HEAD", rf"/api/v1/{REPO}/repo")
    def file(self, authenticated: bool, kind: str, repo: str, query: dict,
             **_: Any) -> tuple[bytes, dict]:
        revision = query.get("Revision", [MASTER])[0]
        files = self._files_at(self._readable(kind[:-1], repo, authenticated), revision, repo)
        path = query.get("FilePath", [""])[0]
        if path not in files:
            raise _Reply(404, f"File {path} does not exist in {repo}.")
        return files[path], {"Content-Type": "application/octet-stream",
                             "Accept-Ranges": "bytes"}

    @route("POST", rf"/api/v1/repos/{REPO}/info/lfs/objects/batch", login=True)
    def lfs_batch(self, authenticated: bool, kind: str, repo: str, body: bytes,
                  **_: Any) -> dict:
        """Upload links for the objects the LFS storage lacks; those it holds go unmentioned."""
        self._readable(kind[:-1], repo, authenticated)
        objects = json.loads(body)["objects"]
        return {"transfer": "basic", "objects": [
            {"oid": o["oid"], "size": o["size"],
             "actions": {"upload": {"href": f"{self.url}/lfs/{o['oid']}"}}}
            for o in objects if o["oid"] not in self.blobs]}

    @route("PUT", r"/lfs/(?P<oid>[0-9a-f]{64})", login=True)
    def lfs_upload(self, oid: str, body: bytes, **_: Any) -> dict:
        if sha256(body) != oid:
            raise _Reply(400, f"The content does not match the object id {oid}.")
        self.blobs[oid] = body
        return {"Code": 200, "Success": True}

    @route("POST", rf"/api/v1/repos/{REPO}/commit/(?P<rev>[^/]+)", login=True)
    def commit(self, authenticated: bool, kind: str, repo: str, rev: str, body: bytes,
               **_: Any) -> dict:
        found = self._readable(kind[:-1], repo, authenticated)
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
