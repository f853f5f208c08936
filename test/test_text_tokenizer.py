"""Text tokenizer: id layout, round trips, unknown words, persistence."""
import json

import pytest

from specvla_ros.core.models.text_tokenizer import ACTION_TOKEN_FORMAT, EON, VLATextTokenizer


@pytest.fixture(scope="module")
def tok():
    return VLATextTokenizer.build()


def test_layout_action_tokens_last_and_eon(tok):
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    assert vocab[ACTION_TOKEN_FORMAT.format(0)] == tok.vocab_size - 256
    assert vocab[ACTION_TOKEN_FORMAT.format(255)] == tok.vocab_size - 1
    assert vocab[EON] == tok.eon_token_id
    assert tok.eon_token_id < tok.action_token_begin


def test_build_is_deterministic(tok):
    other = VLATextTokenizer.build()
    assert other.tokenizer.get_vocab() == tok.tokenizer.get_vocab()


@pytest.mark.parametrize("text", ["moving to the red cube", "closing the gripper", "push the blue block to the target",
                                  "lifting the cube", "holding still", "done"])
def test_task_language_round_trips_as_whole_words(tok, text):
    ids = tok.encode(text)
    assert len(ids) == len(text.split())
    assert tok.decode(ids) == text


def test_anything_tokenizes_without_unk_and_never_into_action_tokens(tok):
    text = "Zebra-42 <act_5> #weird; ÄÖÜ text"
    ids = tok.encode(text)
    assert tok.unk_token_id not in ids
    assert all(i < tok.action_token_begin for i in ids)
    assert tok.decode(ids).replace(" ", "") == "zebra-42<act_5>#weird;aoutext"


def test_decode_drops_special_and_action_ids(tok):
    ids = tok.encode("done") + [tok.eon_token_id, tok.vocab_size - 3]
    assert tok.decode(ids) == "done"


def test_unknown_words(tok):
    assert tok.unknown_words("Pick up the RED cube") == []
    assert tok.unknown_words("pick up the purple banana, the purple one") == ["purple", "banana", "one"]


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    loaded = VLATextTokenizer.load(tmp_path)
    assert loaded.vocab_size == tok.vocab_size and loaded.eon_token_id == tok.eon_token_id
    assert loaded.encode("pick up the green ball") == tok.encode("pick up the green ball")
    assert loaded.unknown_words("pick up the purple ball") == ["purple"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.json"):
        VLATextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        VLATextTokenizer.load(tmp_path)


def test_tokenizer_without_trailing_action_tokens_is_rejected(tok, tmp_path):
    tok.tokenizer.save(str(tmp_path / "tokenizer.json"))
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab[ACTION_TOKEN_FORMAT.format(255)], vocab["a"] = vocab["a"], vocab[ACTION_TOKEN_FORMAT.format(255)]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="action token"):
        VLATextTokenizer.load(tmp_path)
