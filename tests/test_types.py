import pytest

from lmgauge.errors import InvalidOptionError
from lmgauge.types import Message, Options, Timings


def test_options_from_ollama_dict_converts_and_keeps_extras():
    opts = Options.from_dict({"temperature": "0.5", "num_predict": 12.0, "stop": "\n", "num_gpu": 1, "seed": None})
    assert opts.temperature == 0.5
    assert opts.num_predict == 12
    assert opts.stop == ["\n"]
    assert opts.seed is None
    assert opts.extra == {"num_gpu": 1}
    assert opts.to_dict() == {"num_predict": 12, "temperature": 0.5, "stop": ["\n"], "num_gpu": 1}


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"temprature": 0.1}, "unknown option 'temprature'"),
        ({"num_predict": "many"}, "'num_predict' has an invalid value"),
        ({"num_predict": 1.5}, "'num_predict' has an invalid value"),
        ({"temperature": True}, "'temperature' has an invalid value"),
        ({"stop": [1, 2]}, "'stop' has an invalid value"),
        ([1, 2], "options must be an object"),
    ],
)
def test_options_errors_name_the_option(data, fragment):
    with pytest.raises(InvalidOptionError, match=fragment):
        Options.from_dict(data)


def test_message_from_openai_content_parts():
    m = Message.from_dict({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})
    assert m.content == "ab"
    with pytest.raises(InvalidOptionError):
        Message.from_dict({"content": "no role"})


def test_timings_metrics_follow_the_design_definitions():
    ms = 1_000_000
    t = Timings(
        sent_ns=0,
        first_token_ns=200 * ms,
        end_ns=1_200 * ms,
        chunk_ns=[200 * ms, 300 * ms, 450 * ms, 1_200 * ms],
        prompt_tokens=100,
        cached_tokens=40,
        prompt_eval_ns=120 * ms,
        output_tokens=11,
        eval_ns=1_000 * ms,
    )
    assert t.ttft_ms == 200
    assert t.e2e_ms == 1200
    assert t.tpot_ms == pytest.approx((1200 - 200) / 10)  # (E2E - TTFT) / (n - 1)
    assert t.itl_ms == [100, 150, 750]
    assert t.evaluated_tokens == 60  # cached tokens are not work done
    assert t.prefill_tps == pytest.approx(60 / 0.120)
    assert t.decode_tps == pytest.approx(10 / 1.0)  # (n - 1) steps over the eval time
    d = t.to_dict()
    assert d["ttft_ms"] == 200 and "chunk_ns" not in d


def test_timings_undefined_metrics_are_none_not_zero():
    t = Timings(sent_ns=5, output_tokens=1)
    assert t.ttft_ms is None and t.e2e_ms is None and t.tpot_ms is None
    assert t.prefill_tps is None and t.decode_tps is None
    assert t.itl_ms == []
