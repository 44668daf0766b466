"""Saving and loading weights: local folders, the Hugging Face Hub and the embedded default.

Weights are read from safetensors and configuration from JSON only: nothing here unpickles a file
or runs code from a downloaded repository.
"""

import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from affectfpn._network import hub_unreachable
from affectfpn._version import __version__
from affectfpn.config import AffectFPNConfig
from affectfpn.errors import UNSET, AffectFPNError, ConfigError, Hint, OfflineError, WeightsError
from affectfpn.io import atomic_write

if TYPE_CHECKING:
    from affectfpn.models.affectfpn import AffectFPN

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
LIBRARY_NAME = "affectfpn"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


# ----------------------------------------------------------------------------------- saving
def save_pretrained(
    model: "AffectFPN",
    save_directory: str | Path,
    *,
    model_card: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``save_directory``.

    ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors at that precision; loading
    casts them back to the model's precision.
    """
    from safetensors.torch import save

    from affectfpn.models._card import render_model_card

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    metadata = {"format": "pt", "affectfpn_version": __version__}
    # The tensor bytes' SHA-256 goes into the header, which the bytes do not depend on: loading
    # checks it, so that a file altered after saving (not only truncated) is refused.
    digest = hashlib.sha256(_data_section(save(state, metadata=metadata))).hexdigest()
    blob = save(state, metadata={**metadata, DATA_DIGEST_KEY: digest})
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: tmp.write_bytes(blob))
    config_text = json.dumps(model.config.to_dict(), indent=2) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(config_text, encoding="utf-8"))
    card = render_model_card(model, model_card or {})
    atomic_write(folder / CARD_NAME, lambda tmp: tmp.write_text(card, encoding="utf-8"))
    logger.info("saved %s to %s", type(model).__name__, folder)
    return folder


# ----------------------------------------------------------------------------------- loading
def load_pretrained(
    cls: "type[AffectFPN]",
    name_or_path: str | Path | None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> "AffectFPN":
    """Resolve ``name_or_path`` to a folder of weights and build the model from it."""
    from affectfpn.models import registry

    if name_or_path is None:
        name_or_path = registry.default_model_name()
    if isinstance(name_or_path, str) and name_or_path in registry.model_names():
        info = registry.get_model_info(name_or_path)
        if info.source == "package":
            folder = registry.package_weights_dir(info)
            _verify_sha256(folder / WEIGHTS_NAME, info.sha256, what=f"embedded model {info.name!r}")
            return _named(
                load_folder(cls, folder, source=f"embedded model {info.name!r}"), info.name
            )
        folder = download(
            info.location,
            revision=revision or info.revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        model = load_folder(cls, folder, source=f"{info.location}@{revision or info.revision}")
        return _named(model, info.name, folder.name)
    path = Path(name_or_path)
    if path.is_dir():
        return _named(load_folder(cls, path, source=str(path)), str(path))
    if path.is_file():
        raise WeightsError(
            f"{path} is a file: pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    text = str(name_or_path)
    if _REPO_ID.match(text) and not text.startswith((".", "/", "~")):
        folder = download(
            text,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        model = load_folder(cls, folder, source=f"{text}@{revision or 'main'}")
        return _named(model, text, folder.name)
    raise WeightsError(
        f"{text!r} is not a registered model ({', '.join(registry.model_names()) or 'none'}), "
        "an existing folder, or a Hub repo id like 'user/model'"
    )


def _named(model: "AffectFPN", name: str, revision: str | None = None) -> "AffectFPN":
    model.name_or_path = name
    model.revision = revision
    return model


def load_folder(cls: "type[AffectFPN]", folder: Path, *, source: str) -> "AffectFPN":
    """Build a model from ``folder/config.json`` and load ``folder/model.safetensors`` strictly."""
    config_path = folder / CONFIG_NAME
    weights_path = folder / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise WeightsError(f"{source}: {needed.name} is missing from {folder}")
    config = AffectFPNConfig.load(config_path)
    model = cls(config)
    state = read_safetensors(weights_path, source=source)
    load_state_dict_strict(model, state, source=source)
    return model


#: Header metadata key of the SHA-256 of a safetensors file's tensor bytes (affectfpn >= 0.9
#: writes it; files without it, such as other tools' files, load without the check).
DATA_DIGEST_KEY = "affectfpn_data_sha256"


def weights_digest(model: torch.nn.Module) -> str:
    """The first 16 hex digits of the SHA-256 of the model's tensors (names, dtypes, shapes,
    values): which weights a corpus job or a fine-tuning run's replay images came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _data_section(blob: bytes) -> bytes:
    """The tensor bytes of a serialised safetensors file (after the 8-byte length and header)."""
    if len(blob) < 8:
        raise ValueError("shorter than a safetensors header")
    size = int.from_bytes(blob[:8], "little")
    if 8 + size > len(blob):
        raise ValueError("the header runs past the end of the file")
    return blob[8 + size :]


def read_safetensors(path: Path, *, source: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a truncated or altered file gives a :class:`WeightsError`.

    A file written by :func:`save_pretrained` carries the SHA-256 of its tensor bytes in its
    header (:data:`DATA_DIGEST_KEY`): bytes changed after saving are refused.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        blob = path.read_bytes()
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
        expected = (header.get("__metadata__") or {}).get(DATA_DIGEST_KEY)
        if expected is not None:
            digest = hashlib.sha256(_data_section(blob)).hexdigest()
            if digest != expected:
                raise WeightsError(
                    f"{source}: {path.name} was altered after it was saved (the SHA-256 of its "
                    f"tensor bytes is {digest[:12]}..., its header says {expected[:12]}...): "
                    "download or copy it again"
                )
        state = load(blob)
    except WeightsError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, AttributeError) as err:
        raise WeightsError(
            f"{source}: {path.name} is not a readable safetensors file ({err}); "
            "it may be truncated or altered: download it again"
        ) from None
    return {k: v.to("cpu") for k, v in state.items()}


def load_state_dict_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str
) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped tensor is an error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"tensors of the wrong shape: {_listing(mismatched)}")
        raise WeightsError(
            f"{source}: the weights do not match the config ({'; '.join(parts)}). "
            "Is config.json the one saved with these weights?"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{source}: weights contain NaN or infinite values in {_listing(bad)}")
    model.load_state_dict(state, strict=True)


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def _verify_sha256(path: Path, expected: str | None, *, what: str) -> None:
    if expected is None:
        return
    if not path.is_file():
        raise WeightsError(f"{what}: {path} is missing; reinstall affectfpn")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise WeightsError(
            f"{what}: {path.name} has sha256 {digest}, expected {expected}: the file was altered "
            "or damaged; reinstall affectfpn (pip install --force-reinstall affectfpn)"
        )


# ----------------------------------------------------------------------------------- the Hub
def download(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """Fetch ``config.json`` and ``model.safetensors`` of a Hub repo (or find them in the cache).

    Returns the snapshot folder that holds both. Offline with nothing cached, this raises
    :class:`~affectfpn.errors.OfflineError` naming the repo and the fix.
    """
    from huggingface_hub import hf_hub_download

    if not local_files_only:
        # One quick probe first: with the Hub out of reach, use the cache or fail at once,
        # instead of sitting through huggingface_hub's retries of every request.
        reason = hub_unreachable()
        if reason is not None:
            try:
                return download(
                    repo_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=True,
                    token=token,
                )
            except OfflineError as err:
                raise OfflineError(f"{err} (the Hub: {reason})") from None
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                    token=token,
                    library_name=LIBRARY_NAME,
                    library_version=__version__,
                )
            )
        except Exception as err:  # mapped to the package's own errors below
            raise _hub_error(err, repo_id, revision, filename) from None
    folder = Path(paths[0]).parent
    if Path(paths[1]).parent != folder:  # both files always come from one snapshot folder
        raise WeightsError(f"{repo_id}: config and weights resolved to different revisions")
    return folder


def _hub_error(err: Exception, repo_id: str, revision: str | None, filename: str) -> AffectFPNError:
    from huggingface_hub import errors as hf_errors

    where = f"{repo_id}@{revision or 'main'}"
    if isinstance(err, hf_errors.LocalEntryNotFoundError):
        return OfflineError(
            f"no network and nothing cached for {where} ({filename}): run once online "
            f"(affectfpn download {repo_id}), or pass a local folder to from_pretrained"
        )
    if isinstance(err, hf_errors.GatedRepoError):
        return WeightsError(
            f"{where} is gated: accept its terms on the Hub", hint=Hint("token", UNSET, "")
        )
    if isinstance(err, hf_errors.RepositoryNotFoundError):
        return WeightsError(
            f"Hub repo {repo_id!r} not found: check the name",
            hint=Hint("token", UNSET, "for a private repo"),
        )
    if isinstance(err, hf_errors.RevisionNotFoundError):
        return WeightsError(f"Hub repo {repo_id!r} has no revision {revision!r}")
    if isinstance(err, hf_errors.EntryNotFoundError):
        return WeightsError(
            f"{where} has no {filename}: is it an affectfpn model "
            "(config.json + model.safetensors)?"
        )
    if isinstance(err, hf_errors.HFValidationError):
        return WeightsError(f"{repo_id!r} is not a valid Hub repo id ({err})")
    if isinstance(err, hf_errors.HfHubHTTPError | OSError):
        return OfflineError(f"could not download {filename} from {where}: {err}")
    return WeightsError(f"could not download {filename} from {where}: {err!r}")


def push_to_hub(
    model: "AffectFPN",
    repo_id: str,
    *,
    model_card: dict[str, Any] | None = None,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload affectfpn model",
) -> str:
    """Save ``model`` with its card to a temporary folder and upload it; returns the commit id."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name=LIBRARY_NAME, library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(model, tmp, model_card=model_card)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                commit_message=commit_message,
                revision=revision,
            )
    except ConfigError:
        raise
    except Exception as err:
        raise WeightsError(f"could not upload to Hub repo {repo_id!r}: {err}") from err
    oid: str = getattr(info, "oid", "") or ""
    return oid
