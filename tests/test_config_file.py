import pytest
from pydantic import ValidationError

from synthgen.service.config_file import apply_set, build_spec

ROLES = ("writer", "answerer")


def test_toml_and_yaml_configs(tmp_path):
    toml = tmp_path / "job.toml"
    toml.write_text('n = 7\n[roles.default]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "a"\n'
                    '[roles.writer]\ntemperature = 0.2\n[params]\nturns = 3\n')
    spec = build_spec("persona-qa", ROLES, config=toml, sets=[], flags={}, base_url=None, model=None, api_key=None)
    assert spec.n == 7 and spec.params == {"turns": 3} and spec.roles["writer"].temperature == 0.2
    yml = tmp_path / "job.yaml"
    yml.write_text("roles:\n  default: {model: b, base_url: 'http://127.0.0.1:9/v1'}\n")
    spec = build_spec("persona-qa", ROLES, config=yml, sets=["writer.max_tokens=64", "params.turns=2", "n=3"],
                      flags={"seed": 5}, base_url=None, model=None, api_key=None)
    assert spec.roles["writer"].max_tokens == 64 and spec.params["turns"] == 2 and spec.n == 3 and spec.seed == 5


def test_base_url_and_model_set_every_role(tmp_path):
    spec = build_spec("persona-qa", ROLES, config=None, sets=["answerer.model=big"], flags={},
                      base_url="http://127.0.0.1:8000/v1", model="small", api_key="sk-x")
    assert spec.roles["default"].model == "small"
    assert spec.roles["answerer"].model == "big"  # --set comes after the flags
    assert spec.roles["default"].api_key.get_secret_value() == "sk-x"
    assert "sk-x" not in str(spec.public_dict())


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="key=value"):
        apply_set({}, "writer.temperature", ROLES)
    with pytest.raises(ValueError, match="unknown key 'judge'"):
        apply_set({}, "judge.temperature=1", ROLES)
    with pytest.raises(ValueError, match="not found"):
        build_spec("g", ROLES, config=tmp_path / "nope.toml", sets=[], flags={}, base_url=None, model=None,
                   api_key=None)
    with pytest.raises(ValidationError, match="temperature"):
        build_spec("g", ROLES, config=None, sets=["writer.temperature=-1"], flags={}, base_url=None, model=None,
                   api_key=None)
    with pytest.raises(ValidationError, match="base_url"):
        build_spec("g", ROLES, config=None, sets=[], flags={}, base_url="ftp://x", model="m", api_key=None)
