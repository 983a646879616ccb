"""TEMPORARY placeholder (helper H1 writes the real one)."""
from __future__ import annotations
import asyncio, time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar
import httpx
from ._errors import InfraError
T = TypeVar("T")

class ApiError(InfraError):
    def __init__(self, url: str, status: int | None, kind: str, reason: str, attempts: int) -> None:
        super().__init__(f"POST {url}: {'HTTP %s' % status if status else kind} after {attempts} attempt(s): {reason}")
        self.url, self.status, self.kind, self.reason, self.attempts = url, status, kind, reason, attempts

@dataclass
class ApiStats:
    requests: int = 0
    retries: int = 0
    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "retries": self.retries}

@dataclass
class Reply(Generic[T]):
    value: T
    attempts: int
    elapsed_s: float

class ApiClient:
    def __init__(self, *, headers: dict[str, str], timeout_s: float, max_retries: int, backoff_s: float, concurrency: int) -> None:
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s)
        self._sem = asyncio.Semaphore(concurrency)
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self.stats = ApiStats()
    async def __aenter__(self) -> ApiClient:
        return self
    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()
    async def post(self, url: str, body: dict[str, Any], parse: Callable[[Any], T]) -> Reply[T]:
        start = time.monotonic()
        last: ApiError | None = None
        for attempt in range(self.max_retries + 1):
            self.stats.requests += 1
            try:
                async with self._sem:
                    r = await self._client.post(url, json=body)
            except httpx.TransportError as exc:
                last = ApiError(url, None, "connection", str(exc), attempt + 1)
            else:
                if r.status_code in (401, 403):
                    raise ApiError(url, r.status_code, "auth", r.text[:200], attempt + 1)
                if r.status_code == 200:
                    try:
                        return Reply(parse(r.json()), attempt + 1, time.monotonic() - start)
                    except ValueError as exc:
                        last = ApiError(url, 200, "malformed", str(exc), attempt + 1)
                else:
                    last = ApiError(url, r.status_code, "server", r.text[:200], attempt + 1)
            self.stats.retries += 1
            await asyncio.sleep(self.backoff_s)
        assert last is not None
        raise last
