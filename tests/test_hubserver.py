"""Tests of the local Hub (tests/hubserver.py), driven by the real huggingface_hub client.

The ``local_hub`` fixture is ``hubserver.hub_env`` wrapped in tests/conftest.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hubserver import LocalHub, set_hf_offline
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = "affectfpn-test/tiny"


def test_download_lands_in_isolated_cache(local_hub: LocalHub, tmp_path: Path) -> None:
    sha = local_hub.add_file(REPO, "config.json", b'{"width": 8}')

    path = Path(hf_hub_download(REPO, "config.json"))

    assert path.read_bytes() == b'{"width": 8}'
    cache = tmp_path / "hf_home" / "hub"
    assert Path(constants.HF_HUB_CACHE) == cache
    assert path.is_relative_to(cache)
    assert path.parent.name == sha  # snapshots/<commit of main>/config.json
    assert (cache / "models--affectfpn-test--tiny" / "refs" / "main").read_text() == sha
    assert any(r.startswith("HEAD /affectfpn-test/tiny/resolve/main/") for r in local_hub.requests)


def test_offline_second_download_makes_no_request(
    local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_hub.add_file(REPO, "config.json", b"v1")
    first = hf_hub_download(REPO, "config.json")
    local_hub.add_file(REPO, "config.json", b"v2")  # would be fetched if the client went online

    set_hf_offline(monkeypatch, True)
    before = local_hub.request_count
    second = hf_hub_download(REPO, "config.json")

    assert second == first
    assert Path(second).read_bytes() == b"v1"
    assert local_hub.request_count == before
    assert os.environ["HF_HUB_OFFLINE"] == "1"

    set_hf_offline(monkeypatch, False)
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == b"v2"
    assert local_hub.request_count > before


def test_offline_uncached_file_fails_fast(
    local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_hub.add_file(REPO, "model.safetensors", os.urandom(256))
    set_hf_offline(monkeypatch, True)

    start = time.monotonic()
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "model.safetensors")

    assert time.monotonic() - start < 3
    assert local_hub.request_count == 0


def test_pinned_revision_serves_old_content(local_hub: LocalHub) -> None:
    old = local_hub.add_file(REPO, "config.json", b"old")
    new = local_hub.add_file(REPO, "config.json", b"new")
    assert old != new

    pinned = Path(hf_hub_download(REPO, "config.json", revision=old))
    latest = Path(hf_hub_download(REPO, "config.json", revision="main"))

    assert pinned.read_bytes() == b"old"
    assert latest.read_bytes() == b"new"
    assert pinned.parent.name == old
    assert latest.parent.name == new
    assert local_hub.files(REPO, old) == {"config.json": b"old"}


def test_branch_other_than_main(local_hub: LocalHub) -> None:
    local_hub.add_file(REPO, "config.json", b"main")
    dev = local_hub.add_file(REPO, "config.json", b"dev", revision="dev")

    path = Path(hf_hub_download(REPO, "config.json", revision="dev"))

    assert path.read_bytes() == b"dev"
    assert path.parent.name == dev
    assert local_hub.files(REPO)["config.json"] == b"main"


def test_errors_match_the_real_hub(local_hub: LocalHub) -> None:
    local_hub.add_file(REPO, "config.json", b"{}")

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("affectfpn-test/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.json")


# huggingface_hub's LFS basic transfer still passes the file as `data=`; httpx2 warns about it
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_create_repo_and_upload_folder_roundtrip(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    folder.mkdir()
    config = b'{"backbone": "resnet18"}'
    weights = os.urandom(4096)
    (folder / "config.json").write_bytes(config)
    (folder / "model.safetensors").write_bytes(weights)
    api = HfApi(endpoint=local_hub.endpoint)

    url = api.create_repo("affectfpn-test/uploaded", exist_ok=True)
    api.create_repo("affectfpn-test/uploaded", exist_ok=True)  # exists: no error
    info = api.upload_folder(repo_id="affectfpn-test/uploaded", folder_path=folder)

    assert url.repo_id == "affectfpn-test/uploaded"
    assert info.oid == local_hub.commit_sha("affectfpn-test/uploaded")
    assert local_hub.files("affectfpn-test/uploaded") == {
        "config.json": config,
        "model.safetensors": weights,
    }
    # the weights went through the LFS batch API and the basic transfer, the config inline
    requests = local_hub.requests
    assert "POST /affectfpn-test/uploaded.git/info/lfs/objects/batch" in requests
    assert sum(r.startswith("PUT /_lfs/") for r in requests) == 1
    for name, data in (("config.json", config), ("model.safetensors", weights)):
        path = hf_hub_download("affectfpn-test/uploaded", name)
        assert Path(path).read_bytes() == data


@pytest.mark.parametrize("mode", ["503", "refuse"])
def test_server_down_fails_fast_and_cache_still_serves(local_hub: LocalHub, mode: str) -> None:
    local_hub.add_files(REPO, {"config.json": b"{}", "model.safetensors": os.urandom(128)})
    cached = hf_hub_download(REPO, "config.json")
    endpoint = local_hub.endpoint

    local_hub.set_down(True, mode=mode)  # type: ignore[arg-type]
    start = time.monotonic()
    assert hf_hub_download(REPO, "config.json") == cached  # falls back to the cache
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "model.safetensors")
    assert time.monotonic() - start < 5

    local_hub.set_down(False)
    assert local_hub.endpoint == endpoint
    assert Path(hf_hub_download(REPO, "model.safetensors")).stat().st_size == 128


def test_503_requests_are_counted(local_hub: LocalHub) -> None:
    local_hub.add_file(REPO, "config.json", b"{}")
    local_hub.set_down(True)
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json")
    # the client's first HEAD (no retry) and then its retried HEADs all reached the server
    assert local_hub.is_down
    assert local_hub.request_count >= 2
    assert set(local_hub.requests) == {f"HEAD /{REPO}/resolve/main/config.json"}


def test_create_repo_records_private_and_the_token(local_hub: LocalHub) -> None:
    api = HfApi(token="hf_secret_test_token")
    api.create_repo("someone/private-one", private=True)
    api.create_repo("someone/public-one")
    assert local_hub.is_private("someone/private-one")
    assert not local_hub.is_private("someone/public-one")
    creates = [i for i, r in enumerate(local_hub.requests) if r == "POST /api/repos/create"]
    assert len(creates) == 2
    assert {local_hub.tokens[i] for i in creates} == {"hf_secret_test_token"}
    HfApi().create_repo("someone/anonymous")
    assert local_hub.tokens[-1] is None


def test_connect_attempts_count_refused_connections(local_hub: LocalHub) -> None:
    import socket

    host, port = "127.0.0.1", int(local_hub.endpoint.rsplit(":", 1)[1])
    socket.create_connection((host, port), timeout=1).close()
    assert local_hub.connect_attempts == 1
    local_hub.set_down(True, mode="refuse")
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=1)
    assert local_hub.connect_attempts == 3
    assert local_hub.request_count == 0  # refused connections are not requests
