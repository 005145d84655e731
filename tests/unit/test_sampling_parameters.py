"""sampling_parameters JSON: NVIDIA-style string numbers accepted, bad input named precisely."""

import pytest

from imem.errors import BadRequest
from imem.generation import parse_sampling


def test_numbers_given_as_strings_are_converted():
    params = parse_sampling('{"temperature": "0.1", "max_tokens": "12", "top_p": 0.9, "stop": "END"}', 64)
    assert params == {"temperature": 0.1, "max_tokens": 12, "top_p": 0.9, "stop": ["END"]}


def test_default_max_tokens_applies_when_absent():
    assert parse_sampling("", 77) == {"max_tokens": 77}


@pytest.mark.parametrize("raw, message", [
    ("{bad", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"max_tokens": "lots"}', "max_tokens must be an integer"),
    ('{"temperature": -1}', "temperature must be >= 0"),
    ('{"top_p": 0}', "top_p must be in"),
    ('{"best_of_luck": 1}', "unknown field(s) best_of_luck"),
    ('{"n": 2}', "n must be 1"),
    ('{"max_tokens": 0}', "max_tokens must be at least 1"),
])
def test_bad_sampling_parameters_are_named(raw, message):
    with pytest.raises(BadRequest, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_sampling(raw, 64)
