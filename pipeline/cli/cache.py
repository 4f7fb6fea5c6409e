"""`python -m pipeline.cache`: see and clear the response cache (cache.enabled=true; pipeline.backends.cache).

`python -m pipeline.cache` (or `stats`) prints the folder, its entries and size against its limit;
`list` prints one line per entry (when stored, which backend and model, which request, the start of
the answer), or JSON with `--json`; `clear` removes every entry. `--dir` names the folder as
`cache.dir` does (default: $PIPELINE_CACHE_DIR/responses, else ~/.cache/pipeline/responses). A folder
that does not exist is an empty cache for stats and list (nothing is created); a --dir that is a file
is a mistake (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from pipeline.backends.cache_store import ResponseStore, default_folder
from pipeline.core.console import gib
from pipeline.core.errors import EXIT_USAGE, UserError, one_line


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cache", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="stats", choices=("stats", "list", "clear"))
    parser.add_argument("--dir", help=f"the cache folder, as cache.dir (default: {default_folder()})")
    parser.add_argument("--json", action="store_true", help="stats and list: print JSON")
    parser.add_argument("--limit", type=int, default=50, help="list: at most this many entries, newest first (0: all)")
    args = parser.parse_args(argv)
    folder = Path(args.dir).expanduser().absolute() if args.dir else default_folder()
    if folder.exists() and not folder.is_dir():
        print(f"error: --dir {args.dir}: {folder} is a file, expected the response cache's folder", file=sys.stderr)
        return EXIT_USAGE
    if not folder.is_dir():  # stats and list create nothing; clearing nothing is done
        print(json.dumps({"folder": str(folder), "entries": 0}) if args.json else f"no response cache at {folder}")
        return 0
    try:
        store = ResponseStore(folder)  # the folder's own size limit, as the runs set it
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "clear":
            print(f"removed {store.clear()} entries from {folder}")
        elif args.command == "list":
            _list(store, args.limit, args.json)
        else:
            _stats(store.stats(), args.json)
    finally:
        store.close()
    return 0


def _stats(stats: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    print(f"folder   {stats['folder']}\nentries  {stats['entries']}\nsize     {gib(stats['bytes'])} of "
          f"{gib(stats['size_limit'])} (the oldest entries are evicted past it: cache.size_limit)")


def _list(store: ResponseStore, limit: int, as_json: bool) -> None:
    rows = [_row(key, entry) for key, entry in store.entries()]
    rows.sort(key=lambda row: -row["stored_at"])
    rows = rows[:limit] if limit > 0 else rows
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["stored_at"]))
        print(f"{when}  {row['key'][:12]}  {row['backend']:<12}  {Path(row['model']).name:<20}  "
              f"{row['request']:<16}  {one_line(row['answer'], 60)}")


def _row(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    about = entry.get("about", {})
    answer = entry["completion"]["text"] if "completion" in entry else json.dumps(entry.get("result"))
    return {"key": key, "stored_at": about.get("stored_at", 0.0), "backend": about.get("backend", ""),
            "model": about.get("model", ""), "request": about.get("request", ""), "answer": answer}
