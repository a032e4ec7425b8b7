"""The LIVE layout: labels land exactly on each frame's last token and on reply tokens."""

from __future__ import annotations

import pytest

from mmlc.models.layout import DECISION, IGNORE, TEXT, Frame, Question, Reply


def _positions(seq, kind):
    return [i for i, k in enumerate(seq.kinds) if k == kind]


def test_frame_decisions_on_last_placeholder(tiny_model):
    lay = tiny_model.layout
    n = lay.tokens_per_frame
    seq = lay.build([Frame(0), Frame(1), Frame(2)])
    # <bos> | n placeholders | interval + n | interval + n
    assert len(seq.ids) == 1 + n + 2 * (n + 1)
    assert seq.ids[1 + n] == lay.interval_id
    assert _positions(seq, DECISION) == [n, 2 * n + 1, 3 * n + 2]
    assert all(seq.ids[p] == lay.frame_id for p in _positions(seq, DECISION))
    assert all(seq.labels[p] == lay.interval_id for p in _positions(seq, DECISION))
    assert seq.frames == [0, 1, 2]


def test_reply_right_after_a_frame(tiny_model):
    lay = tiny_model.layout
    n = lay.tokens_per_frame
    text = lay.text_ids("the red circle moves left.")
    seq = lay.build([Frame(0), Reply("the red circle moves left."), Frame(1)])
    decision = n  # last placeholder of frame 0
    assert seq.labels[decision] == lay.assistant_id and seq.kinds[decision] == DECISION
    assert seq.ids[decision + 1] == lay.assistant_id
    # the assistant token predicts the first reply token; each reply token predicts the next; then <end>
    text_pos = _positions(seq, TEXT)
    assert text_pos == list(range(decision + 1, decision + 1 + len(text) + 1))
    assert [seq.labels[p] for p in text_pos] == text + [lay.end_id]
    # the next frame comes right after <end>, without an interval token
    after = decision + 2 + len(text) + 1
    assert seq.ids[after - 1] == lay.end_id and seq.ids[after] == lay.frame_id
    assert seq.labels[after + n - 1] == lay.interval_id


def test_question_mid_stream(tiny_model):
    lay = tiny_model.layout
    n = lay.tokens_per_frame
    q, a = "what colour is the circle?", "red."
    seq = lay.build([Frame(0), Frame(1), Question(q, a), Frame(2)])
    # a frame followed by a user question is labelled silent: the model did not choose to speak
    d1 = 1 + n + n  # last placeholder of frame 1 (after <bos>, frame 0, interval)
    assert seq.labels[d1] == lay.interval_id
    start = d1 + 1
    prompt = [lay.user_id] + lay.text_ids(q) + [lay.assistant_id]
    assert seq.ids[start:start + len(prompt)] == prompt
    # question tokens carry no labels except the assistant token, which predicts the answer
    assert all(label == IGNORE for label in seq.labels[start:start + len(prompt) - 1])
    answer = lay.text_ids(a) + [lay.end_id]
    text_pos = _positions(seq, TEXT)
    assert [seq.labels[p] for p in text_pos] == answer
    assert text_pos[0] == start + len(prompt) - 1
    assert len(_positions(seq, DECISION)) == 3


def test_reply_must_follow_a_frame(tiny_model):
    with pytest.raises(ValueError, match="Reply must follow a Frame"):
        tiny_model.layout.build([Reply("hello")])


def test_template_tokens_must_be_single_tokens(tiny_model):
    from mmlc.config import TemplateConfig
    from mmlc.errors import ConfigError
    from mmlc.models.layout import StreamLayout

    with pytest.raises(ConfigError, match="template.interval"):
        StreamLayout(TemplateConfig(interval="stay silent please"), tiny_model.tokenizer, 5)
