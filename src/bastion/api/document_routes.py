"""Documents over HTTP: ingest, list, show, delete and re-index a tenant's documents.

``POST /v1/documents`` takes a JSON body (``collection``, ``doc_id``, exactly one of ``text``
or ``content_base64``, and optionally ``media_type``, ``filename``, ``title``, ``metadata``,
``access``) and answers 201 with the document when it was indexed, 200 with
``"changed": false`` when it already was, exactly so. JSON rather than multipart keeps one body
format, one size limit (``server.max_body_bytes``; base64 inflates by 4/3) and the same error
handling as every other route; ``bastion ingest`` has no body limit for large files.

The tenant always comes from the API key: a key never sees, lists or deletes another
tenant's documents, whatever ids it sends.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bastion.api.errors import error_response
from bastion.api.openai_routes import json_response
from bastion.api.request import read_json, request_context, request_id_of
from bastion.domain.context import RequestContext
from bastion.domain.errors import BastionError, InvalidRequest, NotFound, PayloadTooLarge
from bastion.domain.retrieval import DocumentInfo
from bastion.gateway import Gateway
from bastion.services.ingest import validate_id

_FIELDS = frozenset({"collection", "doc_id", "text", "content_base64", "media_type",
                     "filename", "title", "metadata", "access"})
MAX_LIST_LIMIT = 1000
_Handler = Callable[[Gateway, RequestContext, dict[str, str]], Awaitable[Response]]


def document_routes() -> list[Route]:
    return [
        Route("/v1/documents", create_document, methods=["POST"]),
        Route("/v1/documents", list_documents, methods=["GET"]),
        Route("/v1/documents/{collection}/{doc_id}", get_document, methods=["GET"]),
        Route("/v1/documents/{collection}/{doc_id}", delete_document, methods=["DELETE"]),
        Route("/v1/documents/{collection}/{doc_id}/reindex", reindex_document,
              methods=["POST"]),
    ]


def document_json(info: DocumentInfo) -> dict[str, Any]:
    """A document as the API shows it: what the index knows, never its text."""
    return {"object": "document", "collection": info.collection, "doc_id": info.doc_id,
            "title": info.title, "status": info.status, "reason": info.reason,
            "content_hash": info.content_hash, "chunk_count": info.chunk_count,
            "media_type": info.media_type, "metadata": info.metadata,
            "access": list(info.access), "embedding_model": info.embedding_model,
            "updated_at": info.updated_at}


# --------------------------------------------------------------------------- handlers


async def create_document(request: Request) -> Response:
    async def handle(gateway: Gateway, ctx: RequestContext, headers: dict[str, str]) -> Response:
        limit = gateway.config.server.max_body_bytes
        try:
            body = await read_json(request, limit)
        except PayloadTooLarge as exc:
            raise PayloadTooLarge(f"{exc.message} (server.max_body_bytes; base64 content "
                                  "grows by 4/3: use `bastion ingest` for large files)",
                                  param="body") from None
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}; known: "
                                 f"{', '.join(sorted(_FIELDS))}", param=unknown[0])
        for name in ("collection", "doc_id"):
            if name not in body:
                raise InvalidRequest(f"{name} is required", param=name)
        content_field, data = _content(body)
        try:
            result = await gateway.ingest_document(
                ctx, collection=body["collection"], doc_id=body["doc_id"],
                data=data, media_type=_text_or_none(body, "media_type"),
                filename=_text_or_none(body, "filename"), title=_text_or_none(body, "title"),
                metadata=body.get("metadata"), access=_access(body.get("access")))
        except BastionError as exc:
            if exc.param == "content":
                exc.param = content_field  # the field the client actually sent
            raise
        return json_response({**document_json(result.document), "changed": result.changed},
                             headers, 201 if result.changed else 200)

    return await _run(request, handle)


async def list_documents(request: Request) -> Response:
    async def handle(gateway: Gateway, ctx: RequestContext, headers: dict[str, str]) -> Response:
        params = request.query_params
        collection = params.get("collection") or None
        if collection is not None:
            validate_id(collection, "collection")
        limit = _limit(params.get("limit"))
        after = _after(params.get("after"), collection)
        docs = await gateway.index.list_documents(ctx.tenant, collection, limit=limit + 1,
                                                  after=after)
        has_more = len(docs) > limit
        docs = docs[:limit]
        last = f"{docs[-1].collection}/{docs[-1].doc_id}" if docs else None
        return json_response({"object": "list", "data": [document_json(d) for d in docs],
                              "has_more": has_more, "next_after": last if has_more else None},
                             headers)

    return await _run(request, handle)


async def get_document(request: Request) -> Response:
    async def handle(gateway: Gateway, ctx: RequestContext, headers: dict[str, str]) -> Response:
        collection, doc_id = _path_ids(request)
        info = await gateway.index.get_document(ctx.tenant, collection, doc_id)
        if info is None:
            raise NotFound(f"no document {doc_id!r} in collection {collection!r}",
                           param="doc_id")
        return json_response(document_json(info), headers)

    return await _run(request, handle)


async def delete_document(request: Request) -> Response:
    async def handle(gateway: Gateway, ctx: RequestContext, headers: dict[str, str]) -> Response:
        collection, doc_id = _path_ids(request)
        await gateway.ingest.delete(ctx.tenant, collection, doc_id)
        return json_response({"object": "document.deleted", "collection": collection,
                              "doc_id": doc_id, "deleted": True}, headers)

    return await _run(request, handle)


async def reindex_document(request: Request) -> Response:
    async def handle(gateway: Gateway, ctx: RequestContext, headers: dict[str, str]) -> Response:
        collection, doc_id = _path_ids(request)
        result = await gateway.reindex_document(ctx, collection, doc_id)
        return json_response({**document_json(result.document), "changed": result.changed},
                             headers)

    return await _run(request, handle)


# --------------------------------------------------------------------------- helpers


async def _run(request: Request, handle: _Handler) -> Response:
    """Authenticate, run ``handle``, and answer every failure in the OpenAI error shape."""
    gateway: Gateway = request.app.state.gateway
    request_id = request_id_of(request, gateway.config.server.accept_request_id)
    headers = {"x-request-id": request_id, "x-bastion-config": gateway.loaded.hash}
    try:
        ctx = await request_context(request, gateway, "documents", request_id)
        if not gateway.config.retrieval.enabled:
            raise NotFound("documents are disabled on this gateway (retrieval.enabled: false)")
        return await handle(gateway, ctx, headers)
    except Exception as exc:  # noqa: BLE001 - every failure leaves in the error shape
        return error_response(exc, request_id, headers)


def _content(body: dict[str, Any]) -> tuple[str, bytes]:
    """Exactly one of ``text`` (UTF-8) or ``content_base64`` (any supported format)."""
    given = [name for name in ("text", "content_base64") if body.get(name) is not None]
    if len(given) != 1:
        raise InvalidRequest("send exactly one of text (a string) or content_base64 (the "
                             "file's bytes, base64-encoded)", param=given[-1] if given else "text")
    name = given[0]
    value = body[name]
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", param=name)
    if name == "text":
        return name, value.encode("utf-8", errors="replace")
    try:
        return name, base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("content_base64 is not valid base64", param=name) from None


def _text_or_none(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string", param=name)
    return value


def _access(value: Any) -> Any:
    return () if value is None else value


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}",
                             param="limit")
    return limit


def _after(raw: str | None, collection: str | None) -> tuple[str, str] | None:
    """The cursor: ``next_after`` of the previous page (``collection/doc_id``), or a doc id
    alone when listing one collection."""
    if not raw:
        return None
    if "/" in raw:
        after_collection, _, doc_id = raw.partition("/")
        return validate_id(after_collection, "after"), validate_id(doc_id, "after")
    if collection is None:
        raise InvalidRequest("after must be collection/doc_id (next_after of the previous "
                             "page) when no collection is given", param="after")
    return collection, validate_id(raw, "after")


def _path_ids(request: Request) -> tuple[str, str]:
    return (validate_id(request.path_params["collection"], "collection"),
            validate_id(request.path_params["doc_id"], "doc_id"))
