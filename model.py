"""
A compact GPT: pre-norm blocks, causal self-attention through F.scaled_dot_product_attention
(flash kernels on GPU), tied input/output embeddings, vocabulary padded to a multiple of 64,
GPT-2 initialisation. Also the FLOPs-per-token estimate behind the MFU figure.
"""
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import UserError
from harness.data import BLOCK


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = BLOCK
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False
    n_tags: int = 0             # a tagged mixture's components: an embedding each, added at every position

    @classmethod
    def from_run(cls, run_config, vocab_size):
        """The model of a run config (train.py's keys, as a dict): the one place a run's config
        becomes a model, used by train, evaluate, bench and sweep's cost estimate."""
        tagged = run_config.get("arm") == "tagged"
        return cls(vocab_size=vocab_size, block_size=BLOCK, n_layer=run_config["n_layer"],
                   n_head=run_config["n_head"], n_embd=run_config["n_embd"],
                   dropout=run_config.get("dropout", 0.0), bias=run_config.get("bias", False),
                   n_tags=len(run_config["components"]) if tagged else 0)

    @property
    def padded_vocab(self):
        return 64 * math.ceil(self.vocab_size / 64)    # tensor-core friendly; extra logits unused


class TokenCrossEntropy(torch.autograd.Function):
    """
    Per-token cross entropy with a hand-written backward. With GPT-2's vocabulary the logits are
    the largest tensor of a step (128 x 100 x 50257), and autograd's cross entropy stores float32
    log-probabilities (or, written as logsumexp minus a gather, scatters into a float32 zeros
    tensor) of that size. Here forward keeps the logits as they came (bf16 under autocast) and
    one number per row, and backward is one elementwise pass, softmax minus one-hot, that a
    compiler fuses into a single read and write (BENCHMARKS.md, "cross entropy").
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        keep = targets != ignore_index
        safe = torch.where(keep, targets, 0)
        logits32 = logits.float()
        log_norm = torch.logsumexp(logits32, dim=-1)
        losses = (log_norm - logits32.gather(-1, safe.unsqueeze(-1)).squeeze(-1)) * keep
        ctx.save_for_backward(logits, log_norm, safe, keep)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        logits, log_norm, safe, keep = ctx.saved_tensors
        probs = torch.exp(logits.float() - log_norm.unsqueeze(-1))
        target = torch.arange(logits.size(-1), device=logits.device) == safe.unsqueeze(-1)
        grad = (probs - target.float()) * (grad_losses * keep).unsqueeze(-1)
        return grad.to(logits.dtype), None, None


def token_losses(logits, targets, ignore_index=-1):
    """Per-token cross entropy in float32 nats, (B, T); 0 where the target is ignore_index."""
    return TokenCrossEntropy.apply(logits, targets, ignore_index)


# -----------------------------------------------------------------------------
# the output layer in training: linear + cross entropy without the full logits

LOSS_IMPLS = ("full", "chunked")
VOCAB_CHUNK = 8192          # columns of the logits the chunked output layer holds at once


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """
    Per-token cross entropy of hidden states h (N, C) against output weights w (V, C) that never
    holds the N x V logits: forward takes the vocabulary `chunk` columns at a time and keeps only
    each row's log-sum-exp and target logit; backward recomputes each chunk's logits to form
    softmax minus one-hot there. Peak memory is one chunk of logits; the price is one more
    matrix product (the recomputation). h and w arrive in the compute dtype (bf16 under
    autocast), so backward, which runs outside autocast, multiplies in the same precision.
    """

    @staticmethod
    def forward(ctx, h, w, targets, ignore_index, chunk):
        keep = targets != ignore_index
        safe = torch.where(keep, targets, 0)
        lse_parts, target_logit = [], torch.zeros(h.shape[0], device=h.device)
        for lo in range(0, w.shape[0], chunk):
            logits = (h @ w[lo:lo + chunk].T).float()
            lse_parts.append(torch.logsumexp(logits, dim=-1))
            inside = (safe >= lo) & (safe < lo + logits.shape[1])
            picked = logits.gather(-1, (safe - lo).clamp(0, logits.shape[1] - 1).unsqueeze(-1)).squeeze(-1)
            target_logit = target_logit + torch.where(inside, picked, 0.0)
        lse = torch.logsumexp(torch.stack(lse_parts, dim=-1), dim=-1)
        ctx.save_for_backward(h, w, safe, keep, lse)
        ctx.chunk = chunk
        return (lse - target_logit) * keep

    @staticmethod
    def backward(ctx, grad_losses):
        h, w, safe, keep, lse = ctx.saved_tensors
        scale = (grad_losses * keep).unsqueeze(-1)
        grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device)
        grad_w = torch.empty_like(w)
        for lo in range(0, w.shape[0], ctx.chunk):
            w_chunk = w[lo:lo + ctx.chunk]
            probs = torch.exp((h @ w_chunk.T).float() - lse.unsqueeze(-1))
            target = torch.arange(lo, lo + w_chunk.shape[0], device=h.device) == safe.unsqueeze(-1)
            grad_logits = ((probs - target.float()) * scale).to(h.dtype)
            grad_h += (grad_logits @ w_chunk).float()
            grad_w[lo:lo + ctx.chunk] = grad_logits.T @ h
        return grad_h.to(h.dtype), grad_w, None, None, None


def chunked_losses(h, w, targets, ignore_index):
    return ChunkedLinearCrossEntropy.apply(h, w, targets, ignore_index, VOCAB_CHUNK)


# training's output layers that never write the full logits, by name: (h (N, C) and w (V, C) in
# the compute dtype, targets (N,), ignore_index) -> per-token losses (N,). bench.py adds the
# field library it compares against (cut-cross-entropy) here; train.py offers LOSS_IMPLS.
OUTPUT_LAYERS = {"chunked": chunked_losses}


def output_layer_losses(h, weight, targets, impl, ignore_index=-1):
    """
    Training's per-token losses (B, T) from hidden states h (B, T, C) and the real vocabulary's
    output weights (V, C) through an output layer of OUTPUT_LAYERS. GPT.forward's "full" path,
    the logits then TokenCrossEntropy, is the reference (and what inference always uses);
    "chunked" gives its numbers within bf16 rounding (tests/test_train.py, tests/test_gpu.py).
    """
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    losses = OUTPUT_LAYERS[impl](h.reshape(-1, h.shape[-1]).to(dtype), weight.to(dtype), targets.reshape(-1),
                                 ignore_index)
    return losses.view(targets.shape)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.proj.residual_scaled = True
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.proj.residual_scaled = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        # the tagged mixture (train.py --arm=tagged) is told each window's component: a learned
        # vector per component added to every position's embedding, so identification is free
        self.tag = nn.Embedding(config.n_tags, config.n_embd) if config.n_tags else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab, bias=False)
        self.lm_head.weight = self.wte.weight          # tied embeddings
        self.loss_impl = "full"     # training's output layer (output_layer_losses); not a weight
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)
        if isinstance(module, nn.Linear):
            residual = getattr(module, "residual_scaled", False)
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if residual else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def n_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, ignore_index=-1, tags=None):
        """
        Without targets: logits over the real vocabulary (padding columns dropped), (B, T, vocab).
        With targets: per-token cross entropy in float32 nats, (B, T), 0 where ignored. Losses
        come out of forward() so compiled and DDP-wrapped models are called the same way. A tagged
        model takes tags (B,): each window's component, an index into its mixture's components.
        """
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} > block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        if self.tag is not None:
            x = x + self.tag(tags)[:, None, :]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x)[..., :self.config.vocab_size]
        # training (gradients on) may take a fused output layer; inference always writes the
        # logits, so evaluation's per-position losses are exact whatever trained the model
        if self.loss_impl == "full" or not torch.is_grad_enabled():
            return token_losses(self.lm_head(x)[..., :self.config.vocab_size], targets, ignore_index)
        return output_layer_losses(x, self.lm_head.weight[:self.config.vocab_size], targets,
                                   self.loss_impl, ignore_index)

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L H Q T."""
        c = self.config
        n = self.n_params(non_embedding=True)
        return 6 * n + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size

    def configure_optimizer(self, weight_decay, learning_rate, betas, fused):
        # weight decay on matrices and embeddings (2-D), not on norms and biases (1-D)
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)


# -----------------------------------------------------------------------------
# running the model: device, precision, per-token losses in batches

def resolve_device(name):
    """"auto", "cpu", "cuda" or "cuda:N" (the devices this harness is tested on) as a torch device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise UserError(f"device={name!r}: use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use --device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r}: use auto, cpu, cuda or cuda:N")


def batched_losses(model, x, y, device, batch_size, autocast, tag=None):
    """Per-token losses (float32 numpy) of windows x -> y, a batch at a time, in inference mode;
    a tagged model is told every window's component, `tag`."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size]).to(device)
            yb = torch.from_numpy(y[i:i + batch_size]).to(device)
            tags = None if tag is None else torch.full((len(xb),), tag, device=device)
            with autocast:
                out.append(model(xb, yb, tags=tags).float().cpu())
    return torch.cat(out).numpy()


PEAK_BF16_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12),
                   ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
                   ("4090", 165e12), ("3090", 71e12), ("V100", 125e12), ("T4", 65e12)]


def device_peak_flops(device, configured):
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_BF16_FLOPS:
            if key in name:
                return flops
        return 0.0
    # CPU: a rough fp32 peak (cores x 2.5 GHz x 32 FLOP/cycle with AVX2 FMA), so MFU is indicative
    return torch.get_num_threads() * 2.5e9 * 32


class StepClock:
    """
    The data path's share of a step, timed where the work runs: CUDA events on the GPU (the host
    only queues work there, so host timers would measure the queue), wall clock on the CPU.
    Marks are cheap and taken every step; they are read only when a log line is written, after
    reading the loss has synced the device anyway.
    """

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end):
        if not self.cuda:
            return 1e3 * (end - start)
        end.synchronize()
        return start.elapsed_time(end)


def logits_batch(vocab_size):
    """Windows per forward pass that keep the float32 logits near 1 GB."""
    return max(1, (1 << 28) // (BLOCK * vocab_size))


def resolve_switch(value, device, key="switch"):
    """A speed switch (compile, fused AdamW): "auto" is on for CUDA and off for CPU, where these
    cost more than they save on small models; True or False is honoured on either device."""
    if value == "auto":
        return device.type == "cuda"
    if not isinstance(value, bool):          # bool("off") is True: never guess
        raise UserError(f"{key}={value!r}: use auto, True or False")
    return value


def resolve_loss_impl(value):
    """Training's output layer: "auto" is the full logits on every device (on an H200 the
    fastest of full, chunked and cut-cross-entropy, BENCHMARKS.md); "chunked" bounds the memory
    of the logits to one chunk (a larger vocabulary or batch) at about a quarter more step time."""
    if value == "auto":
        return "full"
    if value not in LOSS_IMPLS:
        raise UserError(f"loss_impl={value!r}: use auto, {', '.join(LOSS_IMPLS)}")
    return value


def resolve_dtype(dtype, device):
    """The autocast dtype: "auto" is bfloat16 on CUDA and float32 on CPU; either is honoured on
    either device (bf16 on CPU exercises the CUDA path's precision in the tests)."""
    if dtype == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    # no float16: it needs loss scaling, which bf16 (same speed on Ampere and later) does not
    if dtype not in ("bfloat16", "float32"):
        raise UserError(f"dtype={dtype!r}: use auto, bfloat16 or float32")
    return dtype


def autocast_for(device, dtype):
    """Autocast for a resolved dtype; losses are computed in float32 regardless."""
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)
