"""documents.py: every document a user or an earlier run hands the program is read with
bounds, and anything wrong with it is one UsageError naming the file."""

from __future__ import annotations

import pytest

from vgg_keras import documents
from vgg_keras.errors import UsageError, one_line


def alias_bomb(levels: int = 8) -> str:
    """A few hundred bytes of YAML whose aliases unfold into 9**levels values."""
    lines = ["lr:", "  - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for level in range(1, levels):
        lines.append(f"  - &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_in_bounded_time_and_memory():
    text = alias_bomb()
    assert len(text) < 500
    with pytest.raises(
        UsageError, match=r"^x.yaml: unreadable settings file \(over 1,000,000 values"
    ):
        documents.parse(text, "x.yaml", "settings file", yaml=True)


def test_nesting_beyond_the_bound_is_refused():
    deep = "[" * (documents.MAX_DEPTH + 2) + "]" * (documents.MAX_DEPTH + 2)
    with pytest.raises(UsageError, match="nested deeper than"):
        documents.parse(deep, "deep.json", "run settings", list)
    with pytest.raises(UsageError, match="nested too deeply"):
        documents.parse("[" * 100000 + "]" * 100000, "deeper.json", "run settings", list)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("null", "expected a mapping, found null"),
        ("[1, 2]", "expected a mapping, found a list"),
        ('"text"', "expected a mapping, found str"),
        ("{", "Expecting property name"),
    ],
)
def test_another_type_or_broken_text_is_one_line_naming_the_file(tmp_path, text, expected):
    path = tmp_path / "train.lock"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        documents.read_json(str(path), "run lock")
    assert str(err.value).startswith(f"{path}: unreadable run lock (")
    assert expected in str(err.value)


def test_a_file_too_large_or_not_utf8_is_refused_before_parsing(tmp_path, monkeypatch):
    big, binary = tmp_path / "big.json", tmp_path / "binary.json"
    big.write_text("[" + "0," * 600 + "0]")
    binary.write_bytes(b'{"a": "\xff"}')
    monkeypatch.setattr(documents, "MAX_BYTES", 1000)
    with pytest.raises(UsageError, match="larger than"):
        documents.read_json(str(big), "evaluation results", list)
    with pytest.raises(UsageError, match="not UTF-8 text"):
        documents.read_json(str(binary), "dataset info")


def test_an_absent_file_is_empty_unless_required(tmp_path):
    path = str(tmp_path / "none.json")
    assert documents.read_json(path, "dataset info") == {}
    assert documents.read_json(path, "evaluation results", list) == []
    with pytest.raises(UsageError, match="none.json: no such file"):
        documents.read_json(path, "HCCL rank table", required=True)


def test_a_broken_yaml_file_says_where(tmp_path):
    with pytest.raises(UsageError, match=r"line 3 column 1\)$"):
        documents.parse("a: 1\nb: [\n", "s.yaml", "settings file", yaml=True)


def test_error_lines_are_one_line_of_bounded_length():
    assert one_line("a\nb  c") == "a b c"
    assert len(one_line("x" * 10000)) == 400
