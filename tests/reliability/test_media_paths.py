"""Local files named by chat messages: refused unless allowed, never outside the allowed places.

From LangChain content blocks and LlamaIndex blocks alike: a path or ``file://`` URL is refused
by default with an error saying how to allow local files; with ``media_root`` it must resolve
(symlinks and ``..`` followed) inside the folder; and a refusal reads the same whether the
path outside exists or not (no probing which files exist).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from omnitrace_core.errors import InvalidInputError, MediaAccessError, MediaError
from omnitrace_core.media.paths import NO_LOCAL_FILES, LocalMediaPolicy

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


@pytest.fixture()
def layout(tmp_path: Path) -> dict[str, Path]:
    """``root/`` (allowed, with ``inside.png`` and ``sub/deep.png``), ``secret/`` beside it, links."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "inside.png").write_bytes(PNG)
    (root / "sub" / "deep.png").write_bytes(PNG)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.png").write_bytes(PNG)
    os.symlink(secret / "key.png", root / "escape.png")  # a link inside root pointing out
    os.symlink(secret, root / "escape_dir")  # a folder link pointing out
    os.symlink(root / "inside.png", root / "alias.png")  # a link that stays inside
    os.symlink(root / "loop_a", root / "loop_b")
    os.symlink(root / "loop_b", root / "loop_a")  # a symlink loop
    return {"root": root, "secret": secret}


# -- the two adapters' readers, one call shape --------------------------------------------------


def _langchain(kind: str, ref: dict[str, str], policy: LocalMediaPolicy) -> Any:
    pytest.importorskip("langchain_core")
    from langchain_core.messages import HumanMessage

    from omnitrace_integrations.langchain.messages import read_messages

    block = {"type": "image", "id": "img", **ref}
    (src,) = read_messages([HumanMessage(content=[{"type": "text", "text": "What?"}, block])], media_policy=policy).sources
    return src


def _llama(kind: str, ref: dict[str, str], policy: LocalMediaPolicy) -> Any:
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock

    from omnitrace_integrations.llama_index.sources import parse_messages

    block = ImageBlock.model_construct(**ref, image=None, image_mimetype=None, detail=None)  # no existence check
    message = ChatMessage(role=MessageRole.USER, blocks=[block, TextBlock(text="What?")])
    (src,) = parse_messages([message], policy).prepared.sources
    return src


READERS = {"langchain": _langchain, "llama_index": _llama}


def _ref(how: str, path: str) -> dict[str, str]:
    if how == "path":
        return {"path": path}
    if how == "file-url":
        return {"url": "file://" + path if path.startswith("/") else path}
    return {"url": path}  # a bare path in the url field


HOWS = ["path", "file-url", "bare-url"]
#: (reader, how) pairs: LlamaIndex blocks take only URLs in ``url`` (no bare path there).
PAIRS = [(r, h) for r in sorted(READERS) for h in HOWS if not (r == "llama_index" and h == "bare-url")]


def _allowed(layout: dict[str, Path]) -> LocalMediaPolicy:
    return LocalMediaPolicy.create(media_root=layout["root"])


@pytest.mark.parametrize(("reader", "how"), PAIRS)
def test_refused_by_default_with_how_to_allow(reader, how, layout):
    target = str(layout["root"] / "inside.png")
    with pytest.raises(MediaAccessError) as info:
        READERS[reader]("image", _ref(how, target), NO_LOCAL_FILES)
    assert "media_root" in str(info.value) and "allowed_media_paths" in str(info.value)
    assert isinstance(info.value, InvalidInputError)


@pytest.mark.parametrize(("reader", "how"), PAIRS)
@pytest.mark.parametrize("name", ["inside.png", "sub/deep.png", "alias.png", "sub/../inside.png"])
def test_inside_media_root_is_read(reader, how, name, layout):
    src = READERS[reader]("image", _ref(how, str(layout["root"]) + "/" + name), _allowed(layout))
    assert Path(src.path).resolve().is_relative_to(layout["root"].resolve())


ESCAPES = {
    "symlink-file": "{root}/escape.png",
    "symlink-dir": "{root}/escape_dir/key.png",
    "dotdot": "{root}/../secret/key.png",
    "dotdot-deep": "{root}/sub/../../secret/key.png",
    "absolute-outside": "{secret}/key.png",
    "etc-passwd": "/etc/passwd",
    "proc": "/proc/self/environ",
    "root-prefix-trick": "{root}_evil/key.png",
}


@pytest.mark.parametrize(("reader", "how"), PAIRS)
@pytest.mark.parametrize("escape", sorted(ESCAPES))
def test_escapes_are_refused(reader, how, escape, layout):
    evil = Path(str(layout["root"]) + "_evil")
    evil.mkdir(exist_ok=True)
    (evil / "key.png").write_bytes(PNG)
    target = ESCAPES[escape].format(root=layout["root"], secret=layout["secret"])
    with pytest.raises(MediaAccessError, match="refused: it resolves outside media_root"):
        READERS[reader]("image", _ref(how, target), _allowed(layout))


@pytest.mark.parametrize("reader", sorted(READERS))
def test_refusals_do_not_tell_whether_a_path_exists(reader, layout):
    policy = _allowed(layout)
    messages = []
    for target in (layout["secret"] / "key.png", layout["secret"] / "nothing-here.png"):
        with pytest.raises(MediaAccessError) as info:
            READERS[reader]("image", {"path": str(target)}, policy)
        messages.append(str(info.value).replace(target.name, "NAME"))
    assert messages[0] == messages[1]
    assert not re.search(r"not found|does not exist|no such", messages[0], re.I)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_refused_by_default_reads_the_same_for_existing_and_missing(reader, layout):
    found = []
    for target in ("/etc/hostname", "/etc/no-such-file-here"):
        with pytest.raises(MediaAccessError) as info:
            READERS[reader]("image", {"path": target}, NO_LOCAL_FILES)
        found.append(str(info.value).replace(target, "P"))
    assert found[0] == found[1]


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("missing.png", MediaError),
        ("sub", MediaError),
        ("loop_a", MediaError),  # a symlink loop inside the root: named, no crash
        ("x" * 5000, MediaAccessError),
    ],
    ids=["missing", "folder", "symlink-loop", "5000-chars"],
)
def test_bad_paths_inside_the_root_are_named(reader, name, error, layout):
    with pytest.raises(error) as info:
        READERS[reader]("image", {"path": str(layout["root"] / name)}, _allowed(layout))
    assert "'img'" in str(info.value) or "image-1" in str(info.value)
    assert len(str(info.value)) < 1000  # a 5,000-character path is shortened in the message


def test_nul_byte_is_refused(layout):
    with pytest.raises(MediaAccessError, match="malformed"):
        _allowed(layout).resolve(str(layout["root"]) + "/a\x00.png", "block")


def test_relative_paths_are_taken_from_the_media_root(layout, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the root: a relative path must not resolve from here
    assert Path(_allowed(layout).resolve("inside.png", "b")) == (layout["root"] / "inside.png").resolve()
    with pytest.raises(MediaError, match="not found"):  # root/secret/key.png: inside, missing
        _allowed(layout).resolve("secret/key.png", "b")
    with pytest.raises(MediaAccessError):
        _allowed(layout).resolve("../secret/key.png", "b")


def test_allow_list(layout):
    key = layout["secret"] / "key.png"
    policy = LocalMediaPolicy.create(allowed_paths=[key])
    assert Path(policy.resolve(str(key), "b")) == key.resolve()
    assert Path(policy.resolve(str(layout["root"] / "escape.png"), "b")) == key.resolve()  # a link to it
    with pytest.raises(MediaAccessError, match="not in allowed_media_paths"):
        policy.resolve(str(layout["root"] / "inside.png"), "b")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"media_root": "/no/such/folder"}, "not an existing folder"),
        ({"media_root": 5}, "must be a folder path"),
        ({"media_root": b"/tmp"}, "must be a folder path"),
        ({"allowed_paths": [5]}, "must be a file path"),
    ],
)
def test_bad_policy_options_are_named(kwargs, match):
    with pytest.raises(MediaAccessError, match=match):
        LocalMediaPolicy.create(**kwargs)


def test_chat_model_option_allows_a_folder(layout):
    pytest.importorskip("langchain_core")
    from omnitrace_integrations.langchain import ChatOmniTrace

    assert ChatOmniTrace(tracer=object()).media_policy() == NO_LOCAL_FILES
    allowed = ChatOmniTrace(tracer=object(), media_root=str(layout["root"])).media_policy()
    assert allowed.media_root == str(layout["root"].resolve())


def test_llamaindex_document_block_paths_follow_the_policy(layout):
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, DocumentBlock, MessageRole, TextBlock

    from omnitrace_integrations.llama_index.sources import parse_messages

    (layout["root"] / "notes.txt").write_text("The vault code is 1234.")
    (layout["secret"] / "passwords.txt").write_text("hunter2")

    def parse(path: Path, policy: LocalMediaPolicy):
        block = DocumentBlock.model_construct(
            path=path, data=None, url=None, title="notes", document_mimetype="text/plain"
        )
        return parse_messages([ChatMessage(role=MessageRole.USER, blocks=[block, TextBlock(text="Q?")])], policy)

    with pytest.raises(MediaAccessError):
        parse(layout["root"] / "notes.txt", NO_LOCAL_FILES)
    with pytest.raises(MediaAccessError):
        parse(layout["secret"] / "passwords.txt", _allowed(layout))
    (src,) = parse(layout["root"] / "notes.txt", _allowed(layout)).prepared.sources
    assert src.text == "The vault code is 1234."
