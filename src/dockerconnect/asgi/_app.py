"""The application: lifespan, access control, dispatch to the route modules."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import anyio
import anyio.to_thread
from typing_extensions import assert_never

from dockerconnect import Digest, Registry
from dockerconnect.asgi import _admin, _blob_uploads, _blobs, _listing, _manifests, _ops, _referrers
from dockerconnect.asgi._auth import Action, Authenticator, Authorizer, RuleAuthorizer
from dockerconnect.asgi._context import MAX_MANIFEST_SIZE, Context
from dockerconnect.asgi._errors import (
    AccessDenied,
    AuthenticationRequired,
    ClientGone,
    Failed,
    RouteUnknown,
    answer_for,
)
from dockerconnect.asgi._http import Headers, Receive, Request, Response, Scope, Send, h
from dockerconnect.asgi._routing import Route, not_allowed, route
from dockerconnect.asgi._uploads import UPLOAD_TTL, UploadSessions
from dockerconnect.errors import DockerConnectError

__all__ = ["RegistryApp"]

log = logging.getLogger("dockerconnect.asgi")

_READ = ("GET", "HEAD")


def _action(request: Request, where: Route) -> Action:
    if request.method in _READ:
        return "pull"
    if request.method == "DELETE" and where.endpoint in ("manifest", "blob"):
        return "delete"
    return "push"


class RegistryApp:
    """The ASGI application :func:`~dockerconnect.asgi.create_app` returns."""

    def __init__(
        self,
        registry: Registry,
        *,
        upload_dir: str | os.PathLike[str] | None = None,
        blob_path: Callable[[Digest], str | os.PathLike[str]] | None = None,
        admin: bool = False,
        open_registry: bool = True,
        resources: Sequence[AbstractAsyncContextManager[Any]] = (),
        authenticator: Authenticator | None = None,
        authorizer: Authorizer | None = None,
        max_sessions: int = 1000,
        max_sessions_per_repository: int = 100,
        upload_ttl: float = UPLOAD_TTL,
        max_manifest_size: int = MAX_MANIFEST_SIZE,
        startup: Callable[[], Any] | None = None,
    ) -> None:
        self.registry = registry
        self.resources = tuple(resources)
        self.admin = admin
        self.open_registry = open_registry
        self.authenticator = authenticator
        self.authorizer = authorizer if authorizer is not None else RuleAuthorizer()
        self._startup = startup
        self._own_upload_dir = upload_dir is None
        directory = upload_dir or tempfile.mkdtemp(prefix="dockerconnect-uploads-")
        self.uploads = UploadSessions(
            directory,
            max_sessions=max_sessions,
            max_per_repository=max_sessions_per_repository,
            ttl=upload_ttl,
        )
        self.uploads.directory.mkdir(parents=True, exist_ok=True)
        self.context = Context(
            registry, self.uploads, blob_path=blob_path, max_manifest_size=max_manifest_size
        )
        self.metrics = _ops.ServerMetrics(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise RuntimeError(f"this application serves HTTP only, not {scope['type']!r}")

    # -- lifespan ------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Open the resources, then the registry (when it is an async context
        manager), for the server's lifetime; close them in reverse order at
        shutdown. Upload sessions are kept: they belong to the store."""
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with AsyncExitStack() as stack:
            try:
                await self.uploads.sweep()
                for resource in self.resources:
                    await stack.enter_async_context(resource)
                if self.open_registry and hasattr(self.registry, "__aenter__"):
                    await stack.enter_async_context(self.registry)  # type: ignore[arg-type]
                if self._startup is not None:
                    await self._startup()
            except Exception as exc:
                log.exception("startup failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
        await anyio.to_thread.run_sync(self.close)
        await send({"type": "lifespan.shutdown.complete"})

    def close(self) -> None:
        """Remove the upload directory if it was a temporary one of ours."""
        if self._own_upload_dir:
            shutil.rmtree(self.uploads.directory, ignore_errors=True)

    # -- dispatch ------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        request = Request(scope, receive)
        response = Response(send, head=request.method == "HEAD")
        try:
            await self._dispatch(request, response)
        except ClientGone:
            log.info("client went away during %s %s", request.method, request.path)
        except Failed as failed:
            await self._answer_error(request, response, failed.error, failed.headers)
        except DockerConnectError as error:
            await self._answer_error(request, response, error, [])
        except Exception:
            log.exception("unexpected error serving %s %s", request.method, request.path)
            if response.started:
                # The status is gone; raising makes the server drop the
                # connection, so the client cannot mistake a short body for a
                # whole one.
                raise
            await self._answer_error(
                request, response, DockerConnectError("internal server error"), []
            )
        finally:
            seconds = _ops.access_log(request, response, request.route, started)
            self.metrics.observe(
                request.method, request.route, response.status, seconds, response.sent_bytes
            )

    async def _answer_error(
        self, request: Request, response: Response, error: DockerConnectError, headers: Headers
    ) -> None:
        if response.started:
            # The headers promised a body we can no longer produce (an
            # upstream transfer broke mid-blob): abort the connection.
            log.warning("%s %s failed mid-response: %s", request.method, request.path, error)
            raise error
        status, entry = answer_for(error)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.path, error)
        await response.error(status, entry, headers)

    async def _dispatch(self, request: Request, response: Response) -> None:
        """Serve one request, naming its route on ``request.route`` first."""
        path = request.path
        if path == "/v2" or path.startswith("/v2/"):
            request.route = "v2"  # until the path is known to name an endpoint
            where = route(path)
            request.route = where.endpoint
            await self._check_access(request, where)
            await self._v2(request, response, where)
        elif path in ("/healthz", "/readyz", "/metrics"):
            request.route = path[1:]
            if path == "/healthz":
                await _ops.healthz(request, response)
            elif path == "/readyz":
                await _ops.readyz(self.context, request, response)
            else:
                await _ops.metrics(self.metrics, request, response)
        elif self.admin and path.startswith("/_dockerconnect/"):
            request.route = "admin"
            await self._authorize(request, "*", "admin")
            await _admin.admin(self.context, request, response, path[len("/_dockerconnect/") :])
        else:
            raise RouteUnknown(f"no endpoint at {path}")

    async def _v2(self, request: Request, response: Response, where: Route) -> None:
        """One distribution-API endpoint, after access was checked."""
        ctx, name, arg = self.context, where.repository, where.argument
        endpoint = where.endpoint
        if endpoint == "base":
            if request.method not in _READ:
                not_allowed(request.method, _READ)
            await response.json(200, {})
        elif endpoint == "catalog":
            await _listing.catalog(ctx, request, response)
        elif endpoint == "tags":
            await _listing.tags(ctx, request, response, name)
        elif endpoint == "manifest":
            await _manifests.manifest(ctx, request, response, name, arg)
        elif endpoint == "blob":
            await _blobs.blob(ctx, request, response, name, arg)
        elif endpoint == "uploads":
            await _blob_uploads.start_upload(ctx, request, response, name)
        elif endpoint == "upload":
            await _blob_uploads.upload(ctx, request, response, name, arg)
        elif endpoint == "referrers":
            await _referrers.referrers(ctx, request, response, name, arg)
        else:
            assert_never(endpoint)

    # -- access control --------------------------------------------------------------

    async def _check_access(self, request: Request, where: Route) -> None:
        if self.authenticator is None:
            return
        if where.endpoint == "base":
            # distribution's rule: /v2/ tells a client without valid
            # credentials how to get some (it probes before logging in).
            identity = await self._identify(request, "", ["pull"])
            if identity is None:
                raise self._challenge(
                    AuthenticationRequired("authentication required"), "", ["pull"]
                )
            return
        if where.endpoint == "catalog":
            await self._authorize(request, "_catalog", "pull")
            return
        mount_from = request.param("from") if where.endpoint == "uploads" else None
        await self._authorize(request, where.repository, _action(request, where))
        if mount_from:
            await self._authorize(request, mount_from, "pull")

    async def _identify(self, request: Request, repository: str, actions: list[Action]) -> Any:
        assert self.authenticator is not None
        try:
            request.identity = await self.authenticator.authenticate(
                request.header("authorization")
            )
        except AuthenticationRequired as error:
            raise self._challenge(error, repository, actions) from None
        return request.identity

    async def _authorize(self, request: Request, repository: str, action: Action) -> None:
        if self.authenticator is None:
            return
        actions: list[Action] = ["pull", "push"] if action == "push" else [action]
        identity = await self._identify(request, repository, actions)
        if await self.authorizer.authorize(identity, repository, action):
            return
        # Anonymous, or a token without this grant: say how to get one.
        if identity is None or identity.grants is not None:
            failed = self._challenge(
                AuthenticationRequired(f"{action} access to {repository!r} needs credentials"),
                repository,
                actions,
            )
            if identity is not None:
                # The token auth spec's answer to a valid token that lacks the scope.
                (name, value), *rest = failed.headers
                failed.headers = [(name, value + b',error="insufficient_scope"'), *rest]
            raise failed
        raise AccessDenied(f"{identity.name!r} may not {action} {repository!r}")

    def _challenge(
        self, error: DockerConnectError, repository: str, actions: list[Action]
    ) -> Failed:
        assert self.authenticator is not None
        value = self.authenticator.challenge(repository, actions)
        return Failed(error, [(b"www-authenticate", h(value))])
