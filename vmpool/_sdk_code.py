"""The code interpreter of `vmpool.Sandbox` (E2B's ``e2b_code_interpreter`` API): `run_code`
and code contexts, each a call to the service, which relays them to the sandbox's Jupyter
kernel bridge (`vmpool._service_code`). A run's lines stream back as they happen and
`vmpool._code.ExecutionBuilder` turns them into an `Execution`, firing the callbacks on the way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._code import Context, Execution, ExecutionBuilder, ExecutionError, OutputMessage, Result
from ._errors import InvalidArgumentException
from ._service_client import ServiceClient, sandbox_route

__all__ = ["CodeInterpreter"]


class CodeInterpreter:
    """`run_code` and the code-context methods, for `vmpool.Sandbox` (which sets `_client` and
    `sandbox_id`)."""

    _client: ServiceClient

    @property
    def sandbox_id(self) -> str:
        raise NotImplementedError  # `vmpool.Sandbox` has it

    def run_code(self, code: str, language: str | None = None, context: Context | None = None,
                 on_stdout: Callable[[OutputMessage], Any] | None = None,
                 on_stderr: Callable[[OutputMessage], Any] | None = None,
                 on_result: Callable[[Result], Any] | None = None,
                 on_error: Callable[[ExecutionError], Any] | None = None,
                 envs: dict[str, str] | None = None, timeout: float | None = None,
                 request_timeout: float | None = None) -> Execution:
        """Run `code` in a stateful Jupyter kernel: the default context of `language` (default
        "python"), or `context`. Callbacks get output, results and the error as they come. An
        exception in the code is `Execution.error`, not raised. `envs` apply to this run only.
        timeout: seconds (default 300; 0: none); beyond it the kernel is interrupted (its state
        is kept) and TimeoutException is raised. `request_timeout` is accepted for E2B
        compatibility."""
        if language and context is not None:
            raise InvalidArgumentException("You can provide context or language, but not both at the same time.")
        body = {"code": code, "language": language, "context_id": context.id if context is not None else None,
                "envs": dict(envs or {}), "timeout": timeout}
        builder = ExecutionBuilder(on_stdout=on_stdout, on_stderr=on_stderr, on_result=on_result,
                                   on_error=on_error)
        events = self._client.stream(sandbox_route(self.sandbox_id, "/code"), body, "the run of the code")
        try:
            for line in events:
                builder.feed(line)
        except BaseException:
            events.close()  # e.g. Ctrl-C: the service interrupts the kernel
            raise
        return builder.execution

    def create_code_context(self, cwd: str | None = None, language: str | None = None,
                            request_timeout: float | None = None) -> Context:
        """A new context: a kernel of its own (state not shared with the others), in `cwd`
        (default /home/user), for `language` (default "python")."""
        answer = self._client.call("POST", sandbox_route(self.sandbox_id, "/contexts"),
                                   {"language": language, "cwd": cwd})
        return _context(answer)

    def list_code_contexts(self) -> list[Context]:
        """The contexts of the sandbox, default ones included."""
        answer = self._client.call("GET", sandbox_route(self.sandbox_id, "/contexts"))
        return [_context(context) for context in answer["contexts"]]

    def restart_code_context(self, context: Context | str) -> None:
        """Restart a context's kernel: its state is cleared."""
        self._client.call("POST", sandbox_route(self.sandbox_id, "/contexts/%s/restart" % _id(context)), {})

    def remove_code_context(self, context: Context | str) -> None:
        """Shut a context's kernel down."""
        self._client.call("DELETE", sandbox_route(self.sandbox_id, "/contexts/%s" % _id(context)))


def _id(context: Context | str) -> str:
    return context if isinstance(context, str) else context.id


def _context(data: dict[str, Any]) -> Context:
    return Context.from_json(data)
