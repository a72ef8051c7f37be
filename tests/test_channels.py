"""Unit tests of the channel grammar (channels/names.py), namespaces (namespaces.py) and
access rules (rules.py): pure functions, no engine, no sockets."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_server.channels.names import ChannelName, parse_channel
from realtime_server.channels.namespaces import (
    DEFAULT_NAMESPACES,
    NamespaceOptions,
    Namespaces,
)
from realtime_server.channels.rules import (
    check_client_publish,
    check_subscribe,
    needs_token,
    user_channel,
)
from realtime_server.config import Settings
from realtime_server.errors import CommandError, ConfigError

PROPERTY = settings(max_examples=80, derandomize=True, database=None, deadline=None)
GRAMMAR = re.compile(r"[a-z][a-z0-9_-]{0,31}:(?!:)[A-Za-z0-9_.@=|+:-]{1,200}")
"""The grammar of docs/PROTOCOL.md, written out independently of the implementation."""


def error_code(call: Any, *args: Any, **kwargs: Any) -> int:
    with pytest.raises(CommandError) as info:
        call(*args, **kwargs)
    return info.value.error.code


# --- grammar ----------------------------------------------------------------------------

VALID = [
    "user:42",
    "document:1",
    "document:abc-DEF_012.xyz@example.com=v",
    "a:b",
    "a" * 32 + ":x",
    "n-s_1:id",
    "document:" + "x" * 200,
    "document:.",
    "document:a.b.c",
    "document:-",
    "document:==",
    "user:auth0|5f7c8ec7c33c6c004bbafe82",  # Auth0's subjects
    "user:samlp|acme|jane",
    "user:jane+signing@example.com",  # plus-addressed emails
    "user:f:3b2a9c1e-0d4f-4b7a-9e61-2f0c5d8a7b13:jane",  # Keycloak's federated users
    "user:4:2",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    parsed = parse_channel(name)
    namespace, _, ident = name.partition(":")
    assert parsed == ChannelName(namespace, ident)
    assert str(parsed) == name


INVALID = [
    pytest.param("", id="empty"),
    pytest.param("user", id="no-colon"),
    pytest.param(":42", id="empty-namespace"),
    pytest.param("user:", id="empty-id"),
    pytest.param(":", id="colon-only"),
    pytest.param("user::42", id="double-colon"),
    pytest.param("user::", id="colon-only-id"),
    pytest.param("document:*", id="star"),
    pytest.param("document:a*", id="star-suffix"),
    pytest.param("document:?", id="question"),
    pytest.param("document:#", id="hash"),
    pytest.param("document:a>", id="gt"),
    pytest.param("document:[ab]", id="brackets"),
    pytest.param("*:1", id="star-namespace"),
    pytest.param("document:..", id="dotdot"),
    pytest.param("document:a..b", id="dotdot-inside"),
    pytest.param("document:../user:1", id="traversal"),
    pytest.param("document:a/b", id="slash"),
    pytest.param("document:a%2Fb", id="percent"),
    pytest.param("document:a b", id="space"),
    pytest.param(" user:1", id="leading-space"),
    pytest.param("user:1 ", id="trailing-space"),
    pytest.param("user:1\n", id="trailing-newline"),
    pytest.param("user:\t1", id="tab"),
    pytest.param("document:a\x00", id="nul"),
    pytest.param("document:a\x7f", id="del"),
    pytest.param("document:a\x1b[0m", id="escape"),
    pytest.param("document:\u00e9", id="latin1"),
    pytest.param("document:\u0661", id="arabic-digit"),
    pytest.param("document:\uff11", id="fullwidth-digit"),
    pytest.param("document:a\u200b", id="zero-width-space"),
    pytest.param("document:\U0001f600", id="emoji"),
    pytest.param("d\u00f6cument:1", id="non-ascii-namespace"),
    pytest.param("Document:1", id="uppercase-namespace"),
    pytest.param("1doc:1", id="digit-first-namespace"),
    pytest.param("_doc:1", id="underscore-first-namespace"),
    pytest.param("-doc:1", id="dash-first-namespace"),
    pytest.param("doc.x:1", id="dot-in-namespace"),
    pytest.param("doc x:1", id="space-in-namespace"),
    pytest.param("a" * 33 + ":x", id="namespace-33-chars"),
    pytest.param("document:" + "x" * 201, id="id-201-chars"),
    pytest.param("document:" + "x" * 100_000, id="id-huge"),
]


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_are_bad_requests(name: str) -> None:
    assert error_code(parse_channel, name) == 107


@pytest.mark.parametrize("value", [None, 42, b"user:42", ["user:42"], {"user": "42"}])
def test_non_string_names_are_bad_requests(value: Any) -> None:
    assert error_code(parse_channel, value) == 107


@PROPERTY
@given(
    st.text(
        alphabet=st.sampled_from("az09_-.@=|+:AZ *\x00\u00e9/ \n"),
        max_size=40,
    )
)
def test_grammar_matches_the_protocol(name: str) -> None:
    """Accepted exactly when the documented grammar matches and the id has no ``..``."""
    expected = GRAMMAR.fullmatch(name) is not None and ".." not in name.partition(":")[2]
    try:
        parse_channel(name)
    except CommandError as exc:
        assert exc.error.code == 107
        assert not expected, name
    else:
        assert expected, name


# --- namespaces -------------------------------------------------------------------------


def test_builtin_namespaces() -> None:
    ns = Namespaces()
    user = ns.get(parse_channel("user:42"))
    document = ns.get(parse_channel("document:1"))
    assert user.access == "owner" and not user.presence and not user.join_leave
    assert user.history and not user.allow_publish
    assert document.access == "token" and document.presence and document.join_leave
    assert document.history and not document.allow_publish
    assert set(dict(iter(ns))) == {"user", "document"} == set(DEFAULT_NAMESPACES)


@pytest.mark.parametrize("name", ["chat:1", "users:42", "doc:1", "userx:1"])
def test_unknown_namespace_is_102(name: str) -> None:
    ns = Namespaces()
    assert error_code(ns.resolve, name) == 102
    assert error_code(ns.get, parse_channel(name)) == 102


@pytest.mark.parametrize("name", ["chat:*", "chat:a..b", "user:", "User:1"])
def test_malformed_beats_unknown(name: str) -> None:
    assert error_code(Namespaces().resolve, name) == 107


def test_resolve() -> None:
    channel, options = Namespaces().resolve("document:9")
    assert channel == ChannelName("document", "9")
    assert options is DEFAULT_NAMESPACES["document"]


def test_history_needs_size_and_ttl() -> None:
    assert NamespaceOptions().history
    assert not NamespaceOptions(history_size=0).history
    assert not NamespaceOptions(history_ttl=0).history


def test_overrides_merge_over_builtins() -> None:
    ns = Namespaces.from_json(
        {
            "document": {"history_size": 0},
            "chat": {"allow_publish": True, "presence": True, "history_ttl": 60},
        }
    )
    document = ns.get(parse_channel("document:1"))
    assert document.history_size == 0 and not document.history
    assert document.presence and document.join_leave  # untouched options kept
    chat = ns.get(parse_channel("chat:1"))
    assert chat.access == "token" and chat.allow_publish and chat.presence
    assert chat.history_ttl == 60.0 and chat.history_size == NamespaceOptions().history_size
    assert ns.get(parse_channel("user:1")) == DEFAULT_NAMESPACES["user"]


def test_owner_access_for_another_namespace() -> None:
    ns = Namespaces.from_json({"inbox": {"access": "owner"}})
    assert ns.get(parse_channel("inbox:42")).access == "owner"


def test_namespaces_from_settings() -> None:
    env = {"REALTIME_NAMESPACES": orjson.dumps({"chat": {"allow_publish": True}}).decode()}
    ns = Settings.from_env(env=env).namespaces()
    assert "chat" in ns and "document" in ns
    assert ns.get(parse_channel("chat:1")).allow_publish


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"Chat": {}}, id="uppercase-name"),
        pytest.param({"1chat": {}}, id="digit-first"),
        pytest.param({"a" * 33: {}}, id="name-too-long"),
        pytest.param({"chat:x": {}}, id="colon-in-name"),
        pytest.param({"chat": []}, id="options-list"),
        pytest.param({"chat": True}, id="options-bool"),
        pytest.param({"chat": {"colour": "blue"}}, id="unknown-option"),
        pytest.param({"chat": {"access": "public"}}, id="bad-access"),
        pytest.param({"user": {"access": "token"}}, id="user-access-fixed"),
        pytest.param({"chat": {"presence": 1}}, id="presence-int"),
        pytest.param({"chat": {"join_leave": "yes"}}, id="join-leave-string"),
        pytest.param({"chat": {"history_size": -1}}, id="size-negative"),
        pytest.param({"chat": {"history_size": True}}, id="size-bool"),
        pytest.param({"chat": {"history_size": "10"}}, id="size-string"),
        pytest.param({"chat": {"history_size": 1.5}}, id="size-fractional"),
        pytest.param({"chat": {"history_ttl": -5}}, id="ttl-negative"),
        pytest.param({"chat": {"history_ttl": None}}, id="ttl-null"),
    ],
)
def test_malformed_namespaces_name_the_variable(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="REALTIME_NAMESPACES"):
        Namespaces.from_json(overrides)


@pytest.mark.parametrize("raw", ["{", "[]", '"user"', '{"chat": 1}'])
def test_malformed_namespaces_in_settings(raw: str) -> None:
    with pytest.raises(ConfigError, match="REALTIME_NAMESPACES"):
        Settings.from_env(env={"REALTIME_NAMESPACES": raw})


# --- rules ------------------------------------------------------------------------------

USER = DEFAULT_NAMESPACES["user"]
DOCUMENT = DEFAULT_NAMESPACES["document"]


def test_user_channel() -> None:
    assert user_channel("42") == "user:42"


def test_needs_token() -> None:
    assert not needs_token(USER)
    assert needs_token(DOCUMENT)


def test_owner_may_subscribe_to_own_channel() -> None:
    check_subscribe(parse_channel("user:42"), USER, "42")


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="no-grant"),
        pytest.param({"token_channel": "user:43"}, id="token-for-it"),
        pytest.param({"granted_at_connect": True}, id="connect-claim"),
    ],
)
def test_nobody_else_may_subscribe_to_a_user_channel(kwargs: dict[str, Any]) -> None:
    """Not even with a token or a ``channels`` claim: owner channels are the owner's."""
    assert error_code(check_subscribe, parse_channel("user:43"), USER, "42", **kwargs) == 103


def test_owner_match_is_exact() -> None:
    for user in ("4", "420", "42 ", "user:42"):
        assert error_code(check_subscribe, parse_channel("user:42"), USER, user) == 103


def test_token_namespace_with_matching_token() -> None:
    check_subscribe(parse_channel("document:7"), DOCUMENT, "42", token_channel="document:7")


def test_token_namespace_granted_at_connect() -> None:
    check_subscribe(parse_channel("document:7"), DOCUMENT, "42", granted_at_connect=True)


@pytest.mark.parametrize(
    "token_channel",
    [None, "", "document:8", "document:7 ", "document:70", "Document:7", "user:42"],
)
def test_token_namespace_without_the_right_token(token_channel: str | None) -> None:
    channel = parse_channel("document:7")
    assert error_code(check_subscribe, channel, DOCUMENT, "42", token_channel=token_channel) == 103


def test_clients_may_not_publish_by_default() -> None:
    for options in (USER, DOCUMENT):
        assert error_code(check_client_publish, options, True) == 103


def test_client_publish_where_allowed_and_subscribed() -> None:
    chat = NamespaceOptions(allow_publish=True)
    check_client_publish(chat, True)
    assert error_code(check_client_publish, chat, False) == 103
