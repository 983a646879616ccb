"""The exceptions vmpool raises. One tree, rooted at `VmpoolError`:

    VmpoolError                  anything vmpool itself reports
    ├── DriverUnavailableError   the requested driver cannot run on this host (tool missing, no
    │                            KVM, not implemented yet); the message says what to install/do
    ├── PausedStateError         a paused sandbox's directory cannot be resumed: not one, written
    │                            by another vmpool format, or saved from a template build, QEMU
    │                            or machine configuration this host no longer has
    ├── SandboxError             the sandbox machinery failed: agent died, sandbox killed or gone,
    │   │                        agent did not answer in time. The sandbox is unusable afterwards
    │   │                        (vmpool kills it); a pool replaces it. Retrying the *program* in a
    │   │                        fresh sandbox is the right reaction.
    │   └── ProtocolError        host and agent do not understand each other: version mismatch,
    │                            malformed message. Usually means mismatched installs.
    ├── TemplateError            a VM template could not be built or found: the message names the
    │   │                        failed step, the tool's exit status and the tail of its output,
    │   │                        or what to do (e.g. run as root)
    │   └── TemplateSpecError    a template name is unknown or its spec is invalid (the user's
    │                            mistake): one sentence naming the file, line and key
    └── SandboxException         raised by the E2B-style SDK (`vmpool.Sandbox`), with E2B's names
        │                        so that code written for E2B's SDK catches what it expects:
        │                        the service is unreachable, a call failed in the sandbox
        ├── TimeoutException     a command or code run exceeded its timeout (it was killed or
        │                        interrupted), or the service did not answer in time
        ├── InvalidArgumentException  a call's arguments were refused (also a ValueError)
        ├── NotEnoughSpaceException   the sandbox's disk is full
        ├── NotFoundException    something named by id or path does not exist
        │   ├── SandboxNotFoundException  no sandbox has that id (killed, expired, never existed)
        │   └── FileNotFoundException     no such path in the sandbox (also a FileNotFoundError)
        └── CommandExitException a command exited non-zero; carries stdout, stderr, exit_code, error

What is deliberately *not* an exception:

- Every outcome of a user program (exception, timeout, OOM, early exit, output flood) is an
  `ExecResult` with a status. A harness can therefore treat any `SandboxError` as infrastructure
  failure, never as a verdict on the program.
- File operations (`LocalSandbox.files`) fail like `open()` does: with the built-in `OSError`
  subclass for the errno the agent saw (`FileNotFoundError`, `PermissionError`, ...). Through
  the SDK a missing path is E2B's `FileNotFoundException`, which is a `FileNotFoundError` too.
"""

from __future__ import annotations

__all__ = [
    "CommandExitException", "DriverUnavailableError", "FileNotFoundException", "InvalidArgumentException",
    "NotEnoughSpaceException", "NotFoundException", "PausedStateError", "ProtocolError", "SandboxError",
    "SandboxException", "SandboxNotFoundException", "TemplateError", "TemplateSpecError", "TimeoutException",
    "VmpoolError",
]


class VmpoolError(Exception):
    """Base class of every exception vmpool raises on its own behalf."""


class DriverUnavailableError(VmpoolError):
    """The requested sandbox driver cannot be used here; the message says why and what to do."""


class PausedStateError(VmpoolError):
    """A paused sandbox (`LocalSandbox.pause`) cannot be resumed from its directory; the
    message says why. The directory is left as it is."""


class SandboxError(VmpoolError):
    """The sandbox machinery failed (not the program). The sandbox has been killed."""


class ProtocolError(SandboxError):
    """Host and agent disagree on the wire protocol (version mismatch or malformed messages)."""


class TemplateError(VmpoolError):
    """A template could not be built or found: the message names the step that failed, the
    tool's exit status and the tail of its output, or what to do (e.g. run as root)."""


class TemplateSpecError(TemplateError):
    """A template name is unknown or its spec is invalid: one sentence naming file, line, key."""


class SandboxException(VmpoolError):
    """Base class of the SDK's exceptions (E2B's name): the service could not be reached, or a
    call failed in the service or the sandbox."""


class TimeoutException(SandboxException):
    """A command or code run took longer than its timeout (the command was killed, the code's
    kernel interrupted), or the service did not answer in time."""


class InvalidArgumentException(SandboxException, ValueError):
    """The service refused a call's arguments (e.g. both a language and a context)."""


class NotEnoughSpaceException(SandboxException):
    """The sandbox ran out of disk space."""


class NotFoundException(SandboxException):
    """What a call named (a sandbox, a file, a process, a code context) does not exist."""


class SandboxNotFoundException(NotFoundException):
    """No sandbox has the id: it was killed, expired, or never existed."""


class FileNotFoundException(NotFoundException, FileNotFoundError):
    """No such file or directory in the sandbox. Also a built-in FileNotFoundError, so that code
    written against `LocalSandbox.files` catches it too."""


class CommandExitException(SandboxException):
    """A command exited with a non-zero code (E2B raises it from `commands.run` and
    `CommandHandle.wait`). Carries the whole result, like E2B's."""

    def __init__(self, stdout: str, stderr: str, exit_code: int, error: str | None = None) -> None:
        super().__init__(stdout, stderr, exit_code, error)
        self.stdout = stdout
        self.stderr = stderr
        self.exit_code = exit_code
        self.error = error

    def __str__(self) -> str:
        return "Command exited with code %d and error:\n%s" % (self.exit_code, self.stderr)
