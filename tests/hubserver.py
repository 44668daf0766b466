"""A local, in-memory stand-in for the Hugging Face Hub, for tests that must not touch the network.

`LocalHub` is a small HTTP server (stdlib ``http.server``, one daemon thread, ``127.0.0.1`` and a
free port) that speaks enough of the Hub protocol for ``huggingface_hub`` 2.x to download from it
and upload to it:

- ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}``: a file at a branch or at a full 40-hex
  commit id, with the headers the client needs (``X-Repo-Commit``, ``ETag``, ``Content-Length``
  and, for LFS files, ``X-Linked-Etag``/``X-Linked-Size``; ``Range`` is honoured). Errors are
  404 with ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`` like the real Hub,
  so the client raises ``RepositoryNotFoundError`` / ``RevisionNotFoundError`` /
  ``RemoteEntryNotFoundError``. Every commit is kept, so a pinned old commit keeps serving the
  old bytes after ``main`` moved on.
- ``GET /api/models/{repo_id}[/revision/{revision}]`` (info with ``sha`` and ``siblings``),
  ``GET /api/models/{repo_id}/tree/{revision}[/{path}]`` and ``/refs``: enough for
  ``snapshot_download``, ``list_repo_files``, ``repo_info``, ``file_exists``.
- ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``POST /api/validate-yaml``,
  ``POST /api/models/{repo_id}/preupload/{revision}``,
  ``POST /api/models/{repo_id}/commit/{revision}``
  (the NDJSON payload: ``file`` base64 entries, ``lfsFile`` entries, ``deletedFile``,
  ``deletedFolder``), and the LFS ``basic`` transfer: ``POST /{repo_id}.git/info/lfs/objects/batch``
  hands out an upload URL on this same server (``PUT /_lfs/{oid}``) and a verify URL. This covers
  ``HfApi.create_repo``, ``upload_file``, ``upload_folder``, ``create_commit``, ``delete_file``.
  Dataset repos work too (``datasets/`` prefix), Space repos do not.

Which files go through LFS is the server's choice (the ``preupload`` answer): here files whose
name ends with one of ``lfs_suffixes`` (``.safetensors``, ``.bin``, ``.pt``, ...) or that are
at least ``lfs_min_size`` bytes. Xet is never advertised (no ``X-Xet-Hash`` header on downloads, and
the ``xet-*-token`` routes answer 501), but **the client decides by itself to upload LFS files
through Xet whenever the ``hf_xet`` package is importable** (``is_xet_available()`` in
``huggingface_hub/utils/_runtime.py``, used by ``_commit_api._upload_files`` and by
``HfApi.upload_folder``, which then switches to the Xet "pipelined" uploader). ``hf_xet`` is a
default dependency of huggingface_hub 2.x on x86_64/arm64 (1.8.0 is installed here), so uploads
of LFS files to this server need ``constants.HF_HUB_DISABLE_XET = True`` (`point_hf_at` and
`hub_env` set it); without it they fail on ``GET .../xet-write-token/...`` (501) with a
``ConnectionError`` from ``hf_xet``. Uploads of regular-only files work either way.

Pointing huggingface_hub at the server
--------------------------------------
huggingface_hub reads its environment **once, at import time**, into module-level names of
``huggingface_hub.constants``; some of those were further copied into other modules. Setting
``HF_ENDPOINT`` / ``HF_HOME`` / ``HF_HUB_OFFLINE`` after ``import huggingface_hub`` therefore
changes nothing. What must be patched in huggingface_hub 2.4 (`point_hf_at` does all of it, and
also sets the environment variables so that subprocesses agree):

``huggingface_hub.constants`` (read as ``constants.X`` at call time, so patching works):
  ``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE`` (built from ``ENDPOINT`` at import: it is what
  ``hf_hub_url`` formats, so patching ``ENDPOINT`` alone still downloads from huggingface.co),
  ``HF_URL_HOSTS``; the paths ``HF_HOME``, ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``,
  ``HF_ASSETS_CACHE``, ``HUGGINGFACE_ASSETS_CACHE``, ``HF_XET_CACHE``, ``HF_TOKEN_PATH``,
  ``HF_STORED_TOKENS_PATH``, ``AGENT_HARNESSES_PATH``, ``CHECK_FOR_UPDATE_DONE_PATH``,
  ``CHECK_FOR_SKILL_UPDATE_DONE_PATH``; the switches ``HF_HUB_OFFLINE``,
  ``HF_HUB_DISABLE_TELEMETRY`` (when False, ``build_hf_headers`` calls ``detect_agent()``,
  which fetches ``{ENDPOINT}/api/agent-harnesses`` once per process),
  ``HF_HUB_DISABLE_XET``, ``HF_HUB_ETAG_TIMEOUT``, ``HF_HUB_DOWNLOAD_TIMEOUT``.
Copies made with ``from ..constants import X`` (patched on the importing module):
  ``huggingface_hub.utils._cache_manager.HF_HUB_CACHE`` (``scan_cache_dir`` default),
  ``huggingface_hub.utils._cache_assets.HF_ASSETS_CACHE`` (``cached_assets_path``),
  ``huggingface_hub.utils._git_credential.ENDPOINT``.
Other values computed from the constants at import:
  ``huggingface_hub.utils._http._HUB_ORIGINS`` (origins a redirect may follow with the auth
  header), ``huggingface_hub.hf_api.api.endpoint`` (the module-level ``HfApi()`` behind the
  top-level functions ``huggingface_hub.create_repo``, ``upload_folder``, ``model_info``, ...; an
  ``HfApi()`` created after patching picks the new ``ENDPOINT`` up by itself).
Not patched, documented here: ``huggingface_hub.utils.tqdm.HF_HUB_DISABLE_PROGRESS_BARS`` (a copy;
use ``huggingface_hub.utils.disable_progress_bars()``), and default arguments bound at import, e.g.
``get_hf_file_metadata(timeout=constants.HF_HUB_ETAG_TIMEOUT)`` and ``HfApi.get_hf_file_metadata``
/ ``get_safetensors_metadata`` (``hf_hub_download`` passes its own timeout, so it is not affected).

Offline mode at run time
------------------------
In 2.x every HTTP call goes through the shared ``httpx2`` client of ``get_session()``, whose
request hook calls ``constants.is_offline_mode()``, which returns the module global
``constants.HF_HUB_OFFLINE``; when true the hook raises ``OfflineModeIsEnabled`` before anything
is sent. ``hf_hub_download`` catches that and serves the cached file of the branch (via
``refs/<branch>``) or raises ``LocalEntryNotFoundError`` at once (no retry). So the toggle is
``constants.HF_HUB_OFFLINE`` (`set_hf_offline` patches it and the ``HF_HUB_OFFLINE`` variable,
for code that reads the environment itself); the environment variable alone does nothing after
import.

What the server was asked
-------------------------
`LocalHub.requests` lists every request (``"METHOD /path?query"``) and `LocalHub.tokens` the
bearer token each one carried; `LocalHub.is_private` says whether ``POST /api/repos/create``
asked for a private repo (``"visibility": "private"``, or the older ``"private": true``;
``repo_info`` answers with it). Refused connections never reach the server, so
`LocalHub.connect_attempts` counts them on the client side (`LocalHub.watch_connections`, which
`hub_env` installs).

Retries
-------
Only the first metadata request of ``hf_hub_download`` is made without retries. When it fails
with a connection error or a 408/429/5xx and nothing is cached, the client asks again through
``http_backoff`` (5 retries waiting 1, 2, 4, 8, 8 s: about 23 s). `fast_hf_retries` keeps the
retries but shrinks the waits (the keyword defaults of ``http_backoff``/``http_stream_backoff``)
and the retry timeout (``file_download._ETAG_RETRY_TIMEOUT``), so an outage test takes well under
a second. `hub_env` applies it.

Usage::

    # tests/conftest.py (pytest puts tests/ on sys.path: there is no tests/__init__.py)
    from hubserver import hub_env, set_hf_offline

    local_hub = pytest.fixture(hub_env, name="local_hub")

    # a test
    def test_download(local_hub, monkeypatch):
        sha = local_hub.add_file("org/model", "config.json", b"{}")
        path = hf_hub_download("org/model", "config.json")
        set_hf_offline(monkeypatch, True)
        before = local_hub.request_count
        assert hf_hub_download("org/model", "config.json") == path
        assert local_hub.request_count == before
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest

__all__ = [
    "DEFAULT_LFS_SUFFIXES",
    "LocalHub",
    "fast_hf_retries",
    "hub_env",
    "point_hf_at",
    "set_hf_offline",
]

logger = logging.getLogger(__name__)

DEFAULT_LFS_SUFFIXES: tuple[str, ...] = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".onnx",
    ".h5",
    ".msgpack",
    ".npz",
    ".npy",
    ".zip",
    ".gz",
    ".tar",
)
"""Path suffixes the server asks the client to upload through LFS (as ``.gitattributes`` would)."""

_REPO_TYPES = {"models": "model", "datasets": "dataset"}
_PREFIX = {"model": "", "dataset": "datasets/"}
_API_ACTIONS = {
    "revision",
    "tree",
    "refs",
    "preupload",
    "commit",
    "xet-read-token",
    "xet-write-token",
}
_LFS_POINTER_SIZE = 134
DownMode = Literal["503", "refuse"]


class _HubError(Exception):
    """An HTTP error answer, raised inside request handling and turned into a response."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class _Blob:
    data: bytes
    lfs: bool

    @property
    def git_oid(self) -> str:
        """Git blob id (sha1 of ``blob <size>\\0<data>``), the Hub's ETag of a regular file."""
        header = f"blob {len(self.data)}\0".encode()
        return hashlib.sha1(header + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        """Name of the cached blob in ``hf_hub_download``: sha256 for LFS, else the git oid."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class _Commit:
    oid: str
    parent: str | None
    message: str
    tree: dict[str, _Blob]
    date: datetime


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    private: bool = False


def _iso(date: datetime) -> str:
    return date.strftime("%Y-%m-%dT%H:%M:%S.") + f"{date.microsecond // 1000:03d}Z"


class LocalHub:
    """An in-memory Hugging Face Hub on ``127.0.0.1`` for tests.

    Args:
        lfs_suffixes: Files whose path ends with one of these are stored and served as LFS files
            (``X-Linked-Etag``/``X-Linked-Size``; uploads go through the LFS batch API).
        lfs_min_size: Files at least this large are LFS files too.

    Use as a context manager (or call `start` / `stop`). State is kept per repo: branches point to
    commits, every commit holds a full snapshot, so old commits stay downloadable.
    """

    def __init__(
        self,
        *,
        lfs_suffixes: tuple[str, ...] = DEFAULT_LFS_SUFFIXES,
        lfs_min_size: int = 10 * 1024 * 1024,
    ) -> None:
        self.lfs_suffixes = tuple(lfs_suffixes)
        self.lfs_min_size = lfs_min_size
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lfs_store: dict[str, bytes] = {}
        self._requests: list[str] = []
        self._tokens: list[str | None] = []
        self._connect_attempts = 0
        self._down: DownMode | None = None
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # ------------------------------------------------------------------------- lifecycle
    def start(self) -> LocalHub:
        """Start serving (on a free port the first time, on the same port after a restart)."""
        with self._lock:
            if self._server is not None:
                return self
            hub = self

            class Handler(_Handler):
                pass

            Handler.hub = hub
            server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
            server.daemon_threads = True
            self._port = server.server_address[1]
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"LocalHub:{self._port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread = server, thread
            logger.debug("LocalHub serving at %s", self.endpoint)
            return self

    def stop(self) -> None:
        """Stop serving and free the port (the stored repos are kept)."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``HF_ENDPOINT`` / ``HfApi(endpoint=...)``, e.g. ``http://127.0.0.1:41234``."""
        if not self._port:
            raise RuntimeError(
                "LocalHub is not started: use `with LocalHub() as hub:` or hub.start()"
            )
        return f"http://127.0.0.1:{self._port}"

    # ---------------------------------------------------------------------- outage control
    def set_down(self, down: bool, mode: DownMode = "503") -> None:
        """Simulate an outage, or end it.

        Args:
            down: True to go down, False to come back.
            mode: ``"503"`` answers every request with ``503 Service Unavailable`` (requests are
                still counted); ``"refuse"`` closes the listening socket so that connections are
                refused (``httpx2.ConnectError`` client-side; nothing is counted). Coming back
                re-opens the same port.
        """
        if not down:
            with self._lock:
                was_refusing = self._down == "refuse"
                self._down = None
            if was_refusing:
                self.start()
            return
        if mode not in ("503", "refuse"):
            raise ValueError(f"mode must be '503' or 'refuse', got {mode!r}")
        with self._lock:
            self._down = mode
        if mode == "refuse":
            self.stop()

    @property
    def is_down(self) -> bool:
        """Whether an outage is being simulated."""
        return self._down is not None

    # ------------------------------------------------------------------------ accounting
    @property
    def request_count(self) -> int:
        """Number of HTTP requests received so far (refused connections are not requests)."""
        with self._lock:
            return len(self._requests)

    @property
    def requests(self) -> list[str]:
        """The requests received so far, as ``"METHOD /path?query"`` strings, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def tokens(self) -> list[str | None]:
        """The bearer token of each request in `requests` (``None``: no ``Authorization``)."""
        with self._lock:
            return list(self._tokens)

    @property
    def connect_attempts(self) -> int:
        """TCP connections this process tried to open to the server, refused ones included.

        Counted on the client side (the server cannot see a refused connection), by
        `watch_connections`, which `hub_env` installs: ``socket.socket.connect`` calls to this
        server's address. Unlike `request_count`, it shows a retry loop while the server refuses.
        """
        with self._lock:
            return self._connect_attempts

    def watch_connections(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Count, in `connect_attempts`, every ``socket.connect`` to this server (undone by
        ``monkeypatch``). ``socket.create_connection`` and httpx's sync transport go through it."""
        import socket

        real_connect = socket.socket.connect
        hub = self

        def counting_connect(sock: socket.socket, address: Any) -> None:
            if (
                isinstance(address, tuple)
                and len(address) >= 2
                and address[0] in ("127.0.0.1", "localhost")
                and address[1] == hub._port
            ):
                with hub._lock:
                    hub._connect_attempts += 1
            real_connect(sock, address)

        monkeypatch.setattr(socket.socket, "connect", counting_connect)

    def reset_requests(self) -> None:
        """Forget the requests received so far (`request_count` drops to 0)."""
        with self._lock:
            self._requests.clear()
            self._tokens.clear()

    # ------------------------------------------------------------------ content (test side)
    def create_repo(self, repo_id: str, *, repo_type: str = "model", exist_ok: bool = True) -> str:
        """Create a repo with an empty initial commit on ``main``; return the ``main`` commit id."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is not None:
                if not exist_ok:
                    raise ValueError(f"{repo_type} repo {repo_id!r} already exists")
                return repo.branches["main"]
            if repo_type not in _PREFIX:
                raise ValueError(f"repo_type must be one of {sorted(_PREFIX)}, got {repo_type!r}")
            repo = _Repo(repo_type=repo_type, repo_id=repo_id)
            self._repos[(repo_type, repo_id)] = repo
            return self._commit(repo, "main", {}, "initial commit", parent=None)

    def add_file(
        self,
        repo_id: str,
        path_in_repo: str,
        data: bytes | str,
        revision: str | None = None,
        *,
        repo_type: str = "model",
        message: str | None = None,
    ) -> str:
        """Commit one file (creating the repo, and the branch from ``main``, if needed).

        Args:
            repo_id: ``"namespace/name"``.
            path_in_repo: Path of the file in the repo, ``/``-separated.
            data: Content; ``str`` is stored UTF-8 encoded.
            revision: Branch to commit to; default ``"main"``.
            repo_type: ``"model"`` or ``"dataset"``.
            message: Commit message.

        Returns:
            The new commit id (40 hex characters), usable as ``revision=`` to pin this state.
        """
        return self.add_files(
            repo_id, {path_in_repo: data}, revision, repo_type=repo_type, message=message
        )

    def add_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str],
        revision: str | None = None,
        *,
        repo_type: str = "model",
        message: str | None = None,
    ) -> str:
        """Commit several files at once; see `add_file`. Returns the new commit id."""
        branch = revision or "main"
        with self._lock:
            self.create_repo(repo_id, repo_type=repo_type)
            repo = self._repos[(repo_type, repo_id)]
            if branch not in repo.branches:
                if _looks_like_sha(branch) and branch in repo.commits:
                    raise ValueError(f"cannot commit on top of commit id {branch}: name a branch")
                repo.branches[branch] = repo.branches["main"]
            tree = dict(repo.commits[repo.branches[branch]].tree)
            for path, data in files.items():
                raw = data.encode() if isinstance(data, str) else bytes(data)
                tree[_clean_path(path)] = _Blob(raw, self._is_lfs(path, len(raw)))
            summary = message or f"Add {', '.join(sorted(files))}"
            return self._commit(repo, branch, tree, summary, parent=repo.branches[branch])

    def delete_file(
        self,
        repo_id: str,
        path_in_repo: str,
        revision: str | None = None,
        *,
        repo_type: str = "model",
    ) -> str:
        """Commit the removal of one file; return the new commit id."""
        branch = revision or "main"
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            head = repo.commits[self._branch_head(repo, branch)]
            if path_in_repo not in head.tree:
                raise KeyError(f"{path_in_repo!r} is not in {repo_id}@{branch}")
            tree = {p: b for p, b in head.tree.items() if p != path_in_repo}
            return self._commit(repo, branch, tree, f"Delete {path_in_repo}", parent=head.oid)

    def files(
        self, repo_id: str, revision: str = "main", *, repo_type: str = "model"
    ) -> dict[str, bytes]:
        """The files of the repo at a branch or commit id, as ``{path: bytes}``."""
        with self._lock:
            commit = self._resolve(self._get_repo(repo_type, repo_id), revision)
            return {path: blob.data for path, blob in commit.tree.items()}

    def commit_sha(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The commit id a branch (or commit id) resolves to."""
        with self._lock:
            return self._resolve(self._get_repo(repo_type, repo_id), revision).oid

    def commits(self, repo_id: str, branch: str = "main", *, repo_type: str = "model") -> list[str]:
        """Commit ids of a branch, newest first (the last one is the empty initial commit)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            out: list[str] = []
            oid: str | None = self._branch_head(repo, branch)
            while oid is not None:
                out.append(oid)
                oid = repo.commits[oid].parent
            return out

    def is_private(self, repo_id: str, *, repo_type: str = "model") -> bool:
        """Whether ``POST /api/repos/create`` asked for a private repo (``visibility``)."""
        with self._lock:
            return self._get_repo(repo_type, repo_id).private

    def repo_exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        """Whether the repo exists on this server."""
        with self._lock:
            return (repo_type, repo_id) in self._repos

    # -------------------------------------------------------------------------- internals
    def _is_lfs(self, path: str, size: int) -> bool:
        return path.lower().endswith(self.lfs_suffixes) or (size > 0 and size >= self.lfs_min_size)

    def _commit(
        self,
        repo: _Repo,
        branch: str,
        tree: dict[str, _Blob],
        message: str,
        *,
        parent: str | None,
    ) -> str:
        seed = json.dumps(
            [
                repo.repo_type,
                repo.repo_id,
                parent,
                message,
                next(self._counter),
                *sorted((path, blob.git_oid) for path, blob in tree.items()),
            ]
        )
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[oid] = _Commit(oid, parent, message, tree, datetime.now(UTC))
        repo.branches[branch] = oid
        return oid

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _branch_head(self, repo: _Repo, branch: str) -> str:
        oid = repo.branches.get(branch)
        if oid is None:
            raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return oid

    def _resolve(self, repo: _Repo, revision: str) -> _Commit:
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if revision in repo.commits:
            return repo.commits[revision]
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _record(self, line: str, token: str | None = None) -> DownMode | None:
        with self._lock:
            self._requests.append(line)
            self._tokens.append(token)
            return self._down


def _looks_like_sha(value: str) -> bool:
    return len(value) == 40 and all(c in "0123456789abcdef" for c in value)


def _clean_path(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"invalid path in repo: {path!r}")
    return "/".join(parts)


# ================================================================================ HTTP side
class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the `LocalHub` attached as the class attribute ``hub``."""

    hub: LocalHub
    protocol_version = (
        "HTTP/1.0"  # one request per connection: an outage is never hidden by keep-alive
    )
    server_version = "LocalHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("LocalHub %s", format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------------ plumbing
    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        auth = self.headers.get("Authorization") or ""
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else None
        down = self.hub._record(f"{method} {self.path}", token)
        try:
            if down is not None:
                raise _HubError(503, "LocalHub is down (simulated outage)")
            split = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(split.query))
            segments = [urllib.parse.unquote(s) for s in split.path.split("/")[1:]]
            self._route(method, segments, query, body)
        except _HubError as err:
            self._send_error(err, head=method == "HEAD")
        except Exception as err:  # a bug in the server: answer 500 with the reason
            logger.exception("LocalHub failed on %s %s", method, self.path)
            self._send_error(_HubError(500, f"LocalHub internal error: {err!r}"), head=False)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        head: bool = False,
        content_length: int | None = None,
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header(
            "Content-Length", str(len(body) if content_length is None else content_length)
        )
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _send_json(
        self, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _send_error(self, err: _HubError, *, head: bool) -> None:
        headers = {
            "Content-Type": "application/json",
            "X-Error-Message": err.message,
            **err.headers,
        }
        if err.code is not None:
            headers["X-Error-Code"] = err.code
        self._send(err.status, json.dumps({"error": err.message}).encode(), headers, head=head)

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body or b"{}")
        except ValueError as err:
            raise _HubError(400, f"invalid JSON body: {err}") from None

    # ------------------------------------------------------------------------- routing
    def _route(self, method: str, seg: list[str], query: dict[str, str], body: bytes) -> None:
        hub = self.hub
        if seg[:1] == ["api"]:
            self._route_api(method, seg[1:], query, body)
            return
        if seg[:1] == ["_lfs"] and len(seg) == 2 and method == "PUT":
            with hub._lock:
                hub._lfs_store[seg[1]] = body
            self._send(200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})
            return
        repo_type, rest = ("dataset", seg[1:]) if seg[:1] == ["datasets"] else ("model", seg)
        joined = "/".join(rest)
        if ".git/info/lfs/objects/" in joined and method == "POST":
            repo_id, _, action = joined.partition(".git/info/lfs/objects/")
            self._lfs(repo_type, repo_id, action, body)
            return
        for idx in (2, 1):
            if len(rest) > idx + 2 and rest[idx] == "resolve" and method in ("GET", "HEAD"):
                repo_id = "/".join(rest[:idx])
                self._resolve_file(method, repo_type, repo_id, rest[idx + 1], rest[idx + 2 :])
                return
        raise _HubError(404, f"LocalHub has no route for {method} {self.path}")

    def _route_api(self, method: str, seg: list[str], query: dict[str, str], body: bytes) -> None:
        if seg == ["agent-harnesses"]:
            self._send_json({"standardEnvVars": [], "harnesses": {}})
            return
        if seg == ["validate-yaml"] and method == "POST":
            self._validate_yaml(self._json(body))
            return
        if seg == ["repos", "create"] and method == "POST":
            self._create_repo(self._json(body))
            return
        if seg == ["repos", "delete"] and method == "DELETE":
            self._delete_repo(self._json(body))
            return
        if not seg or seg[0] not in _REPO_TYPES:
            raise _HubError(404, f"LocalHub has no route for {method} {self.path}")
        repo_type = _REPO_TYPES[seg[0]]
        rest = seg[1:]
        n = 2 if len(rest) >= 2 and rest[1] not in _API_ACTIONS else 1
        repo_id, action, args = "/".join(rest[:n]), rest[n : n + 1], rest[n + 1 :]
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            if not action and method == "GET":
                self._repo_info(repo, hub._resolve(repo, "main"), query)
            elif action == ["revision"] and len(args) == 1 and method == "GET":
                self._repo_info(repo, hub._resolve(repo, args[0]), query)
            elif action == ["tree"] and args and method == "GET":
                self._tree(hub._resolve(repo, args[0]), "/".join(args[1:]), query)
            elif action == ["refs"] and method == "GET":
                self._refs(repo)
            elif action == ["preupload"] and len(args) == 1 and method == "POST":
                self._preupload(repo, args[0], self._json(body))
            elif action == ["commit"] and len(args) == 1 and method == "POST":
                self._commit(repo, args[0], body, query)
            elif action and action[0].startswith("xet-"):
                raise _HubError(
                    501,
                    "LocalHub does not implement Xet storage: set "
                    "huggingface_hub.constants.HF_HUB_DISABLE_XET = True (see tests/hubserver.py)",
                )
            else:
                raise _HubError(404, f"LocalHub has no route for {method} {self.path}")

    # ------------------------------------------------------------------------ downloads
    def _resolve_file(
        self, method: str, repo_type: str, repo_id: str, revision: str, path: list[str]
    ) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
            commit = hub._resolve(repo, revision)
            filename = "/".join(path)
            blob = commit.tree.get(filename)
        if blob is None:
            raise _HubError(
                404,
                f"Entry not found: {filename}",
                "EntryNotFound",
                headers={"X-Repo-Commit": commit.oid},
            )
        size = len(blob.data)
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{path[-1]}"',
        }
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(size)
        start, status = 0, 200
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes=") and "," not in range_header:
            first, _, last = range_header[len("bytes=") :].partition("-")
            start = int(first) if first else max(size - int(last or 0), 0)
            end = int(last) if first and last else size - 1
            if start >= size and size > 0:
                raise _HubError(416, "Requested range not satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            status, data = 206, blob.data[start : end + 1]
        else:
            data = blob.data
        self._send(status, data, headers, head=method == "HEAD")

    def _repo_info(self, repo: _Repo, commit: _Commit, query: dict[str, str]) -> None:
        with_blobs = query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, blob in sorted(commit.tree.items()):
            entry: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                entry["size"] = len(blob.data)
                entry["blobId"] = blob.git_oid
                if blob.lfs:
                    entry["lfs"] = {
                        "size": len(blob.data),
                        "sha256": blob.sha256,
                        "pointerSize": _LFS_POINTER_SIZE,
                    }
            siblings.append(entry)
        namespace = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
        self._send_json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": namespace,
                "sha": commit.oid,
                "lastModified": _iso(commit.date),
                "createdAt": _iso(repo.created),
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _tree(self, commit: _Commit, base: str, query: dict[str, str]) -> None:
        recursive = query.get("recursive", "").lower() in ("1", "true")
        base = base.strip("/")
        prefix = f"{base}/" if base else ""
        if base and base not in commit.tree and not any(p.startswith(prefix) for p in commit.tree):
            raise _HubError(404, f"Path {base} not found", "EntryNotFound")
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path, blob in sorted(commit.tree.items()):
            if not path.startswith(prefix):
                continue
            relative = path[len(prefix) :].split("/")
            for depth in range(1, len(relative)):
                if depth == 1 or recursive:
                    folders.add(prefix + "/".join(relative[:depth]))
            if len(relative) > 1 and not recursive:
                continue
            entry: dict[str, Any] = {
                "type": "file",
                "oid": blob.git_oid,
                "size": len(blob.data),
                "path": path,
            }
            if blob.lfs:
                entry["lfs"] = {
                    "oid": blob.sha256,
                    "size": len(blob.data),
                    "pointerSize": _LFS_POINTER_SIZE,
                }
            entries.append(entry)
        dirs = [
            {"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f}
            for f in sorted(folders)
        ]
        self._send_json(dirs + entries)

    def _refs(self, repo: _Repo) -> None:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in sorted(repo.branches.items())
        ]
        self._send_json({"branches": branches, "converts": [], "tags": []})

    # -------------------------------------------------------------------------- uploads
    def _validate_yaml(self, payload: dict[str, Any]) -> None:
        import yaml  # a dependency of huggingface_hub

        content = str(payload.get("content", ""))
        if content.startswith("---"):
            front = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                yaml.safe_load(front)
            except yaml.YAMLError as err:
                errors = [{"message": f"invalid YAML metadata: {err}"}]
                self._send_json({"errors": errors, "warnings": []}, status=400)
                return
        self._send_json({"errors": [], "warnings": []})

    def _create_repo(self, payload: dict[str, Any]) -> None:
        name, organization = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        if not name:
            raise _HubError(400, "missing repo name")
        if repo_type not in _PREFIX:
            raise _HubError(400, f"LocalHub does not support repo type {repo_type!r}")
        repo_id = f"{organization}/{name}" if organization else str(name)
        url = f"{self.hub.endpoint}/{_PREFIX[repo_type]}{repo_id}"
        with self.hub._lock:
            if self.hub.repo_exists(repo_id, repo_type=repo_type):
                self._send_json(
                    {"error": f"You already created this {repo_type} repo", "url": url},
                    status=409,
                    headers={"X-Error-Message": f"You already created this {repo_type} repo"},
                )
                return
            self.hub.create_repo(repo_id, repo_type=repo_type)
            # huggingface_hub 2.x sends "visibility"; older clients sent "private"
            private = payload.get("visibility") == "private" or payload.get("private") is True
            self.hub._get_repo(repo_type, repo_id).private = private
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict[str, Any]) -> None:
        name, organization = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        repo_id = f"{organization}/{name}" if organization else str(name)
        with self.hub._lock:
            self.hub._get_repo(repo_type, repo_id)
            del self.hub._repos[(repo_type, repo_id)]
        self._send_json({})

    def _preupload(self, repo: _Repo, revision: str, payload: dict[str, Any]) -> None:
        hub = self.hub
        tree = hub._resolve(repo, revision).tree
        files = []
        for item in payload.get("files", []):
            path = str(item["path"])
            lfs = hub._is_lfs(path, int(item.get("size", 0)))
            answer: dict[str, Any] = {
                "path": path,
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
            }
            existing = tree.get(path)
            if existing is not None:
                answer["oid"] = existing.sha256 if lfs else existing.git_oid
            files.append(answer)
        self._send_json({"files": files, "commitOid": repo.branches.get(revision)})

    def _lfs(self, repo_type: str, repo_id: str, action: str, body: bytes) -> None:
        hub = self.hub
        with hub._lock:
            repo = hub._get_repo(repo_type, repo_id)
        payload = self._json(body)
        endpoint = hub.endpoint
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        if action == "batch":
            if payload.get("operation") != "upload":
                raise _HubError(
                    400, "LocalHub only implements LFS uploads (downloads use /resolve)"
                )
            objects = []
            for obj in payload.get("objects", []):
                oid, size = str(obj["oid"]), int(obj["size"])
                answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                with hub._lock:
                    stored = hub._lfs_store.get(oid)
                if stored is None or len(stored) != size:
                    prefix = f"{endpoint}/{_PREFIX[repo.repo_type]}{repo.repo_id}"
                    answer["actions"] = {
                        "upload": {"href": f"{endpoint}/_lfs/{oid}"},
                        "verify": {"href": f"{prefix}.git/info/lfs/objects/verify"},
                    }
                objects.append(answer)
            body_out = json.dumps({"transfer": "basic", "objects": objects}).encode()
            self._send(200, body_out, headers)
        elif action == "verify":
            oid, size = str(payload.get("oid")), int(payload.get("size", -1))
            with hub._lock:
                data = hub._lfs_store.get(oid)
            if data is None or len(data) != size or hashlib.sha256(data).hexdigest() != oid:
                raise _HubError(404, f"LFS object {oid} is missing or does not match its oid/size")
            self._send(200, b"{}", headers)
        else:
            raise _HubError(404, f"LocalHub has no LFS route {action!r}")

    def _commit(self, repo: _Repo, revision: str, body: bytes, query: dict[str, str]) -> None:
        hub = self.hub
        if query.get("create_pr") in ("1", "true", "True"):
            raise _HubError(400, "LocalHub does not implement pull requests (create_pr)")
        head = hub._branch_head(repo, revision)
        tree = dict(repo.commits[head].tree)
        summary = "commit"
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                summary = value.get("summary") or summary
                parent = value.get("parentCommit")
                if parent is not None and parent != head:
                    raise _HubError(412, f"parent commit {parent} is not the head of {revision}")
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise _HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                data = base64.b64decode(value["content"])
                path = _clean_path(value["path"])
                tree[path] = _Blob(data, hub._is_lfs(path, len(data)))
            elif key == "lfsFile":
                stored = hub._lfs_store.get(value["oid"])
                if stored is None:
                    raise _HubError(
                        400,
                        f"Your push was rejected because an LFS pointer pointed to a file that "
                        f"does not exist ({value['path']}, oid {value['oid']})",
                    )
                tree[_clean_path(value["path"])] = _Blob(stored, True)
            elif key == "deletedFile":
                path = _clean_path(value["path"])
                if path not in tree:
                    raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del tree[path]
            elif key == "deletedFolder":
                prefix = _clean_path(value["path"]) + "/"
                tree = {p: b for p, b in tree.items() if not p.startswith(prefix)}
            else:
                raise _HubError(400, f"LocalHub does not implement commit operation {key!r}")
        oid = hub._commit(repo, revision, tree, summary, parent=head)
        prefix = f"{hub.endpoint}/{_PREFIX[repo.repo_type]}{repo.repo_id}"
        self._send_json(
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{prefix}/commit/{oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )


# ====================================================================== client-side patching
def point_hf_at(
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    hf_home: str | os.PathLike[str],
    *,
    etag_timeout: int = 3,
    download_timeout: int = 5,
) -> None:
    """Point an already imported huggingface_hub at ``endpoint`` with a cache under ``hf_home``.

    Patches the module constants (and their import-time copies) listed in the module docstring,
    sets the matching environment variables for subprocesses, removes tokens from the environment,
    switches telemetry and Xet off and offline mode off. Everything is undone by ``monkeypatch``.

    Args:
        monkeypatch: The pytest fixture.
        endpoint: Base URL of the Hub to use (``LocalHub.endpoint``).
        hf_home: Folder for ``HF_HOME``; the cache goes to ``<hf_home>/hub``.
        etag_timeout: Seconds for the metadata (HEAD) request (``HF_HUB_ETAG_TIMEOUT``).
        download_timeout: Seconds for other requests (``HF_HUB_DOWNLOAD_TIMEOUT``).
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _cache_assets, _cache_manager, _git_credential, _http

    endpoint = endpoint.rstrip("/")
    home = Path(hf_home)
    paths = {
        "HF_HOME": home,
        "HF_HUB_CACHE": home / "hub",
        "HUGGINGFACE_HUB_CACHE": home / "hub",
        "HF_ASSETS_CACHE": home / "assets",
        "HUGGINGFACE_ASSETS_CACHE": home / "assets",
        "HF_XET_CACHE": home / "xet",
        "HF_TOKEN_PATH": home / "token",
        "HF_STORED_TOKENS_PATH": home / "stored_tokens",
        "AGENT_HARNESSES_PATH": home / ".agent_harnesses.json",
        "CHECK_FOR_UPDATE_DONE_PATH": home / ".check_for_update_done",
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": home / ".check_for_skill_update_done",
    }
    switches: dict[str, Any] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname or "127.0.0.1"},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_ETAG_TIMEOUT": etag_timeout,
        "HF_HUB_DOWNLOAD_TIMEOUT": download_timeout,
    }
    for name, value in {**{k: str(v) for k, v in paths.items()}, **switches}.items():
        monkeypatch.setattr(constants, name, value)

    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(paths["HF_HUB_CACHE"]))
    monkeypatch.setattr(_cache_assets, "HF_ASSETS_CACHE", str(paths["HF_ASSETS_CACHE"]))
    monkeypatch.setattr(_git_credential, "ENDPOINT", endpoint)
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(paths["HF_HUB_CACHE"]),
        "HF_ASSETS_CACHE": str(paths["HF_ASSETS_CACHE"]),
        "HF_XET_CACHE": str(paths["HF_XET_CACHE"]),
        "HF_TOKEN_PATH": str(paths["HF_TOKEN_PATH"]),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_ETAG_TIMEOUT": str(etag_timeout),
        "HF_HUB_DOWNLOAD_TIMEOUT": str(download_timeout),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HUGGINGFACE_HUB_CACHE",
        "HUGGINGFACE_ASSETS_CACHE",
        "HUGGINGFACE_CO_STAGING",
    ):
        monkeypatch.delenv(name, raising=False)
    home.mkdir(parents=True, exist_ok=True)


def set_hf_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    """Switch huggingface_hub's offline mode at run time (undone by ``monkeypatch``).

    Sets ``huggingface_hub.constants.HF_HUB_OFFLINE`` (what ``constants.is_offline_mode()`` and
    the request hook of the shared HTTP client read on every call) and the ``HF_HUB_OFFLINE``
    environment variable (read only at import, but kept in step for code and subprocesses that
    look at the environment).
    """
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")


def fast_hf_retries(
    monkeypatch: pytest.MonkeyPatch, *, wait: float = 0.01, timeout: float = 3.0
) -> None:
    """Keep huggingface_hub's retries but make them quick (undone by ``monkeypatch``).

    Shrinks the waits between retries of ``http_backoff`` / ``http_stream_backoff`` (keyword
    defaults, shared by every module that imported them) to ``wait`` seconds and the timeout of
    ``hf_hub_download``'s retried metadata request (``file_download._ETAG_RETRY_TIMEOUT``, 60 s)
    to ``timeout``.
    """
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    stream_fn = getattr(_http.http_stream_backoff, "__wrapped__", _http.http_stream_backoff)
    for fn in (_http.http_backoff, stream_fn):
        defaults = fn.__kwdefaults__
        if defaults is None or "base_wait_time" not in defaults:
            raise RuntimeError(
                f"{fn.__qualname__} has no base_wait_time: update tests/hubserver.py"
            )
        monkeypatch.setitem(defaults, "base_wait_time", wait)
        monkeypatch.setitem(defaults, "max_wait_time", wait)
    monkeypatch.setattr(file_download, "_ETAG_RETRY_TIMEOUT", timeout)


def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalHub]:
    """Fixture body: a started `LocalHub` that huggingface_hub talks to, with a private cache.

    A generator, so wrap it in ``conftest.py`` with ``local_hub = pytest.fixture(hub_env,
    name="local_hub")`` (or ``yield from hub_env(monkeypatch, tmp_path)`` in your own fixture).
    The cache is ``<tmp_path>/hf_home/hub``; retries are quick (`fast_hf_retries`); offline mode is
    off until `set_hf_offline` is called. The server stops at teardown.
    """
    from huggingface_hub.utils import close_session

    with LocalHub() as hub:
        point_hf_at(monkeypatch, hub.endpoint, tmp_path / "hf_home")
        hub.watch_connections(monkeypatch)
        fast_hf_retries(monkeypatch)
        close_session()  # no pooled connection from an earlier test may be reused
        try:
            yield hub
        finally:
            with contextlib.suppress(Exception):
                close_session()
