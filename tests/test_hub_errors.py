"""push / pull when the Hub cannot be reached or the input is wrong: one line naming the problem and the fix,
exit 2 (as every other subcommand's refusals), no traceback, no token; exit 1 only when the Hub itself fails.

HF_ENDPOINT and HF_HUB_OFFLINE are read when huggingface_hub.constants is first imported, so the endpoint
cases run the real command in a fresh process with the environment set (hub_standin.client_subprocess_env).
huggingface_hub 2.4 talks HTTP through httpx2: a refused connection and an unknown host raise
httpx2.ConnectError, a server that never answers httpx2.ReadTimeout (a TimeoutException), an endpoint
without http(s):// httpx2.UnsupportedProtocol; all of them used to escape as 75-80-line tracebacks.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import httpx2
import pytest
from hub_checkpoints import TOKEN, write_run
from hub_standin import HubStandIn, client_subprocess_env, isolate_client
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError

from timm_deit_distill.commands import hub as hub_cli
from timm_deit_distill.hub import HubConnectionError, parse_repo_ref, pull, push_to_hub

pytestmark = pytest.mark.filterwarnings("ignore:Use .content=<...>. to upload raw bytes:DeprecationWarning")

SECRET = "hf_never_print_me_0123456789"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def hub(run, tmp_path_factory):
    with HubStandIn(tmp_path_factory.mktemp("standin")) as hub:
        push_to_hub(run.checkpoint, "acme/tiny", use_ema=True, token=TOKEN, endpoint=hub.url)
        yield hub


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(args: list[str], home, *, debug: bool = False, **env_kwargs) -> subprocess.CompletedProcess:
    """`deit-distill ARGS` in a fresh process, HF_TOKEN set to SECRET; ``debug``: the client's own logs too."""
    env = client_subprocess_env(home, token=SECRET, **env_kwargs)
    if debug:
        env["HF_HUB_VERBOSITY"] = "debug"
    return subprocess.run([sys.executable, "-m", "timm_deit_distill", *args], capture_output=True, text=True,
                          timeout=180, env=env)


def assert_one_line_refusal(proc: subprocess.CompletedProcess, command: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert SECRET not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"deit-distill {command}: error: "), proc.stderr
    return lines[0]


# -- the endpoint cannot be reached ------------------------------------------------------------------------

def test_pull_from_a_closed_port(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    line = assert_one_line_refusal(cli(["pull", "acme/tiny"], tmp_path, endpoint=url), "pull")
    assert f"cannot reach the Hugging Face Hub at {url}" in line and "Connection refused" in line
    assert f"HF_ENDPOINT (set to {url}" in line and "network" in line and "HF_HUB_OFFLINE=1" in line


def test_push_to_a_closed_port(run, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    proc = cli(["push", str(run.checkpoint), "--repo-id", "acme/x", "--use-ema"], tmp_path, endpoint=url)
    line = assert_one_line_refusal(proc, "push")
    assert f"cannot reach the Hugging Face Hub at {url}" in line and "Connection refused" in line
    assert "HF_ENDPOINT" in line and "--to-dir DIR" in line


def test_unknown_host(tmp_path):
    # .invalid never resolves (RFC 2606), with or without a network
    line = assert_one_line_refusal(cli(["pull", "acme/tiny"], tmp_path, endpoint="http://no-such-host.invalid"),
                                   "pull")
    assert "cannot reach the Hugging Face Hub at http://no-such-host.invalid" in line


def test_credentials_in_the_endpoint_are_never_printed(tmp_path):
    url = f"http://someone:pw_in_url_42@127.0.0.1:{closed_port()}"
    proc = cli(["pull", "acme/tiny"], tmp_path, endpoint=url)
    line = assert_one_line_refusal(proc, "pull")
    assert "pw_in_url_42" not in proc.stderr and "someone" not in line


@pytest.mark.parametrize("command", ["pull", "push"])
def test_the_token_is_never_printed_even_with_the_clients_debug_logs(command, run, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    args = ["pull", "acme/tiny"] if command == "pull" else ["push", str(run.checkpoint), "--repo-id", "acme/x",
                                                            "--use-ema"]
    proc = cli(args, tmp_path, endpoint=url, debug=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"deit-distill {command}: error: cannot reach")
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["pull", "push"])
def test_an_endpoint_that_is_not_a_url_is_refused_before_any_work(command, run, tmp_path):
    args = ["pull", "acme/tiny"] if command == "pull" else ["push", str(run.checkpoint), "--repo-id", "acme/x",
                                                            "--use-ema"]
    line = assert_one_line_refusal(cli(args, tmp_path, endpoint="127.0.0.1:9"), command)
    assert "HF_ENDPOINT '127.0.0.1:9' is not an http:// or https:// URL" in line


def test_a_server_that_never_answers_times_out(tmp_path, monkeypatch):
    """huggingface_hub's client has no timeout of its own: the revision lookup now has HF_HUB_ETAG_TIMEOUT's."""
    isolate_client(monkeypatch, tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    with socket.socket() as silent:  # accepts connections (backlog), never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(HubConnectionError, match=r"no answer in time \(ReadTimeout.*HF_HUB_ETAG_TIMEOUT") as e:
            pull("acme/tiny", cache_dir=tmp_path / "cache", endpoint=url)
    assert isinstance(e.value.__cause__, httpx2.TimeoutException)
    assert f"at {url}" in str(e.value) and "the endpoint passed in" in str(e.value)


def test_push_with_hf_hub_offline_is_refused_before_the_export(run, tmp_path, monkeypatch, capsys):
    isolate_client(monkeypatch, tmp_path, offline=True)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert hub_cli.main(["push", str(run.checkpoint), "--repo-id", "acme/x", "--use-ema"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("deit-distill push: error: HF_HUB_OFFLINE is set and pushing needs the network: unset "
                           "HF_HUB_OFFLINE; to write the folder without uploading, use --to-dir DIR "
                           "(save_pretrained in Python)")


# -- bad input is refused before the first request ---------------------------------------------------------

@pytest.mark.parametrize("ref", ["acme/tiny@", "hf-hub:acme/tiny@", "acme/tiny@ "])
def test_empty_revision_is_refused_before_any_request(ref, hub, tmp_path, monkeypatch, capsys):
    isolate_client(monkeypatch, tmp_path)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    start = len(hub.calls)
    with pytest.raises(ValueError, match="names an empty revision"):
        pull(ref, cache_dir=tmp_path / "cache", endpoint=hub.url)
    assert hub_cli.main(["pull", ref]) == 2
    assert "names an empty revision; write ORG/NAME@REV" in capsys.readouterr().err
    assert hub.calls[start:] == []
    with pytest.raises(ValueError, match="revision is empty"):
        parse_repo_ref("acme/tiny", revision="")


def test_empty_push_revision_is_refused(run, tmp_path, monkeypatch):
    isolate_client(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match="the revision .* is empty"):
        push_to_hub(run.checkpoint, "acme/x", revision="", token=TOKEN, endpoint="http://127.0.0.1:9")


def test_pull_out_onto_a_file_is_refused_before_any_request(hub, tmp_path, monkeypatch, capsys):
    isolate_client(monkeypatch, tmp_path)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    (tmp_path / "afile").write_text("keep me")
    start = len(hub.calls)
    assert hub_cli.main(["pull", "acme/tiny", "--out", str(tmp_path / "afile")]) == 2
    assert "the output folder (out_dir, --out)" in capsys.readouterr().err
    assert hub_cli.main(["pull", "acme/tiny", "--out", str(tmp_path / "afile" / "sub")]) == 2
    assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert hub_cli.main(["pull", "acme/tiny", "--cache-dir", str(tmp_path / "afile")]) == 2
    assert "the cache folder" in capsys.readouterr().err
    assert hub.calls[start:] == [] and (tmp_path / "afile").read_text() == "keep me"


def test_push_to_dir_onto_a_file_is_refused(run, tmp_path, capsys):
    (tmp_path / "afile").write_text("keep me")
    assert hub_cli.main(["push", str(run.checkpoint), "--no-ema", "--to-dir", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "--to-dir" in err and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "afile").read_text() == "keep me"


# -- exit codes: 2 for what the user can fix, 1 when the Hub fails ----------------------------------------

def test_missing_repo_and_revision_are_one_line_refusals(hub, tmp_path, monkeypatch, capsys):
    isolate_client(monkeypatch, tmp_path)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    for ref, needle in (("acme/absent", "Repository Not Found"), ("acme/tiny@nope", "Revision Not Found")):
        assert hub_cli.main(["pull", ref]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_a_server_error_exits_1(hub, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    isolate_client(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_TOKEN", SECRET)

    def failing(self, repo_id, **kwargs):
        response = httpx2.Response(503, request=httpx2.Request("GET", f"{hub.url}/api/models/{repo_id}"))
        raise HfHubHTTPError(f"503 Server Error: Service Unavailable\nfor url {hub.url} (token {SECRET})",
                             response=response)

    monkeypatch.setattr(HfApi, "model_info", failing)
    assert hub_cli.main(["pull", "acme/tiny"]) == 1
    err = capsys.readouterr().err
    assert "503 Server Error" in err and SECRET not in err and len(err.strip().splitlines()) == 1


def test_files_that_do_not_match_the_hubs_records_exit_1(hub, tmp_path):
    obj = hub.object_path("acme/tiny", "config.json")
    original = obj.read_bytes()
    obj.write_bytes(original.replace(b'"num_classes": 10', b'"num_classes": 11'))
    try:
        proc = cli(["pull", "acme/tiny"], tmp_path, endpoint=hub.url)
    finally:
        obj.write_bytes(original)
    assert proc.returncode == 1 and "do not match the checksums the Hub lists" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_download_host_that_cannot_be_reached_is_named(hub, tmp_path, monkeypatch):
    """The lookup reaches the Hub, the file downloads do not (a CDN behind a firewall, a dropped connection):
    huggingface_hub says 'not in the local cache'; the message names the host that failed and the Hub."""
    import huggingface_hub.utils._http as hf_http

    isolate_client(monkeypatch, tmp_path)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)  # the lookup (HfApi reads it at call time)
    files_host = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", files_host + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # the client's 5 retries, without the waits
    with pytest.raises(HubConnectionError) as e:
        pull("acme/tiny", cache_dir=tmp_path / "cache")
    assert str(e.value).startswith(f"cannot reach {files_host} (a host the Hub at {hub.url} sent the request to): "
                                   "[Errno 111] Connection refused")
    assert "HF_HUB_OFFLINE=1" in str(e.value)
