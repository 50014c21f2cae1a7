#!/usr/bin/env python3
"""Regenerate (or check) every captured output in README.md and docs/*.md from real runs.

    scripts/docs.py                        # regenerate every section whose session can run here
    scripts/docs.py --session cli,api      # only these sessions
    scripts/docs.py --check                # exit 1 if a cheap section drifted (cli, api, unit, facts)
    scripts/docs.py --check --session live # the tour: root, bpftrace, docker (tests/test_docs_tour.py)
    scripts/docs.py --list                 # the sessions, what they need, their sections

A captured section is a fenced block with a marker on the line before it:

    <!-- docs.py: SESSION [OPTION=VALUE ...] -->
    ```console
    $ python3 -m collector.collector --syscalls read,open
    (output: replaced by what the command prints)
    ```

Each `$ ` line (a trailing backslash continues it) is run with bash, as written, from the top of
the checkout, in a clean environment (no SYSWATCH_* variables, COLUMNS=100); what it prints
(stdout and stderr, as a terminal shows them) replaces the lines under it. The sections of one
session run in document order (README.md, docs/COLLECTOR.md, PROTOCOL.md, API.md, then the
rest by name) and share what the
earlier ones started. Sessions that start servers on fixed ports run in a private network
namespace when root, so the ports written in the docs never clash with anything on the machine.

Options:
  bg=NAME          start the block's one command in the background (e.g. a collector); the
                   block shows its output when the session ends (with head/grep/...)
  ready=REGEX      (with bg) wait until its output matches before going on
  out=NAME[:stderr]  show a background command's stdout (or stderr) here; a `$ ` line in the
                   block is rewritten to that command
  with=COMMAND     run COMMAND in the background while the block's commands run (a workload)
  wait=SECONDS     wait before running the block's commands (let events accumulate)
  until=REGEX      run the block's commands again (every second, for at most UNTIL_S) until what
                   they print matches: for an answer that shows what the section is about only once
                   it happened (events of a container that calls once a second, in a buffer that a
                   busy host turns over in well under a second)
  head=N, tail=N   keep the first / last N lines of each output (tail: a "..." line first)
  grep=REGEX       keep the lines that match
  dedupe=N         keep at most N lines of each kind (the same text once numbers are masked)
  json=KEY,KEY     the output is one JSON object: keep these keys (* for all; "..." for the rest),
                   lists cut to items=N (default 1), indented as python3 -m json.tool does
  check=exact|shape|none  how --check compares: exact (after masking times, durations and
                   ids), shape (the same JSON keys, key= fields, table headers and log lines),
                   none (regenerated only). Default: exact for cli/api/unit, shape otherwise.

Inline facts, regenerated and checked like sections: a number a reader takes from a table,
e.g. a slowdown measured by the last bench run (docs/BENCHMARKS.md):

    <!-- docs.py fact: slowdown "strace -f -e trace=read,write" dd -->39.7x<!-- /fact -->

Exit status: 0; 1 when --check found drift or a command failed; 2 for a usage error or a
session whose prerequisites are missing.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Session order: the README's tour starts what the later documents' sections use.
FIRST = ["README.md", "docs/COLLECTOR.md", "docs/PROTOCOL.md", "docs/API.md"]
DOCS = FIRST + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
                      if str(p.relative_to(ROOT)) not in FIRST)
MARK = re.compile(r"^<!-- docs\.py: (?P<spec>.*?) -->\s*$")
FACT = re.compile(r"<!-- docs\.py fact: (?P<spec>.*?) -->(?P<value>.*?)<!-- /fact -->")
FENCE = re.compile(r"^(```+)(\S*)\s*$")
CMD_TIMEOUT = 180
UNTIL_S = 120


@dataclass
class Session:
    name: str
    what: str
    root: bool = False
    tools: tuple[str, ...] = ()
    netns: bool = False
    check: str = "shape"
    cleanup: tuple[str, ...] = ()
    cheap: bool = False


SESSIONS = {s.name: s for s in [
    Session("cli", "--help and usage errors: no root, nothing started", check="exact", cheap=True),
    Session("api", "an API on the ports the docs name (no collector)", netns=True, check="exact", cheap=True),
    Session("unit", "the in-process test layer: python3 -m pytest -m unit", check="exact", cheap=True),
    Session("live", "the tour: a container, collectors, the API, tail and top", root=True,
            tools=("bpftrace", "docker"), netns=True, cleanup=("docker rm -f web-1",)),
    Session("compose", "docker-compose on this host's ports 5556 and 8080; ends with docker-compose down -v (the "
            "syswatch project's IP list volume goes too); scripts/curve-keys.sh writes keys/", root=True,
            tools=("docker", "docker-compose"), cleanup=("docker-compose down -v",)),
    Session("host", "the set-up scripts on this host", root=True, tools=("docker",)),
    Session("bench", "python3 -m bench.run --quick (2 min; regenerated by hand after a bench change)", root=True,
            tools=("bpftrace", "docker", "strace", "wrk")),
]}


# --- the documents -------------------------------------------------------------------------------

@dataclass
class Block:
    path: str
    line: int                      # 1-based line of the marker
    session: str
    opts: dict[str, str]
    fence: str
    lang: str
    body: list[str]                # lines between the fences
    start: int = 0                 # index of the first body line in the file's lines
    new_body: list[str] | None = None
    raw_new: str = ""              # everything the commands printed, before head/tail/grep
    commands: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(spec)
    if not words:
        raise SystemExit("docs.py: error: an empty docs.py marker")
    opts = {}
    for w in words[1:]:
        key, sep, val = w.partition("=")
        opts[key] = val if sep else "1"
    return words[0], opts


def split_commands(body: list[str]) -> list[tuple[str, list[str]]]:
    """[(command, output lines)] of a block; a block without `$ ` lines is [("", body)]."""
    out: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(body):
        ln = body[i]
        if ln.startswith("$ "):
            cmd = ln[2:]
            while cmd.endswith("\\") and i + 1 < len(body):
                i += 1
                cmd += "\n" + body[i]
            out.append((cmd, []))
        elif out:
            out[-1][1].append(ln)
        else:
            out.append(("", [ln]))
        i += 1
    return out


def read_blocks(paths: list[str]) -> tuple[dict[str, list[str]], list[Block]]:
    texts: dict[str, list[str]] = {}
    blocks: list[Block] = []
    for rel in paths:
        lines = (ROOT / rel).read_text().split("\n")
        texts[rel] = lines
        i = 0
        while i < len(lines):
            m = MARK.match(lines[i])
            if not m:
                i += 1
                continue
            session, opts = parse_spec(m.group("spec"))
            if session not in SESSIONS:
                raise SystemExit(f"docs.py: error: {rel}:{i + 1}: unknown session '{session}' "
                                 f"(one of {', '.join(SESSIONS)})")
            f = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            if not f:
                raise SystemExit(f"docs.py: error: {rel}:{i + 1}: the line after a docs.py marker must open a "
                                 f"fenced block (```console)")
            end = next((j for j in range(i + 2, len(lines)) if lines[j].rstrip() == f.group(1)), None)
            if end is None:
                raise SystemExit(f"docs.py: error: {rel}:{i + 2}: the fenced block never closes")
            b = Block(rel, i + 1, session, opts, f.group(1), f.group(2), lines[i + 2:end], start=i + 2)
            b.commands = [c for c, _ in split_commands(b.body) if c]
            blocks.append(b)
            i = end + 1
    return texts, blocks


# --- running commands ----------------------------------------------------------------------------

def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYSWATCH_", "PYTEST_", "BPFTRACE_"))
           and k not in ("COLUMNS", "LINES", "PYTHONPATH", "CI")}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", COLUMNS="100", TERM="dumb", PYTHONDONTWRITEBYTECODE="1")
    return env


class Runner:
    """Runs a session's commands: in its own network namespace when asked and root."""

    def __init__(self, session: Session, cwd: Path, log):
        self.session = session
        self.cwd = cwd
        self.log = log
        self.env = clean_env()
        self.bg: dict[str, tuple[subprocess.Popen, Path, Path, str]] = {}
        self.holder: subprocess.Popen | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"syswatch-docs-{session.name}."))
        if session.netns and os.geteuid() == 0 and shutil.which("unshare") and shutil.which("nsenter"):
            self.holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c",
                                            "ip link set lo up 2>/dev/null || ifconfig lo up; exec sleep 86400"],
                                           start_new_session=True)
            deadline = time.monotonic() + 10          # until the namespace exists and its lo is up
            while time.monotonic() < deadline:
                probe = subprocess.run(self.argv("ip -o link show lo"), capture_output=True, text=True)
                if probe.returncode == 0 and "UP" in probe.stdout.split(">")[0]:
                    break
                time.sleep(0.05)

    def argv(self, cmd: str) -> list[str]:
        bash = ["bash", "-c", cmd]
        if self.holder is not None:
            return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *bash]
        return bash

    def run(self, cmd: str, timeout: float = CMD_TIMEOUT) -> str:
        self.log(f"  $ {cmd}")
        proc = subprocess.Popen(self.argv(cmd), cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            raise RuntimeError(f"`{cmd}` ran over {timeout:.0f} s; it printed:\n{out.decode(errors='replace')[-2000:]}")
        return out.decode(errors="replace")

    def run_block(self, block: "Block", until: str | None) -> list[tuple[str, str]]:
        """The block's commands and what each printed; with ``until``, run again until that matches."""
        deadline = time.monotonic() + UNTIL_S
        while True:
            raw = [(cmd, self.run(cmd)) for cmd, _ in split_commands(block.body) if cmd]
            if until is None or re.search(until, "\n".join(out for _, out in raw), re.M):
                return raw
            if time.monotonic() > deadline:
                raise RuntimeError(f"until={until}: not printed in {UNTIL_S} s of runs; the last printed:\n"
                                   + "\n".join(out for _, out in raw)[-1500:])
            time.sleep(1)

    def start(self, name: str, cmd: str, ready: str | None) -> None:
        self.log(f"  $ {cmd} &   ({name})")
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        proc = subprocess.Popen(self.argv(cmd), cwd=self.cwd, env=self.env, stdout=out.open("wb"),
                                stderr=err.open("wb"), stdin=subprocess.DEVNULL, start_new_session=True)
        self.bg[name] = (proc, out, err, cmd)
        if ready:
            deadline = time.monotonic() + 180
            while not re.search(ready, out.read_text(errors="replace") + err.read_text(errors="replace"), re.M):
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = "exited" if proc.poll() is not None else "was not ready in 180 s"
                    raise RuntimeError(f"`{cmd}` {why} before printing /{ready}/:\n"
                                       f"{out.read_text()[-1500:]}\n{err.read_text()[-1500:]}")
                time.sleep(0.2)

    def output_of(self, name: str, stream: str = "stdout") -> str:
        if name not in self.bg:
            raise RuntimeError(f"out={name}: no background command of that name started before in this session")
        proc, out, err, _ = self.bg[name]
        return (err if stream == "stderr" else out).read_text(errors="replace")

    def stop_all(self) -> None:
        for proc, *_ in self.bg.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)       # as Ctrl-C in a terminal
                except ProcessLookupError:
                    pass
        for proc, *_ in self.bg.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                _kill_group(proc)

    def close(self) -> None:
        self.stop_all()
        for cmd in self.session.cleanup:
            subprocess.run(self.argv(cmd), cwd=self.cwd, env=self.env, capture_output=True, timeout=120)
        if self.holder is not None:
            _kill_group(self.holder)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --- shaping an output ---------------------------------------------------------------------------

def cut_json(text: str, keys: list[str], items: int) -> list[str]:
    data = json.loads(text)

    def cut(value):
        if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            return [cut(v) for v in value[:items]] + (["..."] if len(value) > items else [])
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value
    kept = {k: cut(v) for k, v in data.items() if keys == ["*"] or k in keys}
    lines = json.dumps(kept, indent=4).split("\n")
    lines = [ln.replace('"..."', "...") for ln in lines]
    if len(kept) < len(data):
        lines.insert(-1, "    ...")
        if len(lines) > 2 and not lines[-3].endswith(","):
            lines[-3] += ","
    return lines


def shape_output(text: str, opts: dict[str, str]) -> list[str]:
    text = text.replace("\r", "")
    if "json" in opts:
        try:
            return cut_json(text, opts["json"].split(","), int(opts.get("items", "1")))
        except ValueError as exc:
            raise RuntimeError(f"json=: the output is not one JSON object ({exc}): {text[:300]!r}")
    lines = text.split("\n")
    while lines and lines[-1].strip() == "":
        lines.pop()
    if "grep" in opts:
        lines = [ln for ln in lines if re.search(opts["grep"], ln)]
    if "dedupe" in opts:                       # at most N lines of each kind (numbers masked)
        seen: dict[str, int] = {}
        kept: list[str] = []
        for ln in lines:
            kind = re.sub(r"\d+", "N", mask(ln))
            seen[kind] = seen.get(kind, 0) + 1
            if seen[kind] <= int(opts["dedupe"]):
                kept.append(ln)
            elif kept[-1] != "...":
                kept.append("...")
        lines = kept
    if "head" in opts:
        lines = lines[:int(opts["head"])]
    if "tail" in opts and len(lines) > int(opts["tail"]):
        lines = ["...", *lines[-int(opts["tail"]):]]
    return lines


def render(commands: list[tuple[str, list[str]]], gap: bool) -> list[str]:
    out: list[str] = []
    for cmd, lines in commands:
        if out and gap and cmd:
            out.append("")
        if cmd:
            out.extend(("$ " + cmd).split("\n"))
        out.extend(lines)
    return out


# --- comparing -----------------------------------------------------------------------------------

MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?"), "<time>"),
    (re.compile(r"^Date: .*$", re.M), "Date: <date>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<time>"),
    (re.compile(r" in \d+(?:\.\d+)?s\b"), " in <n>s"),
    (re.compile(r"\b\d+(?:\.\d+)?(?:ms|us|s)\b"), "<duration>"),
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<id>"),
    (re.compile(r"/tmp/[\w.-]+"), "/tmp/<tmp>"),
]


def mask(text: str, extra: str | None = None) -> str:
    for rx, sub in MASKS:
        text = rx.sub(sub, text)
    if extra:
        text = re.sub(extra, "<masked>", text)
    return text


_LOG = re.compile(r"^(?:\S+\s+\|\s+)?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\S+ \w+ .*)$")
# a list of numbers, each maybe with a note ("7 (bpftrace: ...), 8 (python3: ...)"), numbers masked: its
# items are kept once each, as how many there are (e.g. other collectors on the host) is not the line's kind
_LIST_ITEM = r"N(?: \([^()]*\))?"
_LIST = re.compile(rf"{_LIST_ITEM}(?:, {_LIST_ITEM})+")
_HEADER_TOKEN = re.compile(r"^[A-Z][A-Z0-9_]*(?:/s)?$")


def signature(lines: list[str]) -> dict[str, set[str]]:
    """What a live output shows, whatever the numbers: the field names (JSON keys, key=value
    fields), table headers, and the log lines with every number and id masked."""
    text = "\n".join(lines)
    sig = {"json keys": set(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"\s*:', text)),
           "fields": set(re.findall(r"(?<![\w/.-])([a-z_][a-z0-9_]*)=(?=\S)", text)),
           "headers": set(), "log lines": set()}
    for ln in lines:
        toks = ln.split()
        if len(toks) >= 3 and all(_HEADER_TOKEN.match(t) for t in toks):
            sig["headers"].add(" ".join(toks))
        m = _LOG.match(ln)
        if m:
            line = re.sub(r"\d+(?:\.\d+)?", "N", mask(m.group(1)))
            sig["log lines"].add(_LIST.sub(lambda run: ", ".join(dict.fromkeys(run.group(0).split(", "))), line))
    return sig


def compare(block: Block, kind: str) -> str | None:
    """None when the new body matches the document's, else a message saying what drifted."""
    old, new = block.body, block.new_body or []
    if kind == "none":
        return None
    if [c for c, _ in split_commands(old) if c] != [c for c, _ in split_commands(new) if c]:
        return "the commands differ from what the session ran"
    if kind == "exact":
        a = [mask(ln, block.opts.get("mask")) for ln in old]
        b = [mask(ln, block.opts.get("mask")) for ln in new]
        if a == b:
            return None
        return "the output drifted:\n" + "\n".join(difflib.unified_diff(a, b, "document", "now", lineterm="", n=1))
    problems = []

    def outputs(body: list[str]) -> list[str]:          # the printed lines, not the commands
        return [ln for _, lines in split_commands(body) for ln in lines]
    sa, sb = signature(outputs(old)), signature(outputs(new))
    sraw = signature(block.raw_new.split("\n")) if block.raw_new else sb
    if sa["headers"] != sb["headers"]:
        problems.append(f"table headers: the document's {sorted(sa['headers'])}, now {sorted(sb['headers'])}")
    for part in ("json keys", "fields"):
        # a name the document shows that the program no longer prints anywhere, or a new name in
        # the lines the document shows
        gone, new_names = sa[part] - sraw[part], sb[part] - sa[part]
        if gone or new_names:
            problems.append(f"{part}: no longer printed {sorted(gone)}, new {sorted(new_names)}")
    # every kind of log line the document shows must still be printed (anywhere in the run's output:
    # head/tail cut by timing, which lines fall inside them is not the program's doing)
    gone = sa["log lines"] - sb["log lines"] - signature(block.raw_new.split("\n"))["log lines"]
    if gone:
        problems.append(f"log lines the program no longer prints so: {sorted(gone)}; now: {sorted(sb['log lines'])}")
    return "; ".join(problems) or None


# --- facts ---------------------------------------------------------------------------------------

def bench_rows() -> dict[tuple[str, str], str]:
    """(tracing, workload) -> slowdown cell of docs/BENCHMARKS.md's overhead table (the last run)."""
    rows = {}
    for ln in (ROOT / "docs" / "BENCHMARKS.md").read_text().splitlines():
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"\*\*[\d.]+x\*\*", cells[5]):
            rows[(cells[0], cells[1])] = cells[5].strip("*")
    return rows


def fact(spec: str) -> str:
    words = shlex.split(spec)
    if words and words[0] == "slowdown" and len(words) == 3:
        rows = bench_rows()
        cell = rows.get((words[1], words[2]))
        if cell is None:
            raise RuntimeError(f"fact {spec}: no such row in docs/BENCHMARKS.md's overhead table "
                               f"(rows: {sorted(rows)[:6]}...)")
        return f"{float(cell.rstrip('x')):.1f}x"
    raise RuntimeError(f"unknown fact '{spec}' (known: slowdown TRACING WORKLOAD)")


# --- the sessions --------------------------------------------------------------------------------

def missing_prerequisites(s: Session) -> list[str]:
    why = []
    if s.root and os.geteuid() != 0:
        why.append("root")
    why += [t for t in s.tools if not shutil.which(t)]
    return why


def run_session(name: str, blocks: list[Block], cwd: Path, log) -> list[str]:
    """Fill each block's new_body; the errors, as messages."""
    s = SESSIONS[name]
    errors: list[str] = []
    runner = Runner(s, cwd, log)
    late: list[Block] = []                   # bg blocks and out= blocks: filled once the session ends
    try:
        for b in blocks:
            log(f"{b.where}: {name}")
            try:
                if "wait" in b.opts:
                    time.sleep(float(b.opts["wait"]))
                if "bg" in b.opts:
                    if len(b.commands) != 1:
                        raise RuntimeError("bg= needs exactly one $ command in the block")
                    runner.start(b.opts["bg"], b.commands[0], b.opts.get("ready"))
                    late.append(b)
                    continue
                if "out" in b.opts:
                    late.append(b)
                    continue
                helper = None
                if "with" in b.opts:
                    runner.start(f"with-{b.line}", b.opts["with"], None)
                    helper = f"with-{b.line}"
                raw = runner.run_block(b, b.opts.get("until"))
                b.raw_new = "\n".join(out for _, out in raw)
                parts = [(cmd, shape_output(out, b.opts)) for cmd, out in raw]
                if helper:
                    proc = runner.bg.pop(helper)[0]
                    if proc.poll() is None:
                        _kill_group(proc)
                b.new_body = render(parts, gap=any(ln == "" for ln in b.body))
            except (RuntimeError, OSError) as exc:
                errors.append(f"{b.where}: {exc}")
        runner.stop_all()
        for b in late:
            try:
                name_, _, stream = (b.opts.get("out") or b.opts["bg"]).partition(":")
                text = runner.output_of(name_, stream or "stdout")
                b.raw_new = text
                cmd = runner.bg[name_][3]
                has_cmd = any(ln.startswith("$ ") for ln in b.body)
                b.new_body = render([(cmd if has_cmd else "", shape_output(text, b.opts))], gap=False)
            except (RuntimeError, OSError, KeyError) as exc:
                errors.append(f"{b.where}: {exc}")
    finally:
        runner.close()
    return errors


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/docs.py", description=__doc__.split("\n\n")[0],
                                epilog="See the top of scripts/docs.py for the marker syntax.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare instead of rewriting; exit 1 on drift")
    p.add_argument("--session", default=None,
                   help="comma-separated sessions (default: --check: the cheap ones; else every one that can run)")
    p.add_argument("--file", action="append", default=None, help="only this document (repeatable)")
    p.add_argument("--list", action="store_true", help="list the sessions and their sections")
    p.add_argument("-q", "--quiet", action="store_true", help="print only drift and errors")
    args = p.parse_args(argv)
    log = (lambda *_: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    paths = args.file or DOCS
    texts, blocks = read_blocks(paths)
    original = {rel: "\n".join(lines) for rel, lines in texts.items()}
    if args.list:
        for s in SESSIONS.values():
            mine = [b for b in blocks if b.session == s.name]
            need = ", ".join(filter(None, ["root" if s.root else "", *s.tools])) or "nothing"
            print(f"{s.name:8} needs {need}: {s.what}; {len(mine)} sections")
            for b in mine:
                print(f"           {b.where}  {(b.commands or ['(output of ' + b.opts.get('out', '?') + ')'])[0][:70]}")
        return 0
    if args.session:
        wanted = [w for w in args.session.split(",") if w]
        bad = [w for w in wanted if w not in SESSIONS and w != "facts"]
        if bad:
            p.error(f"--session: unknown {bad}; sessions: {', '.join(SESSIONS)}")
    elif args.check:
        wanted = [s.name for s in SESSIONS.values() if s.cheap] + ["facts"]
    else:
        wanted = [*SESSIONS, "facts"]
    errors: list[str] = []
    drift: list[str] = []
    skipped = []
    for name in wanted:
        if name == "facts":
            continue
        mine = [b for b in blocks if b.session == name]
        if not mine:
            continue
        missing = missing_prerequisites(SESSIONS[name])
        if missing:
            skipped.append(f"{name} (needs {', '.join(missing)})")
            continue
        errors += run_session(name, mine, ROOT, log)
        for b in mine:
            if b.new_body is None:
                continue
            if args.check:
                problem = compare(b, b.opts.get("check", SESSIONS[name].check))
                if problem:
                    drift.append(f"{b.where} ({name}): {problem}")
            else:
                b.body_replacement = b.new_body  # type: ignore[attr-defined]
    # facts (cheap: they read docs/BENCHMARKS.md)
    if "facts" in wanted:
        for rel, lines in texts.items():
            for i, ln in enumerate(lines):
                def sub(m, rel=rel, i=i):
                    try:
                        value = fact(m.group("spec"))
                    except RuntimeError as exc:
                        errors.append(f"{rel}:{i + 1}: {exc}")
                        return m.group(0)
                    if args.check and value != m.group("value"):
                        drift.append(f"{rel}:{i + 1} (fact {m.group('spec')}): the document says "
                                     f"{m.group('value')}, docs/BENCHMARKS.md gives {value}")
                    return m.group(0).replace(f"-->{m.group('value')}<!--", f"-->{value}<!--")
                lines[i] = FACT.sub(sub, ln)
    if not args.check:
        for rel, lines in texts.items():
            mine = sorted((b for b in blocks if b.path == rel and getattr(b, "body_replacement", None) is not None),
                          key=lambda b: b.start, reverse=True)
            for b in mine:
                lines[b.start:b.start + len(b.body)] = b.body_replacement   # type: ignore[attr-defined]
            text = "\n".join(lines)
            if text != original[rel]:
                if (ROOT / rel).read_text() != original[rel]:
                    errors.append(f"{rel} changed while the sessions ran; not rewritten: run scripts/docs.py again")
                    continue
                (ROOT / rel).write_text(text)
                log(f"rewrote {rel}")
    for msg in drift:
        print(f"docs.py: drift: {msg}", file=sys.stderr)
    for msg in errors:
        print(f"docs.py: error: {msg}", file=sys.stderr)
    if skipped:
        print(f"docs.py: {'not checked' if args.check else 'not regenerated'} here: {'; '.join(skipped)}",
              file=sys.stderr)
    if drift:
        print(f"docs.py: {len(drift)} section(s) drifted from what the programs print now: "
              f"run scripts/docs.py --session {','.join(wanted)} and commit the result", file=sys.stderr)
    if skipped and args.session:
        return 2
    return 1 if drift or errors else 0


if __name__ == "__main__":
    sys.exit(main())
