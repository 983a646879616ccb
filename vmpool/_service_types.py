"""What the vmpool service and the SDK exchange about sandboxes: their info, their state and
the query that lists them. The same models are the service's JSON answers and the objects SDK
users get (with E2B's field names). Processes are `vmpool.ProcessInfo` (`vmpool._processes`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FileType", "SandboxInfo", "SandboxQuery", "SandboxState"]


class FileType(str, enum.Enum):
    """What an `EntryInfo` is (E2B's `FileType`): ``entry.type == FileType.DIR`` holds for a
    directory, whose ``type`` is the string "dir"."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"

    def __str__(self) -> str:
        return self.value


class SandboxState(str, enum.Enum):
    """A sandbox that exists is running or paused (E2B's states; a killed one is gone)."""

    RUNNING = "running"
    PAUSED = "paused"

    def __str__(self) -> str:
        return self.value


class SandboxInfo(BaseModel):
    """One sandbox as `Sandbox.get_info` and `Sandbox.list` describe it (E2B's `SandboxInfo`,
    plus the driver and isolation vmpool chose)."""

    model_config = ConfigDict(frozen=True)

    sandbox_id: str
    template_id: str = Field(description="the template it was created from (its name: vmpool "
                                         "templates are addressed by name)")
    name: str | None = Field(None, description="the template's name (E2B: its alias)")
    sandbox_domain: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    started_at: datetime = Field(description="when it was created (UTC)")
    end_at: datetime = Field(description="when the service kills it unless its timeout is "
                                         "extended (UTC); for a paused one, when it was paused")
    state: SandboxState
    cpu_count: int
    memory_mb: int
    envd_version: str = Field(description="the version of vmpool's guest agent (E2B: envd)")
    allow_internet_access: bool | None = Field(None, description="whether it has a network")
    driver: str = Field(description='the driver it runs on, e.g. "bwrap"')
    isolation: str = Field(description="how it is isolated, as the driver words it")


@dataclass
class SandboxQuery:
    """What `Sandbox.list` selects (E2B's `SandboxQuery`): sandboxes whose metadata contains all
    of `metadata`, in one of `state` (default both), started at or after `started_after`, from
    `template`."""

    metadata: dict[str, str] | None = None
    state: list[SandboxState] | None = None
    started_after: datetime | None = None
    template: str | None = None

