"""``ivr agents``: desk accounts (agents and supervisors) in the server's database."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from ivr.cli import command


def _read_password(prompt: str) -> str:
    """getpass on a terminal (asked twice); the first line of standard input otherwise."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


async def _with_accounts(args: argparse.Namespace, work):
    from ivr.auth import AccountStore
    from ivr.config import load_config
    from ivr.store import make_engine, migrate

    config = load_config(args.config, {"database_url": args.database_url})
    engine = make_engine(config.database_url)
    try:
        await migrate(engine)
        return await work(AccountStore(engine))
    finally:
        await engine.dispose()


@command("agents", "manage agent desk accounts: add, list, passwd, disable, enable, remove")
def _agents(p: argparse.ArgumentParser):
    p.add_argument("--config", help="TOML settings file (for database_url)")
    p.add_argument("--database-url", help="database (default: the configured one)")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="create an account (asks for the password; reads stdin when not a terminal)")
    add.add_argument("name")
    add.add_argument("--interface", help="the agent's Asterisk interface, e.g. PJSIP/1001 or Local/agent1@ivr-agents")
    add.add_argument("--role", default="agent", choices=["agent", "supervisor"])
    add.add_argument("--replace", action="store_true", help="update the account when it exists")
    sub.add_parser("list", help="list accounts")
    pw = sub.add_parser("passwd", help="set a new password")
    pw.add_argument("name")
    for verb in ("disable", "enable", "remove"):
        sp = sub.add_parser(verb, help=f"{verb} an account")
        sp.add_argument("name")

    def run(args: argparse.Namespace) -> int:
        from ivr.auth import AccountError
        from ivr.config import ConfigError

        try:
            if args.action == "add":
                password = _read_password(f"password for {args.name}: ")

                async def work(accounts):
                    return await accounts.create(args.name, password, role=args.role, interface=args.interface,
                                                 replace=args.replace)

                account = asyncio.run(_with_accounts(args, work))
                print(f"{account.role} {account.name} ({account.interface or 'no interface'}) saved")
            elif args.action == "list":
                async def work(accounts):
                    return await accounts.list()

                for a in asyncio.run(_with_accounts(args, work)):
                    flag = " (disabled)" if a.disabled else ""
                    print(f"{a.name}\t{a.role}\t{a.interface or '-'}{flag}")
            elif args.action == "passwd":
                password = _read_password(f"new password for {args.name}: ")

                async def work(accounts):
                    await accounts.set_password(args.name, password)

                asyncio.run(_with_accounts(args, work))
                print(f"password of {args.name} changed")
            elif args.action in ("disable", "enable"):
                async def work(accounts):
                    await accounts.set_disabled(args.name, args.action == "disable")

                asyncio.run(_with_accounts(args, work))
                print(f"{args.name} {args.action}d")
            elif args.action == "remove":
                async def work(accounts):
                    return await accounts.remove(args.name)

                if not asyncio.run(_with_accounts(args, work)):
                    print(f"ivr agents: no account {args.name!r}", file=sys.stderr)
                    return 1
                print(f"{args.name} removed")
        except (AccountError, ConfigError, ValueError) as exc:
            print(f"ivr agents: {exc}", file=sys.stderr)
            return 2
        return 0

    return run
