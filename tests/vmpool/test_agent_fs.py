"""The tar archives of upload_dir/download_dir, packed and unpacked outside any sandbox: what
`unpack_tar` refuses is the whole defence of the host against a hostile guest's archive."""

import io
import os
import tarfile
from pathlib import Path

import pytest

from vmpool._agent_fs import pack_tar, unpack_tar


def archive(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size if kind == tarfile.REGTYPE else 0
    return info


def test_round_trip_keeps_tree_modes_and_links(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "d" / "empty").mkdir(parents=True)
    (source / "d" / "run.sh").write_text("#!/bin/sh\n")
    (source / "d" / "run.sh").chmod(0o750)
    (source / "l").symlink_to("d/run.sh")
    os.link(source / "d" / "run.sh", source / "hard")
    unpack_tar(pack_tar(str(source)), str(tmp_path / "dst"))
    dst = tmp_path / "dst"
    assert (dst / "d" / "run.sh").stat().st_mode & 0o777 == 0o750
    assert (dst / "d" / "empty").is_dir() and os.readlink(dst / "l") == "d/run.sh"
    assert (dst / "hard").read_text() == "#!/bin/sh\n" and not (dst / "hard").is_symlink()


@pytest.mark.parametrize("members", [
    [member("../x")], [member("/abs")], [member("a/../../x")],
    [member("l", tarfile.SYMTYPE, "/etc/passwd")], [member("l", tarfile.SYMTYPE, "../x")],
    [member("d/l", tarfile.SYMTYPE, "../../x")],
    [member("h", tarfile.LNKTYPE, "/etc/passwd")], [member("h", tarfile.LNKTYPE, "../x")],
    [member("dev", tarfile.CHRTYPE)], [member("fifo", tarfile.FIFOTYPE)],
    # each link stays inside on its own; together t leads out
    [member("d", tarfile.DIRTYPE), member("t", tarfile.SYMTYPE, "d/s/.."),
     member("d/s", tarfile.SYMTYPE, "..")],
])
def test_hostile_members_are_refused(tmp_path: Path, members: list[tarfile.TarInfo]) -> None:
    dest = tmp_path / "a" / "dest"
    with pytest.raises(OSError, match="refusing archive member"):
        unpack_tar(archive(*members), str(dest))
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["a", "dest"] + (["d"] if any(m.name == "d" for m in members) else []))


def test_writes_through_an_existing_symlink_are_refused(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "dest" / "sub").symlink_to(tmp_path / "outside")
    with pytest.raises(OSError, match="refusing archive member"):
        unpack_tar(archive(member("sub/x")), str(tmp_path / "dest"))
    assert not (tmp_path / "outside" / "x").exists()


def test_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="not a tar archive"):
        unpack_tar(b"garbage" * 200, str(tmp_path))
