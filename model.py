"""
A compact GPT: pre-norm blocks, causal self-attention through F.scaled_dot_product_attention
(flash kernels on GPU), tied input/output embeddings, vocabulary padded to a multiple of 64,
GPT-2 initialisation. Also the FLOPs-per-token estimate behind the MFU figure.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import UserError
from data import BLOCK


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = BLOCK
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = False

    @classmethod
    def from_run(cls, run_config, vocab_size):
        """The model of a run config (train.py's keys, as a dict): the one place a run's config
        becomes a model, used by train, evaluate, bench and sweep's cost estimate."""
        return cls(vocab_size=vocab_size, block_size=BLOCK, n_layer=run_config["n_layer"],
                   n_head=run_config["n_head"], n_embd=run_config["n_embd"],
                   dropout=run_config.get("dropout", 0.0), bias=run_config.get("bias", False))

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
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab, bias=False)
        self.lm_head.weight = self.wte.weight          # tied embeddings
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

    def forward(self, idx, targets=None, ignore_index=-1):
        """
        Without targets: logits over the real vocabulary (padding columns dropped), (B, T, vocab).
        With targets: per-token cross entropy in float32 nats, (B, T), 0 where ignored. Losses
        come out of forward() so compiled and DDP-wrapped models are called the same way.
        """
        B, T = idx.shape
        assert T <= self.config.block_size, f"sequence of {T} > block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))[..., :self.config.vocab_size]
        if targets is None:
            return logits
        return token_losses(logits, targets, ignore_index)

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
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is visible; use --device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r}: use auto, cpu, cuda or cuda:N")


def batched_losses(model, x, y, device, batch_size, autocast):
    """Per-token losses (float32 numpy) of windows x -> y, a batch at a time, in inference mode."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size]).to(device)
            yb = torch.from_numpy(y[i:i + batch_size]).to(device)
            with autocast:
                out.append(model(xb, yb).float().cpu())
    return torch.cat(out).numpy()


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
