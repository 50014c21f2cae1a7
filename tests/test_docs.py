"""The documentation says what the programs do today (issue 31).

* Every captured output in README.md and docs/*.md is a section `scripts/docs.py` writes: a fenced
  block whose `$ ` lines are followed by output must carry a `<!-- docs.py: SESSION -->` marker.
* The cheap sessions (--help and usage errors, an API's answers, the unit test run, numbers taken
  from docs/BENCHMARKS.md) are run again and must match: `scripts/docs.py --check`.
* Every flag a document uses with one of the programs exists in that program's --help, and the
  flag tables name the same environment variable and default as --help.
The live sections (the tour: bpftrace, a container, collectors, the API) are checked by
tests/test_docs_tour.py. To bring the documents up to date: scripts/docs.py (see DECISIONS.md).
"""
from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
from functools import lru_cache

import pytest

from harness import ROOT

DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
DOCS_PY = str(ROOT / "scripts" / "docs.py")

# Each program a document may run, by the ways it is spelled there, and how to get its --help.
PROGRAMS = {
    "collector": (r"(?:python3? -m (?:syswatch\.)?collector\.collector|syswatch-collector)",
                  [sys.executable, "-m", "collector.collector", "--help"]),
    "api": (r"(?:python3? -m (?:syswatch\.)?api\.server|syswatch-api)", [sys.executable, "-m", "api.server", "--help"]),
    "tail": (r"(?:subscribers/tail\.py|syswatch-tail)", [sys.executable, "subscribers/tail.py", "--help"]),
    "top": (r"(?:subscribers/top\.py|syswatch-top)", [sys.executable, "subscribers/top.py", "--help"]),
    "curve": (r"python3? -m syswatch\.shared\.curve", [sys.executable, "-m", "syswatch.shared.curve", "--help"]),
    **{name: (re.escape(f"scripts/{name}"), ["bash", str(ROOT / "scripts" / name), "--help"])
       for name in ("setup-host.sh", "setup-test.sh", "test.sh", "build-base-image.sh", "kernel-vm.sh",
                    "trixie-bpftrace.sh")},
    "docs.py": (r"scripts/docs\.py", [sys.executable, DOCS_PY, "--help"]),
}


@lru_cache(maxsize=None)
def help_text(program: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSWATCH_")}
    res = subprocess.run(PROGRAMS[program][1], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**env, "COLUMNS": "1000"})
    assert res.returncode == 0, (program, res.stderr)
    return res.stdout


def fenced_blocks(path: str):
    """(line number of the opening fence, marker line or "", lines) of every fenced block."""
    lines = (ROOT / path).read_text().split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(```+)", lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == m.group(1))
        marker = lines[i - 1] if i and lines[i - 1].startswith("<!-- docs.py:") else ""
        yield i + 1, marker, lines[i + 1:end]
        i = end + 1


def test_every_captured_output_is_a_generated_section():
    unmarked = []
    for path in DOCS:
        for line, marker, body in fenced_blocks(path):
            if marker:
                continue
            # "$ command" then a line of output: a capture someone pasted by hand
            for a, b in zip(body, body[1:]):
                if a.startswith("$ ") and not a.endswith("\\") and b.strip() and not b.startswith("$ "):
                    unmarked.append(f"{path}:{line}: {a[:80]}")
                    break
    assert not unmarked, ("captured output that scripts/docs.py does not write (mark the block "
                          "<!-- docs.py: SESSION --> and run scripts/docs.py):\n" + "\n".join(unmarked))


def test_cheap_sections_match_what_the_programs_print_now():
    res = subprocess.run([sys.executable, DOCS_PY, "--check", "-q"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-8000:]


def commands_in_docs():
    """(where, program, argument words) of every command line in the documents: in fenced blocks
    and in inline `code` spans."""
    for path in DOCS:
        text = (ROOT / path).read_text()
        candidates = []
        for line, _, body in fenced_blocks(path):
            joined = "\n".join(body).replace("\\\n", " ")
            candidates += [(f"{path}:{line}", ln[2:] if ln.startswith("$ ") else ln) for ln in joined.split("\n")]
        candidates += [(f"{path} (inline)", span) for span in re.findall(r"`([^`\n]+)`", text)]
        for where, ln in candidates:
            for program, (pattern, _) in PROGRAMS.items():
                # at a command's position: first, after a shell operator, sudo, VAR=value or a bin/ path
                for m in re.finditer(rf"(?:^|[;&|(]\s*|sudo\s+|\w+=\S*\s+|/bin/|\./|\$\(){pattern}(?=\s|$|\))"
                                     rf"(?P<args>[^|;&#`)]*)", ln):
                    try:
                        words = shlex.split(m.group("args"))
                    except ValueError:
                        words = m.group("args").split()
                    if "--" in words:                       # what follows goes to another program (pytest)
                        words = words[:words.index("--")]
                    yield where, program, words


def test_every_documented_flag_exists():
    wrong = []
    seen = 0
    for where, program, words in commands_in_docs():
        for w in words:
            if not re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w):
                continue
            flag = w.split("=", 1)[0]
            seen += 1
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text(program)):
                wrong.append(f"{where}: {program} {flag}")
    assert seen > 50, f"only {seen} flags found in the documents: is the command pattern still right?"
    assert not wrong, "flags the documents use that --help does not list:\n" + "\n".join(sorted(set(wrong)))


def option_help(program: str) -> dict[str, str]:
    """flag -> its help entry (flags, text, [env X] (default: Y)) from --help."""
    entries: dict[str, str] = {}
    current: list[str] = []
    for ln in help_text(program).splitlines():
        if re.match(r"^  -", ln):
            current = [ln]
            for flag in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", ln.split("  ")[1] if "  " in ln[2:] else ln):
                entries[flag] = ""
            entries.update({f: ln for f in re.findall(r"(--?[A-Za-z][\w-]*)", ln.strip().split("  ")[0])})
        elif current and ln.startswith("    "):
            for f, v in list(entries.items()):
                if v is current[0] or v.startswith(current[0]):
                    entries[f] = v + " " + ln.strip()
    return {f: " ".join(v.split()) for f, v in entries.items() if v}


@pytest.mark.parametrize("doc, program", [("docs/COLLECTOR.md", "collector"), ("docs/API.md", "api")])
def test_flag_tables_name_the_variable_and_default_that_help_shows(doc, program):
    helps = option_help(program)
    checked, wrong = 0, []
    for ln in (ROOT / doc).read_text().splitlines():
        if ln.startswith("## Subscriber scripts"):   # tail's and top's flags from here on, not this program's
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip().strip("|"))]
        if len(cells) < 3 or not cells[0].startswith("`-"):
            continue
        flags = re.findall(r"`(--?[\w-]+)", cells[0])
        envs = re.findall(r"`(SYSWATCH_\w+)`", cells[1])
        default = re.fullmatch(r"`([^`]+)`", cells[2])
        for flag in flags:
            entry = helps.get(flag)
            if entry is None:
                wrong.append(f"{flag}: not in --help")
                continue
            checked += 1
            m_env = re.search(r"\[env (\w+)\]", entry)
            if envs and (not m_env or m_env.group(1) != envs[0]) and envs[0] not in entry:
                wrong.append(f"{flag}: the table says {envs[0]}, --help {m_env.group(1) if m_env else 'no variable'}")
            m_def = re.search(r"\(default: (.*)\)$", entry)
            if default and m_def and default.group(1) != m_def.group(1):
                wrong.append(f"{flag}: the table's default is {default.group(1)!r}, --help's {m_def.group(1)!r}")
    assert checked >= 8, f"only {checked} rows of {doc}'s flag table found"
    assert not wrong, f"{doc}:\n" + "\n".join(wrong)


def test_every_flag_of_the_programs_shows_its_variable_and_default():
    """--help everywhere: each option's environment variable and its default (issue 31)."""
    missing = []
    for program in ("collector", "api", "tail", "top"):
        for flag, entry in option_help(program).items():
            # the token files' variables are the tokens themselves (SYSWATCH_TOKEN, SYSWATCH_READ_TOKEN),
            # named in their help
            if not flag.startswith("--") or flag in ("--help", "--version", "--timeout", "--token-file",
                                                     "--read-token-file"):
                continue
            if "[env SYSWATCH_" not in entry or "(default: " not in entry:
                missing.append(f"{program} {flag}: {entry[:120]}")
            if re.search(r"\(default: \[", entry):
                missing.append(f"{program} {flag}: a list default printed as Python: {entry[-60:]}")
            if entry.count("(default:") > 1:
                missing.append(f"{program} {flag}: two defaults: {entry[-80:]}")
    assert not missing, "\n".join(missing)


def test_check_reports_drift(tmp_path):
    doc = tmp_path / "drifted.md"
    doc.write_text('# x\n\n<!-- docs.py: cli -->\n```console\n$ python3 -m collector.collector --version\n'
                   'syswatch-collector 0.0.0-not-this-version\n```\n\n'
                   'strace: <!-- docs.py fact: slowdown "strace -f -e trace=read,write" dd -->999.9x<!-- /fact -->\n')
    res = subprocess.run([sys.executable, DOCS_PY, "--check", "-q", "--file", str(doc)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res
    assert "drifted.md:3 (cli): the output drifted" in res.stderr and "0.0.0-not-this-version" in res.stderr
    assert "the document says 999.9x, docs/BENCHMARKS.md gives" in res.stderr
    # and regenerating writes what the program prints
    res = subprocess.run([sys.executable, DOCS_PY, "-q", "--session", "cli,facts", "--file", str(doc)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    text = doc.read_text()
    assert "not-this-version" not in text and re.search(r"syswatch-collector \d+\.\d+", text)
    assert "999.9x" not in text


def test_until_runs_a_section_again_until_it_shows_what_it_is_about(tmp_path):
    counter = tmp_path / "runs"
    doc = tmp_path / "until.md"
    doc.write_text(f"# x\n\n<!-- docs.py: cli until='^run 3$' -->\n```console\n"
                   f"$ n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}; echo run $n\n"
                   "run 1\n```\n")
    res = subprocess.run([sys.executable, DOCS_PY, "-q", "--session", "cli", "--file", str(doc)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert counter.read_text() == "3\n" and "\nrun 3\n```" in doc.read_text(), doc.read_text()


def test_a_log_line_s_shape_is_the_same_whatever_the_length_of_a_list():
    signature = runpy.run_path(DOCS_PY, run_name="docs_py")["signature"]
    line = ("2026-12-06 15:59:45,067 syswatch-collector INFO other syswatch collector processes on this host, "
            "left out: {}")
    one = "1 (python3: parent of bpftrace 2), 2 (bpftrace: running)"
    two = "3 (python3: parent of bpftrace 4), 4 (bpftrace: running)"
    shapes = [signature([line.format(pids)])["log lines"] for pids in (one, f"{one}, {two}", "7, 8", "7, 8, 9")]
    assert shapes[0] == shapes[1] == {"syswatch-collector INFO other syswatch collector processes on this host, "
                                      "left out: N (pythonN: parent of bpftrace N), N (bpftrace: running)"}
    assert shapes[2] == shapes[3] != shapes[0]
    assert signature([line.format("7, ids")])["log lines"] != shapes[2]
