"""The shared mock-upstream pieces: model-string knobs, bearer tokens, the CLI options."""

from __future__ import annotations

import pytest

from streamgw.testing.mockbase import Knobs, base_knob_parsers, mock_arguments, parse_knobs


def test_knobs_suffix_that_is_not_all_pairs_is_part_of_the_name() -> None:
    parsers = base_knob_parsers()
    assert parse_knobs("llama3.2:3b", parsers) == ("llama3.2:3b", {})
    assert parse_knobs("text:tokens=3, ttft=0.5", parsers) == ("text", {"tokens": 3, "ttft": 0.5})


@pytest.mark.parametrize(("range_errors", "message"), [(True, "out of range"), (False, "bad value")])
def test_negative_knob_is_refused(range_errors: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_knobs("text:tokens=-1", base_knob_parsers(range_errors=range_errors))
    with pytest.raises(ValueError, match="bad value"):
        parse_knobs("text:ttft=soon", base_knob_parsers(range_errors=range_errors))
    with pytest.raises(ValueError, match="unknown mock knob 'speed'"):
        parse_knobs("text:speed=1", base_knob_parsers(range_errors=range_errors))


def test_knob_text_numbers_the_delta() -> None:
    assert Knobs(token_text="t{i}-").text(7) == "t7-"


def test_common_cli_options() -> None:
    parser = mock_arguments("x_mock", "X.", unit="line", tokens=8)
    args = parser.parse_args(["--port", "5", "--api-key", "k"])
    assert (args.host, args.port, args.tokens, args.token_text, args.api_key) == ("127.0.0.1", 5, 8, "tok{i} ", "k")
