"""A stand-in for the Hugging Face Hub HTTP API, for tests only. It is NOT the Hub.

A small standard-library HTTP server on 127.0.0.1 that answers just the calls the real huggingface_hub
client (2.x, with ``HF_HUB_DISABLE_XET=1``) makes to push a folder and to download it back, as listed in
FACTS.md, so tests exercise the real client end to end without a network:

    POST /api/repos/create                           create_repo
    POST /api/models/{repo}/branch/{branch}          create_branch
    POST /api/validate-yaml                          a README.md's front matter, checked as the Hub checks it
                                                     (``metadata_problems``: model-index, base_model, ...)
    POST /api/models/{repo}/preupload/{rev}          which files go to LFS
    POST /{repo}.git/info/lfs/objects/batch          LFS batch API, "basic" transfer; then PUT /lfs/{oid}
    POST /api/models/{repo}/commit/{rev}             the commit (ndjson)
    GET  /api/models/{repo}[/revision/{rev}]         model_info (``?blobs=true``: sizes, blob ids, LFS sha256)
    GET  /api/models/{repo}/tree/{rev}               list_repo_tree (one page)
    HEAD|GET /{repo}/resolve/{rev}/{path}            downloads: X-Repo-Commit, ETag, Content-Length, Range

Repos, branches and commits live in memory. File bytes live on disk under ``root/objects/<oid>`` and are
served as they are *now*: ``object_path()`` lets a test change the bytes behind the Hub's records (listing,
LFS sha256, ETag keep describing the upload), which is how a corrupted or tampered object store looks to a
client. Writes need ``Authorization: Bearer <token>`` with one of ``tokens``; private repos need it to be
read. Errors carry the ``X-Error-Code`` header the client maps to its exceptions. The server never logs
headers or bodies; ``calls`` records (method, path) of every request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

_LFS_PATTERNS = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|tar|gz|zip|h5|npz|onnx|msgpack)$")
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass(frozen=True)
class StoredFile:
    oid: str  # sha256 for LFS files, git blob sha1 for regular ones; the object's name on disk
    size: int
    lfs: bool


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class HubStandIn:
    """Start with ``with HubStandIn(tmp_path) as hub:``; ``hub.url`` is the endpoint for HF_ENDPOINT."""

    def __init__(self, root: str | os.PathLike[str], *, tokens: tuple[str, ...] = ("hf_standin_write_token",)):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tokens = set(tokens)
        self.repos: dict[str, Repo] = {}
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._commit_counter = 0
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> HubStandIn:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stand-in first (with HubStandIn(...) as hub)"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- test helpers ------------------------------------------------------------------------------------
    def head(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id].branches[branch]

    def stored(self, repo_id: str, path: str, revision: str = "main") -> StoredFile:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches.get(revision, revision)][path]

    def object_path(self, repo_id: str, path: str, revision: str = "main") -> Path:
        """The bytes served for ``path``: change them to corrupt the store behind the Hub's records."""
        return self.objects / self.stored(repo_id, path, revision).oid

    # -- state changes (called with the lock held) -------------------------------------------------------
    def _put_object(self, oid: str, data: bytes) -> None:
        target = self.objects / oid
        tmp = target.with_suffix(f".tmp{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, StoredFile], message: str) -> str:
        self._commit_counter += 1
        listing = json.dumps([parent, message, self._commit_counter, sorted((p, f.oid) for p, f in files.items())])
        sha = hashlib.sha1(listing.encode()).hexdigest()
        repo.commits[sha] = files
        return sha

    def _repo(self, repo_id: str, token: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and token not in self.tokens):
            raise _HubError(401 if token is None else 404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _resolve(self, repo: Repo, repo_id: str, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision} in {repo_id}")


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects from the Hub

    def log_message(self, format: str, *args: object) -> None:  # never print requests (they carry tokens)
        pass

    # -- plumbing ----------------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ").strip() or None if auth.startswith("Bearer ") else None

    def _require_write(self) -> str:
        token = self._token()
        if token not in self.hub.tokens:
            raise _HubError(401, None, "Invalid credentials in Authorization header")
        return token

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: object = None, *, headers: dict[str, str] | None = None,
              raw: bytes | None = None) -> None:
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.hub.calls.append((self.command, url.path))
        self._query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        try:
            with self.hub._lock:
                self._route(parts)
        except _HubError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            if e.commit:
                headers["X-Repo-Commit"] = e.commit
            self._send(e.status, {"error": e.message}, headers=headers)

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    def _route(self, p: list[str]) -> None:
        m, n = self.command, len(p)
        if m == "POST" and p == ["api", "repos", "create"]:
            return self._create_repo()
        if m == "POST" and p == ["api", "validate-yaml"]:
            return self._validate_yaml()
        if m == "PUT" and n == 2 and p[0] == "lfs":
            return self._lfs_put(p[1])
        if m == "POST" and n == 6 and p[1].endswith(".git") and p[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{p[0]}/{p[1][:-4]}")
        if n >= 4 and p[:2] == ["api", "models"]:
            repo_id, rest = f"{p[2]}/{p[3]}", p[4:]
            if m == "GET" and not rest:
                return self._model_info(repo_id, "main")
            if m == "GET" and len(rest) == 2 and rest[0] == "revision":
                return self._model_info(repo_id, rest[1])
            if m == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo_id, rest[1], "/".join(rest[2:]))
            if m == "POST" and len(rest) == 2 and rest[0] == "branch":
                return self._create_branch(repo_id, rest[1])
            if m == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo_id, rest[1])
            if m == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo_id, rest[1])
        if m in ("GET", "HEAD") and n >= 5 and p[2] == "resolve":
            return self._resolve_file(f"{p[0]}/{p[1]}", p[3], "/".join(p[4:]))
        raise _HubError(404, None, f"the Hub stand-in does not serve {m} /{'/'.join(p)}")

    # -- write side --------------------------------------------------------------------------------------
    def _create_repo(self) -> None:
        self._require_write()
        body = json.loads(self._body())
        if not body.get("organization"):
            raise _HubError(400, None, "the stand-in needs an explicit namespace: ORG/NAME")
        repo_id = f"{body['organization']}/{body['name']}"
        if repo_id in self.hub.repos:
            raise _HubError(409, None, "You already created this model repo")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo = self.hub.repos[repo_id] = Repo(private=private)
        oid = git_blob_sha1(_GITATTRIBUTES)
        self.hub._put_object(oid, _GITATTRIBUTES)
        files = {".gitattributes": StoredFile(oid, len(_GITATTRIBUTES), lfs=False)}
        repo.branches["main"] = self.hub._new_commit(repo, None, files, "initial commit")
        self._send(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _create_branch(self, repo_id: str, branch: str) -> None:
        repo = self.hub._repo(repo_id, self._require_write())
        if branch in repo.branches:
            raise _HubError(409, None, f"Reference refs/heads/{branch} already exists")
        body = json.loads(self._body() or b"{}")
        repo.branches[branch] = self.hub._resolve(repo, repo_id, body.get("startingPoint") or "main")
        self._send(200, {})

    def _validate_yaml(self) -> None:
        content = json.loads(self._body()).get("content", "")
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as e:
            return self._send(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
        problems = metadata_problems(meta)
        if problems:
            return self._send(400, {"errors": [{"message": m} for m in problems]})
        self._send(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, revision: str) -> None:
        repo = self.hub._repo(repo_id, self._require_write())
        self.hub._resolve(repo, repo_id, revision)
        files = json.loads(self._body())["files"]
        modes = []
        for f in files:
            sample = base64.b64decode(f["sample"])
            binary = b"\0" in sample or f["size"] > 10_000_000 or _LFS_PATTERNS.match(f["path"])
            modes.append({"path": f["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False})
        self._send(200, {"files": modes})

    def _lfs_batch(self, repo_id: str) -> None:
        self.hub._repo(repo_id, self._require_write())
        body = json.loads(self._body())
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (self.hub.objects / obj["oid"]).is_file():
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs/{obj['oid']}"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:  # object stores check what they are given
            raise _HubError(400, None, f"uploaded bytes do not hash to {oid}")
        self.hub._put_object(oid, data)
        self._send(200)

    def _commit(self, repo_id: str, revision: str) -> None:
        repo = self.hub._repo(repo_id, self._require_write())
        parent = self.hub._resolve(repo, repo_id, revision)
        if revision not in repo.branches:
            raise _HubError(400, None, f"can only commit to a branch, not {revision}")
        files = dict(repo.commits[parent])
        header: dict = {}
        for line in self._body().splitlines():
            op = json.loads(line)
            key, value = op["key"], op["value"]
            if key == "header":
                header = value
            elif key == "file":
                data = base64.b64decode(value["content"])
                oid = git_blob_sha1(data)
                self.hub._put_object(oid, data)
                files[value["path"]] = StoredFile(oid, len(data), lfs=False)
            elif key == "lfsFile":
                obj = self.hub.objects / value["oid"]
                if not obj.is_file() or obj.stat().st_size != value["size"]:
                    raise _HubError(422, None, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                files[value["path"]] = StoredFile(value["oid"], value["size"], lfs=True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                raise _HubError(400, None, f"the stand-in does not support commit operation {key!r}")
        if header.get("parentCommit") and header["parentCommit"] != parent:
            raise _HubError(412, None, "parent commit is not the head of the branch")
        sha = self.hub._new_commit(repo, parent, files, header.get("summary", ""))
        repo.branches[revision] = sha
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                         "hookOutput": ""})

    # -- read side ---------------------------------------------------------------------------------------
    @staticmethod
    def _file_facts(path: str, f: StoredFile) -> dict:
        if f.lfs:
            pointer = lfs_pointer(f.oid, f.size)
            return {"size": f.size, "blobId": git_blob_sha1(pointer),
                    "lfs": {"size": f.size, "sha256": f.oid, "pointerSize": len(pointer)}}
        return {"size": f.size, "blobId": f.oid}

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo = self.hub._repo(repo_id, self._token())
        sha = self.hub._resolve(repo, repo_id, revision)
        blobs = self._query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [{"rfilename": p, **(self._file_facts(p, f) if blobs else {})}
                    for p, f in sorted(repo.commits[sha].items())]
        self._send(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                         "siblings": siblings, "tags": [], "library_name": "timm"})

    def _tree(self, repo_id: str, revision: str, prefix: str) -> None:
        repo = self.hub._repo(repo_id, self._token())
        sha = self.hub._resolve(repo, repo_id, revision)
        entries = []
        for p, f in sorted(repo.commits[sha].items()):
            if prefix and not p.startswith(prefix.rstrip("/") + "/"):
                continue
            facts = self._file_facts(p, f)
            entry = {"type": "file", "path": p, "size": f.size, "oid": facts["blobId"]}
            if f.lfs:
                entry["lfs"] = {"oid": f.oid, "size": f.size, "pointerSize": facts["lfs"]["pointerSize"]}
            entries.append(entry)
        self._send(200, entries)

    def _resolve_file(self, repo_id: str, revision: str, path: str) -> None:
        repo = self.hub._repo(repo_id, self._token())
        sha = self.hub._resolve(repo, repo_id, revision)
        stored = repo.commits[sha].get(path)
        if stored is None:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist at {sha}", commit=sha)
        data = (self.hub.objects / stored.oid).read_bytes()  # served as stored now, whatever the records say
        headers = {"X-Repo-Commit": sha, "ETag": f'"{stored.oid}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        status = 200
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng and self.command == "GET":
            start = int(rng.group(1))
            end = int(rng.group(2)) if rng.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        headers["Content-Length"] = str(len(data))
        self._send(status, headers=headers, raw=data)


# -- the Hub's metadata checks ---------------------------------------------------------------------------------
# What the Hub verifies in a model card's front matter (hub-docs modelcard.md: "When present, and only then,
# 'model-index', 'datasets' and 'license' contents will be verified"), with the model-index schema that
# huggingface_hub's repocard_data.model_index_to_eval_results reads (required: name, results, task.type,
# dataset.type, dataset.name, metrics[].type, metrics[].value) and the base_model rules of hub-docs
# model-cards.md (Hub model ids; base_model_relation one of adapter, merge, quantized, finetune).

BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
_REPO_ID = re.compile(r"^(?:[\w\-.]{1,96}/)?[\w\-.]{1,96}$")


def _required_str(node: object, key: str, where: str, problems: list[str]) -> None:
    if not isinstance(node, dict) or key not in node:
        problems.append(f'"{where}.{key}" is required')
    elif not isinstance(node[key], str) or not node[key].strip():
        problems.append(f'"{where}.{key}" must be a non-empty string')


def _optional(node: dict, keys: dict[str, type | tuple[type, ...]], where: str, problems: list[str]) -> None:
    for key, kind in keys.items():
        if key in node and not isinstance(node[key], kind):
            problems.append(f'"{where}.{key}" must be a {getattr(kind, "__name__", kind)}')


def _result_problems(result: object, where: str) -> list[str]:
    problems: list[str] = []
    if not isinstance(result, dict):
        return [f'"{where}" must be a mapping']
    _required_str(result.get("task"), "type", f"{where}.task", problems)
    if isinstance(result.get("task"), dict):
        _optional(result["task"], {"name": str}, f"{where}.task", problems)
    dataset = result.get("dataset")
    for key in ("type", "name"):
        _required_str(dataset, key, f"{where}.dataset", problems)
    if isinstance(dataset, dict):
        _optional(dataset, {"config": str, "split": str, "revision": str, "args": dict}, f"{where}.dataset", problems)
    metrics = result.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        problems.append(f'"{where}.metrics" must be a non-empty list')
    for j, metric in enumerate(metrics if isinstance(metrics, list) else []):
        mwhere = f"{where}.metrics[{j}]"
        _required_str(metric, "type", mwhere, problems)
        if not isinstance(metric, dict) or "value" not in metric or metric["value"] is None:
            problems.append(f'"{mwhere}.value" is required')
        elif isinstance(metric["value"], bool) or not isinstance(metric["value"], (int, float, str)):
            problems.append(f'"{mwhere}.value" must be a number or a string')
        if isinstance(metric, dict):
            _optional(metric, {"name": str, "config": str, "args": dict, "verified": bool}, mwhere, problems)
    if "source" in result:
        _required_str(result["source"], "url", f"{where}.source", problems)
    return problems


def model_index_problems(model_index: object) -> list[str]:
    """Why the Hub would reject a ``model-index`` (empty when it would not)."""
    if not isinstance(model_index, list) or not model_index:
        return ['"model-index" must be a non-empty list']
    problems: list[str] = []
    for i, entry in enumerate(model_index):
        where = f"model-index[{i}]"
        _required_str(entry, "name", where, problems)
        results = entry.get("results") if isinstance(entry, dict) else None
        if not isinstance(results, list) or not results:
            problems.append(f'"{where}.results" must be a non-empty list')
            continue
        for k, result in enumerate(results):
            problems += _result_problems(result, f"{where}.results[{k}]")
    return problems


def metadata_problems(meta: object) -> list[str]:
    """Why the Hub's /api/validate-yaml would answer 400 for this front matter (empty when it would not)."""
    if not isinstance(meta, dict):
        return ["the front matter must be a YAML mapping"]
    problems: list[str] = []
    if "model-index" in meta:
        problems += model_index_problems(meta["model-index"])
    if "license" in meta and not (isinstance(meta["license"], str) and re.fullmatch(r"[a-z0-9][a-z0-9.\-]*",
                                                                                      meta["license"])):
        problems.append(f'"license" {meta["license"]!r} is not a license identifier')
    for key in ("datasets", "tags", "base_model"):
        values = meta.get(key)
        values = [values] if isinstance(values, str) else values
        if key in meta and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
            problems.append(f'"{key}" must be a string or a list of strings')
        elif key == "base_model" and values is not None:
            problems += [f'"base_model" {v!r} is not a model id on the Hub' for v in values if not _REPO_ID.match(v)]
    relation = meta.get("base_model_relation")
    if relation is not None and relation not in BASE_MODEL_RELATIONS:
        problems.append(f'"base_model_relation" must be one of {", ".join(BASE_MODEL_RELATIONS)}, not {relation!r}')
    if relation is not None and not meta.get("base_model"):
        problems.append('"base_model_relation" needs "base_model"')
    return problems


def isolate_client(monkeypatch, home: Path, *, offline: bool = False) -> None:
    """Point this process's huggingface_hub at nothing of the user's: no token, no cache, no login.

    HF_HUB_OFFLINE and the token path are module constants read at import, so they are patched where the
    client reads them at call time (``constants.HF_HUB_OFFLINE``, ``constants.HF_TOKEN_PATH``).
    """
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "no-stored-tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


def client_subprocess_env(home: Path, *, endpoint: str | None = None, offline: bool = False,
                          token: str | None = None) -> dict[str, str]:
    """Environment for a client in a fresh process: HF_ENDPOINT / HF_HUB_OFFLINE are read at import there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub-cache"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1" if offline else "0")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if token:
        env["HF_TOKEN"] = token
    return env
