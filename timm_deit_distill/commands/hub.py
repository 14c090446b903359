"""`deit-distill push` and `deit-distill pull`: publish a trained student, fetch one back verified.

    deit-distill push CHECKPOINT --repo-id ORG/NAME [--revision BRANCH] [--private] [--use-ema|--no-ema]
                                 [--to-dir DIR] [--model NAME --num-classes N --img-size N]
    deit-distill pull ORG/NAME[@REV] [--out DIR]

The token comes from HF_TOKEN or the stored login (`hf auth login`), never from the command line, where
it would land in shell history; it is never printed.

Exit codes, as the other subcommands: 2 when the command is refused for something the user can fix (a bad
flag or repo id, no token, a rejected token, a repo or revision that does not exist, an endpoint that cannot
be reached, offline without the files cached), with one line naming the problem and the fix; 1 when the Hub
itself failed (a server error, rate limiting, or files whose bytes do not match the Hub's own checksums).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import DeitDistillError, UsageError
from .common import ArgumentParser, add_either_flag, refuse

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


_PUSH_HELP = "push a trained student to the Hugging Face Hub (or write the folder with --to-dir)"
_PUSH_DESCRIPTION = ("Publish the student of CHECKPOINT: model.safetensors (student only), a config.json plain timm "
                     "loads, and a model card built from the checkpoint and the run's summary.csv. The token comes "
                     "from HF_TOKEN or `hf auth login`, never from the command line.")
_PULL_HELP = "download a student at one commit, every file checked against the Hub's checksums"
_PULL_DESCRIPTION = ("Resolve the revision to a commit, download every file at it into the HF cache and check each "
                     "against the sha256 / git sha1 the Hub lists. With HF_HUB_OFFLINE=1 the cache is used.")


def _add_push_arguments(push: argparse.ArgumentParser) -> None:
    push.add_argument("checkpoint", metavar="CHECKPOINT",
                      help="a checkpoint the trainer wrote (e.g. model_best.pth.tar), or a bare state dict "
                           "(.pth / .safetensors; then give --model)")
    push.add_argument("--repo-id", metavar="ORG/NAME", help="the Hub repo (required unless --to-dir)")
    push.add_argument("--revision", metavar="BRANCH", help="branch to commit to (created if missing; default main)")
    push.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    add_either_flag(push, "use_ema", yes=("--use-ema", "publish the checkpoint's EMA weights (state_dict_ema)"),
                    no=("--no-ema", "publish the raw weights (state_dict)"))
    push.add_argument("--to-dir", metavar="DIR", help="write the folder to DIR instead of uploading")
    push.add_argument("--overwrite", action="store_true",
                      help="with --to-dir: write into a folder that already holds files, replacing the export's "
                           "own (README.md, config.json, model.safetensors); other files are kept")
    push.add_argument("--commit-message", metavar="TEXT")
    bare = push.add_argument_group("for a bare state dict (a trainer checkpoint records these itself)")
    bare.add_argument("--model", metavar="NAME", help="architecture, e.g. deit_tiny_distilled_patch4_32")
    bare.add_argument("--num-classes", type=_positive_int, metavar="N")
    bare.add_argument("--img-size", type=_positive_int, metavar="N")
    card = push.add_argument_group("model card")
    card.add_argument("--license", default="apache-2.0", help="license in the card's front matter (default apache-2.0)")
    card.add_argument("--dataset", action="append", default=[], metavar="HUB_DATASET_ID",
                      help="dataset id for the card's front matter (repeatable)")


def _add_pull_arguments(pull: argparse.ArgumentParser) -> None:
    pull.add_argument("repo", metavar="ORG/NAME[@REV]")
    pull.add_argument("--out", metavar="DIR", help="also copy the verified files into DIR")
    pull.add_argument("--cache-dir", metavar="DIR", help="HF cache to use (default: HF_HUB_CACHE)")
    pull.add_argument("--overwrite", action="store_true",
                      help="with --out: copy into a folder that already holds files, replacing those of the "
                           "repo's file names; other files are kept")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of `deit-distill push` or `deit-distill pull` (``command``), or of both as subcommands (None).

    Each subcommand has a parser of its own so that its usage line and errors name it
    (``usage: deit-distill push [-h] ...``), whatever flag is wrong.
    """
    if command == "push":
        parser = ArgumentParser(prog="deit-distill push", description=_PUSH_DESCRIPTION)
        _add_push_arguments(parser)
        return parser
    if command == "pull":
        parser = ArgumentParser(prog="deit-distill pull", description=_PULL_DESCRIPTION)
        _add_pull_arguments(parser)
        return parser
    parser = ArgumentParser(prog="deit-distill", description="Publish and fetch distilled students.")
    sub = parser.add_subparsers(dest="command", metavar="{push,pull}", required=True)
    _add_push_arguments(sub.add_parser("push", help=_PUSH_HELP, description=_PUSH_DESCRIPTION))
    _add_pull_arguments(sub.add_parser("pull", help=_PULL_HELP, description=_PULL_DESCRIPTION))
    return parser


def _push(args: argparse.Namespace) -> int:
    from ..hub import push_to_hub, save_pretrained
    from ..hub.export import EXPORT_FILES
    from ..hub.transfer import check_folder_target, check_repo_id

    if args.repo_id is not None:
        # also with --to-dir, where it only names the model in the card: a card must not name a repo that
        # cannot exist (the upload would be refused by the same check)
        check_repo_id(args.repo_id)
    options = dict(use_ema=args.use_ema, model_name=args.model, num_classes=args.num_classes,
                   img_size=args.img_size, license=args.license, datasets=args.dataset)
    if args.to_dir:
        check_folder_target(Path(args.to_dir), "--to-dir")
        folder = save_pretrained(args.checkpoint, args.to_dir, repo_id=args.repo_id, overwrite=args.overwrite,
                                 **options)
        facts = json.loads((folder / "config.json").read_text())
        if args.repo_id:
            print(f"note: --repo-id {args.repo_id} only names the model in the card; nothing was uploaded "
                  "(leave out --to-dir to push)", file=sys.stderr)
        print(f"wrote {folder}: {', '.join(sorted(EXPORT_FILES))} "
              f"({facts['deit_distill']['weights']} weights of {facts['deit_distill']['variant']}, "
              f"loadable as timm architecture {facts['architecture']})")
        return 0
    if args.overwrite:
        raise UsageError("--overwrite applies to --to-dir DIR (a push replaces the repo's files in a new commit, "
                         "the earlier ones stay in its history); leave it out, or add --to-dir DIR")
    if not args.repo_id:
        raise UsageError("--repo-id ORG/NAME is required to push (or pass --to-dir DIR to only write the folder)")
    info = push_to_hub(args.checkpoint, args.repo_id, revision=args.revision, private=args.private,
                       commit_message=args.commit_message, **options)
    print(f"pushed {args.repo_id} ({args.revision or 'main'}) at commit {info.oid}: {info.commit_url}")
    print(f"load it with timm.create_model('hf-hub:{args.repo_id}@{info.oid}', pretrained=True), "
          f"or verified: deit-distill pull {args.repo_id}@{info.oid}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from ..hub import pull
    from ..hub.transfer import check_pull_output, copy_pulled

    if args.out is not None:  # before the first request
        check_pull_output(args.out, overwrite=args.overwrite)
    elif args.overwrite:
        raise UsageError("--overwrite applies to --out DIR (the HF cache is never overwritten); leave it out, "
                         "or add --out DIR")
    folder = pull(args.repo, cache_dir=args.cache_dir)
    # the snapshot's files only: a user's own files in --out are neither pulled nor verified
    files = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())
    if args.out is not None:
        folder = copy_pulled(folder, Path(args.out))
    print(f"verified {len(files)} files ({', '.join(files)})", file=sys.stderr)
    print(folder)
    return 0


def _redact(text: str) -> str:
    """Belt and braces: no message this command prints may contain the token in use, or a URL's password."""
    from huggingface_hub import get_token

    token = get_token()
    text = text.replace(token, "***") if token else text
    return re.sub(r"(\w+://)[^/\s@]+@", r"\1***@", text)


def _http_exit_code(e: BaseException) -> int | None:
    """1 when the Hub's server failed (5xx, rate limited); None for the error's own code (2 refused, 1 for files
    whose bytes do not match the Hub's own records)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError) and e.response is not None and (
            e.response.status_code >= 500 or e.response.status_code == 429):
        return 1
    return None


def _hint(e: BaseException, command: str) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError) and e.response is not None and e.response.status_code == 401:
        return (" (check the token: `hf auth whoami`; pushing needs a token with write access)" if command == "push"
                else " (a private repo needs a token: `hf auth login` or HF_TOKEN)")
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run `push` or `pull`; ``argv`` starts with the subcommand name. Returns the exit code."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("push", "pull"):
        command, args = argv[0], build_parser(argv[0]).parse_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)  # prints the usage of both and exits 2
        command = args.command
    try:
        return _push(args) if command == "push" else _pull(args)
    except (DeitDistillError, LocalEntryNotFoundError, FileNotFoundError, NotADirectoryError, HfHubHTTPError,
            ValueError) as e:
        # huggingface_hub's HTTP errors span several lines (status, URL, advice): one line here. The
        # integrity report keeps its list of files, one per line.
        return refuse(command, e, hint=_hint(e, command), redact=_redact, exit_code=_http_exit_code(e))

