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
    └── TemplateError            a VM template could not be built or found: the message names the
        │                        failed step, the tool's exit status and the tail of its output,
        │                        or what to do (e.g. run as root)
        └── TemplateSpecError    a template name is unknown or its spec is invalid (the user's
                                 mistake): one sentence naming the file, line and key

What is deliberately *not* an exception:

- Every outcome of a user program (exception, timeout, OOM, early exit, output flood) is an
  `ExecResult` with a status. A harness can therefore treat any `SandboxError` as infrastructure
  failure, never as a verdict on the program.
- File operations (`LocalSandbox.files`) fail like `open()` does: with the built-in `OSError`
  subclass for the errno the agent saw (`FileNotFoundError`, `PermissionError`, ...).
"""

from __future__ import annotations

__all__ = [
    "DriverUnavailableError", "PausedStateError", "ProtocolError", "SandboxError", "TemplateError",
    "TemplateSpecError", "VmpoolError",
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
