"""The one naming rule: what is a name, and the error that names the field."""

from __future__ import annotations

import pytest

from nexus.common.errors import InvalidArgument
from nexus.common.names import check_name, check_version, is_name


@pytest.mark.parametrize("name", ["a", "A1", "cpu-load_2", "9lives", "x" * 64])
def test_names(name: str) -> None:
    assert is_name(name)
    assert check_name(name, "name") == name


@pytest.mark.parametrize(
    "name", ["", "-", "_x", "-x", "a.b", "a b", "a/b", "é", "x" * 65, "a\n", None, 3]
)
def test_not_names(name: object) -> None:
    assert not is_name(name)
    with pytest.raises(InvalidArgument) as raised:
        check_name(name, "detector")  # type: ignore[arg-type]
    assert raised.value.violations[0].field == "detector"
    assert "starting with a letter or digit" in raised.value.message


def test_versions() -> None:
    assert check_version("12") == "12"
    for bad in ("0", "01", "-1", "1.0", "", "1" * 19):
        with pytest.raises(InvalidArgument):
            check_version(bad)
