"""``ivr callbacks``: list and cancel callback requests. Importing this module
also registers the ``callback`` engine action for ``ivr call``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from types import SimpleNamespace

from ivr.cli import command

from . import actions  # noqa: F401  (the engine action, for `ivr call`)


async def _with_store(args: argparse.Namespace, work):
    from ivr.config import load_config
    from ivr.store import TrailStore

    config = load_config(args.config, {"database_url": args.database_url})
    store = await TrailStore.open(config.database_url)
    try:
        return await work(SimpleNamespace(store=store, config=config, callbacks=None))
    finally:
        await store.close()


@command("callbacks", "list or cancel callback requests")
def _callbacks(p: argparse.ArgumentParser):
    p.add_argument("--config", help="TOML settings file (for database_url)")
    p.add_argument("--database-url", help="database (default: the configured one)")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="newest first")
    ls.add_argument("--status", choices=["pending", "dialling", "done", "failed", "cancelled"])
    ls.add_argument("--limit", type=int, default=50)
    cancel = sub.add_parser("cancel", help="cancel an open request")
    cancel.add_argument("id")

    def run(args: argparse.Namespace) -> int:
        from .api import cancel_callback, list_callbacks

        if args.action == "list":
            async def work(app):
                return await list_callbacks(app, status=args.status, limit=args.limit)

            for c in asyncio.run(_with_store(args, work)):
                print(f"{c['id']}\t{c['status']}\t{c['when']}\t{c['queue']}\t{c['number']}\t"
                      f"attempts {c['attempts']}/{c['max_attempts']}\t{c['last_outcome'] or ''}")
            return 0

        async def work(app):
            return await cancel_callback(app, args.id, by="cli")

        if not asyncio.run(_with_store(args, work)):
            print(f"ivr callbacks: no open request {args.id}", file=sys.stderr)
            return 1
        print(f"{args.id} cancelled")
        return 0

    return run
