"""The CLI's audit actor: ``cli:<account>`` of the real uid, never environment text unchecked."""

from __future__ import annotations

import os
import pwd

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uid2_operator.cli import runtime
from uid2_operator.cli.runtime import actor, os_user, safe_account_name
from uid2_operator.domain.credential_text import holds_credential_text
from uid2_operator.domain.environments import Environment
from uid2_operator.domain.key_format import mint_admin_token, mint_api_key

ADMIN_TOKEN = mint_admin_token(Environment.LOCAL, bytes(32), os.urandom).text
API_KEY = mint_api_key(Environment.LOCAL, 7, bytes(32), os.urandom).text
KEY_TAIL = API_KEY.rsplit(".", 1)[1]
LOGIN_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")
UNSAFE = {
    "admin token": ADMIN_TOKEN,
    "api key": API_KEY,
    "key tail": KEY_TAIL,
    "forged line": "bob\n999  2026-01-01T00:00:00Z  cli:alice  key.revoke",
    "carriage return": "bob\rmallory",
    "tab": "bob\tmallory",
    "escape sequence": "bob\x1b[2Kmallory",
    "nul": "bob\x00",
    "non-UTF-8": "\udcff",  # byte 0xff as os.environ decodes it
    "non-ASCII": "bøb",
    "space": "bob mallory",
    "colon": "bob:admin",
    "too long": "a" * 65,
    "empty": "",
}


def _ordinary_account() -> pwd.struct_passwd:
    """An account other than root whose name is an ordinary one."""
    for entry in pwd.getpwall():
        if entry.pw_uid != 0 and safe_account_name(entry.pw_name) == entry.pw_name:
            return entry
    pytest.skip("no ordinary account besides root in the passwd database")


def _uid_without_entry() -> int:
    uid = 4_000_000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def _recorded_name(uid: int) -> str:
    return safe_account_name(pwd.getpwuid(uid).pw_name) or f"uid{uid}"


@pytest.mark.parametrize(
    "name", ["alice", "alice.smith", "svc-uid2_1", "alice@corp.example.com", "a" * 64]
)
def test_an_ordinary_name_is_safe_as_it_is(name: str) -> None:
    assert safe_account_name(name) == name


@pytest.mark.parametrize("name", [*UNSAFE.values(), None], ids=[*UNSAFE, "none"])
def test_credential_text_control_characters_and_odd_text_are_not_safe(name: str | None) -> None:
    assert safe_account_name(name) is None


@settings(deadline=None)
@given(st.text())
def test_a_safe_name_is_always_short_plain_ascii_without_credential_text(name: str) -> None:
    safe = safe_account_name(name)
    if safe is not None:
        assert safe == name
        assert 1 <= len(safe) <= 64
        assert safe.isascii()
        assert safe.isprintable()
        assert " " not in safe
        assert ":" not in safe
        assert not holds_credential_text(safe)


def test_an_ordinary_account_is_recorded_by_its_name() -> None:
    entry = _ordinary_account()
    assert os_user(entry.pw_uid, {}) == entry.pw_name


@pytest.mark.parametrize("value", [*UNSAFE.values(), "mallory"], ids=[*UNSAFE, "other name"])
def test_login_variables_are_not_consulted(value: str) -> None:
    entry = _ordinary_account()
    environ = dict.fromkeys(LOGIN_VARIABLES, value)
    assert os_user(entry.pw_uid, environ) == entry.pw_name


def test_a_uid_without_a_passwd_entry_is_recorded_as_its_number() -> None:
    uid = _uid_without_entry()
    assert os_user(uid, {"LOGNAME": "alice"}) == f"uid{uid}"


@pytest.mark.parametrize("label", ["forged line", "non-UTF-8", "admin token", "too long"])
def test_an_unsafe_passwd_name_is_recorded_as_the_uid(
    monkeypatch: pytest.MonkeyPatch, label: str
) -> None:
    name = UNSAFE[label]

    def getpwuid(uid: int) -> pwd.struct_passwd:
        return pwd.struct_passwd((name, "x", uid, uid, "", "/", "/bin/sh"))

    monkeypatch.setattr(runtime.pwd, "getpwuid", getpwuid)
    assert os_user(4321, {}) == "uid4321"


def test_root_run_through_sudo_records_the_account_sudo_was_run_from() -> None:
    entry = _ordinary_account()
    assert os_user(0, {"SUDO_USER": entry.pw_name, "LOGNAME": "root"}) == entry.pw_name


@pytest.mark.parametrize(
    "value", [*UNSAFE.values(), "no-such-account-here"], ids=[*UNSAFE, "unknown account"]
)
def test_an_unsafe_or_unknown_sudo_user_leaves_root_recorded(value: str) -> None:
    assert os_user(0, {"SUDO_USER": value}) == _recorded_name(0)


def test_sudo_user_is_ignored_by_a_process_not_run_as_root() -> None:
    entry = _ordinary_account()
    assert os_user(entry.pw_uid, {"SUDO_USER": "root"}) == entry.pw_name


@pytest.mark.parametrize(
    "value", [v for k, v in UNSAFE.items() if k != "nul"], ids=[k for k in UNSAFE if k != "nul"]
)
def test_the_actor_of_this_process_holds_no_environment_text(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.delenv("SUDO_USER", raising=False)
    for variable in LOGIN_VARIABLES:
        monkeypatch.setenv(variable, value)
    recorded = actor()
    assert recorded.id == f"cli:{_recorded_name(os.getuid())}"
    assert recorded.source == "cli"
    assert not holds_credential_text(recorded.id)
    recorded.id.encode("utf-8")
