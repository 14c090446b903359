"""Publish distilled students on the Hugging Face Hub and fetch them back, verified.

What is published is what plain timm loads: ``model.safetensors`` (the student only, raw or EMA weights by
explicit choice), a ``config.json`` written by timm's own ``save_for_hf`` that names an architecture timm
itself registers (this package's variants are re-expressed with ``models.timm_equivalent``), and a model
card (:mod:`.card`). Uploads go through huggingface_hub's ``create_repo`` / ``upload_folder``.

``pull`` resolves the revision to one commit, downloads every file at that commit with huggingface_hub's
``snapshot_download``, then checks each file against the checksum the Hub lists for it (the LFS sha256
for weights), because ``hf_hub_download`` checks sizes only: a bit-flipped weight file would otherwise
load silently. Offline (``HF_HUB_OFFLINE=1``) it serves the HF cache and checks each file against the
checksum its cache blob is named by.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from torch import nn

from ..atomic import atomic_path, atomic_write_text
from ..errors import HubAuthError, HubConnectionError, HubIntegrityError, UsageError
from ..version import __version__
from .export import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, check_output_folder, save_pretrained

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

__all__ = ["push_to_hub", "pull", "load_model", "parse_repo_ref", "resolve_token", "check_folder_target",
           "check_pull_output", "copy_pulled", "check_repo_id", "cached_repo_id"]

_logger = logging.getLogger(__name__)

REQUIRED_FILES = (CONFIG_NAME, WEIGHTS_NAME)
_LIBRARY = dict(library_name="timm-deit-distill", library_version=__version__)
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".tar", ".npz", ".h5")


def _origin(url: str, *, keep_path: bool = True) -> str:
    """``url`` without user:password@ (never printed), query or fragment; without its path unless ``keep_path``."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url.rpartition("@")[2]
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path.rstrip('/') if keep_path else ''}"


def _unreachable(error: BaseException, endpoint: str | None, fallback: str) -> HubConnectionError:
    """One sentence: which address failed, why, what to check (network, HF_ENDPOINT), and ``fallback``."""
    import httpx2
    from huggingface_hub import constants

    target = _origin(endpoint or constants.ENDPOINT)
    if isinstance(error, httpx2.TimeoutException):
        reason = (f"no answer in time ({type(error).__name__}; on a slow network raise HF_HUB_ETAG_TIMEOUT and "
                  "HF_HUB_DOWNLOAD_TIMEOUT, in seconds)")
    elif isinstance(error, (httpx2.UnsupportedProtocol, httpx2.InvalidURL)):
        reason = f"{error} The endpoint must be an http:// or https:// URL"
    else:
        reason = str(error).strip() or type(error).__name__
    where = f"the Hugging Face Hub at {target}"
    with contextlib.suppress(RuntimeError, AttributeError, ValueError):  # httpx: RuntimeError when no request
        failed = _origin(str(error.request.url), keep_path=False)  # type: ignore[attr-defined]
        if failed and not target.startswith(failed):
            where = f"{failed} (a host the Hub at {target} sent the request to)"
    if endpoint:
        check = "the network connection and the endpoint passed in"
    elif os.environ.get("HF_ENDPOINT"):
        check = f"the network connection and HF_ENDPOINT (set to {target}; unset it to use https://huggingface.co)"
    else:
        check = "the network connection and proxy settings (or set HF_ENDPOINT to a Hub mirror)"
    return HubConnectionError(f"cannot reach {where}: {reason.rstrip('.')}. Check {check}; {fallback}.")


def _check_endpoint(endpoint: str | None) -> None:
    """Refuse, before any work, an endpoint the HTTP client cannot use (no http:// or https://, no host)."""
    from huggingface_hub import constants

    url = endpoint or constants.ENDPOINT
    name = f"endpoint {_origin(url)!r}" if endpoint else f"HF_ENDPOINT {_origin(url)!r}"
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError:
        ok = False
    if not ok:
        fix = "pass an http(s):// URL" if endpoint else "unset HF_ENDPOINT to use https://huggingface.co"
        raise UsageError(f"{name} is not an http:// or https:// URL with a host: write it as https://HOST[:PORT], "
                         f"or {fix}")


@contextlib.contextmanager
def _reaching_hub(endpoint: str | None, fallback: str) -> Iterator[None]:
    """Turn the HTTP client's transport errors (huggingface_hub 2.x uses httpx2) into one HubConnectionError."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        yield
    except (httpx2.RequestError, httpx2.InvalidURL, OfflineModeIsEnabled) as e:
        raise _unreachable(e, endpoint, fallback) from e


_PUSH_FALLBACK = "to write the folder without uploading, use --to-dir DIR (save_pretrained in Python)"
_PULL_FALLBACK = "to use the files already in the HF cache, set HF_HUB_OFFLINE=1"


def resolve_token(token: str | None = None) -> str:
    """The token to push with: ``token``, else ``HF_TOKEN``, else the stored login. Never logged."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubAuthError(
            "No Hugging Face token found. Log in once with `hf auth login` (it stores a token), or set the "
            "HF_TOKEN environment variable, or pass token=...; the token needs write access "
            "(https://huggingface.co/settings/tokens).")
    return token


def check_repo_id(repo_id: str) -> None:
    """Refuse (UsageError) a repo id the Hub cannot hold: huggingface_hub's rules, and an owner (ORG/NAME)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UsageError(f"invalid repo id {repo_id!r}: {e}") from e
    if "/" not in repo_id:
        raise UsageError(f"repo id {repo_id!r} needs its owner: ORG/NAME (or USER/NAME)")


def push_to_hub(
    model_or_checkpoint: nn.Module | Mapping[str, Any] | str | os.PathLike[str],
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    use_ema: bool | None = None,
    model_name: str | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    license: str = "apache-2.0",
    datasets: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Export a student (see ``save_pretrained``) and upload it as one commit; returns huggingface_hub's ``CommitInfo``.

    The repo is created if needed (``private`` applies only then); ``revision`` names a branch, created from
    the default branch if missing. The README is always the generated card. ``endpoint`` defaults to
    ``HF_ENDPOINT``. Everything is checked before the first request: the repo id, the revision, offline mode,
    the endpoint URL, the token, the weights. A Hub that cannot be reached raises ``HubConnectionError``.
    """
    from huggingface_hub import HfApi, constants

    check_repo_id(repo_id)
    if revision is not None and _COMMIT_SHA.fullmatch(revision):
        raise UsageError(f"revision {revision!r} is a commit sha; push to a branch name")
    if revision is not None and not revision.strip():
        raise UsageError("the revision (branch) to push to is empty; name a branch, or leave it out for main")
    if constants.HF_HUB_OFFLINE:
        raise HubConnectionError(f"HF_HUB_OFFLINE is set and pushing needs the network: unset HF_HUB_OFFLINE; "
                                 f"{_PUSH_FALLBACK}")
    _check_endpoint(endpoint)
    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="deit-distill-push-") as tmp:
        folder = save_pretrained(
            model_or_checkpoint, Path(tmp) / "export", repo_id=repo_id, use_ema=use_ema, model_name=model_name,
            num_classes=num_classes, img_size=img_size, license=license, datasets=datasets, metadata=metadata)
        facts = json.loads((folder / CONFIG_NAME).read_text())["deit_distill"]
        api = HfApi(endpoint=endpoint, token=token, **_LIBRARY)
        message = commit_message or (f"Upload {facts['variant']} student ({facts['weights']} weights) "
                                     "with timm-deit-distill")
        with _reaching_hub(endpoint, _PUSH_FALLBACK):
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=message)


# ----------------------------------------------------------------------------------------------------------
# pull / load


def parse_repo_ref(repo: str, revision: str | None = None) -> tuple[str, str | None]:
    """Split ``ORG/NAME@REV`` (also accepted with an ``hf-hub:`` prefix); an explicit ``revision`` must agree."""
    repo = repo.removeprefix("hf-hub:")
    repo_id, at, ref = repo.partition("@")
    if at and not ref.strip():
        raise UsageError(f"{repo!r} names an empty revision; write ORG/NAME@REV (a branch, tag or commit sha), "
                         "or ORG/NAME for main")
    if revision is not None and not revision.strip():
        raise UsageError("revision is empty; name a branch, tag or commit sha, or leave it out (None) for main")
    if ref and revision is not None and ref != revision:
        raise UsageError(f"{repo!r} names revision {ref!r} but revision={revision!r} was also given")
    check_repo_id(repo_id)
    return repo_id, (ref or revision)


def _evict(path: Path) -> Path | None:
    """Remove a cached file: the snapshot link and the blob it points to."""
    blob = path.resolve() if path.is_symlink() else None
    path.unlink(missing_ok=True)
    if blob is not None:
        blob.unlink(missing_ok=True)
    return blob


def _checksum(path: Path, kind: str) -> str:
    from huggingface_hub.utils.sha import git_hash, sha_fileobj

    if kind == "sha256":
        with open(path, "rb") as f:
            return sha_fileobj(f).hex()
    return git_hash(path.read_bytes())


def _refuse(where: str, bad: Sequence[tuple[Path, str, str, str, str]]) -> None:
    """Evict each mismatching file from the cache, then raise naming every one of them."""
    lines = []
    for path, name, kind, actual, expected in bad:
        removed = _evict(path)
        lines.append(f"  {name}: {kind} {actual}, the Hub lists {expected} (removed {removed or path})")
    raise HubIntegrityError(
        f"{where}: {len(bad)} file(s) do not match the checksums the Hub lists for them; refused:\n"
        + "\n".join(lines) + "\nPull again to re-download them; if it fails again, the files stored on the Hub "
        "do not match the Hub's own records: do not use this revision.")


def _verify_against_blob_name(path: Path, name: str, where: str) -> None:
    """Offline: a cache blob is named by the ETag the Hub served, i.e. the file's sha256 (LFS) or git sha1."""
    blob = path.resolve()
    if not path.is_symlink():
        _logger.warning("%s: %s is a copy, not a link to a checksum-named blob; it cannot be verified offline",
                        where, name)
        return
    kind = "sha256" if _SHA256.fullmatch(blob.name) else "git-sha1" if _COMMIT_SHA.fullmatch(blob.name) else None
    if kind is None:
        if name.endswith(_WEIGHT_SUFFIXES):
            raise HubIntegrityError(f"{where}: cached {name} is stored as blob {blob.name!r}, not named by its "
                                    "checksum, so it cannot be verified; pull it again with network access")
        return
    actual = _checksum(path, kind)
    if actual != blob.name:
        _refuse(where, [(path, name, kind, actual, blob.name)])


def _write_ref(storage: Path, ref: str, sha: str) -> None:
    """Record ``ref -> sha`` in the cache (refs/<ref>, no newline), as huggingface_hub does, atomically."""
    target = storage / "refs" / ref
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_file() and target.read_text() == sha:
        return
    atomic_write_text(target, sha)


def _pull_online(repo_id: str, revision: str | None, cache_dir: Path | None, token: str | None,
                 endpoint: str | None) -> Path:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    api = HfApi(endpoint=endpoint, token=token, **_LIBRARY)
    # The one revision -> commit lookup. huggingface_hub's client has no timeout of its own (timeout=None):
    # an endpoint that accepts the connection and never answers would hang here forever.
    info = api.model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    sha = info.sha
    where = f"{repo_id}@{sha}"
    names = sorted(s.rfilename for s in info.siblings or [])
    missing = [f for f in REQUIRED_FILES if f not in names]
    if missing:
        raise FileNotFoundError(f"{where} has no {', '.join(missing)}: it is not a timm model repo (files: {names})")
    try:
        # One download thread: on a refused connection huggingface_hub closes its shared client
        # (utils/_http.py, http_backoff), and a sibling thread then fails with "Cannot send a request, as the
        # client has been closed" (a RuntimeError) instead of the connection error. A timm model repo is one
        # weights file and three small ones, so threads buy nothing here.
        folder = Path(snapshot_download(repo_id, revision=sha, cache_dir=cache_dir, token=token, endpoint=endpoint,
                                        max_workers=1, **_LIBRARY))
    except LocalEntryNotFoundError as e:
        # huggingface_hub reports a download host it could not reach (a CDN the Hub redirects to, a connection
        # lost after the lookup) as "not in the local cache", the connection error only chained to it.
        import httpx2

        if isinstance(e.__cause__, (httpx2.RequestError, httpx2.InvalidURL)):
            raise _unreachable(e.__cause__, endpoint, _PULL_FALLBACK) from e
        raise
    # hf_hub_download checked sizes only; compare every file with the Hub's listing at that commit
    # (LFS sha256 for weights, git sha1 for small files). Missing files need no check here:
    # snapshot_download fetched every listed file or raised.
    report = api.verify_repo_checksums(repo_id, revision=sha, cache_dir=folder.parents[2])
    if report.mismatches:
        _refuse(where, [(folder / m["path"], m["path"], m["algorithm"], m["actual"], m["expected"])
                        for m in report.mismatches])
    if revision is None or not _COMMIT_SHA.fullmatch(revision):
        # only now that every file checked out, so an offline pull of this branch never meets a bad snapshot
        _write_ref(folder.parents[1], revision or "main", sha)
    return folder


def _pull_offline(repo_id: str, revision: str | None, cache_dir: Path | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    ref = revision or "main"
    cache = cache_dir or constants.HF_HUB_CACHE
    advice = (f"Pull it once with network access (`deit-distill pull {repo_id}"
              f"{'@' + revision if revision else ''}`), or unset HF_HUB_OFFLINE.")
    try:
        folder = Path(snapshot_download(repo_id, revision=ref, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError as e:
        raise LocalEntryNotFoundError(
            f"HF_HUB_OFFLINE is set and {repo_id}@{ref} is not in the Hub cache ({cache}): {e} {advice}") from e
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise LocalEntryNotFoundError(
            f"HF_HUB_OFFLINE is set and the cached snapshot of {repo_id}@{ref} ({folder}) lacks "
            f"{', '.join(missing)}. {advice}")
    where = f"{repo_id}@{folder.name}"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _verify_against_blob_name(path, path.relative_to(folder).as_posix(), where)
    return folder


def cached_repo_id(path: str | os.PathLike[str]) -> str | None:
    """The model repo a file in the Hugging Face cache was downloaded from, read from its path
    (``.../models--ORG--NAME/snapshots/<commit>/FILE``, huggingface_hub's layout), else None.

    Repo ids cannot contain ``--`` (huggingface_hub's ``validate_repo_id``), so the folder name splits back.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    parts = Path(os.path.abspath(path)).parts  # the snapshot's link itself, not the blob it points to
    for i, part in enumerate(parts[:-3]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            repo_id = "/".join(part.removeprefix("models--").split("--"))
            try:
                validate_repo_id(repo_id)
            except HFValidationError:
                return None
            return repo_id
    return None


def check_folder_target(path: Path, what: str) -> None:
    """Raise NotADirectoryError unless ``path`` is a folder or can be created as one (no file in the way)."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder; give a folder (it is created if missing)")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{what} {path} cannot be created: {parent} is a file, not a folder")


_OUT_FOLDER = "the output folder (out_dir, --out)"


def check_pull_output(out_dir: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Before the first request: ``out_dir`` can be a folder, and holds nothing a pull would replace unless
    ``overwrite`` (the repo's file list is not known yet, so any file there is named)."""
    check_folder_target(Path(out_dir), _OUT_FOLDER)
    check_output_folder(out_dir, _OUT_FOLDER, (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, ".gitattributes"),
                        overwrite=overwrite, also=" and any other file of a name the repo has")


def copy_pulled(folder: Path, out_dir: Path) -> Path:
    """Plain copies of the verified snapshot ``folder``'s files into ``out_dir`` (only those are written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        dst = out_dir / src.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)  # follows the cache's symlinks
    return out_dir


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Download every file of ``repo_id`` at one commit, verified; returns the snapshot folder (or ``out_dir``).

    ``repo_id`` may carry ``@REV``. Online, the revision is resolved to a commit sha once and each file is
    checked against the Hub's listing (LFS sha256 for weights, git sha1 for small files); a mismatch raises
    ``HubIntegrityError`` and removes the file from the cache. With ``HF_HUB_OFFLINE=1`` the HF cache is
    served, each file checked against its checksum-named blob; a missing file raises huggingface_hub's
    ``LocalEntryNotFoundError`` naming it. ``out_dir`` receives plain copies of the verified files.
    A Hub that cannot be reached raises ``HubConnectionError`` (the revision lookup times out after
    ``HF_HUB_ETAG_TIMEOUT`` seconds); a file in the way of ``out_dir``/``cache_dir`` raises
    ``NotADirectoryError`` before the first request, an ``out_dir`` that already holds files
    ``OutputExistsError`` unless ``overwrite`` (then only the repo's files are replaced there).
    """
    from huggingface_hub import constants

    repo_id, revision = parse_repo_ref(repo_id, revision)
    cache = Path(cache_dir) if cache_dir is not None else None
    # Where files will go is checked before the first request, not after the download.
    if cache is not None:
        check_folder_target(cache, "the cache folder (cache_dir, --cache-dir)")
    if out_dir is not None:
        check_pull_output(out_dir, overwrite=overwrite)
    if constants.HF_HUB_OFFLINE:
        folder = _pull_offline(repo_id, revision, cache)
    else:
        _check_endpoint(endpoint)
        with _reaching_hub(endpoint, _PULL_FALLBACK):
            folder = _pull_online(repo_id, revision, cache, token, endpoint)
    return copy_pulled(folder, Path(out_dir)) if out_dir is not None else folder


def load_model(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    **create_kwargs: Any,
) -> nn.Module:
    """A published student in eval mode, from a folder (``local-dir:PATH`` or an existing directory) or a
    repo id (``ORG/NAME[@REV]``, pulled and verified first). Built by timm from the folder's config.json."""
    import timm

    text = os.fspath(source)
    if text.startswith("local-dir:"):
        folder = Path(text.removeprefix("local-dir:"))
    elif Path(text).is_dir():
        folder = Path(text)
    else:
        folder = pull(text, revision=revision, cache_dir=cache_dir, token=token, endpoint=endpoint)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; is it a folder written by save_pretrained or pull?")
    return timm.create_model(f"local-dir:{folder}", pretrained=True, **create_kwargs).eval()
