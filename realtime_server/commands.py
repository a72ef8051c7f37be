"""Client command handlers: one coroutine per method, ``handler(session, command)``.

Each raises :class:`CommandError` for an error reply or :class:`ProtocolViolation` to
close the connection; :mod:`session` maps them to the wire. ``rpc`` has no handler here,
so it is answered 104 (method not found).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from . import codes
from .auth.tokens import SubscriptionClaims, TokenExpired, TokenInvalid
from .channels.rules import check_client_publish, check_subscribe, needs_token, user_channel
from .errors import CommandError, ProtocolViolation
from .events import EventType
from .protocol import (
    Command,
    SubscribeRequest,
    channel_of,
    parse_connect,
    parse_history,
    parse_subscribe,
)
from .session import Session, SessionState, Subscription

if TYPE_CHECKING:
    from .node import Node
    from .proxy import Allowed

__all__ = ["COMMANDS"]

Handler = Callable[[Session, Command], Awaitable[None]]


REFRESH_AHEAD = 5.0
"""Seconds before a token's expiry the SDKs are asked to refresh it (they refresh when
``ttl`` elapses), so that an expired, unrefreshed token can be dropped right after its
``exp`` (plus ``REALTIME_EXPIRY_GRACE``) without racing well-behaved clients."""


def _ttl(expires_at: float, now: float) -> int:
    remaining = expires_at - now
    return max(1, int(remaining - min(REFRESH_AHEAD, remaining * 0.2)))


async def _check_revoked(node: Node, jti: str | None, user: str, iat: float | None) -> None:
    if await node.revocations.is_revoked(jti, user, iat):
        raise ProtocolViolation(codes.CLOSE_TOKEN_REVOKED)


async def connect(s: Session, cmd: Command) -> None:
    node = s.node
    settings = node.settings
    req = parse_connect(cmd.params)
    now = time.time()
    # TokenInvalid -> close 3500, TokenExpired -> 109, BackendUnavailable -> 100 (session)
    # Issue 13: "_fresh" may await the key set's rate-limited refetch on an unknown kid.
    claims = await node.verifier.verify_connection_fresh(req.token, now)
    await _check_revoked(node, claims.jti, claims.sub, claims.iat)
    if s.state is not SessionState.CONNECTING:
        return

    resolved = []
    for name in dict.fromkeys((user_channel(claims.sub), *claims.channels)):
        try:
            channel, options = node.namespaces.resolve(name)
            check_subscribe(channel, options, claims.sub, granted_at_connect=True)
        except CommandError:
            continue  # a channel the token may not have is skipped, never subscribed
        resolved.append((name, options))
    if len(resolved) > settings.max_channels:
        raise ProtocolViolation(codes.CLOSE_CHANNEL_LIMIT)
    limit = settings.max_connections_per_user
    if limit and node.user_connections(claims.sub) >= limit:
        raise ProtocolViolation(codes.CLOSE_CONNECTION_LIMIT)

    s.user = claims.sub
    s.conn_info = claims.info
    s.token_jti = claims.jti
    s.token_iat = claims.iat
    s.name, s.version = req.name, req.version
    info = s.info
    results: dict[str, Any] = {}
    delivered: dict[str, int] = {}
    try:
        for name, _ in resolved:
            s.add_pending(name)
        attached = await node.attach_many(
            s,
            [
                (name, options, req.subs.get(name) or SubscribeRequest(name))
                for name, options in resolved
            ],
        )
        for (name, _), (sub_result, offset) in zip(resolved, attached, strict=True):
            results[name], delivered[name] = sub_result, offset
    except BaseException:
        for name in s.pending:
            node.hub.remove(name, s)
        s.clear_pending()
        await node.release_all([name for name, _ in resolved])
        raise
    s.clear_pending()
    if s.state is not SessionState.CONNECTING:
        await node.release_all([name for name, _ in resolved])
        return
    for name, options in resolved:
        s.subs[name] = Subscription(name, options, info, server_side=True)
    s.transition(SessionState.CONNECTED)
    s.connected_at = now
    node.register(s)
    node.log(EventType.CONNECT, s, remote=s.remote, name=s.name, version=s.version)

    result: dict[str, Any] = {"client": s.client_id, "version": node.version, "subs": results}
    if settings.ping_interval > 0:
        result["ping"] = max(1, round(settings.ping_interval))
        result["pong"] = True
    result["expires"] = True
    result["ttl"] = _ttl(claims.exp, now)
    s.schedule_expiry(claims.exp)
    s.reply(cmd, result)
    for name, _ in resolved:
        node.hub.activate(name, s, delivered[name])
        _log_subscribe(s, name, results[name], server_side=True)
    await node.joined_many(s, list(s.subs.values()))


def _log_subscribe(s: Session, name: str, result: dict[str, Any], *, server_side: bool) -> None:
    details: dict[str, Any] = {"server_side": server_side}
    if "recovered" in result:
        details["recovered"] = result["recovered"]
        details["recovered_count"] = len(result.get("publications", ()))
    s.node.log(EventType.SUBSCRIBE, s, channel=name, offset=result.get("offset"), **details)


async def _verify_sub_token(s: Session, channel: str, token: str, now: float) -> SubscriptionClaims:
    try:
        claims = s.node.verifier.verify_subscription(token, now)
    except TokenInvalid:
        raise CommandError(codes.PERMISSION_DENIED) from None
    if claims.sub != s.user or claims.channel != channel:
        raise ProtocolViolation(codes.CLOSE_INVALID_TOKEN)
    await _check_revoked(s.node, claims.jti, s.user, claims.iat)
    return claims


async def subscribe(s: Session, cmd: Command) -> None:
    node = s.node
    req = parse_subscribe(cmd.params)
    channel, options = node.namespaces.resolve(req.channel)
    name = req.channel
    if name in s.subs or name in s.pending:
        raise CommandError(codes.ALREADY_SUBSCRIBED)
    if len(s.subs) + len(s.pending) >= node.settings.max_channels:
        raise CommandError(codes.LIMIT_EXCEEDED)
    now = time.time()
    claims: SubscriptionClaims | None = None
    proxied: Allowed | None = None
    if needs_token(options):
        if req.token:
            claims = await _verify_sub_token(s, name, req.token, now)
            check_subscribe(channel, options, s.user, token_channel=claims.channel)
        # --- issue 13: the subscribe proxy. No token, and the namespace asks the backend:
        # its error or disconnect is raised from here; on failure, 100 (temporary).
        elif options.subscribe_proxy and node.subscribe_proxy is not None:
            proxied = await node.subscribe_proxy.authorize(
                s, name, cmd.params.get("data"), node.log
            )
        # --- end of the subscribe proxy block
        else:
            raise CommandError(codes.PERMISSION_DENIED)
    else:
        check_subscribe(channel, options, s.user)
    if s.state is not SessionState.CONNECTED:
        return
    s.add_pending(name)
    try:
        result, delivered = await node.attach(s, name, options, req)
    finally:
        s.discard_pending(name)
    if s.state is not SessionState.CONNECTED:
        node.hub.remove(name, s)
        await node.release(name)
        return
    if req.recover and not result.get("recovered") and req.flag & 2:
        node.hub.remove(name, s)
        await node.release(name)
        raise CommandError(codes.UNRECOVERABLE_POSITION)
    info = s.info
    sub = Subscription(name, options, info, server_side=False)
    if proxied is not None and proxied.chan_info is not None:  # issue 13: backend's info
        sub.info = type(info)(info.user, info.client, info.conn_info, proxied.chan_info)
    if claims is not None:
        sub.info = type(info)(info.user, info.client, info.conn_info, claims.info)
        sub.token_jti, sub.token_iat = claims.jti, claims.iat
        node.index_jti(s, claims.jti)
        if claims.exp is not None:
            result["expires"] = True
            result["ttl"] = _ttl(claims.exp, now)
            s.schedule_sub_expiry(sub, claims.exp)
    s.subs[name] = sub
    s.reply(cmd, result)
    node.hub.activate(name, s, delivered)
    _log_subscribe(s, name, result, server_side=False)
    await node.joined(s, sub)


async def unsubscribe(s: Session, cmd: Command) -> None:
    name = channel_of(cmd.params)
    if name in s.subs:
        await s.node.unsubscribe(s, name)
    s.reply(cmd, {})


def _subscribed(s: Session, name: str) -> Subscription:
    s.node.namespaces.resolve(name)
    sub = s.subs.get(name)
    if sub is None:
        raise CommandError(codes.PERMISSION_DENIED)
    return sub


async def publish(s: Session, cmd: Command) -> None:
    name = channel_of(cmd.params)
    _, options = s.node.namespaces.resolve(name)
    sub = s.subs.get(name)
    check_client_publish(options, sub is not None)
    if "data" not in cmd.params or sub is None:
        raise CommandError(codes.BAD_REQUEST)
    await s.node.publish(
        name, orjson.dumps(cmd.params["data"]), info=sub.info, publisher=f"client:{s.client_id}"
    )
    s.reply(cmd, {})


async def presence(s: Session, cmd: Command) -> None:
    name = channel_of(cmd.params)
    _, options = s.node.namespaces.resolve(name)
    if not options.presence:
        raise CommandError(codes.NOT_AVAILABLE)
    _subscribed(s, name)
    clients = await s.node.presence(name)
    s.reply(cmd, {"presence": {cid: info.to_json() for cid, info in clients.items()}})


async def presence_stats(s: Session, cmd: Command) -> None:
    name = channel_of(cmd.params)
    _, options = s.node.namespaces.resolve(name)
    if not options.presence:
        raise CommandError(codes.NOT_AVAILABLE)
    _subscribed(s, name)
    stats = await s.node.presence_stats(name)
    s.reply(cmd, {"num_clients": stats.num_clients, "num_users": stats.num_users})


async def history(s: Session, cmd: Command) -> None:
    req = parse_history(cmd.params)
    _, options = s.node.namespaces.resolve(req.channel)
    if not options.history:
        raise CommandError(codes.NOT_AVAILABLE)
    _subscribed(s, req.channel)
    s.reply(cmd, await s.node.history(req))


async def refresh(s: Session, cmd: Command) -> None:
    node = s.node
    token = cmd.params.get("token")
    now = time.time()
    try:
        # Issue 13: "_fresh" may await the key set's rate-limited refetch on an unknown kid.
        claims = await node.verifier.verify_connection_fresh(token, now)
    except TokenExpired:
        raise ProtocolViolation(codes.CLOSE_EXPIRED) from None
    if claims.sub != s.user:
        raise ProtocolViolation(codes.CLOSE_INVALID_TOKEN)
    await _check_revoked(node, claims.jti, claims.sub, claims.iat)
    if s.state is not SessionState.CONNECTED:
        return
    node.reindex_jti(s, s.token_jti, claims.jti)
    s.token_jti, s.token_iat = claims.jti, claims.iat
    s.schedule_expiry(claims.exp)
    node.log(EventType.TOKEN_REFRESHED, s)
    s.reply(
        cmd,
        {
            "client": s.client_id,
            "version": node.version,
            "expires": True,
            "ttl": _ttl(claims.exp, now),
        },
    )


async def sub_refresh(s: Session, cmd: Command) -> None:
    name = channel_of(cmd.params)
    sub = s.subs.get(name)
    if sub is None:
        raise CommandError(codes.PERMISSION_DENIED)
    now = time.time()
    claims = await _verify_sub_token(s, name, str(cmd.params.get("token") or ""), now)
    if s.subs.get(name) is not sub:
        raise CommandError(codes.PERMISSION_DENIED)
    s.node.reindex_jti(s, sub.token_jti, claims.jti)
    sub.token_jti, sub.token_iat = claims.jti, claims.iat
    s.schedule_sub_expiry(sub, claims.exp)
    s.node.log(EventType.TOKEN_REFRESHED, s, channel=name)
    result: dict[str, Any] = {"expires": claims.exp is not None}
    if claims.exp is not None:
        result["ttl"] = _ttl(claims.exp, now)
    s.reply(cmd, result)


async def ping(s: Session, cmd: Command) -> None:
    s.reply(cmd, {})


COMMANDS: dict[str, Handler] = {
    "connect": connect,
    "subscribe": subscribe,
    "unsubscribe": unsubscribe,
    "publish": publish,
    "presence": presence,
    "presence_stats": presence_stats,
    "history": history,
    "refresh": refresh,
    "sub_refresh": sub_refresh,
    "ping": ping,
}
