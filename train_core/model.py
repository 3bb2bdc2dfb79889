"""A GPT-2 style language model, readable top to bottom (after nanoGPT's model.py).

Token + position embeddings, pre-LayerNorm blocks of causal self-attention and a 4x GELU MLP, a final LayerNorm,
and an output projection tied to the token embedding. `loss` picks how the cross-entropy is computed: `chunked`
(`chunked_cross_entropy`) never materialises the full (tokens x vocab) logits tensor, which on a CPU is most of the
memory traffic of a small model's step; `full` computes the logits, then F.cross_entropy (nanoGPT's way), which on a
GPU is faster: there the chunk loop is launch-bound. `auto` takes chunked on a CPU and full elsewhere, and full under
torch.compile anywhere: the compiler fuses the logits into the cross-entropy itself, and would unroll the chunk loop
(32 copies at GPT-2's 16k-token micro-batch).

`parametrization: mup` switches to the maximal update parametrization for Adam (Tensor Programs V; nanoGPT-mup's
table), with width multiplier m = n_embd / mup_base_width and the head count fixed (the head size grows with width):
hidden-weight init variance σ²/m and Adam LR η/m (`optimizer_groups`), attention logits scaled by 1/d_head instead of
1/√d_head (the constant folded so it is exactly 1/√d_head at the base width), output logits multiplied by α_out/m
(still tied to the embedding), embedding init and LR as SP with the input multiplied by α_in. At m = 1 with both
alphas 1 it computes exactly what SP computes. Every μP change is marked `# --- μP ---`.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass(kw_only=True)
class GPTConfig:
    block_size: int = 1024  # context length in tokens
    vocab_size: int = 50257  # GPT-2 BPE
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as GPT-2
    pad_vocab_to: int = 64  # embedding rows are padded to a multiple of this for faster matmuls
    loss: Literal["auto", "chunked", "full"] = "auto"  # how the cross-entropy is computed; auto: chunked on an eager CPU
    init_std: float = 0.02  # σ: the std of the initial weights (GPT-2's 0.02)
    # --- μP ---
    parametrization: Literal["sp", "mup"] = "sp"  # sp: GPT-2 as published; mup: maximal update parametrization
    mup_base_width: int | None = None  # the width at which μP equals SP; None: this config's n_embd (the proxy's)
    mup_input_alpha: float = 1.0  # μP: embedding output multiplied by this
    mup_output_alpha: float = 1.0  # μP: logits multiplied by this / width multiplier

    def __post_init__(self):
        # Resolved here, so a wider copy (dataclasses.replace(config, n_embd=...)) keeps the proxy's base width.
        if self.parametrization == "mup" and self.mup_base_width is None:
            self.mup_base_width = self.n_embd

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_to) * self.pad_vocab_to

    @property
    def width_multiplier(self) -> float:
        """μP's m = n_embd / mup_base_width; 1 under SP."""
        return self.n_embd / self.mup_base_width if self.parametrization == "mup" else 1.0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        # --- μP --- 1/d_head instead of 1/sqrt(d_head), equal to it at the base width: sqrt(d_head_base) / d_head.
        # SP passes None, PyTorch's own 1/sqrt(d_head), so SP stays bit for bit what it was.
        d_head = config.n_embd // config.n_head
        self.scale = None if config.parametrization == "sp" else 1 / math.sqrt(d_head * config.width_multiplier)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True, scale=self.scale
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_projection = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        # The output projection is wte.weight itself (weight tying), so there is no separate lm_head.
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = self.config.init_std / math.sqrt(self.config.width_multiplier)  # --- μP --- hidden weights: variance σ²/m
            if getattr(module, "residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layer)  # GPT-2: residual streams add up over 2 per layer
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    # --- μP ---
    def optimizer_groups(self, *, weight_decay: float) -> list[dict]:
        """AdamW parameter groups, each with the `lr_multiplier` the LR schedule is multiplied by.

        Weight decay applies to >=2-D weights only (matmuls, embeddings), not to biases and LayerNorms. Under μP the
        hidden (block) matrices train at lr/m, and their weight decay is multiplied by m: AdamW decays by lr x
        weight_decay per step, so the decay per step stays what SP applies at every width (microsoft/mup's MuAdamW
        does the same unless told its decay is decoupled from the LR).
        """
        params = [p for p in self.parameters() if p.requires_grad]
        matrices = [p for p in params if p.dim() >= 2]
        vectors = [p for p in params if p.dim() < 2]
        if self.config.parametrization == "sp":
            return [
                {"params": matrices, "weight_decay": weight_decay, "lr_multiplier": 1.0},
                {"params": vectors, "weight_decay": 0.0, "lr_multiplier": 1.0},
            ]
        m = self.config.width_multiplier
        hidden = [p for p in self.transformer.h.parameters() if p.requires_grad and p.dim() >= 2]
        hidden_ids = {id(p) for p in hidden}
        embeddings = [p for p in matrices if id(p) not in hidden_ids]
        return [
            {"params": hidden, "weight_decay": weight_decay * m, "lr_multiplier": 1 / m},
            {"params": embeddings, "weight_decay": weight_decay, "lr_multiplier": 1.0},
            {"params": vectors, "weight_decay": 0.0, "lr_multiplier": 1.0},
        ]

    @property
    def output_multiplier(self) -> float:
        """--- μP --- What the logits are multiplied by: α_out/m under μP, 1 under SP."""
        c = self.config
        return c.mup_output_alpha / c.width_multiplier if c.parametrization == "mup" else 1.0

    def num_params(self, *, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embedding (nanoGPT's convention for FLOPs)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward): 6N + 12·L·H·Q·T, from the PaLM paper's appendix B."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The final-LayerNorm output for token ids idx (B, T): shape (B, T, n_embd)."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        if self.config.parametrization == "mup":
            x = x * self.config.mup_input_alpha  # --- μP --- input multiplier α_in
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting targets (B, T) from idx (B, T)."""
        return self.output_loss(self.hidden_states(idx), targets, weight=self.transformer.wte.weight)

    def output_loss(self, h: torch.Tensor, targets: torch.Tensor, *, weight: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits of hidden states h (B, T, C) under the tied output weight (padded vocab,
        C) against targets (B, T). The weight is passed in: a stacked run (train_core/stacked.py) passes one member's
        slice of its stacked embedding."""
        if self.config.parametrization == "mup":
            # --- μP --- logits x α_out/m, applied to the hidden state: the same product on both loss paths, and the
            # tied weight untouched
            h = h * self.output_multiplier
        h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)  # (B*T, C), (B*T,)
        if chunked_loss(self.config, device_type=h.device.type, compiled=torch.compiler.is_compiling()):
            return chunked_cross_entropy(h, weight, targets)
        return F.cross_entropy(F.linear(h, weight), targets)  # logits (B*T, padded vocab)

    @torch.no_grad()
    def next_token_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab_size) of the token that follows idx (B, T), from its last block_size tokens: sampling."""
        h = self.hidden_states(idx[:, -self.config.block_size:])[:, -1, :]  # (B, C)
        if self.config.parametrization == "mup":
            h = h * self.output_multiplier  # --- μP --- the logits multiplier, as in forward
        return (h @ self.transformer.wte.weight.t())[:, : self.config.vocab_size]  # padded rows are no tokens


def chunked_loss(config: GPTConfig, *, device_type: str, compiled: bool) -> bool:
    """Whether the loss is computed in chunks on this kind of device: `auto` chunks on a CPU only, where the chunks
    are sized for its caches, and only in an eager model (module docstring)."""
    return config.loss == "chunked" or (config.loss == "auto" and device_type == "cpu" and not compiled)


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, chunk_rows: int | None = None
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against targets, computed in row chunks.

    hidden (N, C), weight (V, C), targets (N,). Equal to `F.cross_entropy(hidden @ weight.T, targets)`, but with
    gradients on, they are produced during the forward pass chunk by chunk, so the (N, V) logits and their gradient
    never exist in full: the (chunk_rows, V) buffers are reused. Runs the matmuls in the autocast dtype when autocast
    is on. chunk_rows defaults to `default_chunk_rows(C)`.
    """
    # Inside Function.forward grad mode is always off and ctx.needs_input_grad ignores no_grad, so the caller's
    # grad mode is passed in: under no_grad (evaluation) only the loss is computed.
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(hidden.size(1))
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_rows, torch.is_grad_enabled())


def default_chunk_rows(n_embd: int) -> int:
    """Rows per chunk of the chunked loss: 128 up to n_embd 128, else 512. Each chunk adds its share of the (V, C)
    weight gradient into one fp32 sum, a pass over V x C x 4 bytes (77 MB at C = 384 and GPT-2's vocab: past a CPU's
    L3), so wider models want fewer, larger chunks. Measured by benchmarks/chunked_loss.py on a 2-core AVX-512 CPU,
    2,048 rows: 128 rows fastest at C = 64 and 128 in bf16 (the training dtype there), 512 (or 1,024, within noise)
    from C = 256 on, in bf16 and fp32 (docs/benchmarks.md)."""
    return 128 if n_embd <= 128 else 512


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows, grad_enabled):
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        needs_grad = grad_enabled and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        # Below fp32 the gradients pass through reused buffers in `dtype`: fresh temporaries each chunk cost 15% of
        # bf16's loss at C = 384.
        low_precision = dtype != torch.float32
        with torch.autocast(device_type, enabled=False):
            n_rows, vocab = hidden.size(0), weight.size(0)
            w, h_all = weight.to(dtype), hidden.to(dtype)
            logits_buf = torch.empty(min(chunk_rows, n_rows), vocab, dtype=dtype, device=hidden.device)
            logp_buf = torch.empty(logits_buf.shape, dtype=torch.float32, device=hidden.device)
            loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
            if needs_grad:
                grad_hidden = torch.empty_like(h_all)
                grad_weight = torch.zeros_like(weight, dtype=torch.float32)
                if low_precision:
                    grad_logits_buf = torch.empty_like(logits_buf)
                    grad_weight_buf = torch.empty_like(w)
            for start in range(0, n_rows, chunk_rows):
                h = h_all[start : start + chunk_rows]  # (n, C)
                t = targets[start : start + chunk_rows]  # (n,)
                logits, logp = logits_buf[: t.numel()], logp_buf[: t.numel()]  # (n, V)
                torch.mm(h, w.t(), out=logits)
                torch.log_softmax(logits, dim=1, dtype=torch.float32, out=logp)
                loss_sum -= logp.gather(1, t[:, None]).sum()
                if not needs_grad:
                    continue
                # d(loss_sum)/d(logits) = softmax - onehot, built in place; the 1/N of the mean goes into the matmuls.
                grad_logits = logp.exp_()
                grad_logits[torch.arange(t.numel(), device=t.device), t] -= 1.0
                if low_precision:
                    grad_logits = grad_logits_buf[: t.numel()].copy_(grad_logits)
                torch.mm(grad_logits, w, out=grad_hidden[start : start + chunk_rows])
                if low_precision:
                    grad_weight.add_(torch.mm(grad_logits.t(), h, out=grad_weight_buf), alpha=1 / n_rows)
                else:
                    grad_weight.addmm_(grad_logits.t(), h, alpha=1 / n_rows)
        if needs_grad:
            ctx.save_for_backward(grad_hidden.div_(n_rows).to(hidden.dtype), grad_weight.to(weight.dtype))
        return loss_sum / n_rows

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None
