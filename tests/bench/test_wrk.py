"""The wrk Lua script: the body goes in exactly as sent, whatever text it happens to hold."""

from __future__ import annotations

import pytest

from bench.wrk import MARK, script


def test_a_body_that_spells_the_placeholders_is_embedded_unchanged():
    body = b'{"images": ["LIMITxMARKxBODY"]}'
    lua = script(body, limit=7)
    assert f"wrk.body = [==[{body.decode()}]==]" in lua
    assert "answered >= 7" in lua and f"'{MARK}{{" in lua


def test_a_body_that_would_close_the_lua_string_is_refused():
    with pytest.raises(ValueError, match="Lua long string"):
        script(b"]==]", limit=1)
