"""A small local stand-in for the Hugging Face Hub: tests run the real ``huggingface_hub`` client
against it, with no network.

`LocalHub` is a stdlib ``http.server`` on ``127.0.0.1`` (a free port, daemon threads) that keeps
model repos in memory and speaks the part of the Hub's protocol the tests use:

- ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}``, at a branch or at a commit id, with
  ``X-Repo-Commit``, ``ETag`` (the git blob id) and, for LFS files, ``X-Linked-Etag`` (sha256) and
  ``X-Linked-Size``. Errors are 404 with ``X-Error-Code: RepoNotFound | RevisionNotFound |
  EntryNotFound``, which the client turns into its own exceptions. Every commit is kept, so a
  pinned commit keeps serving its bytes after ``main`` moved on.
- Uploads (``HfApi.create_repo``, ``upload_folder``, ``upload_file``): ``POST /api/repos/create``,
  ``/api/validate-yaml`` (always valid), ``/api/models/{repo_id}/preupload/{branch}`` (files named
  like `LFS_SUFFIXES` go through LFS), the LFS batch API with the ``basic`` transfer (a ``PUT`` to
  ``/_lfs/{oid}`` on this server) and ``/api/models/{repo_id}/commit/{branch}`` (``file`` and
  ``lfsFile`` operations).

Not served: repo info and file trees (so no ``snapshot_download`` / ``repo_info``), datasets,
deletions, ranges, redirects, Xet. The test side writes repos directly (`LocalHub.add_files`),
reads them (`files`, `commit_sha`, `is_private`), sees what it was asked (`requests`, `tokens`)
and simulates outages (`set_down`).

`hub_env` (the ``local_hub`` fixture of tests/conftest.py) points huggingface_hub at the server.
huggingface_hub reads its environment once, at import, into ``huggingface_hub.constants``, so
setting ``HF_ENDPOINT`` later changes nothing: `hub_env` patches those constants (among them
``HUGGINGFACE_CO_URL_TEMPLATE``, built from ``ENDPOINT`` at import, and the module-level
``HfApi`` of the top-level functions) and sets the environment for subprocesses. It turns off
telemetry (which would fetch ``/api/agent-harnesses``) and Xet (the client uploads LFS files
through Xet whenever ``hf_xet`` is installed), and makes the client's retries quick (by default
``http_backoff`` waits 1, 2, 4, 8, 8 s). Copies of constants made at import elsewhere (the
defaults of ``scan_cache_dir``, ``cached_assets_path``) are not patched. Refused connections never
reach the server, so `hub_env` counts connection attempts on the client side
(`LocalHub.connect_attempts`). `set_hf_offline` switches ``constants.HF_HUB_OFFLINE``, which the
client checks before every request.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import socket
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import pytest

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".npz")
"""Files the server stores and serves as LFS files (as a ``.gitattributes`` would say)."""

Answer = tuple[int, dict[str, str], bytes]  # status, headers, body
_commit_numbers = itertools.count()


class HubError(Exception):
    """An error answer: HTTP status, message, the Hub's ``X-Error-Code`` and extra headers."""

    def __init__(
        self, status: int, message: str, code: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})


def _json(payload: Any, status: int = 200) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


class _Repo:
    """Branches pointing to commits; every commit is a full ``{path: bytes}`` snapshot."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}
        self.branches: dict[str, str] = {}
        self.private = False
        self.commit("main", {})  # a new repo has one (empty) commit, as on the Hub

    def commit(self, branch: str, tree: dict[str, bytes]) -> str:
        oid = hashlib.sha1(f"commit {next(_commit_numbers)}".encode()).hexdigest()
        self.commits[oid] = tree
        self.branches[branch] = oid
        return oid

    def resolve(self, revision: str) -> tuple[str, dict[str, bytes]]:
        """The commit id and files of a branch or commit id."""
        oid = self.branches.get(revision, revision)
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return oid, self.commits[oid]


class LocalHub:
    """An in-memory Hub on ``127.0.0.1``; `start` it (`hub_env` does) and `stop` it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._lfs_objects: dict[str, bytes] = {}  # sha256 -> content, from LFS uploads
        self._server: ThreadingHTTPServer | None = None
        self._port = 0
        self.requests: list[str] = []  # "METHOD /path?query" of every request, oldest first
        self.tokens: list[str | None] = []  # the bearer token of each request (None: none)
        self.connect_attempts = 0  # connections tried by this process, refused ones too
        self.down: Literal["503", "refuse"] | None = None

    def start(self) -> LocalHub:
        """Serve, on a free port the first time and on the same port after `stop`."""
        if self._server is None:
            self._server = ThreadingHTTPServer(("127.0.0.1", self._port), _Handler)
            self._server.daemon_threads = True
            self._server.hub = self  # type: ignore[attr-defined]
            self._port = self._server.server_address[1]
            serve = self._server.serve_forever
            threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (the repos are kept)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def endpoint(self) -> str:
        """Base URL for ``HF_ENDPOINT``, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self._port}"

    def set_down(self, down: bool, mode: Literal["503", "refuse"] = "503") -> None:
        """Simulate an outage, or end it (same port again).

        ``"503"`` answers every request with 503 (still counted in `requests`); ``"refuse"``
        closes the port, so connections are refused (counted only in `connect_attempts`).
        """
        self.down = mode if down else None
        if self.down == "refuse":
            self.stop()
        elif not down:
            self.start()

    @property
    def is_down(self) -> bool:
        return self.down is not None

    @property
    def request_count(self) -> int:
        return len(self.requests)

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()
            self.tokens.clear()

    # ------------------------------------------------------------------------- test side
    def add_file(
        self, repo_id: str, path_in_repo: str, data: bytes | str, revision: str | None = None
    ) -> str:
        """Commit one file; see `add_files`."""
        return self.add_files(repo_id, {path_in_repo: data}, revision)

    def add_files(
        self, repo_id: str, files: Mapping[str, bytes | str], revision: str | None = None
    ) -> str:
        """Commit files to a branch (default ``main``; a new branch starts from ``main``),
        creating the repo if needed. Returns the new commit id (40 hex characters)."""
        with self._lock:
            if repo_id not in self._repos:
                self._repos[repo_id] = _Repo()
            repo = self._repos[repo_id]
            branch = revision or "main"
            tree = dict(repo.commits[repo.branches.get(branch, repo.branches["main"])])
            tree.update({p: d.encode() if isinstance(d, str) else d for p, d in files.items()})
            return repo.commit(branch, tree)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of a repo at a branch or commit id."""
        with self._lock:
            return dict(self._repo(repo_id).resolve(revision)[1])

    def commit_sha(self, repo_id: str, revision: str = "main") -> str:
        with self._lock:
            return self._repo(repo_id).resolve(revision)[0]

    def is_private(self, repo_id: str) -> bool:
        """Whether ``POST /api/repos/create`` asked for a private repo."""
        with self._lock:
            return self._repo(repo_id).private

    def repo_exists(self, repo_id: str) -> bool:
        return repo_id in self._repos

    # ------------------------------------------------------------------------- HTTP side
    def _repo(self, repo_id: str) -> _Repo:
        if repo_id not in self._repos:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self._repos[repo_id]

    def answer(self, method: str, url: str, body: bytes) -> Answer:
        """Route one request (under the lock)."""
        path = urlsplit(url).path
        match method, [unquote(s) for s in path.strip("/").split("/")]:
            case (("GET" | "HEAD"), [owner, name, "resolve", revision, *parts]) if parts:
                return self._download(f"{owner}/{name}", revision, "/".join(parts))
            case "POST", ["api", "repos", "create"]:
                return self._create_repo(json.loads(body))
            case "POST", ["api", "validate-yaml"]:
                return _json({"errors": [], "warnings": []})
            case "POST", ["api", "models", owner, name, "preupload", revision]:
                self._repo(f"{owner}/{name}").resolve(revision)
                files = []
                for f in json.loads(body)["files"]:
                    mode = "lfs" if _is_lfs(f["path"]) else "regular"
                    files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False})
                return _json({"files": files})
            case "POST", [owner, git_name, "info", "lfs", "objects", "batch"]:
                self._repo(f"{owner}/{git_name.removesuffix('.git')}")
                objects = [
                    {**o, "actions": {"upload": {"href": f"{self.endpoint}/_lfs/{o['oid']}"}}}
                    for o in json.loads(body)["objects"]
                ]
                return _json({"transfer": "basic", "objects": objects})
            case "PUT", ["_lfs", oid]:
                self._lfs_objects[oid] = body
                return 200, {}, b""
            case "POST", ["api", "models", owner, name, "commit", branch]:
                return self._commit(f"{owner}/{name}", branch, body)
        raise HubError(404, f"LocalHub has no route for {method} {path}")

    def _download(self, repo_id: str, revision: str, filename: str) -> Answer:
        oid, tree = self._repo(repo_id).resolve(revision)
        if filename not in tree:
            headers = {"X-Repo-Commit": oid}
            raise HubError(404, f"Entry not found: {filename}", "EntryNotFound", headers)
        data = tree[filename]
        git_blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        headers = {"X-Repo-Commit": oid, "ETag": f'"{git_blob_id}"'}
        if _is_lfs(filename):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        return 200, headers, data

    def _create_repo(self, payload: dict[str, Any]) -> Answer:
        repo_id = "/".join(filter(None, [payload.get("organization"), payload["name"]]))
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self._repos:  # the client reads "url" even from this answer
            return _json({"error": "You already created this model repo", "url": url}, 409)
        self._repos[repo_id] = _Repo()
        self._repos[repo_id].private = payload.get("visibility") == "private"
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _commit(self, repo_id: str, branch: str, body: bytes) -> Answer:
        repo = self._repo(repo_id)
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        tree = dict(repo.commits[repo.branches[branch]])
        for line in body.splitlines():  # NDJSON: {"key": ..., "value": ...} per line
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "file":
                tree[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self._lfs_objects:
                    raise HubError(400, f"the LFS object of {value['path']} was not uploaded")
                tree[value["path"]] = self._lfs_objects[value["oid"]]
            elif key != "header":
                raise HubError(400, f"LocalHub does not implement the commit operation {key!r}")
        oid = repo.commit(branch, tree)
        url = f"{self.endpoint}/{repo_id}/commit/{oid}"
        return _json({"commitOid": oid, "commitUrl": url, "pullRequestUrl": None})


def _is_lfs(path: str) -> bool:
    return path.lower().endswith(LFS_SUFFIXES)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: keep-alive never hides an outage

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        hub: LocalHub = self.server.hub  # type: ignore[attr-defined]
        body = self._read_body()
        auth = self.headers.get("Authorization", "")
        with hub._lock:
            hub.requests.append(f"{self.command} {self.path}")
            hub.tokens.append(auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None)
            try:
                if hub.down:
                    raise HubError(503, "LocalHub is down (simulated outage)")
                status, headers, data = hub.answer(self.command, self.path, body)
            except HubError as err:
                status, headers, data = _json({"error": err.message}, err.status)
                headers |= {**err.headers, "X-Error-Message": err.message}
                if err.code:
                    headers["X-Error-Code"] = err.code
            except Exception as err:  # a bug here, or a request it does not understand
                status, headers, data = _json({"error": f"LocalHub failed: {err!r}"}, 500)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_POST = do_PUT = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after each chunk
        return b"".join(chunks)  # HTTP/1.0: the connection closes, trailers need no reading


# ============================================================================= client side
def set_hf_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    """Switch huggingface_hub's offline mode at run time (and ``HF_HUB_OFFLINE``, for
    subprocesses and code that reads the environment)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")


def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    """Fixture body: a started `LocalHub` that huggingface_hub talks to, with its cache in
    ``<tmp_path>/hf_home/hub``, no token, quick retries and offline mode off."""
    from huggingface_hub import constants, file_download, hf_api
    from huggingface_hub.utils import _http, close_session

    hub = LocalHub().start()
    endpoint, home = hub.endpoint, tmp_path / "hf_home"
    home.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_ETAG_TIMEOUT": 3,
        "HF_HUB_DOWNLOAD_TIMEOUT": 5,
    }
    for name, sub in {
        "HF_HOME": "",
        "HF_HUB_CACHE": "hub",
        "HUGGINGFACE_HUB_CACHE": "hub",
        "HF_ASSETS_CACHE": "assets",
        "HUGGINGFACE_ASSETS_CACHE": "assets",
        "HF_XET_CACHE": "xet",
        "HF_TOKEN_PATH": "token",
        "HF_STORED_TOKENS_PATH": "stored_tokens",
        "AGENT_HARNESSES_PATH": ".agent_harnesses.json",
        "CHECK_FOR_UPDATE_DONE_PATH": ".check_for_update_done",
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": ".check_for_skill_update_done",
    }.items():
        settings[name] = str(home / sub)
    for name, value in settings.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    # the environment, for subprocesses (their caches and token follow HF_HOME)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    for name in ("HF_HUB_DISABLE_TELEMETRY", "HF_HUB_DISABLE_XET"):
        monkeypatch.setenv(name, "1")
    for name in (
        *("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
        *("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE"),
        *("HF_XET_CACHE", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"),
    ):
        monkeypatch.delenv(name, raising=False)

    # quick retries: the waits of http_backoff / http_stream_backoff (keyword defaults) and the
    # timeout of hf_hub_download's retried metadata request
    stream_backoff = getattr(_http.http_stream_backoff, "__wrapped__", _http.http_stream_backoff)
    for fn in (_http.http_backoff, stream_backoff):
        if not fn.__kwdefaults__ or "base_wait_time" not in fn.__kwdefaults__:
            raise RuntimeError(f"{fn.__qualname__} has no base_wait_time: update hubserver.py")
        monkeypatch.setitem(fn.__kwdefaults__, "base_wait_time", 0.01)
        monkeypatch.setitem(fn.__kwdefaults__, "max_wait_time", 0.01)
    monkeypatch.setattr(file_download, "_ETAG_RETRY_TIMEOUT", 3.0)

    real_connect = socket.socket.connect

    def counting_connect(sock: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[:2] == ("127.0.0.1", hub._port):
            hub.connect_attempts += 1
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", counting_connect)
    close_session()  # no pooled connection from an earlier test may be reused
    try:
        yield hub
    finally:
        hub.stop()
        close_session()
