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
from email.message import Message
from pathlib import Path
from typing import Any

from fake_hubs.server import FakeHub, FakeRepo, Reply, route, walk

MAIN = "main"
INVALID_TOKEN = "Invalid credentials in Authorization header"  # the Hub's words
# A repo in the API's paths, and a file's (the repo type "dataset" before a dataset's id).
REPO = r"(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
FILE = r"/(?P<kind>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)"


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


class _Reply(Reply):
    """An answer other than 200, as the Hub gives it: the error in the body and the headers."""

    def __init__(self, status: int, error: str, code: str = "", body: dict | None = None) -> None:
        headers = {"X-Error-Message": error, **({"X-Error-Code": code} if code else {})}
        super().__init__(status, {"error": error, **(body or {})}, headers)


class FakeHuggingFaceHub(FakeHub):
    """The fake Hub. ``token`` is the only token it accepts; reading a public repo needs none."""

    branch = MAIN
    login_required = "Invalid username or password."

    def __init__(self, token: str = "hf_FakeHubToken0123456789abcdef") -> None:
        super().__init__(token)

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"

    def fetched_files(self) -> set[str]:
        """The files downloaded so far (HEAD requests only ask about a file)."""
        return {path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path}

    def _error(self, status: int, message: str) -> Reply:
        return _Reply(status, message)

    def _authenticated(self, headers: Message) -> bool:
        authorization = headers.get("Authorization")
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

    @staticmethod
    def _files_at(repo: FakeRepo, revision: str) -> dict[str, bytes]:
        files = repo.at(revision)
        if files is None:
            raise _Reply(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return files

    @route("GET", r"/api/whoami-v2", login=True)
    def whoami(self, **_: Any) -> dict:
        return {"type": "user", "name": self.user, "fullname": "Fake User", "orgs": [],
                "auth": {"type": "access_token",
                         "accessToken": {"displayName": "tests", "role": "write"}}}

    @route("POST", r"/api/repos/create", login=True)
    def create_repo(self, body: bytes, **_: Any) -> dict:
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
        url = self.repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.repos:
            raise _Reply(409, f"You already created this {repo_type} repo", body={"url": url})
        self.add_repo(repo_id, {}, repo_type, private=payload.get("visibility") == "private")
        return {"url": url, "name": repo_id, "id": repo_id}

    @route("POST", r"/api/validate-yaml")
    def validate_yaml(self, **_: Any) -> dict:
        return {"errors": [], "warnings": []}

    @route("GET", rf"/api/{REPO}(?:/revision/(?P<rev>[^/]+))?")
    def repo_info(self, authenticated: bool, kind: str, repo: str, rev: str | None,
                  **_: Any) -> dict:
        repo_type = kind[:-1]
        found = self._readable(repo_type, repo, authenticated)
        files = self._files_at(found, rev or MAIN)
        sha = found.head if rev in (None, MAIN) else rev
        return {"id": repo, "sha": sha, "private": found.private,
                "siblings": [{"rfilename": path} for path in sorted(files)]}

    @route("GET", rf"/api/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?")
    def tree(self, authenticated: bool, kind: str, repo: str, rev: str, path: str | None,
             query: dict, **_: Any) -> list:
        files = self._files_at(self._readable(kind[:-1], repo, authenticated), rev)
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        return [{"type": "directory", "path": name, "oid": git_blob_id(name.encode()), "size": 0}
                if data is None else
                {"type": "file", "path": name, "oid": git_blob_id(data), "size": len(data)}
                for name, data in walk(files, path or "", recursive)]

    @route("POST", rf"/api/{REPO}/preupload/(?P<rev>[^/]+)", login=True)
    def preupload(self, authenticated: bool, kind: str, repo: str, rev: str, body: bytes,
                  **_: Any) -> dict:
        found = self._readable(kind[:-1], repo, authenticated)
        files = self._files_at(found, rev)
        return {"commitOid": found.head, "files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_id(files[f["path"]]) if f["path"] in files else None}
            for f in json.loads(body)["files"]]}

    @route("POST", rf"/api/{REPO}/commit/(?P<rev>[^/]+)", login=True)
    def commit(self, authenticated: bool, kind: str, repo: str, rev: str, body: bytes,
               query: dict, **_: Any) -> dict:
        repo_type = kind[:-1]
        found = self._readable(repo_type, repo, authenticated)
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

    @route("GET", FILE)
    @route("HEAD", FILE)
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
