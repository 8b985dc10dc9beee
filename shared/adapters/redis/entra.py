"""Microsoft Entra ID sign-in to Redis: the identity's object id and a token, renewed before it expires.

Azure Managed Redis (and Azure Cache for Redis) take an Entra ID access token for
the scope ``https://redis.azure.com/.default`` as the password of the user named by
the identity's object id (the token's ``oid`` claim). A token lasts an hour to a
day, and a connection whose token expires is closed by the server, so every open
connection must ``AUTH`` again with a new token before that: Azure asks for at least
three minutes ahead.

:class:`EntraCredentials` is a redis-py ``StreamingCredentialProvider``: redis-py
asks it for ``(user, token)`` at every new connection. Renewal runs on a daemon
thread of its own: it asks the credential for a token at 70% of the current one's
remaining life, and hands every token the open connections do not have yet (a
renewed one, or one a new connection took after renewals failed, the held token then
near its end) to the callback its connection registered with
:meth:`~EntraCredentials.deliver_to`, which signs every pooled connection of the
client in again (each node's, on a cluster: ``AUTH`` in place for the blocking
clients, connection by connection, one that fails closed to reconnect with the new
token; a reconnection for redis.asyncio's, see ``aio.py``). redis-py's own
registration (``on_next``) is not used: a client made with ``from_url`` registers
nothing, and a cluster client registers only the pools it created last, so the
nodes of an earlier slot map would never sign in again. A coroutine callback
(``redis.asyncio``) runs on the client's event loop, so the token request
(azure-identity, HTTPS) never runs on that loop. The credential caches its token and
renews it only near its end (azure-identity: five minutes before expiry, or at its
``refresh_on``), so in the last six minutes the thread asks again every 30 seconds
until the token changes. A failed request is logged and retried; it never stops the
renewal (redis-py's ``TokenManager`` stops renewing after one error).

A connection opened while no token can be had fails with ``ConnectionError`` naming
the cause, so callers treat it as Redis being unavailable (retry, or serve from
Cassandra), never as a bug. While no usable token is held (the first connection, or
the held one near its end after failed renewals) one token request at a time runs, on
a thread of its own, and every new connection waits for that one (single flight: a
failure is every waiter's, the next connection after it asks again). A connection
waits at most its ``socket_connect_timeout``: azure-identity's own HTTP timeouts are
minutes, and a token endpoint that does not answer must look like Redis not
answering, not hold every caller that long. The request goes on after the waiters gave
up, and its token, when it comes, is the one held. A connection object keeps its
provider across failed client builds, so their connections wait for that same request
instead of each build starting another. A token replaces the held one only if it ends
no earlier (a renewal and a new connection's request may cross).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

import jwt
from azure.core.credentials import TokenCredential
from redis.auth.token import TokenInterface
from redis.credentials import StreamingCredentialProvider
from redis.exceptions import ConnectionError as RedisConnectionError

logger = logging.getLogger(__name__)

REDIS_SCOPE = "https://redis.azure.com/.default"


class Token(TokenInterface):
    """One access token, with the claims Redis needs (read, not verified: Redis verifies it)."""

    def __init__(self, value: str, expires_on: float, *, clock: Callable[[], float] = time.time) -> None:
        try:
            claims = jwt.decode(value, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise RedisConnectionError(f"the Entra ID token for Redis is not a JWT: {exc}") from exc
        oid = claims.get("oid")
        if not isinstance(oid, str) or not oid:
            raise RedisConnectionError("the Entra ID token for Redis has no 'oid' claim: Redis takes the identity's "
                                       "object id as the user name (a user or service principal, not a group)")
        self.value = value
        self.user = oid
        self.expires_on = float(expires_on)
        self._clock = clock
        self._received = clock()

    def left(self, now: float) -> float:
        return self.expires_on - now

    # redis-py's TokenInterface: its pools' re-AUTH reads try_get("oid") and get_value()
    def is_expired(self) -> bool:
        return self.left(self._clock()) <= 0

    def ttl(self) -> float:
        return self.left(self._clock()) * 1000

    def try_get(self, key: str) -> str:
        return self.user if key == "oid" else ""

    def get_value(self) -> str:
        return self.value

    def get_expires_at_ms(self) -> float:
        return self.expires_on * 1000

    def get_received_at_ms(self) -> float:
        return self._received * 1000


class EntraCredentials(StreamingCredentialProvider):
    """``(object id, token)`` for each new connection, and re-``AUTH`` of open ones before the token ends."""

    renew_at = 0.7  # of the remaining lifetime
    cache_window = 360.0  # seconds before expiry within which the credential hands out a new token (it renews at 300)
    retry_seconds = 30.0  # between requests while the credential still has the old token, or after a failure
    # the least wait as the held token's end comes (or has passed): after a failure, then after the same token
    failed_floor_seconds, poll_floor_seconds = 5.0, 1.0
    min_left = 60.0  # seconds: a token with less left is not used for a new connection

    def __init__(self, credential: TokenCredential, *, wait_seconds: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``wait_seconds``: how long a new connection waits for a token being asked for (its connect timeout)."""
        self._credential = credential
        self._wait = wait_seconds
        self._clock = clock
        self._token: Token | None = None
        self._flight: Future[Token] | None = None  # the token request in flight for new connections
        # the token the open connections signed in with, or were last handed (the held one may be newer: a new
        # connection takes a new token when the held one is near its end, after an Entra ID outage)
        self._delivered: Token | None = None
        self._wake = threading.Event()  # the renewal thread hands the held token over now
        self._lock = threading.Lock()
        self._renewed: Callable[[Token], Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._failing = False

    # --- what redis-py calls

    def get_credentials(self) -> tuple[str, str]:
        token = self._usable()
        if token is None:
            flight = self._asked()
            if not wait([flight], self._wait).done:
                raise self._no_answer()
            token = flight.result()
        self._start()
        return token.user, token.value

    async def get_credentials_async(self) -> tuple[str, str]:
        """On the client's event loop: the token held, or the one being asked for on a thread (never on the loop)."""
        token = self._usable()
        if token is None:
            asked = asyncio.wrap_future(self._asked())
            asked.add_done_callback(_retrieved)  # its failure is raised here, or nobody waits for it any more
            if not (await asyncio.wait({asked}, timeout=self._wait))[0]:  # gives up without cancelling it
                raise self._no_answer()
            token = asked.result()
        self._start()
        return token.user, token.value

    def on_next(self, callback: Callable[[Any], Any]) -> None:
        """redis-py's registration: not used (see the module docstring); :meth:`deliver_to` is."""

    def on_error(self, callback: Callable[[Exception], Any]) -> None:
        """redis-py's error callback raises; renewal errors are logged and retried here instead."""

    def deliver_to(self, renewed: Callable[[Token], Any], loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Call ``renewed`` with each new token: on ``loop`` when given (a coroutine function), else on this thread."""
        self._renewed, self._loop = renewed, loop

    def is_streaming(self) -> bool:
        return self._thread is not None

    def close(self) -> None:
        """Stop renewing (the client is closed)."""
        self._closed.set()
        self._wake.set()

    # --- tokens

    def _usable(self) -> Token | None:
        token = self._token
        return token if token is not None and token.left(self._clock()) > self.min_left else None

    def _asked(self) -> Future[Token]:
        """The token request in flight, or one started now on a thread of its own.

        It runs to its end whoever still waits for it (a token then becomes the one held), and only one at a time:
        connections opened together during an outage share its failure instead of each asking after the other.
        """
        with self._lock:
            flight = self._flight
            if flight is None:
                flight = self._flight = Future()
                flight.set_running_or_notify_cancel()  # a waiter cannot cancel it for the others
                threading.Thread(target=self._fly, args=(flight,), name="redis-entra-token", daemon=True).start()
            return flight

    def _fly(self, flight: Future[Token]) -> None:
        """Ask for a token and hold it. One replacing a held token (near its end, the renewals having failed) is
        handed to the open connections by the renewal thread, woken for it: never on a new connection's path."""
        try:
            token = self._request()
        except BaseException as exc:
            with self._lock:
                self._flight = None
            flight.set_exception(exc)
            return
        with self._lock:
            self._flight = None
            held = self._token
            if held is None:  # the first token: every connection signs in with it
                self._token = self._delivered = token
            elif token.value != held.value and token.expires_on >= held.expires_on:  # not older than a renewal's
                self._token = token
                self._wake.set()
            else:  # the renewal thread's token meanwhile (or the same one)
                token = held
        flight.set_result(token)

    def _no_answer(self) -> RedisConnectionError:
        return RedisConnectionError(
            f"no Entra ID token for Redis: the token request gave no answer within {self._wait:g} s")

    def _request(self) -> Token:
        try:
            access = self._credential.get_token(REDIS_SCOPE)
        except Exception as exc:  # azure-identity raises ClientAuthenticationError, and transport errors as they come
            raise RedisConnectionError(f"no Entra ID token for Redis: {type(exc).__name__}: {exc}") from exc
        token = Token(access.token, access.expires_on, clock=self._clock)
        if token.left(self._clock()) <= self.min_left:
            raise RedisConnectionError(f"the Entra ID token for Redis expires within {self.min_left:.0f} s")
        return token

    # --- renewal

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew, name="redis-entra-renewal", daemon=True)
                self._thread.start()

    def _renew(self) -> None:
        while True:
            woken = self._wake.wait(self._delay())
            if self._closed.is_set():
                return
            self._wake.clear()
            if not woken:  # time to ask (woken: a new connection took a new token, hand it over)
                try:
                    token = self._request()  # outside the lock: new connections meanwhile use the token held
                except RedisConnectionError as exc:
                    self._failing = True
                    logger.warning("Renewing the Redis Entra ID token failed (asked again in %.0f s): %s",
                                   self._delay(), exc)
                    continue
                self._failing = False
                with self._lock:  # unless a new connection took a later-ending token meanwhile (_fly)
                    held = self._token
                    if held is None or token.expires_on >= held.expires_on:
                        self._token = token
            self._hand_over()

    def _hand_over(self) -> None:
        """Sign the open connections in with the token held unless they have it: compared with the token last handed
        to them, not with the one held before this request (``_fly`` may have replaced that meanwhile)."""
        token, delivered = self._token, self._delivered
        if token is not None and (delivered is None or token.value != delivered.value):
            self._deliver(token)

    def _delay(self) -> float:
        token = self._token
        if token is None:
            return self.retry_seconds
        left = token.left(self._clock())
        if left <= self.cache_window:  # halving towards the end, but an outage is not asked ten times a second
            return min(self.retry_seconds,
                       max(left / 2, self.failed_floor_seconds if self._failing else self.poll_floor_seconds))
        return max(min(left * self.renew_at, left - self.cache_window + 1.0), 0.1)

    def _deliver(self, token: Token) -> None:
        """AUTH every open connection with the new token, through the callback redis-py registered."""
        callback, loop = self._renewed, self._loop
        if callback is None:
            return
        try:
            if loop is not None:
                if loop.is_closed():
                    return
                self._delivered = token
                asyncio.run_coroutine_threadsafe(callback(token), loop).result(timeout=30)
            else:
                self._delivered = token
                callback(token)
        except Exception as exc:  # a connection broken meanwhile reconnects with get_credentials, and a new token
            logger.warning("Redis re-authentication with the renewed Entra ID token failed: %s: %s",
                           type(exc).__name__, exc)
        else:
            logger.info("Redis connections re-authenticated with a renewed Entra ID token (valid %.0f s)",
                        token.left(self._clock()))


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark ``future``'s outcome read: no "exception was never retrieved" when every waiter gave up before it."""
    if not future.cancelled():
        future.exception()
