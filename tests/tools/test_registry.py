"""Source kinds: a config load builds each built-in and Python source once, and the app serves that one."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from gateway.app import create_app
from gateway.config import load_config
from gateway.errors import Problems
from gateway.tools import registry
from gateway.tools.base import StaticSource

CONFIG = """
    [upstreams.default]
    url = "http://127.0.0.1:9/v1"
    [tools.builtin.calculate]
    [tools.python.weather]
    functions = ["tests.sample_functions:forecast"]
    [[models]]
    name = "m"
    tools = ["calculate", "forecast"]
"""


@pytest.fixture
def built(monkeypatch):
    """The names of the static sources (built-ins, Python functions) constructed, in order."""
    names: list[str] = []
    construct = StaticSource.__init__

    def counted(self, name, tools, **kwargs):
        names.append(name)
        construct(self, name, tools, **kwargs)

    monkeypatch.setattr(StaticSource, "__init__", counted)
    return names


async def test_a_config_load_builds_each_static_source_once_and_the_app_serves_it(tmp_path, built):
    path = tmp_path / "toolgate.toml"
    path.write_text(textwrap.dedent(CONFIG))
    settings = load_config(path, {})
    assert built == ["builtin", "weather"]  # checked by building: the check's sources are kept
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        await asyncio.wait_for(runtime.starting, 10)
        assert runtime.toolbox.select(["*"]).tools.keys() == {"calculate", "forecast"}
        assert built == ["builtin", "weather"]  # the app created none: it took the ones the load built

        path.write_text(textwrap.dedent(CONFIG).replace("[tools.builtin.calculate]", "[tools.builtin.calculate]\nmax_length = 50"))
        outcome = await asyncio.wait_for(app.state.reloader.reload(), 30)
        assert outcome["outcome"] == "applied"
        # The reload's load built both once; the changed built-in table's is served, the
        # unchanged Python source keeps running (its new twin is dropped, never started).
        assert built == ["builtin", "weather", "builtin", "weather"]
        (calculate,) = [s for s in app.state.runtime.toolbox.sources if s.name == "builtin"][0].tools()
        assert calculate.max_length == 50


async def test_a_second_app_from_the_same_settings_gets_sources_of_its_own(tmp_path, built):
    path = tmp_path / "toolgate.toml"
    path.write_text(textwrap.dedent(CONFIG))
    settings = load_config(path, {})
    first, second = registry.create(settings.sources[0]), registry.create(settings.sources[0])
    assert first is not second and built == ["builtin", "weather", "builtin"]
    assert [t.name for t in first.tools()] == [t.name for t in second.tools()] == ["calculate"]


def test_specs_compare_by_table_not_by_the_source_they_carry():
    one = registry.build_specs({"builtin": {"calculate": {}}}, Problems("t.toml"))
    two = registry.build_specs({"builtin": {"calculate": {}}}, Problems("t.toml"))
    other = registry.build_specs({"builtin": {"calculate": {"max_length": 9}}}, Problems("t.toml"))
    assert one == two != other
    assert registry.preview(one[0]) is registry.create(one[0])  # looking does not take it


def test_a_table_that_no_longer_builds_says_why(monkeypatch):
    (spec,) = registry.build_specs({"python": {"w": {"functions": ["tests.sample_functions:forecast"]}}}, Problems("t.toml"))
    registry.create(spec)  # takes the one the check built
    monkeypatch.setattr("tests.sample_functions.forecast", "not a function any more")
    with pytest.raises(ValueError, match=r"w: the table no longer builds: <spec>: tools.python.w.functions: .*not callable"):
        registry.create(spec)
