import pytest

from lmgauge.engines.sampling import StopMatcher, grammar_for
from lmgauge.errors import InvalidOptionError


def feed_all(matcher, pieces):
    out, stopped = [], False
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(matcher.flush())
    return "".join(out), stopped


def test_stop_string_split_across_pieces_is_never_emitted():
    text, stopped = feed_all(StopMatcher(["</end>"]), ["hello </", "en", "d> after"])
    assert (text, stopped) == ("hello ", True)


def test_false_start_is_released():
    text, stopped = feed_all(StopMatcher(["STOP"]), ["a ST", "ART b"])
    assert (text, stopped) == ("a START b", False)


def test_held_text_waits_only_as_long_as_needed():
    m = StopMatcher(["\n\n"])
    assert m.feed("line\n") == ("line", False)
    assert m.feed("x") == ("\nx", False)


def test_earliest_of_several_stops_wins():
    text, stopped = feed_all(StopMatcher(["b", "a"]), ["xxab"])
    assert (text, stopped) == ("xx", True)


def test_grammar_for_formats():
    assert grammar_for(None) is None
    assert "root" in grammar_for("json")
    assert "root" in grammar_for({"type": "object", "properties": {"a": {"type": "integer"}}})
    with pytest.raises(InvalidOptionError):
        grammar_for("yaml")


def test_schema_grammar_keeps_control_characters_out_of_strings():
    grammar = grammar_for({"type": "object", "properties": {"a": {"type": "string"}}})
    assert "\\x00-\\x1F" in grammar.split("char ::=")[1].splitlines()[0]
