"""The registry must survive a broken third-party plugin and name it."""

from importlib.metadata import EntryPoint

import pytest

from synthgen.engine import plugin


def test_broken_plugin_is_isolated_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    good = EntryPoint("persona-qa", "synthgen.generators.persona_qa:generator", plugin.ENTRY_POINT_GROUP)
    missing = EntryPoint("ghost", "synthgen_no_such_module:generator", plugin.ENTRY_POINT_GROUP)
    wrong = EntryPoint("not-a-generator", "synthgen.spec:JobSpec", plugin.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugin, "entry_points", lambda group: [good, missing, wrong])

    assert list(plugin.available()) == ["persona-qa"]
    bad = plugin.broken()
    assert set(bad) == {"ghost", "not-a-generator"}
    assert "ModuleNotFoundError" in bad["ghost"]
    assert "not a synthgen Generator" in bad["not-a-generator"]
    assert plugin.get("persona-qa").name == "persona-qa"
    with pytest.raises(plugin.UnknownGenerator, match="registered but failed to load"):
        plugin.get("ghost")
    with pytest.raises(plugin.UnknownGenerator, match="known: persona-qa"):
        plugin.get("nope")
