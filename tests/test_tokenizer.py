"""The offline GPT-2 tokenizer gives GPT-2's ids without touching the network."""

from train_core.tokenizer import EOT_TOKEN, gpt2_encoding


def test_known_gpt2_ids():
    enc = gpt2_encoding()
    assert enc.n_vocab == 50257
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode_ordinary(" the") == [262]


def test_end_of_text_is_the_one_special_token():
    enc = gpt2_encoding()
    assert EOT_TOKEN == enc.eot_token == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_TOKEN]
    # As ordinary text the marker is just characters, so documents cannot inject it.
    assert EOT_TOKEN not in enc.encode_ordinary("<|endoftext|>")


def test_round_trip_decode():
    enc = gpt2_encoding()
    text = "def f(x):\n    return x ** 2  # ünïcödé, 日本語, emoji 🙂\n\n\t trailing  "
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_encoding_is_cached():
    assert gpt2_encoding() is gpt2_encoding()
