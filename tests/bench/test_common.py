"""bench.common: sizes are checked with the field named."""
import pytest

from bench.common import parse_size


def test_parse_size_names_the_field():
    assert parse_size("480x832x33") == (480, 832, 33)
    for bad in ("480x832", "480x830x33", "480x832x32"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)
