"""Point this clone's default DVC remote (`localstore`) at a store that every clone of the project shares.

    python workflow/scripts/setup_remote.py [--store PATH] [--force]

`.dvc/config` names the remote `../.dvcstore`, which DVC resolves relative to each clone's own `.dvc/`
folder: a second clone would push to and pull from its own, empty store. This script writes an absolute
path into `.dvc/config.local` (git-ignored, per clone), chosen as follows:

1. `--store PATH`, when given;
2. when git's `origin` is a folder on this machine or a shared disk (`git clone /path/to/A B`, or a bare
   repository there), the store that origin uses: the `localstore` url of its own `.dvc/config.local`
   when it has one, else `<origin>/.dvcstore`. So B pushes to and pulls from the store A pushed to, and a
   clone of B finds the same store again;
3. otherwise (origin on a git host, or none) this clone's own `.dvcstore/`, as an absolute path, so clones
   made from this one find it.

An existing `.dvc/config.local` url is kept unless --force. `make install` (and so `make demo` and `make
test`) runs this script. For S3 or another shared store, add a remote of your own (README, "Scaling up").
"""

from __future__ import annotations

import argparse
import configparser
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REMOTE = "localstore"


def _configured_url(project: Path) -> str | None:
    """The `localstore` url set in `project`'s .dvc/config.local, as an absolute path, or None."""
    path = project / ".dvc" / "config.local"
    if not path.is_file():
        return None
    cfg = configparser.ConfigParser()
    try:
        cfg.read(path, encoding="utf-8")
    except configparser.Error:
        return None
    for section in cfg.sections():
        if re.sub(r"['\"]", "", section).split() == ["remote", REMOTE] and cfg.has_option(section, "url"):
            url = cfg.get(section, "url").strip()
            if "://" in url:
                return url
            return str((project / ".dvc" / url).resolve()) if not Path(url).is_absolute() else url
    return None


def local_origin(root: Path) -> Path | None:
    """git's `origin` of `root` when it is a folder on this machine (a path or a file:// url), else None."""
    proc = subprocess.run(
        ["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True, check=False
    )
    url = proc.stdout.strip()
    if proc.returncode != 0 or not url:
        return None
    if url.startswith("file://"):
        url = url[len("file://"):]
    elif "://" in url or re.match(r"^[^/]+:", url):  # https://, ssh://, or scp-like user@host:path
        return None
    origin = (root / url).resolve() if not Path(url).is_absolute() else Path(url).resolve()
    return origin if origin.is_dir() else None


def shared_store(root: Path) -> str:
    """The store this clone should use (see the module docstring)."""
    origin = local_origin(root)
    if origin is not None:
        return _configured_url(origin) or str(origin / ".dvcstore")
    return str((root / ".dvcstore").resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="use this folder (or remote url) as the default remote")
    parser.add_argument("--force", action="store_true", help="replace a url already set in .dvc/config.local")
    parser.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    current = _configured_url(root)
    if current and not args.force and not args.store:
        print(f"dvc remote {REMOTE}: {current} (from .dvc/config.local; --force to choose again)")
        return 0
    store = args.store or shared_store(root)
    if "://" not in store:
        store = str(Path(store).resolve())
    subprocess.run(["dvc", "remote", "modify", "--local", REMOTE, "url", store], cwd=root, check=True)
    print(f"dvc remote {REMOTE}: {store} (written to .dvc/config.local)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
