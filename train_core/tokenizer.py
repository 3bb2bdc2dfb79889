"""GPT-2's tokenizer, built offline from the BPE ranks shipped in `train_core/assets/`.

`tiktoken.get_encoding("gpt2")` downloads its files on first use, which fails on a machine with no network, so the
Encoding is built here from the packaged rank file instead; it gives the same ids (see assets/README.md).
"""

import base64
import functools
import gzip
import hashlib
from pathlib import Path

import tiktoken

BPE_RANKS_PATH = Path(__file__).parent / "assets" / "gpt2.tiktoken.gz"
# sha256 of the uncompressed rank file, as published with tiktoken's r50k_base / GPT-2 encoding.
BPE_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_TOKEN = 50256  # <|endoftext|>, GPT-2's one special token; documents start with it (llm.c convention)
VOCAB_SIZE = 50257

# GPT-2's split pattern in the possessive form tiktoken uses (same splits as the original, faster).
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _load_ranks(path: Path) -> dict[bytes, int]:
    """Read a gzip'd `.tiktoken` file: one `base64(token bytes) rank` pair per line."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:  # BadGzipFile is an OSError; a truncated stream raises EOFError
        raise RuntimeError(f"{path} is corrupt ({e}); reinstall the package to restore it") from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BPE_RANKS_SHA256:
        raise RuntimeError(
            f"{path} is corrupt: sha256 of its contents is {digest}, expected {BPE_RANKS_SHA256}; "
            "reinstall the package to restore it"
        )
    ranks = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's BPE (n_vocab 50257): "Hello world" -> [15496, 995], "<|endoftext|>" -> 50256."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=_GPT2_PATTERN,
        mergeable_ranks=_load_ranks(BPE_RANKS_PATH),
        special_tokens={"<|endoftext|>": EOT_TOKEN},
        explicit_n_vocab=VOCAB_SIZE,
    )
