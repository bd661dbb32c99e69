"""``make compat``: the POP3 client against GNU Mailutils, Courier and Cyrus from Debian.

    python -m tests.compat.run                   # every server installed or unpacked here
    python -m tests.compat.run courier cyrus     # only these
    python -m tests.compat.run --prepare         # first fetch and unpack what is missing

A manual check, not part of the CI test command. It needs root (mount namespaces, accounts,
mail files owned by ``mail``) and Debian's packages (see ``tests/compat/servers.py``). Each
server gets a fresh mailbox of ``--messages`` messages (``simple_message(i)`` with the
messy corpus spread among them), then the checks of ``tests/compat/checks.py`` run. At the
end: a table of results, a table of timings, the deviations seen on each server and every
failure with the client's last exchange. Exits 1 on a failure, 2 when a server named on the
command line cannot be run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path

from tests.compat.checks import Checker, Result, build_messages
from tests.compat.servers import ROOT, SERVERS, SPECS, ServerError, locate, prepare, version

ROW_ORDER = [
    "greeting",
    "messages stored",
    "PIPELINING after login",
    "STAT count",
    "UIDL+LIST",
    "TOP pipelined x3 agree",
    "TOP pipelined == lockstep",
    "retr == retr_many",
    "retr_stream == retr",
    "RETR == stored",
    "RETR vs delivered",
    "TOP 0 == header of RETR",
    "LIST size == RETR octets",
    "UIDL unique, RFC syntax",
    "QUIT after RETR",
    "AUTH PLAIN",
    "AUTH LOGIN",
    "UTF8 + RETR 8-bit",
    "TOP deleted msgs in a batch",
    "DELE + abort keeps all",
    "DELE + QUIT removes",
    "STAT before login",
    "USER+PASS+STAT+QUIT in one write",
    "bad password",
    "2nd concurrent login",
    "600-octet command",
    "CRLF Maildir file",
]
WIDE_ROWS = ("CAPA before login", "CAPA after login")


def _run_one(name: str, total: int, corpus: bool, keep: bool) -> Result:
    spec = SPECS[name]
    result = Result(name, spec.title, version(spec))
    workdir = Path(tempfile.mkdtemp(prefix=f"pop3gw-compat-{name}-"))
    server = SERVERS[name](workdir)
    try:
        print(f"-- {spec.title} {result.version}: starting in {workdir}", flush=True)
        server.start()
        print(f"   listening on 127.0.0.1:{server.port}; running the checks", flush=True)
        messages = build_messages(total, corpus)
        result = asyncio.run(Checker(server, messages, spec.title, result.version).run())
    except ServerError as exc:
        result.fail(f"server: {exc}")
    except Exception:
        result.fail("run: " + traceback.format_exc())
    finally:
        server.stop()
        if not result.ok:
            result.failures.append(
                f"server log tail:\n{textwrap.indent(server.log_tail(), '    ')}"
            )
        if keep:
            print(f"   kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _cell(result: Result, row: str, width: int) -> str:
    if row not in result.rows:
        return ""
    value = result.rows[row]
    if result.status.get(row) is False:
        value = "FAIL " + value
    return value if len(value) <= width else value[: width - 1] + "~"


def _print_tables(results: list[Result]) -> None:
    width = 34
    names = [r.server for r in results]
    print("\nresults")
    print(f"  {'check':34} " + " ".join(f"{n:{width}}" for n in names))
    print(f"  {'version':34} " + " ".join(f"{r.version:{width}}" for r in results))
    rows = ROW_ORDER + sorted(
        {k for r in results for k in r.rows} - set(ROW_ORDER) - set(WIDE_ROWS)
    )
    for row in rows:
        if any(row in r.rows for r in results):
            print(f"  {row:34} " + " ".join(f"{_cell(r, row, width):{width}}" for r in results))
    print(f"  {'verdict':34} " + " ".join(f"{'ok' if r.ok else 'FAILED':{width}}" for r in results))

    print("\ntimings (whole mailbox; TOP pipelined: median of 3 rounds)")
    head = (
        "server",
        "msgs",
        "TOP pipelined",
        "TOP lockstep",
        "speed-up",
        "RETR lockstep",
        "RETR pipelined",
    )
    print("  " + "  ".join(f"{h:>16}" for h in head))
    for r in results:
        t = r.timings
        if "top_pipelined" not in t:
            continue
        n = int(r.rows.get("messages stored", "0/0").split("/")[0]) or 1
        top_p, top_l = t["top_pipelined"], t.get("top_lockstep", float("nan"))
        cells = (
            r.server,
            str(n),
            f"{top_p * 1000:.0f} ms ({n / top_p:.0f}/s)",
            f"{top_l * 1000:.0f} ms ({top_l / n * 1000:.1f} ms/cmd)",
            f"{top_l / top_p:.0f}x",
            f"{t['retr_lockstep'] * 1000:.0f} ms ({t['retr_lockstep'] / n * 1000:.1f}/cmd)",
            f"{t['retr_pipelined'] * 1000:.0f} ms",
        )
        print("  " + "  ".join(f"{c:>16}" for c in cells))

    for r in results:
        print(f"\n{r.title} {r.version}")
        for row in WIDE_ROWS:
            if row in r.rows:
                print(f"  {row}: {r.rows[row]}")
        for line in dict.fromkeys(r.deviations):
            print(textwrap.fill(line, 100, initial_indent="  - ", subsequent_indent="    "))
        for line in r.failures:
            print("  FAILURE " + line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.compat.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "servers",
        nargs="*",
        metavar="server",
        help=f"any of {', '.join(SPECS)} (default: all that can run)",
    )
    parser.add_argument(
        "--prepare",
        action="store_true",
        help=f"apt-get download and unpack missing servers into {ROOT}",
    )
    parser.add_argument("--messages", type=int, default=200, help="mailbox size (default 200)")
    parser.add_argument(
        "--no-corpus", action="store_true", help="only simple_message(i), without the messy corpus"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directories")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the compat check needs root (mount namespaces, accounts)", file=sys.stderr)
        return 2
    named = list(dict.fromkeys(args.servers))
    unknown = [n for n in named if n not in SPECS]
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {', '.join(SPECS)}")
    chosen = named or list(SPECS)
    exit_code = 0
    runnable = []
    for name in chosen:
        spec = SPECS[name]
        if args.prepare:
            try:
                ROOT.mkdir(parents=True, exist_ok=True)
                prepare(spec, ROOT / "prepare.log")
            except (ServerError, OSError) as exc:
                print(f"-- {spec.title}: cannot prepare: {exc}", file=sys.stderr)
        if locate(spec)[0]:
            runnable.append(name)
        else:
            print(f"-- {spec.title}: not installed and not unpacked (use --prepare)")
            if named:
                exit_code = 2
    results = [_run_one(name, args.messages, not args.no_corpus, args.keep) for name in runnable]
    if results:
        _print_tables(results)
    if any(not r.ok for r in results):
        exit_code = 1
    elif not results:
        exit_code = exit_code or 2
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
