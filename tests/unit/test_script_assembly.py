"""Each Redis script carries only the shared Lua definitions it uses (assembly.py)."""

from __future__ import annotations

import pytest

from conveyor import ConfigError
from conveyor.engines.redis import connection
from conveyor.engines.redis.assembly import assemble, definitions

SHARED = """-- the header
local A, B = KEYS[1], KEYS[2]
local TABLE = {
  x = 'uses_nothing',   -- a name in a string or a comment: not a use
}
local function helper(n)
  return A .. n
end
local function outer()
  return helper(1) -- calls helper
end
local function unused()
  return B
end
local early
local function caller()
  return early()
end
early = function()
  return helper(2)
end
redis.setresp(3)
"""


def test_a_script_gets_what_it_names_and_what_that_names_in_order() -> None:
    text = assemble(definitions(SHARED), "return outer()")
    assert text.index("local A, B") < text.index("function helper") < text.index("function outer")
    assert "function unused" not in text and "local TABLE" not in text
    assert "redis.setresp(3)" in text  # not a definition: kept everywhere
    assert text.endswith("return outer()")


def test_a_local_declared_first_and_defined_later_comes_with_its_body() -> None:
    text = assemble(definitions(SHARED), "return caller()")
    assert text.index("local early") < text.index("function caller") < text.index("early = ")
    assert "function helper" in text  # what the body needs
    assert "early" not in assemble(definitions(SHARED), "return outer()")


def test_a_multi_line_table_is_one_definition() -> None:
    text = assemble(definitions(SHARED), "return TABLE.x")
    assert "x = 'uses_nothing'" in text and "}\n" in text
    assert "function helper" not in text


def test_a_function_without_an_end_at_column_0_is_refused() -> None:
    with pytest.raises(ConfigError, match="no `end` at column 0"):
        definitions("local function f()\n  return 1 end\n")
    with pytest.raises(ConfigError, match="function g has no `end`"):
        definitions("local g\ng = function()\n  return 1 end\n")
    with pytest.raises(ConfigError, match="never closes"):
        definitions("local T = {\n  a = 1,\n")


def test_shipped_scripts_drop_what_they_do_not_use() -> None:
    """The per-call cost is the point: a single enqueue builds neither the transition
    table nor the outcome helpers; the exchange, which applies outcomes, has both."""
    enqueue, exchange = connection._script_source("enqueue"), connection._script_source("exchange")
    assert "local TRANSITIONS" not in enqueue and "local function apply(" not in enqueue
    assert "local function hand_off(" in enqueue and "local LIVE" in enqueue
    assert "local TRANSITIONS" in exchange and "local function apply(" in exchange
    pause = connection._script_source("pause")
    assert "clock_ms" not in pause  # no TIME for a script that never reads the time
