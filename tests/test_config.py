"""Typed configs: one validation path for flags and YAML, errors that name the field or file:line."""

import pytest

from spectune.cli import make_parser
from spectune.config import GenerateConfig, PrepareConfig, build, coerce_values, load_yaml
from spectune.errors import SpectuneError


def test_build_coerces_strings_from_flags():
    cfg = build(GenerateConfig, {"prompt": "hi", "max_new_tokens": "12", "temperature": "0.5", "seed": "7"})
    assert (cfg.max_new_tokens, cfg.temperature, cfg.seed) == (12, 0.5, 7)
    assert cfg.model == "smollm2-135m" and cfg.top_p == 1.0


@pytest.mark.parametrize("values, where, expected", [
    ({"max_new_tokens": "many"}, "max_new_tokens", "expected an integer"),
    ({"max_new_tokens": 0}, "max_new_tokens", "expected between 1"),
    ({"top_p": 1.5}, "top_p", "between 0.0 and 1.0"),
    ({"top_p": 0}, "top_p", "must be above 0"),
    ({"dtype": "fp16"}, "dtype", "expected one of: fp32, bf16"),
    ({"temprature": 1.0}, "temprature", "did you mean 'temperature'"),
    ({"prompt": "   "}, "prompt", "is empty"),
])
def test_bad_values_name_the_field(values, where, expected):
    with pytest.raises(SpectuneError) as e:
        build(GenerateConfig, {"prompt": "hi", **values})
    assert e.value.where == where and expected in e.value.message


def test_missing_required_option():
    with pytest.raises(SpectuneError, match="missing required option.*model"):
        build(PrepareConfig, {})


def test_yaml_errors_point_at_file_and_line(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("prompt: hello\nmax_new_tokens: 8\ntop_k: lots\n")
    values, lines = load_yaml(f)
    with pytest.raises(SpectuneError) as e:
        coerce_values(GenerateConfig, values, source=str(f), lines=lines)
    assert str(e.value).startswith(f"{f}:3: top_k:")

    f.write_text("prompt: [unclosed\n")
    with pytest.raises(SpectuneError, match=rf"^{f}:\d+: invalid YAML"):
        load_yaml(f)

    f.write_text("- a list\n")
    with pytest.raises(SpectuneError, match="expected a mapping"):
        load_yaml(f)
    with pytest.raises(SpectuneError, match="cannot read config file"):
        load_yaml(tmp_path / "absent.yaml")


def test_cli_flags_are_generated_from_the_dataclass_and_win_over_yaml(tmp_path):
    from spectune.cli import config_from_args

    f = tmp_path / "gen.yaml"
    f.write_text("prompt: from yaml\nmax_new_tokens: 8\ntemperature: 0.7\n")
    ns = make_parser().parse_args(["generate", "--config", str(f), "--max-new-tokens", "3"])
    cfg = config_from_args(GenerateConfig, ns)
    assert (cfg.prompt, cfg.max_new_tokens, cfg.temperature) == ("from yaml", 3, 0.7)
    help_text = make_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    for flag in ("--max-new-tokens", "--top-p", "--repetition-penalty", "--raw", "--dtype {fp32,bf16}"):
        assert flag in help_text
