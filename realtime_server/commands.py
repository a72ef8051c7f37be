"""Client command handlers: one coroutine per method, ``handler(session, command)``.

Each raises :class:`CommandError` for an error reply or :class:`ProtocolViolation` to
close the connection; :mod:`session` maps them to the wire. A handler answers its
command at most once: everything that can fail happens before the reply, and what
follows it (presence, join) never raises. ``rpc`` has no handler here, so it is
answered 104 (method not found).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import orjson

from . import __version__, codes
from .auth.revocation import RevocationStore
from .auth.tokens import (
    ConnectionClaims,
    SubscriptionClaims,
    TokenExpired,
    TokenInvalid,
    TokenVerifier,
)
from .channels.namespaces import Namespaces
from .channels.rules import check_client_publish, check_subscribe, needs_token, user_channel
from .config import Settings
from .errors import BackendUnavailable, CommandError, ProtocolViolation
from .events import EventType
from .journal import Journal
from .operations import Operations
from .protocol import (
    Command,
    SubscribeRequest,
    SubscribeResult,
    channel_of,
    encode_connect_reply,
    encode_refresh_reply,
    encode_sub_refresh_reply,
    encode_subscribe_reply,
    history_json,
    parse_connect,
    parse_history,
    parse_subscribe,
    presence_json,
)
from .records import Subscription
from .registry import Registry
from .session import Session, SessionState
from .subscriptions import Request, Subscriptions

if TYPE_CHECKING:
    from .proxy import Allowed, SubscribeProxy

__all__ = ["REFRESH_AHEAD", "Commands"]

logger = logging.getLogger("realtime_server.commands")

Handler = Callable[[Session, Command], Awaitable[None]]

REFRESH_AHEAD: Final = 5.0
"""Seconds before a token's expiry the SDKs are asked to refresh it (they refresh when
``ttl`` elapses), so that an expired, unrefreshed token can be dropped right after its
``exp`` (plus ``REALTIME_EXPIRY_GRACE``) without racing well-behaved clients."""


def _ttl(expires_at: float, now: float) -> int:
    remaining = expires_at - now
    return max(1, int(remaining - min(REFRESH_AHEAD, remaining * 0.2)))


class Commands:
    """The client commands, with what they need of the node."""

    def __init__(
        self,
        settings: Settings,
        verifier: TokenVerifier,
        revocations: RevocationStore,
        registry: Registry,
        subscriptions: Subscriptions,
        operations: Operations,
        journal: Journal,
        subscribe_proxy: SubscribeProxy | None = None,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._settings = settings
        self._namespaces: Namespaces = settings.namespaces()
        self._verifier = verifier
        self._revocations = revocations
        self._registry = registry
        self._subscriptions = subscriptions
        self._operations = operations
        self._journal = journal
        self._proxy = subscribe_proxy
        self._ready = ready
        self._unnamed_logged = False  # a user without a personal channel, logged once
        self._handlers: dict[str, Handler] = {
            "connect": self.connect,
            "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
            "publish": self.publish,
            "presence": self.presence,
            "presence_stats": self.presence_stats,
            "history": self.history,
            "refresh": self.refresh,
            "sub_refresh": self.sub_refresh,
            "ping": self.ping,
        }

    async def dispatch(self, s: Session, cmd: Command) -> None:
        handler = self._handlers.get(cmd.method)
        if handler is None:
            raise CommandError(codes.METHOD_NOT_FOUND)
        await handler(s, cmd)

    def _no_personal_channel(self, user: str, why: CommandError) -> None:
        """A user whose id cannot name ``user:<id>`` connects without it: say so once
        per process (each such connect would flood the log)."""
        if self._unnamed_logged:
            return
        self._unnamed_logged = True
        logger.warning(
            "user %r connected without a personal channel: %s (%s); the id must be 1 to 200"
            " of A-Z a-z 0-9 _ . @ = | + : - (logged once)",
            user[:64],
            user_channel(user)[:80],
            str(why) or why.error.message,
        )

    async def _check_revoked(self, jti: str | None, user: str, iat: float | None) -> None:
        await self._refuse_revoked(self._revocations.is_revoked(jti, user, iat))

    @staticmethod
    async def _refuse_revoked(verdict: Awaitable[bool]) -> None:
        if await verdict:
            raise ProtocolViolation(codes.CLOSE_TOKEN_REVOKED)

    async def _unrevoked(self, s: Session, claims: ConnectionClaims) -> bool:
        """Raises when the connection token is revoked; else whether ``s`` is still
        connecting (it may have been closed meanwhile)."""
        await self._check_revoked(claims.jti, claims.sub, claims.iat)
        return s.state is SessionState.CONNECTING

    # --- connect ---------------------------------------------------------------------

    async def connect(self, s: Session, cmd: Command) -> None:
        settings = self._settings
        req = parse_connect(cmd.params)
        now = time.time()
        # TokenInvalid -> close 3500, TokenExpired -> 109, BackendUnavailable -> 100; may
        # await the key set's rate-limited refetch on an unknown kid.
        try:
            claims = await self._verifier.verify_connection_fresh(req.token, now)
        except TokenExpired as exc:
            s.user = exc.subject or ""  # signed: the refusal names the user (audit)
            raise
        s.user = claims.sub  # the signature verified: refusals from here name the user
        if not self._ready():
            # A hung or lost Redis: fail at once (100, temporary) rather than wait for
            # the revocation check's timeout; /readyz already sends clients elsewhere.
            raise BackendUnavailable("broker unreachable")
        # A remote revocation store (Redis) is asked along with the history read, in
        # one round trip, once the broker subscriptions are confirmed; the setup is
        # undone when the token is revoked. A local one is asked first.
        remote = self._revocations.remote
        if not remote and not await self._unrevoked(s, claims):
            return
        requests: list[Request] = []
        personal = user_channel(claims.sub)
        for name in dict.fromkeys((personal, *claims.channels)):
            try:
                channel, options = self._namespaces.resolve(name)
                check_subscribe(channel, options, claims.sub, granted_at_connect=True)
            except CommandError as exc:
                if name == personal:
                    self._no_personal_channel(claims.sub, exc)
                continue  # a channel the token may not have is skipped, never subscribed
            requests.append(Request(name, options, req.subs.get(name) or SubscribeRequest(name)))
        limit = settings.max_connections_per_user
        refusal = None
        if len(requests) > settings.max_channels:
            refusal = codes.CLOSE_CHANNEL_LIMIT
        elif limit and self._registry.user_connections(claims.sub) >= limit:
            refusal = codes.CLOSE_CONNECTION_LIMIT
        if refusal is not None:
            # a revoked token is told so first, as with a local store
            if remote and not await self._unrevoked(s, claims):
                return
            raise ProtocolViolation(refusal)

        s.conn_info = claims.info
        s.token_jti, s.token_iat = claims.jti, claims.iat
        s.name, s.version = req.name, req.version
        info = s.client_info()
        subs = [Subscription(r.channel, r.options, info, server_side=True) for r in requests]

        def check() -> Awaitable[None]:  # started with the history read: one round trip
            return self._refuse_revoked(
                self._revocations.checking(claims.jti, claims.sub, claims.iat)
            )

        async with self._subscriptions.setting_up(s, requests, check if remote else None) as setup:
            if not setup.alive or s.state is not SessionState.CONNECTING:
                return
            s.connected_at = now
            s.transition(SessionState.CONNECTED)  # registered, pinged
            self._journal.record(
                EventType.CONNECT, s, remote=s.remote, name=s.name, version=s.version
            )
            s.schedule_expiry(claims.exp)
            ping = max(1, round(settings.ping_interval)) if settings.ping_interval > 0 else None
            reply = encode_connect_reply(
                cmd.id,
                client=s.client_id,
                version=__version__,
                subs={r.channel: o.result for r, o in zip(requests, setup.outcomes, strict=True)},
                ping=ping,
                ttl=_ttl(claims.exp, now),
            )
            setup.commit(subs, reply)
        await self._subscriptions.joined(subs)

    # --- subscriptions -------------------------------------------------------------

    async def _verify_sub_token(
        self, s: Session, channel: str, token: str, now: float
    ) -> SubscriptionClaims:
        try:
            claims = self._verifier.verify_subscription(token, now)
        except TokenInvalid:  # a bad subscription token is refused, not fatal
            raise CommandError(codes.PERMISSION_DENIED) from None
        if claims.sub != s.user or claims.channel != channel:
            raise ProtocolViolation(codes.CLOSE_INVALID_TOKEN)
        await self._check_revoked(claims.jti, s.user, claims.iat)
        return claims

    async def subscribe(self, s: Session, cmd: Command) -> None:
        req = parse_subscribe(cmd.params)
        channel, options = self._namespaces.resolve(req.channel)
        name = req.channel
        if name in s.subs or name in s.pending:
            raise CommandError(codes.ALREADY_SUBSCRIBED)
        if len(s.subs) + len(s.pending) >= self._settings.max_channels:
            raise CommandError(codes.LIMIT_EXCEEDED)
        now = time.time()
        claims: SubscriptionClaims | None = None
        proxied: Allowed | None = None
        if needs_token(options):
            if req.token:  # a token, when sent, is checked; the backend is not asked
                claims = await self._verify_sub_token(s, name, req.token, now)
                check_subscribe(channel, options, s.user, token_channel=claims.channel)
            elif options.subscribe_proxy and self._proxy is not None:
                # The backend decides; its error or disconnect is raised from here, and
                # a failure is 100 (temporary), never a subscription.
                proxied = await self._proxy.authorize(
                    s, name, cmd.params.get("data"), self._journal.record
                )
            else:
                raise CommandError(codes.PERMISSION_DENIED)
        else:
            check_subscribe(channel, options, s.user)
        if s.state is not SessionState.CONNECTED:
            return
        sub = Subscription(name, options, s.client_info(), server_side=False)
        if proxied is not None and proxied.chan_info is not None:
            sub.client_info = s.client_info(proxied.chan_info)
        ttl: int | None = None
        if claims is not None:
            sub.client_info = s.client_info(claims.info)
            sub.token_jti, sub.token_iat = claims.jti, claims.iat
            if claims.exp is not None:
                ttl = _ttl(claims.exp, now)
        async with self._subscriptions.setting_up(s, [Request(name, options, req)]) as setup:
            if not setup.alive:
                return
            (outcome,) = setup.outcomes
            result = outcome.result
            if req.recover and not result.recovered and req.reject_unrecovered:
                raise CommandError(codes.UNRECOVERABLE_POSITION)
            if ttl is not None:
                result = SubscribeResult(
                    result.position, result.recovering, result.recovered, result.publications, ttl
                )
            setup.commit([sub], encode_subscribe_reply(cmd.id, result))
            if claims is not None and claims.exp is not None:
                s.schedule_sub_expiry(sub, claims.exp)
        await self._subscriptions.joined([sub])

    async def unsubscribe(self, s: Session, cmd: Command) -> None:
        await self._subscriptions.unsubscribe(s, channel_of(cmd.params))
        s.reply(cmd, {})

    def _subscribed(self, s: Session, name: str) -> Subscription:
        self._namespaces.resolve(name)
        sub = s.subs.get(name)
        if sub is None:
            raise CommandError(codes.PERMISSION_DENIED)
        return sub

    # --- channel commands ------------------------------------------------------------

    async def publish(self, s: Session, cmd: Command) -> None:
        name = channel_of(cmd.params)
        _, options = self._namespaces.resolve(name)
        sub = s.subs.get(name)
        check_client_publish(options, sub is not None)
        if "data" not in cmd.params or sub is None:
            raise CommandError(codes.BAD_REQUEST)
        await self._operations.publish(
            name,
            orjson.dumps(cmd.params["data"]),
            info=sub.client_info,
            publisher=f"client:{s.client_id}",
        )
        s.reply(cmd, {})

    async def presence(self, s: Session, cmd: Command) -> None:
        name = channel_of(cmd.params)
        _, options = self._namespaces.resolve(name)
        if not options.presence:
            raise CommandError(codes.NOT_AVAILABLE)
        self._subscribed(s, name)
        s.reply(cmd, presence_json(await self._operations.presence(name)))

    async def presence_stats(self, s: Session, cmd: Command) -> None:
        name = channel_of(cmd.params)
        _, options = self._namespaces.resolve(name)
        if not options.presence:
            raise CommandError(codes.NOT_AVAILABLE)
        self._subscribed(s, name)
        stats = await self._operations.presence_stats(name)
        s.reply(cmd, {"num_clients": stats.num_clients, "num_users": stats.num_users})

    async def history(self, s: Session, cmd: Command) -> None:
        req = parse_history(cmd.params)
        _, options = self._namespaces.resolve(req.channel)
        if not options.history:
            raise CommandError(codes.NOT_AVAILABLE)
        self._subscribed(s, req.channel)
        found = await self._operations.history(req)
        s.reply(cmd, history_json(found.publications, found.top))

    # --- tokens --------------------------------------------------------------------------

    async def refresh(self, s: Session, cmd: Command) -> None:
        token = cmd.params.get("token")
        now = time.time()
        try:
            claims = await self._verifier.verify_connection_fresh(token, now)
        except TokenExpired:
            raise ProtocolViolation(codes.CLOSE_EXPIRED) from None
        if claims.sub != s.user:
            raise ProtocolViolation(codes.CLOSE_INVALID_TOKEN)
        await self._check_revoked(claims.jti, claims.sub, claims.iat)
        if s.state is not SessionState.CONNECTED:
            return
        self._registry.replace_token(s, s.token_jti, claims.jti)
        s.token_jti, s.token_iat = claims.jti, claims.iat
        s.schedule_expiry(claims.exp)
        self._journal.record(EventType.TOKEN_REFRESHED, s)
        s.answer(
            encode_refresh_reply(
                cmd.id, client=s.client_id, version=__version__, ttl=_ttl(claims.exp, now)
            )
        )

    async def sub_refresh(self, s: Session, cmd: Command) -> None:
        name = channel_of(cmd.params)
        sub = s.subs.get(name)
        if sub is None:
            raise CommandError(codes.PERMISSION_DENIED)
        now = time.time()
        token = str(cmd.params.get("token") or "")
        claims = await self._verify_sub_token(s, name, token, now)
        if s.subs.get(name) is not sub:
            raise CommandError(codes.PERMISSION_DENIED)
        self._registry.replace_token(s, sub.token_jti, claims.jti)
        sub.token_jti, sub.token_iat = claims.jti, claims.iat
        s.schedule_sub_expiry(sub, claims.exp)
        self._journal.record(EventType.TOKEN_REFRESHED, s, channel=name)
        ttl = _ttl(claims.exp, now) if claims.exp is not None else None
        s.answer(encode_sub_refresh_reply(cmd.id, ttl))

    async def ping(self, s: Session, cmd: Command) -> None:
        s.reply(cmd, {})
