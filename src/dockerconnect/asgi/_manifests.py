"""``GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>``.

- ``Accept`` is negotiated: an index a client cannot read is answered with
  its linux/amd64 child, as distribution does, or ``MANIFEST_UNKNOWN``.
- A reference that can be neither a tag nor a digest is, on GET and HEAD,
  simply not there: 404 ``MANIFEST_UNKNOWN`` (distribution-spec
  conformance; ``TAG_INVALID`` is not in the spec's code table).
- ``Docker-Content-Digest`` is in the algorithm of the request: a manifest
  pulled or pushed by a ``sha512:`` digest is answered with that digest.
- A pushed manifest with a ``subject`` is answered with ``OCI-Subject``
  (distribution-spec "Pushing Manifests with Subject").
"""

from __future__ import annotations

from dockerconnect import Descriptor, Digest, Manifest
from dockerconnect.asgi._context import Context
from dockerconnect.asgi._http import Headers, Request, Response, h
from dockerconnect.asgi._routing import not_allowed
from dockerconnect.errors import DigestInvalid, ManifestUnknown, TagInvalid, Unsupported

__all__ = ["manifest"]

_DEFAULT_PLATFORM = ("linux", "amd64")


def _acceptable(media_type: str, accept: list[str]) -> bool:
    """Whether a manifest of ``media_type`` may answer a request with these ``Accept`` values.

    No ``Accept`` header, ``*/*`` or ``application/*`` accept anything.
    """
    if not accept:
        return True
    return any(a in (media_type, "*/*", "application/*") for a in accept)


def _default_child(index: Manifest, accept: list[str]) -> Descriptor | None:
    for child in index.manifests:
        platform = child.platform
        if (
            platform is not None
            and (platform.os, platform.architecture) == _DEFAULT_PLATFORM
            and _acceptable(child.media_type, accept)
        ):
            return child
    return None


def _headers(media_type: str, digest: Digest | str) -> Headers:
    value = h(digest)
    return [
        (b"content-type", h(media_type)),
        (b"docker-content-digest", value),
        (b"etag", b'"%s"' % value),
    ]


def _requested_digest(ref: str) -> Digest | None:
    return Digest.parse(ref) if ":" in ref else None


async def manifest(ctx: Context, request: Request, response: Response, name: str, ref: str) -> None:
    if request.method in ("GET", "HEAD"):
        try:
            await _get(ctx, request, response, name, ref)
        except TagInvalid as exc:
            raise ManifestUnknown(
                f"no manifest {name}:{ref} (not a valid tag or digest)", repository=name
            ) from exc
    elif request.method == "PUT":
        await _put(ctx, request, response, name, ref)
    elif request.method == "DELETE":
        await ctx.registry.delete_manifest(name, ref)
        await response.simple(202, [])
    else:
        not_allowed(request.method, ["GET", "HEAD", "PUT", "DELETE"])


async def _get(ctx: Context, request: Request, response: Response, name: str, ref: str) -> None:
    accept = request.header_values("accept")
    wanted = _requested_digest(ref)
    if response.head:
        descriptor = await ctx.registry.head_manifest(name, ref)
        if _acceptable(descriptor.media_type, accept):
            digest = wanted if wanted is not None else descriptor.digest
            length = (b"content-length", h(descriptor.size))
            await response.headers_only(200, [*_headers(descriptor.media_type, digest), length])
            return
    found = await ctx.registry.get_manifest(name, ref, accept=accept or None)
    if not _acceptable(found.media_type, accept):
        child = _default_child(found, accept) if found.is_index else None
        if child is None:
            raise ManifestUnknown(
                f"manifest {name}:{ref} is a {found.media_type}, which the request's "
                "Accept header does not allow",
                repository=name,
            )
        wanted = None
        found = await ctx.registry.get_manifest(name, str(child.digest), accept=accept or None)
    digest = wanted if wanted is not None else found.digest
    headers = _headers(found.media_type, digest)
    if response.head:
        await response.headers_only(200, [*headers, (b"content-length", h(len(found.data)))])
    else:
        await response.simple(200, headers, found.data)


async def _put(ctx: Context, request: Request, response: Response, name: str, ref: str) -> None:
    """Store a manifest under a tag or a digest; 201 with its ``Location``."""
    data = await request.read(ctx.max_manifest_size)
    content_type = request.header_values("content-type")
    parsed = Manifest.parse(data, content_type[0] if content_type else None)
    wanted = _requested_digest(ref)
    tag: str | None = ref
    digest: Digest = parsed.digest
    if wanted is not None:
        tag = None
        if not wanted.matches(data):
            raise DigestInvalid(
                f"the manifest's bytes do not match the digest {ref} it was pushed under",
                repository=name,
                digest=ref,
            )
        if wanted.algorithm != "sha256":
            # The registry keys manifests by sha256; naming the other digest
            # as the "tag" lets it answer to that digest too.
            tag = str(wanted)
        digest = wanted
    try:
        await ctx.registry.push_manifest(name, data, media_type=parsed.media_type, tag=tag)
    except TagInvalid as exc:
        if wanted is None:
            raise
        raise Unsupported(
            f"this registry cannot store a manifest under a {wanted.algorithm} digest: {exc}",
            repository=name,
            digest=ref,
        ) from exc
    headers: Headers = [
        (b"location", h(f"/v2/{name}/manifests/{digest}")),
        (b"docker-content-digest", h(digest)),
    ]
    if parsed.subject is not None:
        headers.append((b"oci-subject", h(parsed.subject.digest)))
    await response.simple(201, headers)
