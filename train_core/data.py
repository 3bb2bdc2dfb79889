"""Token files on disk: the two formats, counter-based batches, and preparing text into them.

Formats (both little-endian, both read memory-mapped, never loaded whole):

- nanoGPT: `train.bin` / `val.bin` hold raw uint16 token ids, no header.
- llm.c shards: a header of 256 int32 (1,024 bytes), then the tokens::

      header[0] = magic     20240520 -> uint16 tokens (GPT-2), 20240801 -> uint32 tokens (Llama 3)
      header[1] = version   1 with the uint16 magic, 7 with the uint32 magic
      header[2] = number of tokens that follow the header
      header[3:256] = 0

A file is an llm.c shard when its first int32 is one of the two magics, otherwise raw nanoGPT tokens. That cannot
misread a GPT-2 nanoGPT file: the low 16 bits of each magic (54856, 55137) read as a first token id above 50256.

Batches are a pure function of (seed, step, micro_step, rank), so a resumed run sees exactly the batches it would
have seen, with no sampler state to save; validation batches depend only on their index, so every trial and every
seed is scored on the same tokens.
"""

import fnmatch
import glob
import itertools
import json
import math
import mmap
import os
import platform
import sysconfig
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rich.console
import rich.progress
import torch

from train_core.errors import InputError
from train_core.files import atomic_write_bytes, commit, temporary_name
from train_core.targets import check_data_folder
from train_core.tokenizer import EOT_TOKEN, VOCAB_SIZE, gpt2_encoding

LLMC_HEADER_INTS = 256
LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4
LLMC_MAGIC_UINT16 = 20240520  # llm.c's GPT-2 shards
LLMC_VERSION_UINT16 = 1
LLMC_MAGIC_UINT32 = 20240801  # llm.c's Llama 3 shards: version 7 widened the tokens to uint32 for a 128k vocab
LLMC_VERSION_UINT32 = 7
# magic -> (the version that goes with it, the token dtype)
_LLMC_FORMATS = {
    LLMC_MAGIC_UINT16: (LLMC_VERSION_UINT16, np.dtype("<u2")),
    LLMC_MAGIC_UINT32: (LLMC_VERSION_UINT32, np.dtype("<u4")),
}
NANOGPT_DTYPE = np.dtype("<u2")

# Entropy word that keys the validation stream: val batch i comes from default_rng([VAL_STREAM, i]). It is drawn
# from the val file, never the train file, so a training seed equal to it would still see different tokens.
VAL_STREAM = 0x56414C  # "VAL"
_VALIDATE_CHUNK = 1 << 24  # tokens read per np.max when checking ids: 32-64 MB at a time, RAM stays flat
_ENCODE_CHUNK_BYTES = 1 << 22  # text encoded per batch while preparing: bounds memory, keeps the bar moving
_PROGRESS_MIN_BYTES = 1 << 23  # show a progress bar only on inputs this big; small ones finish before it draws


# ---------------------------------------------------------------------------------------------------------------
# Writing the two formats


def write_nanogpt_bin(path: str | Path, tokens: Sequence[int] | np.ndarray) -> int:
    """Write tokens as nanoGPT's raw little-endian uint16, no header; returns the bytes written."""
    return atomic_write_bytes(Path(path), _as_dtype(tokens, NANOGPT_DTYPE, path).tobytes())


def write_llmc_shard(path: str | Path, tokens: Sequence[int] | np.ndarray, *, version: int) -> int:
    """Write an llm.c shard; returns the bytes written.

    Byte layout, all little-endian::

        int32[256] header: [0] magic, [1] version, [2] number of tokens, [3:256] zero
        tokens:            uint16 each for version 1 (magic 20240520), uint32 each for version 7 (magic 20240801)
    """
    formats = {v: (magic, dtype) for magic, (v, dtype) in _LLMC_FORMATS.items()}
    if version not in formats:
        raise InputError(f"llm.c shard version must be one of {sorted(formats)}, but got version={version}")
    magic, dtype = formats[version]
    data = _as_dtype(tokens, dtype, path)
    header = np.zeros(LLMC_HEADER_INTS, dtype="<i4")
    header[0] = magic
    header[1] = version
    header[2] = len(data)
    return atomic_write_bytes(Path(path), header.tobytes(), data.tobytes())


def _as_dtype(tokens: Sequence[int] | np.ndarray, dtype: np.dtype, path: str | Path) -> np.ndarray:
    data = np.asarray(tokens)
    limit = np.iinfo(dtype).max
    if data.size and (data.min() < 0 or data.max() > limit):
        raise InputError(f"cannot write {path}: token ids must be in 0..{limit} for {dtype.name}, "
                         f"but got {data.min()}..{data.max()}")
    return data.astype(dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def open_tokens(path: Path) -> np.memmap:
    """Memory-map one token file, llm.c shard or nanoGPT raw uint16, after checking its header and size."""
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path} is empty; expected nanoGPT uint16 tokens or an llm.c shard: regenerate it")
    first = np.fromfile(path, dtype="<i4", count=1) if size >= 4 else np.zeros(1, dtype="<i4")
    if int(first[0]) in _LLMC_FORMATS:
        return _open_llmc(path, size)
    if size % NANOGPT_DTYPE.itemsize:
        raise InputError(f"{path} has an odd size ({size:,} bytes) but nanoGPT .bin files hold 2-byte tokens and "
                         f"llm.c shards start with magic {LLMC_MAGIC_UINT16} or {LLMC_MAGIC_UINT32}: regenerate it")
    return np.memmap(path, dtype=NANOGPT_DTYPE, mode="r")


def _open_llmc(path: Path, size: int) -> np.memmap:
    regenerate = "the shard is damaged or truncated: regenerate it (llm.c's dev/data scripts or write_llmc_shard)"
    if size < LLMC_HEADER_BYTES:
        raise InputError(f"{path} starts with an llm.c magic but has {size:,} bytes, less than the "
                         f"{LLMC_HEADER_BYTES:,}-byte header; {regenerate}")
    magic, version, num_tokens = (int(v) for v in np.fromfile(path, dtype="<i4", count=3))
    expected_version, dtype = _LLMC_FORMATS[magic]
    if version != expected_version:
        raise InputError(f"{path} has llm.c magic {magic} with version {version}, but that magic goes with "
                         f"version {expected_version}; {regenerate}")
    expected = LLMC_HEADER_BYTES + num_tokens * dtype.itemsize
    if num_tokens < 0 or size != expected:
        raise InputError(f"{path} has {size:,} bytes but its header says {num_tokens:,} {dtype.name} tokens, "
                         f"which is {expected:,} bytes; {regenerate}")
    return np.memmap(path, dtype=dtype, mode="r", offset=LLMC_HEADER_BYTES, shape=(num_tokens,))


def _check_vocab(path: Path, tokens: np.memmap, vocab_size: int) -> None:
    largest = max_token_id(path, tokens)
    if largest >= vocab_size:
        raise InputError(f"{path} holds token id {largest}, but the vocabulary has {vocab_size} ids "
                         f"(0..{vocab_size - 1}): the data was tokenized for another vocabulary; re-prepare "
                         f"it or set the model's vocab_size to at least {largest + 1}")


def max_token_id(path: Path, tokens: np.memmap) -> int:
    """The largest token id in the file `tokens` maps, read from its sidecar while the file's size and mtime match
    what the sidecar recorded (and its inode); otherwise read from the file (RAM stays flat) and recorded in the sidecar.

    Scanning every id costs a full read of the data (~20 GB for GPT-2 124M's FineWeb shards) and every trial of every
    worker opens the data, so the answer is kept next to the file, in `.NAME.max-token-id.json`. A file that changed
    (another size or mtime) is scanned again.
    """
    sidecar = path.with_name(f".{path.name}.max-token-id.json")
    key = _identity(path.stat())
    try:
        recorded = json.loads(sidecar.read_text())
        if {k: recorded.get(k) for k in key} == key:
            return int(recorded["max_token_id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no sidecar yet, or an unreadable one: scan
    largest = _scan_max(path, offset=tokens.offset, dtype=tokens.dtype, count=len(tokens))
    try:
        atomic_write_bytes(sidecar, json.dumps(key | {"max_token_id": largest}).encode() + b"\n")
    except OSError:
        pass  # a read-only data folder: correct, only slower (the next open scans again)
    return largest


def _identity(stat: os.stat_result) -> dict:
    """What tells a changed file: its size, mtime and inode (an atomic rewrite within one mtime tick is a new inode)."""
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def _scan_max(path: Path, *, offset: int, dtype: np.dtype, count: int) -> int:
    # A mapping of its own, whose pages are dropped after each chunk: pages of a map that were touched stay in the
    # process's RSS, so scanning 2 GB of shards through the data's map would grow it by 2 GB. (Plain reads into one
    # buffer keep RSS flat too, but copy every byte: slower from the page cache.)
    largest = 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        for start in range(0, count, _VALIDATE_CHUNK):
            begin, end = offset + start * dtype.itemsize, offset + min(start + _VALIDATE_CHUNK, count) * dtype.itemsize
            chunk = np.frombuffer(mapped, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
            largest = max(largest, int(chunk.max()))
            del chunk  # the map cannot close while a view of it lives
            page = begin // mmap.PAGESIZE * mmap.PAGESIZE
            mapped.madvise(mmap.MADV_DONTNEED, page, end - page)
    return largest


# (pattern, vocab_size) -> (the files it matched with their sizes and mtimes, the TokenData): see TokenData.open
_OPENED: dict[tuple[str, int], tuple[tuple, "TokenData"]] = {}


class TokenData:
    """Token files (one file or a glob of shards), memory-mapped, with counter-based batches.

    A batch row is a window of block_size + 1 consecutive tokens from one file; windows never cross files.
    """

    def __init__(self, paths: Sequence[Path], shards: Sequence[np.ndarray], *, table: np.ndarray | None = None):
        self._paths = tuple(paths)
        self._shards = tuple(shards)
        self._lengths = np.array([len(s) for s in shards], dtype=np.int64)
        self._table = table  # token id -> the id batches hold (a folded vocabulary); None: as in the files
        self._counts: np.ndarray | None = None

    @classmethod
    def open(cls, pattern: str | Path, *, vocab_size: int | None) -> "TokenData":
        """Open a file or a glob of shards (sorted by name); every token id is checked to be < vocab_size (None: not
        checked, for data read through a folding table that covers every id).

        Opened once per process: opening the same pattern again returns the same object while the files matched and
        their sizes and mtimes are unchanged (every trial of a worker opens the data; mapping the shards again and
        reading their checks costs each trial time for nothing).
        """
        paths = sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())
        if not paths:
            raise InputError(f"no token files match {str(pattern)!r}; expected a nanoGPT .bin file or a glob of "
                             "llm.c shards (e.g. 'data/fineweb10B/*_train_*.bin'): check the path or prepare the data")
        key = (str(pattern), vocab_size)
        files = tuple((str(p.resolve()), *_identity(p.stat()).values()) for p in paths)
        if (opened := _OPENED.get(key)) is not None and opened[0] == files:
            return opened[1]
        shards = [open_tokens(p) for p in paths]
        if vocab_size is not None:
            for path, tokens in zip(paths, shards):
                _check_vocab(path, tokens, vocab_size)
        data = cls(paths, shards)
        _OPENED[key] = (files, data)
        return data

    @property
    def paths(self) -> tuple[Path, ...]:
        return self._paths

    @property
    def shards(self) -> tuple[np.ndarray, ...]:
        """The read-only token arrays, one per path."""
        return self._shards

    @property
    def num_tokens(self) -> int:
        return int(self._lengths.sum())

    def max_token_id(self) -> int:
        return max(max_token_id(path, tokens) for path, tokens in zip(self._paths, self._shards))

    def token_counts(self) -> np.ndarray:
        """How often each id occurs in the files (index: id), counted once per process: a scan of every token."""
        if self._counts is None:
            counts = np.zeros(self.max_token_id() + 1, dtype=np.int64)
            for tokens in self._shards:
                for start in range(0, len(tokens), _VALIDATE_CHUNK):
                    counts += np.bincount(tokens[start:start + _VALIDATE_CHUNK], minlength=len(counts))
            self._counts = counts
        return self._counts

    def read_through(self, table: np.ndarray) -> "TokenData":
        """The same files, their batches holding table[id] for each id."""
        return TokenData(self._paths, self._shards, table=table)

    def get_batch(self, *, seed: int, step: int, micro_step: int, rank: int, batch_size: int,
                  block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training batch: int64 (x, y), each (batch_size, block_size), y = x shifted left by one.

        Window starts are uniform over every valid window of every file, drawn from
        `np.random.default_rng([seed, step, micro_step, rank])`: the same arguments give the same batch, always.
        """
        rng = np.random.default_rng([seed, step, micro_step, rank])
        return self._windows(rng, batch_size=batch_size, block_size=block_size)

    def val_batch(self, index: int, *, batch_size: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation batch `index`, drawn from `default_rng([VAL_STREAM, index])`: the same for every seed."""
        rng = np.random.default_rng([VAL_STREAM, index])
        return self._windows(rng, batch_size=batch_size, block_size=block_size)

    def _windows(self, rng: np.random.Generator, *, batch_size: int,
                 block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        # File i has lengths[i] - block_size windows of block_size + 1 tokens; number them all, draw numbers.
        counts = np.maximum(self._lengths - block_size, 0)
        ends = np.cumsum(counts)
        if ends[-1] == 0:
            raise InputError(f"{self._describe()} has too few tokens for one window of block_size + 1 = "
                             f"{block_size + 1} (largest file: {self._lengths.max():,} tokens); "
                             "use a smaller block_size or more data")
        picks = rng.integers(ends[-1], size=batch_size)
        files = np.searchsorted(ends, picks, side="right")
        starts = picks - (ends[files] - counts[files])
        rows = [self._shards[f][s:s + block_size + 1] for f, s in zip(files, starts)]
        rows = np.stack(rows).astype(np.int64)
        buf = torch.from_numpy(rows if self._table is None else self._table[rows])  # (B, T+1)
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()

    def _describe(self) -> str:
        return str(self._paths[0]) if len(self._paths) == 1 else f"{len(self._paths)} files ({self._paths[0]}, ...)"


def fold_vocab(train: TokenData, val: TokenData, *, top_tokens: int) -> tuple[TokenData, TokenData]:
    """Both splits read through one table: the train split's top_tokens - 1 most frequent ids become 0.. in order of
    frequency (ties: the lower id first), every other id (rarer, or only in val) becomes top_tokens - 1."""
    counts = train.token_counts()
    table = np.full(max(len(counts), val.max_token_id() + 1), top_tokens - 1, dtype=np.int64)
    kept = np.argsort(-counts, kind="stable")[:top_tokens - 1]
    table[kept] = np.arange(len(kept))
    return train.read_through(table), val.read_through(table)


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on `device`. On CUDA through pinned host memory with non_blocking copies, so that the copy runs while
    the GPU works on what was queued before it; elsewhere a plain copy."""
    if device.type != "cuda":
        return x.to(device), y.to(device)
    return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)


class TrainBatches:
    """A process's training batches in step order, on its device; `get` hands one out, `prefetch_after` draws the next.

    With `prefetch` (the trainer sets it on CUDA) the trainer calls `prefetch_after` once the micro-step's forward is
    queued: the next batch is drawn and its copy started while the GPU runs the step (nanoGPT's get_batch). On a CPU
    there is no parallel work to hide it behind. Either way a batch is a pure function of its counters, so
    prefetching changes no number.
    """

    def __init__(self, data: TokenData, *, device: torch.device, prefetch: bool, seed: int, grad_accum: int,
                 rank: int, batch_size: int, block_size: int):
        self._data = data
        self._device = device
        self._prefetch = prefetch
        self._seed = seed
        self._grad_accum = grad_accum
        self._rank = rank
        self._shape = {"batch_size": batch_size, "block_size": block_size}
        self._ahead: tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None

    def get(self, *, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch `micro_step` (of this process's grad_accum) of optimizer step `step`, on the device."""
        if self._ahead is not None and self._ahead[0] == (step, micro_step):
            batch = self._ahead[1]
        else:
            batch = self._load(step, micro_step)
        self._ahead = None
        return batch

    def prefetch_after(self, *, step: int, micro_step: int) -> None:
        """With prefetch, draw the micro-batch that follows (step, micro_step) and start its copy to the device."""
        if not self._prefetch:
            return
        following = (step, micro_step + 1) if micro_step + 1 < self._grad_accum else (step + 1, 0)
        self._ahead = (following, self._load(*following))

    def _load(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Drawn by the step's global micro-batch index, so that the step's batch is the same sequences whatever the
        # number of processes (and a torchrun run follows the single-process run's loss curve).
        x, y = self._data.get_batch(seed=self._seed, step=step, micro_step=self._rank * self._grad_accum + micro_step,
                                    rank=0, **self._shape)
        return to_device(x, y, self._device)


# ---------------------------------------------------------------------------------------------------------------
# Preparing text into nanoGPT train.bin / val.bin


@dataclass(frozen=True)
class Document:
    """One text file to tokenize; `name` (its relative path, with '/') decides its split."""

    name: str
    path: Path


def _walk(root: Path, *, pattern: str = "*", exclude: Sequence[str] = ()) -> list[Document]:
    """Files under root whose name matches pattern, minus relative paths matching an exclude glob, sorted.

    Hidden files and folders (.git, .venv, ...) are skipped; symlinked folders are not followed.
    """
    def excluded(rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, ex) for ex in exclude)

    docs = []
    for folder, subfolders, files in os.walk(root):
        rel_folder = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel_folder == "." else f"{rel_folder}/"
        # Prune excluded folders ("test/*" matches "test/") instead of walking them: site-packages can be huge.
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and not excluded(f"{prefix}{d}/")]
        for name in files:
            rel = f"{prefix}{name}"
            if not name.startswith(".") and fnmatch.fnmatchcase(name, pattern) and not excluded(rel):
                docs.append(Document(rel, Path(folder, name)))
    return sorted(docs, key=lambda d: d.name)


def find_documents(sources: Sequence[str | Path]) -> list[Document]:
    """The documents of each source in order: a file is one document named by its file name; a folder gives its
    files (recursively, sorted by path relative to it)."""
    docs = []
    for source in map(Path, sources):
        if source.is_dir():
            docs.extend(_walk(source))
        elif source.is_file():
            docs.append(Document(source.name, source))
        else:
            raise InputError(f"text source {str(source)!r} does not exist; give text files or folders of them")
    return docs


def _read_text(path: Path) -> str | None:
    """The file's UTF-8 text, or None for a binary (contains NUL) or undecodable file."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _is_val(name: str, val_fraction: float) -> bool:
    # crc32 of the name alone: a document's split never depends on which other files are present.
    return zlib.crc32(name.encode("utf-8")) % 1000 < round(val_fraction * 1000)


class _SplitWriter:
    """Appends documents' tokens to a temporary file that becomes `path` on commit()."""

    def __init__(self, path: Path):
        self.path = path
        self._tmp = temporary_name(path)
        self._file = open(self._tmp, "xb")
        self.tokens = 0
        self.documents = 0

    def write(self, tokens: np.ndarray) -> None:
        self._file.write(tokens.tobytes())
        self.tokens += len(tokens)
        self.documents += 1

    def commit(self) -> None:
        commit(self._file, self._tmp, self.path)
        self._file.close()

    def discard(self) -> None:
        """Drop the temporary file if commit() has not renamed it."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def _encoded(docs: Sequence[Document], progress: rich.progress.Progress,
             total_bytes: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, EOT + tokens) for every text document in order; encodes ~4 MB of text at a time on all cores."""
    enc = gpt2_encoding()
    task = progress.add_task("tokenizing", total=total_bytes)
    batch: list[tuple[str, str]] = []
    batch_bytes = 0

    def flush() -> Iterator[tuple[str, np.ndarray]]:
        # Threads keep the order; tiktoken releases the GIL while encoding, so they run in parallel.
        ids = enc.encode_ordinary_batch([text for _, text in batch], num_threads=os.cpu_count() or 1)
        for (name, _), tokens in zip(batch, ids):
            yield name, np.array([EOT_TOKEN, *tokens], dtype=NANOGPT_DTYPE)  # llm.c: documents start with EOT
        progress.advance(task, batch_bytes)

    for doc in docs:
        text = _read_text(doc.path)
        if text:  # binary, undecodable and empty files are skipped
            batch.append((doc.name, text))
            batch_bytes += doc.path.stat().st_size
        if batch_bytes >= _ENCODE_CHUNK_BYTES:
            yield from flush()
            batch, batch_bytes = [], 0
    yield from flush()


def prepare_documents(docs: Sequence[Document], out_dir: str | Path, *, val_fraction: float = 0.05,
                      progress: bool = True, sources: Sequence[str] = (), **meta_fields) -> dict:
    """Tokenize documents into out_dir/train.bin, val.bin (nanoGPT uint16) and meta.json; returns the meta.

    A document goes to val when crc32(name) % 1000 < val_fraction * 1000; if none does, the last one does, so val is
    never empty. A single document is split by position: its last val_fraction of tokens go to val. Each file is written under a temporary name and renamed; meta.json comes last, so a folder counts
    as prepared only once it is complete. Same documents, same bytes. `sources` and `meta_fields` are recorded in
    meta.json as given.
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), but got val_fraction={val_fraction}")
    out = Path(out_dir)
    check_data_folder(out, name=f"output folder {out}")  # it overwrites train.bin, val.bin and meta.json
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # from here on the folder is incomplete until the new meta lands
    train, val = _SplitWriter(out / "train.bin"), _SplitWriter(out / "val.bin")
    total_bytes = sum(d.path.stat().st_size for d in docs)
    show = progress and total_bytes >= _PROGRESS_MIN_BYTES
    bar = rich.progress.Progress(
        *rich.progress.Progress.get_default_columns(), rich.progress.DownloadColumn(),
        console=rich.console.Console(stderr=True), disable=not show,
    )
    try:
        with bar:
            split_rule, fallback = _write_splits(_encoded(docs, bar, total_bytes), train, val, val_fraction)
        if train.documents + val.documents == 0:
            raise InputError(f"no text documents in {list(sources)}: expected non-empty UTF-8 text files")
        if train.documents == 0:
            raise InputError(f"no training documents in {list(sources)}: {val.documents} text file(s), all in val; "
                             "add more text files or lower val_fraction")
        train.commit()
        val.commit()
    finally:  # after an error: no half-written temporaries left behind
        train.discard()
        val.discard()
    meta = {
        "format": "nanogpt",
        "dtype": "uint16",
        "tokenizer": "gpt2",
        "vocab_size": VOCAB_SIZE,
        "train_tokens": train.tokens,
        "val_tokens": val.tokens,
        "train_documents": train.documents,
        "val_documents": val.documents,
        "sources": list(sources),
        "split": split_rule,
        "val_fallback": fallback,
        **meta_fields,
    }
    atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=2).encode() + b"\n")
    return meta


def _write_splits(encoded: Iterator[tuple[str, np.ndarray]], train: _SplitWriter, val: _SplitWriter,
                  val_fraction: float) -> tuple[str, str | None]:
    """Route documents to their split; returns the rule that split them (for meta.json) and the name of the document
    moved to val when none fell there.

    A single document (nanoGPT's one `input.txt`) is split by position instead: its last val_fraction of tokens (at
    least one) go to val, as nanoGPT's prepare scripts do.
    """
    by_name = f"a document goes to val when crc32(relative path) % 1000 < {round(val_fraction * 1000)}"
    encoded = iter(encoded)
    first, second = next(encoded, None), next(encoded, None)
    if first is None:
        return by_name, None
    if second is None:
        return _split_by_position(*first, train, val, val_fraction), None
    held: tuple[str, np.ndarray] | None = None  # the latest train document, written one late: it may be the fallback
    for name, tokens in itertools.chain([first, second], encoded):
        if _is_val(name, val_fraction):
            val.write(tokens)
            continue
        if held is not None:
            train.write(held[1])
        held = (name, tokens)
    if held is None:
        return by_name, None
    if val.documents == 0:
        val.write(held[1])
        return by_name, held[0]
    train.write(held[1])
    return by_name, None


def _split_by_position(name: str, tokens: np.ndarray, train: _SplitWriter, val: _SplitWriter,
                       val_fraction: float) -> str:
    if len(tokens) < 3:  # EOT and at least one token on each side
        raise InputError(f"{name} holds {len(tokens) - 1} token(s): too little text to split into train and val")
    cut = len(tokens) - max(1, math.ceil(val_fraction * len(tokens)))
    train.write(tokens[:cut])
    val.write(tokens[cut:])
    return f"one document, split by position: its last {len(tokens) - cut:,} of {len(tokens):,} tokens are val"


def prepare(sources: Sequence[str | Path], out_dir: str | Path, *, val_fraction: float = 0.05,
            progress: bool = True) -> dict:
    """Tokenize text files and folders (walked recursively, UTF-8 text only) into nanoGPT files; returns meta.

    See `prepare_documents` for the split and the files written.
    """
    return prepare_documents(find_documents(sources), out_dir, val_fraction=val_fraction, progress=progress,
                             sources=[str(s) for s in sources])


# ---------------------------------------------------------------------------------------------------------------
# Embedded corpora: text every fresh machine already has


@dataclass(frozen=True, kw_only=True)
class SourceTree:
    """A corpus made of the files under `root` whose names match `pattern`, minus `exclude` globs on the path
    relative to root."""

    root: Path
    pattern: str = "*"
    exclude: tuple[str, ...] = ()
    license: str = ""

    def documents(self) -> list[Document]:
        return _walk(self.root, pattern=self.pattern, exclude=self.exclude)


PYTHON_STDLIB = SourceTree(
    root=Path(sysconfig.get_paths()["stdlib"]),
    pattern="*.py",
    # test/ is CPython's regression suite: 8.6M more tokens, with deliberately malformed and non-UTF-8 files and
    # generated data; without it the stdlib's own modules (and the small test packages inside unittest, lib2to3,
    # ctypes, tkinter, idlelib, distutils) give ~6.7M tokens. The others are not stdlib sources: installed
    # packages, and build files that differ between machines.
    exclude=("test/*", "site-packages/*", "dist-packages/*", "config-*/*", "_sysconfigdata_*"),
    license="PSF-2.0 (Python Software Foundation License), the license of the Python standard library",
)
EMBEDDED_CORPORA: dict[str, SourceTree] = {"python-stdlib": PYTHON_STDLIB}


def ensure_corpus(name: str, *, data_root: Path = Path("data"), progress: bool = True) -> Path:
    """The folder of embedded corpus `name` in nanoGPT format, prepared on first use and reused afterwards.

    "python-stdlib" is this Python's standard library sources (~6.7M GPT-2 tokens on CPython 3.11, ~2.5 s to prepare
    on 2 cores); it differs between Python versions, and meta.json records which one was used.
    """
    if name not in EMBEDDED_CORPORA:
        raise InputError(f"unknown corpus {name!r}; the embedded corpora are: {', '.join(sorted(EMBEDDED_CORPORA))}")
    out = Path(data_root) / name
    if not (out / "meta.json").exists():
        corpus = EMBEDDED_CORPORA[name]
        prepare_documents(corpus.documents(), out, progress=progress, sources=[str(corpus.root)], corpus=name,
                          license=corpus.license, python=platform.python_version())
    return out
