"""The stubs code store on a real directory: versions, persistence, deletion, atomicity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from easyfaas.errors import FunctionNotFoundError
from easyfaas.models import FunctionSpec
from easyfaas_storage_stubs import StubsStore


def code(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / f"src-{abs(hash(text))}"
    directory.mkdir()
    (directory / "handler.py").write_text(text)
    (directory / "data").mkdir()
    (directory / "data" / "x.txt").write_text("payload")
    return directory


async def test_each_put_is_a_new_immutable_version(tmp_path: Path) -> None:
    store = StubsStore(data_dir=tmp_path)
    v1 = await store.put(FunctionSpec(name="f"), code(tmp_path, "A = 1\n"))
    v2 = await store.put(FunctionSpec(name="f", memory=256), code(tmp_path, "A = 2\n"))
    assert (v1.version, v2.version) == ("1", "2")
    assert (await store.get("f")).version == "2"
    assert (await store.get("f", "1")).spec.memory == 128
    assert Path(v1.code_dir, "handler.py").read_text() == "A = 1\n"
    assert Path(v2.code_dir, "data", "x.txt").read_text() == "payload"
    assert v1.code_sha256 != v2.code_sha256
    with pytest.raises(PermissionError):
        if os.getuid() == 0:  # root ignores file modes; check the mode instead
            assert not os.stat(Path(v1.code_dir, "handler.py")).st_mode & 0o222
            raise PermissionError
        Path(v1.code_dir, "handler.py").write_text("tampered")


async def test_functions_survive_a_restart(tmp_path: Path) -> None:
    store = StubsStore(data_dir=tmp_path)
    await store.put(FunctionSpec(name="keep", handler="app.main", env={"K": "v"}), code(tmp_path, "x = 1\n"))
    again = StubsStore(data_dir=tmp_path)
    fv = await again.get("keep")
    assert (fv.version, fv.spec.handler, fv.spec.env) == ("1", "app.main", {"K": "v"})
    assert [f.name for f in await again.list()] == ["keep"]


async def test_list_versions_and_delete(tmp_path: Path) -> None:
    store = StubsStore(data_dir=tmp_path)
    for name in ("b", "a", "b"):
        await store.put(FunctionSpec(name=name), code(tmp_path, f"# {name}{os.urandom(4).hex()}\n"))
    assert [(f.name, f.version) for f in await store.list()] == [("a", "1"), ("b", "2")]
    assert [v.version for v in await store.versions("b")] == ["1", "2"]
    await store.delete("b")
    with pytest.raises(FunctionNotFoundError):
        await store.get("b")
    assert [f.name for f in await store.list()] == ["a"]
    assert not any(p.name.startswith(".deleted") for p in store.root.iterdir())


async def test_unknown_names_and_versions(tmp_path: Path) -> None:
    store = StubsStore(data_dir=tmp_path)
    with pytest.raises(FunctionNotFoundError, match="'nope' not found"):
        await store.get("nope")
    with pytest.raises(FunctionNotFoundError):
        await store.get("../etc")
    await store.put(FunctionSpec(name="f"), code(tmp_path, "y = 1\n"))
    with pytest.raises(FunctionNotFoundError, match="no version '9'"):
        await store.get("f", "9")
    with pytest.raises(FunctionNotFoundError):
        await store.delete("nope")


async def test_a_crashed_write_leaves_no_version_behind(tmp_path: Path) -> None:
    store = StubsStore(data_dir=tmp_path)
    await store.put(FunctionSpec(name="f"), code(tmp_path, "z = 1\n"))
    # A staging directory left by a crash must not become a version nor hide the real one.
    (store.root / "f" / ".staging-abc").mkdir()
    assert [v.version for v in await store.versions("f")] == ["1"]
    assert (await store.get("f")).version == "1"


async def test_custom_path_option(tmp_path: Path) -> None:
    store = StubsStore(data_dir=tmp_path / "data", path=str(tmp_path / "elsewhere"))
    fv = await store.put(FunctionSpec(name="f"), code(tmp_path, "w = 1\n"))
    assert Path(fv.code_dir).is_relative_to(tmp_path / "elsewhere")
