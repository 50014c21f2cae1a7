"""--help shows each option's environment variable and one readable default (issue 31): the one
option helper, shared/config.py's add_option, in-process."""
from __future__ import annotations

import argparse

import pytest

from syswatch.shared.config import add_option, show_default

pytestmark = pytest.mark.unit


def helptext(p: argparse.ArgumentParser) -> str:
    return " ".join(p.format_help().split())


def test_defaults_read_as_a_user_types_them():
    assert [show_default(v) for v in (["read", "write"], 1.0, 0.0, 2.5, None, [], "", True, False, 50)] == \
        ["read,write", "1", "0", "2.5", "none", "none", "none", "on", "off", "50"]
    p = argparse.ArgumentParser()
    add_option(p, "--syscalls", env="SW_T_SYSCALLS", default=["read", "write"], type=lambda t: t.split(","),
               help="which")
    add_option(p, "--interval", env="SW_T_INTERVAL", default=1.0, type=float, help="seconds")
    text = helptext(p)
    assert "[env SW_T_SYSCALLS] (default: read,write)" in text and "['read'" not in text
    assert "[env SW_T_INTERVAL] (default: 1)" in text


def test_a_help_text_naming_its_default_shows_one_default(monkeypatch):
    def parser():
        p = argparse.ArgumentParser()
        add_option(p, "--hostname", env="SW_T_HOSTNAME", default=None,
                   help="the host field (default: the host's name, also in a container)")
        return p
    text = helptext(parser())
    assert text.count("(default:") == 1
    assert "the host field [env SW_T_HOSTNAME] (default: the host's name, also in a container)" in text
    monkeypatch.setenv("SW_T_HOSTNAME", "node-b")          # the variable's value is what applies now
    assert "[env SW_T_HOSTNAME] (default: node-b)" in helptext(parser())
    assert parser().parse_args([]).hostname == "node-b"


def test_on_off_flags_take_their_variable(monkeypatch):
    def parser():
        p = argparse.ArgumentParser()
        add_option(p, "--json", env="SW_T_JSON", flag=True, help="JSON lines")
        return p
    assert parser().parse_args([]).json is False and parser().parse_args(["--json"]).json is True
    assert "[env SW_T_JSON] (default: off)" in helptext(parser())
    for value, want in (("1", True), ("yes", True), ("On", True), ("0", False), ("false", False), ("", False)):
        monkeypatch.setenv("SW_T_JSON", value)
        assert parser().parse_args([]).json is want, value
    monkeypatch.setenv("SW_T_JSON", "maybe")
    with pytest.raises(SystemExit) as exc:
        parser()
    assert exc.value.code == 2
