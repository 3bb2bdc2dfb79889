"""Token files: both formats read back exactly, bad files are refused by name, batches are pure functions of their
counters, and preparing text is deterministic and atomic."""

import json
import math
import os
import zlib

import numpy as np
import pytest
import torch

from train_core import data
from train_core.data import (
    EMBEDDED_CORPORA,
    SourceTree,
    TokenData,
    TrainBatches,
    ensure_corpus,
    fold_vocab,
    prepare,
    write_llmc_shard,
    write_nanogpt_bin,
)
from train_core.errors import InputError
from train_core.tokenizer import EOT_TOKEN, gpt2_encoding
from train_core.trainer import train


def _llmc_by_hand(path, tokens, *, magic, version, dtype, count=None):
    """An llm.c shard written straight from the format description, independent of write_llmc_shard."""
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype=dtype).tobytes())
    return path


def _open(path, vocab_size=50257):
    return TokenData.open(str(path), vocab_size=vocab_size)


# --- formats round-trip -----------------------------------------------------------------------------------------


def test_nanogpt_bin_by_hand_reads_back(tmp_path):
    tokens = np.array([0, 1, 50256, 15496, 995, 7], dtype="<u2")
    (tmp_path / "train.bin").write_bytes(tokens.tobytes())
    d = _open(tmp_path / "train.bin")
    assert d.num_tokens == len(tokens)
    np.testing.assert_array_equal(d.shards[0], tokens)


def test_llmc_uint16_shard_by_hand_reads_back(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16) * 50
    path = _llmc_by_hand(tmp_path / "s.bin", tokens, magic=20240520, version=1, dtype="<u2")
    np.testing.assert_array_equal(_open(path).shards[0], tokens)


def test_llmc_uint32_shard_by_hand_reads_back_ids_above_65535(tmp_path):
    tokens = np.array([0, 65535, 65536, 128255, 100_000], dtype=np.uint32)
    path = _llmc_by_hand(tmp_path / "s.bin", tokens, magic=20240801, version=7, dtype="<u4")
    np.testing.assert_array_equal(_open(path, vocab_size=128256).shards[0], tokens)


def test_writers_produce_the_documented_bytes(tmp_path):
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    assert write_nanogpt_bin(tmp_path / "a.bin", tokens) == 16
    assert (tmp_path / "a.bin").read_bytes() == np.array(tokens, dtype="<u2").tobytes()
    for version, magic, dtype in [(1, 20240520, "<u2"), (7, 20240801, "<u4")]:
        written = write_llmc_shard(tmp_path / "w.bin", tokens, version=version)
        expected = _llmc_by_hand(tmp_path / "h.bin", tokens, magic=magic, version=version, dtype=dtype).read_bytes()
        assert written == len(expected) == 1024 + len(tokens) * np.dtype(dtype).itemsize
        assert (tmp_path / "w.bin").read_bytes() == expected
    with pytest.raises(InputError, match="version=3"):
        write_llmc_shard(tmp_path / "x.bin", tokens, version=3)
    with pytest.raises(InputError, match="0..65535"):
        write_nanogpt_bin(tmp_path / "x.bin", [70000])


# --- bad files are refused, naming the file ---------------------------------------------------------------------


def test_magic_with_wrong_version_is_refused(tmp_path):
    path = _llmc_by_hand(tmp_path / "bad.bin", [1, 2, 3], magic=20240520, version=7, dtype="<u2")
    with pytest.raises(InputError, match=r"bad\.bin.*version 7.*version 1"):
        _open(path)


def test_unknown_magic_is_refused_as_raw_tokens_outside_gpt2_vocab(tmp_path):
    # Read as raw uint16, an llm.c-like header's magic low half is a first "token" above 50256: caught by name.
    path = _llmc_by_hand(tmp_path / "future.bin", [1, 2, 3], magic=20250101, version=1, dtype="<u2")
    with pytest.raises(InputError, match=r"future\.bin holds token id"):
        _open(path)


def test_truncated_shard_is_refused_with_expected_and_actual_bytes(tmp_path):
    path = _llmc_by_hand(tmp_path / "cut.bin", [1, 2, 3], magic=20240520, version=1, dtype="<u2", count=10)
    with pytest.raises(InputError, match=r"cut\.bin has 1,030 bytes .* 10 uint16 tokens.* 1,044 bytes"):
        _open(path)


def test_shard_with_extra_bytes_is_refused(tmp_path):
    path = _llmc_by_hand(tmp_path / "long.bin", [1, 2, 3, 4], magic=20240801, version=7, dtype="<u4", count=3)
    with pytest.raises(InputError, match=r"long\.bin"):
        _open(path)


def test_token_id_outside_vocab_is_refused(tmp_path):
    write_nanogpt_bin(tmp_path / "t.bin", [1, 2, 50257, 3])
    with pytest.raises(InputError, match=r"t\.bin holds token id 50257.* 50257 ids"):
        _open(tmp_path / "t.bin")


def test_empty_glob_is_refused_naming_the_pattern(tmp_path):
    pattern = str(tmp_path / "nothing_*.bin")
    with pytest.raises(InputError, match=r"nothing_\*\.bin"):
        TokenData.open(pattern, vocab_size=50257)


def test_odd_sized_raw_file_is_refused(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(InputError, match=r"odd\.bin has an odd size"):
        _open(tmp_path / "odd.bin")


def test_too_few_tokens_for_one_window_is_refused(tmp_path):
    write_nanogpt_bin(tmp_path / "tiny.bin", [1, 2, 3, 4])
    d = _open(tmp_path / "tiny.bin")
    d.get_batch(seed=0, step=0, micro_step=0, rank=0, batch_size=2, block_size=3)  # 4 tokens: exactly one window
    with pytest.raises(InputError, match=r"tiny\.bin.*too few tokens"):
        d.get_batch(seed=0, step=0, micro_step=0, rank=0, batch_size=2, block_size=4)


# --- batches ----------------------------------------------------------------------------------------------------


@pytest.fixture
def shards(tmp_path):
    """Shards of different lengths, each filled with its own constant: a row mixing values crossed a boundary."""
    for i, (value, n) in enumerate([(11, 40), (22, 16), (33, 300), (44, 5)]):
        write_llmc_shard(tmp_path / f"shard_{i:02d}.bin", np.full(n, value), version=1)
    return TokenData.open(str(tmp_path / "shard_*.bin"), vocab_size=50257)


def test_glob_opens_shards_sorted(shards, tmp_path):
    assert [p.name for p in shards.paths] == ["shard_00.bin", "shard_01.bin", "shard_02.bin", "shard_03.bin"]
    assert shards.num_tokens == 361


def test_windows_never_cross_shard_boundaries(shards):
    seen = set()
    for step in range(50):
        x, y = shards.get_batch(seed=1, step=step, micro_step=0, rank=0, batch_size=8, block_size=8)
        rows = torch.cat([x, y], dim=1)
        assert (rows == rows[:, :1]).all()
        seen.update(rows[:, 0].tolist())
    assert seen == {11, 22, 33}  # every shard with a full window is drawn from; the 5-token one has none


def test_batch_shapes_and_shift(tmp_path):
    write_nanogpt_bin(tmp_path / "r.bin", np.arange(1000))
    x, y = _open(tmp_path / "r.bin").get_batch(seed=0, step=3, micro_step=1, rank=0, batch_size=4, block_size=16)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.int64))  # consecutive tokens


def test_same_counters_give_the_same_batch_and_any_change_differs(tmp_path):
    write_nanogpt_bin(tmp_path / "r.bin", np.arange(50_000))
    d = _open(tmp_path / "r.bin")
    base = dict(seed=7, step=10, micro_step=2, rank=1, batch_size=4, block_size=32)
    x, y = d.get_batch(**base)
    again = _open(tmp_path / "r.bin").get_batch(**base)  # a fresh open, as after a restart
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    for key in ["seed", "step", "micro_step", "rank"]:
        other, _ = d.get_batch(**{**base, key: base[key] + 1})
        assert not torch.equal(x, other), key


def test_val_batches_depend_only_on_their_index(tmp_path):
    write_nanogpt_bin(tmp_path / "v.bin", np.arange(50_000))
    d = _open(tmp_path / "v.bin")
    a = d.val_batch(0, batch_size=4, block_size=32)
    assert torch.equal(a[0], _open(tmp_path / "v.bin").val_batch(0, batch_size=4, block_size=32)[0])
    assert not torch.equal(a[0], d.val_batch(1, batch_size=4, block_size=32)[0])
    train_batches = [d.get_batch(seed=s, step=0, micro_step=0, rank=0, batch_size=4, block_size=32)[0]
                     for s in (0, 1)]
    assert not any(torch.equal(a[0], t) for t in train_batches)


# --- a folded vocabulary: the train split's most frequent ids, one id for the rest --------------------------------


def test_a_folded_vocabulary_keeps_the_most_frequent_train_ids_in_order_and_reads_the_rest_as_one_id(tmp_path):
    # id 7 occurs 5 times, 3 four times, 9 and 2 three times each (a tie: the lower id first), 40 twice, 1 once
    train_ids = [7] * 5 + [3] * 4 + [9] * 3 + [2] * 3 + [40] * 2 + [1]
    write_nanogpt_bin(tmp_path / "train.bin", np.random.default_rng(0).permutation(train_ids))
    write_nanogpt_bin(tmp_path / "val.bin", [7, 3, 2, 9, 40, 1, 500])  # 500: only in val
    train, val = fold_vocab(_open(tmp_path / "train.bin"), _open(tmp_path / "val.bin"), top_tokens=5)
    x, y = val.val_batch(0, batch_size=1, block_size=6)
    assert torch.cat([x[0], y[0, -1:]]).tolist() == [0, 1, 2, 3, 4, 4, 4]
    kept = {7: 0, 3: 1, 2: 2, 9: 3}
    batch = dict(seed=3, step=2, micro_step=0, rank=0, batch_size=4, block_size=8)
    raw = _open(tmp_path / "train.bin").get_batch(**batch)[0]
    assert train.get_batch(**batch)[0].tolist() == [[kept.get(i, 4) for i in row] for row in raw.tolist()]


def test_a_folded_vocabulary_must_be_the_models(make_config):
    with pytest.raises(InputError, match="model.vocab_size must be data.top_tokens=64 when the data's vocabulary is "
                                         "folded to it, got 256"):
        make_config(data={"top_tokens": 64})
    with pytest.raises(InputError, match="data.top_tokens must be >= 2"):
        make_config(data={"top_tokens": 1}, model={"vocab_size": 1})


def test_a_model_trains_on_a_folded_vocabulary(make_config):
    # The tiny corpus holds ids up to 255: unfolded, a 64-id model's embedding would fail on them.
    result = train(make_config(data={"top_tokens": 64}, model={"vocab_size": 64}, schedule={"max_steps": 4}))
    assert math.isfinite(result.final_val_loss) and result.final_val_loss < math.log(64) + 0.5
    assert result.losses[-1] < result.losses[0]  # it learns


# --- opening at scale: the id check recorded beside the file, one open per process ------------------------------


def _sidecar(path):
    return path.with_name(f".{path.name}.max-token-id.json")


def _fresh_process():
    """Forget this process's opened data, as a new worker process would start."""
    data._OPENED.clear()


def test_the_id_check_is_recorded_beside_the_file_and_trusted_while_the_file_is_unchanged(tmp_path):
    path = tmp_path / "s.bin"
    write_llmc_shard(path, [5, 300, 7], version=1)
    _open(path)
    assert json.loads(_sidecar(path).read_text())["max_token_id"] == 300
    recorded = json.loads(_sidecar(path).read_text())
    _sidecar(path).write_text(json.dumps(recorded | {"max_token_id": 60000}))  # the sidecar, not the file, answers
    _fresh_process()
    with pytest.raises(InputError, match="holds token id 60000"):
        _open(path)


def test_a_changed_file_is_checked_again(tmp_path):
    path = tmp_path / "t.bin"
    write_nanogpt_bin(path, [1, 2, 3, 4])
    _open(path)
    write_nanogpt_bin(path, [1, 2, 50257, 4])  # same size, new content
    _fresh_process()
    with pytest.raises(InputError, match="holds token id 50257"):
        _open(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_still_opens(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    write_nanogpt_bin(folder / "t.bin", [1, 2, 3, 4])
    folder.chmod(0o555)
    try:
        assert _open(folder / "t.bin").num_tokens == 4
        assert not _sidecar(folder / "t.bin").exists()
    finally:
        folder.chmod(0o755)


def test_data_is_opened_once_per_process_until_its_files_change(tmp_path):
    path = tmp_path / "t.bin"
    write_nanogpt_bin(path, [1, 2, 3, 4])
    first = _open(path)
    assert _open(path) is first
    assert _open(path, vocab_size=100) is not first  # another vocabulary is another check
    write_nanogpt_bin(path, [1, 2, 3, 4, 5, 6])
    assert _open(path).num_tokens == 6


def test_train_batches_with_prefetch_are_the_batches_drawn_directly(tmp_path):
    write_nanogpt_bin(tmp_path / "t.bin", np.arange(5000) % 50257)
    tokens = _open(tmp_path / "t.bin")
    shape = {"batch_size": 3, "block_size": 8}
    batches = TrainBatches(tokens, device=torch.device("cpu"), prefetch=True, seed=4, grad_accum=2, rank=1, **shape)
    for step in range(2):
        for micro_step in range(2):
            x, y = batches.get(step=step, micro_step=micro_step)
            batches.prefetch_after(step=step, micro_step=micro_step)
            # rank 1 of a grad_accum-2 run draws the step's global micro-batches 2 and 3
            want_x, want_y = tokens.get_batch(seed=4, step=step, micro_step=2 + micro_step, rank=0, **shape)
            assert torch.equal(x, want_x) and torch.equal(y, want_y)


# --- preparing text ---------------------------------------------------------------------------------------------


@pytest.fixture
def text_folder(tmp_path):
    root = tmp_path / "texts"
    for i in range(40):
        (root / f"part{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"part{i % 3}" / f"doc{i:02d}.txt").write_text(f"Document {i}: " + "hello world. " * (i + 1))
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "empty.txt").write_text("")
    return root


def _documents(path):
    """Split a prepared file into its documents at each EOT."""
    tokens = np.fromfile(path, dtype="<u2")
    assert tokens[0] == EOT_TOKEN  # every document, so the file too, starts with EOT
    starts = np.flatnonzero(tokens == EOT_TOKEN)
    return [tokens[s + 1:e] for s, e in zip(starts, [*starts[1:], len(tokens)])]


def test_prepare_is_deterministic_and_meta_matches_files(text_folder, tmp_path):
    meta = prepare([text_folder], tmp_path / "a", val_fraction=0.2, progress=False)
    prepare([text_folder], tmp_path / "b", val_fraction=0.2, progress=False)
    for name in ["train.bin", "val.bin", "meta.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert meta == json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["train_tokens"] * 2 == (tmp_path / "a" / "train.bin").stat().st_size
    assert meta["val_tokens"] * 2 == (tmp_path / "a" / "val.bin").stat().st_size
    assert meta["vocab_size"] == 50257 and meta["tokenizer"] == "gpt2"
    assert meta["train_documents"] + meta["val_documents"] == 40  # binary, non-UTF-8 and empty files skipped
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_prepare_splits_documents_by_crc32_of_their_relative_path(text_folder, tmp_path):
    prepare([text_folder], tmp_path / "out", val_fraction=0.2, progress=False)
    enc = gpt2_encoding()
    names = sorted(p.relative_to(text_folder).as_posix() for p in text_folder.rglob("doc*.txt"))
    want_val = [n for n in names if zlib.crc32(n.encode()) % 1000 < 200]
    assert want_val, "the fixture should put some documents in val"

    def texts(split):
        return [enc.decode(d.tolist()) for d in _documents(tmp_path / "out" / split)]

    assert texts("val.bin") == [(text_folder / n).read_text() for n in want_val]
    assert texts("train.bin") == [(text_folder / n).read_text() for n in names if n not in want_val]


def test_val_is_never_empty(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ["a.txt", "b.txt", "c.txt"]:
        (tmp_path / "in" / name).write_text(f"text of {name}")
    meta = prepare([tmp_path / "in"], tmp_path / "out", val_fraction=0.0, progress=False)
    assert (meta["train_documents"], meta["val_documents"], meta["val_fallback"]) == (2, 1, "c.txt")
    assert gpt2_encoding().decode(_documents(tmp_path / "out" / "val.bin")[0].tolist()) == "text of c.txt"


def test_one_text_file_is_split_by_position(tmp_path):
    (tmp_path / "input.txt").write_text("Hello world")
    meta = prepare([tmp_path / "input.txt"], tmp_path / "out", progress=False)
    train, val = (np.fromfile(tmp_path / "out" / name, dtype="<u2").tolist() for name in ("train.bin", "val.bin"))
    assert (train, val) == ([EOT_TOKEN, 15496], [995])  # GPT-2 ids of "Hello world"; the last token is val
    assert meta["split"].startswith("one document, split by position")


def test_one_long_text_file_puts_its_last_val_fraction_in_val(tmp_path):
    (tmp_path / "input.txt").write_text(" ".join(f"word{i}" for i in range(2000)))
    prepare([tmp_path / "input.txt"], tmp_path / "out", val_fraction=0.1, progress=False)
    train, val = (np.fromfile(tmp_path / "out" / name, dtype="<u2") for name in ("train.bin", "val.bin"))
    whole = np.array([EOT_TOKEN, *gpt2_encoding().encode_ordinary((tmp_path / "input.txt").read_text())])
    assert np.array_equal(np.concatenate([train, val]), whole)
    assert len(val) == int(np.ceil(0.1 * len(whole)))


def test_one_file_too_short_to_split_is_refused(tmp_path):
    (tmp_path / "input.txt").write_text("Hi")
    with pytest.raises(InputError, match="input.txt holds 1 token"):
        prepare([tmp_path / "input.txt"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "train.bin").exists()


def test_prepared_files_open_as_token_data(text_folder, tmp_path):
    prepare([text_folder], tmp_path / "out", progress=False)
    d = TokenData.open(str(tmp_path / "out" / "train.bin"), vocab_size=50257)
    x, _ = d.get_batch(seed=0, step=0, micro_step=0, rank=0, batch_size=2, block_size=8)
    assert x.shape == (2, 8)


def test_prepare_rejects_missing_sources(tmp_path):
    with pytest.raises(InputError, match="nope"):
        prepare([tmp_path / "nope"], tmp_path / "out", progress=False)


def test_prepare_rejects_sources_without_text(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.dat").write_bytes(b"\x00\x01")
    with pytest.raises(InputError, match="no text documents"):
        prepare([tmp_path / "bin"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "meta.json").exists() and not list((tmp_path / "out").iterdir())


# --- embedded corpora -------------------------------------------------------------------------------------------


def test_unknown_corpus_lists_the_known_ones(tmp_path):
    with pytest.raises(InputError, match="python-stdlib"):
        ensure_corpus("wikipedia", data_root=tmp_path)


def test_ensure_corpus_prepares_once_then_reuses(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "pkg" / "test").mkdir(parents=True)
    for i in range(5):
        (src / "pkg" / f"m{i}.py").write_text(f"x = {i}\n")
    (src / "pkg" / "notes.txt").write_text("not python")
    (src / "pkg" / "test" / "t.py").write_text("excluded = True\n")
    monkeypatch.setitem(EMBEDDED_CORPORA, "tiny", SourceTree(root=src, pattern="*.py", exclude=("pkg/test/*",)))

    out = ensure_corpus("tiny", data_root=tmp_path / "data", progress=False)
    assert out == tmp_path / "data" / "tiny"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train_documents"] + meta["val_documents"] == 5 and meta["corpus"] == "tiny"
    stamp = (out / "train.bin").stat().st_mtime_ns
    (src / "pkg" / "m5.py").write_text("new = 1\n")
    assert ensure_corpus("tiny", data_root=tmp_path / "data", progress=False) == out
    assert (out / "train.bin").stat().st_mtime_ns == stamp  # meta.json present: reused, not re-prepared


def test_ensure_corpus_redoes_a_folder_without_meta(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"m{i}.py").write_text(f"y = {i}\n")
    monkeypatch.setitem(EMBEDDED_CORPORA, "tiny", SourceTree(root=src, pattern="*.py"))
    half_done = tmp_path / "data" / "tiny"
    half_done.mkdir(parents=True)
    (half_done / "train.bin").write_bytes(b"\x01")  # an interrupted run: data but no meta.json
    out = ensure_corpus("tiny", data_root=tmp_path / "data", progress=False)
    assert (out / "meta.json").exists() and (out / "train.bin").stat().st_size % 2 == 0


def test_stdlib_corpus_lists_only_stdlib_sources():
    docs = data.PYTHON_STDLIB.documents()
    names = [d.name for d in docs]
    assert names == sorted(names) and "os.py" in names and "json/decoder.py" in names
    assert not any(n.startswith(("test/", "site-packages/")) or "__pycache__" in n for n in names)
    assert all(n.endswith(".py") for n in names)
