#!/usr/bin/env python3
"""PyTorch CPU baseline for the MoTE training benchmark (bench/train.ts, `--suite train`).

One training step (forward + backward + AdamW) of a LLaMA model with random, frozen f32
weights and MoTE experts on every linear, written the way a PEFT-style multi-adapter
implementation does it:

  y = base(x) + sum_e  alpha * mask_e[t] * scale * B_e(A_e(x))      (3 step experts, masked loop)
              + (1 - alpha) * scale * B_s(A_s(x))                    (shared expert)

Each expert's LoRA is computed on the whole sequence and then multiplied by its token mask,
so the step experts cost 3x what routing would; autograd does the backward.

Prints ONE JSON line on stdout (everything else goes to stderr):
  {"impl":"pytorch","torch":...,"threads":...,"shape":{...},"seq":...,"tokens_per_s":...,
   "step_ms_median":...,"peak_rss_mb":...,"params_lora":...,"steps":N, ...}

Setup: bash bench/setup_torch.sh (Debian's python3-torch, for /usr/bin/python3).
Run:   python3 bench/train_torch.py --quick
       python3 bench/train_torch.py --steps 3          (SmolLM-135M shape, seq 256)
"""
import os
import sys


def _threads_from_argv(argv):
    """--threads N / --threads=N, read before torch loads (the thread pools read the env at load)."""
    for i, a in enumerate(argv):
        try:
            if a == "--threads" and i + 1 < len(argv):
                return int(argv[i + 1])
            if a.startswith("--threads="):
                return int(a.split("=", 1)[1])
        except ValueError:
            return None  # argparse reports it
    return None


THREADS = _threads_from_argv(sys.argv[1:]) or len(os.sched_getaffinity(0))
# Thread settings, unless the caller set them. On a shared 2-core machine, libgomp's default
# active spin-wait made each step ~10x slower with 2 threads (every small elementwise op's
# parallel region waited on a descheduled spinning thread): wait passively instead. OpenBLAS
# (Debian's BLAS for torch, its own pthread pool) gets the same thread count as torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))
THREAD_ENV = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}

try:
    import torch  # noqa: F401
except ImportError:
    # Debian's python3-torch is installed for the system interpreter; a pyenv/venv python3
    # first on PATH does not see it. Re-run under /usr/bin/python3 when that one has torch.
    sysp = "/usr/bin/python3"
    if os.path.realpath(sys.executable) != os.path.realpath(sysp) and os.path.exists(sysp) \
            and os.environ.get("TRAIN_TORCH_REEXEC") != "1":
        os.environ["TRAIN_TORCH_REEXEC"] = "1"
        os.execv(sysp, [sysp] + sys.argv)
    sys.stderr.write("train_torch.py: torch is not importable; run bench/setup_torch.sh first\n")
    sys.exit(2)

import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SMOLLM_135M = dict(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, vocab=49152, seq=256)
QUICK = dict(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=256, seq=64)

N_STEP_EXPERTS = 3
MOTE_ALPHA = 0.5
HAS_SDPA = hasattr(F, "scaled_dot_product_attention")  # torch >= 2.0


class Routing:
    """Per-token step masks shared by every MoTE linear (what a PEFT adapter hook would set)."""

    masks = None  # list of N_STEP_EXPERTS tensors [B, T, 1]


class LoRA(nn.Module):
    def __init__(self, in_f, out_f, r):
        super().__init__()
        self.lora_A = nn.Linear(in_f, r, bias=False)  # weight [r, in]
        self.lora_B = nn.Linear(r, out_f, bias=False)  # weight [out, r]
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's init for A
        nn.init.normal_(self.lora_B.weight, std=0.01)  # nonzero (PEFT uses 0) so every grad flows

    def forward(self, x):
        return self.lora_B(self.lora_A(x))


class MoteLinear(nn.Module):
    """Frozen base linear + 3 masked step experts + 1 shared expert, PEFT-style."""

    def __init__(self, in_f, out_f, r, lora_alpha):
        super().__init__()
        self.base = nn.Linear(in_f, out_f, bias=False)
        self.base.weight.requires_grad_(False)
        self.experts = nn.ModuleList([LoRA(in_f, out_f, r) for _ in range(N_STEP_EXPERTS)])
        self.shared = LoRA(in_f, out_f, r)
        self.scale = lora_alpha / r

    def forward(self, x):
        result = self.base(x)
        for e, expert in enumerate(self.experts):
            result = result + MOTE_ALPHA * Routing.masks[e] * (self.scale * expert(x))
        result = result + (1.0 - MOTE_ALPHA) * self.scale * self.shared(x)
        return result


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(T, head_dim, theta=10000.0):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, D]
    return emb.cos(), emb.sin()


def causal_attention(q, k, v):
    """q, k, v: [B, nH, T, D] (KV already repeated to nH heads)."""
    if HAS_SDPA:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # torch < 2.0 (Debian bookworm ships 1.13): the same math, unfused
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    causal = torch.ones(T, T, dtype=torch.bool).triu_(1)
    scores = scores.masked_fill(causal, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, nH, nKv, r, a = c["hidden"], c["heads"], c["kv_heads"], c["rank"], c["lora_alpha"]
        self.nH, self.nKv, self.D = nH, nKv, H // nH
        self.q_proj = MoteLinear(H, nH * self.D, r, a)
        self.k_proj = MoteLinear(H, nKv * self.D, r, a)
        self.v_proj = MoteLinear(H, nKv * self.D, r, a)
        self.o_proj = MoteLinear(nH * self.D, H, r, a)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nH, self.D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nKv, self.D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nKv, self.D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nH // self.nKv  # GQA: share each KV head across `rep` query heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        o = causal_attention(q, k, v)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nH * self.D))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, I, r, a = c["hidden"], c["intermediate"], c["rank"], c["lora_alpha"]
        self.gate_proj = MoteLinear(H, I, r, a)
        self.up_proj = MoteLinear(H, I, r, a)
        self.down_proj = MoteLinear(I, H, r, a)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden"])
        self.mlp = MLP(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList([Block(c) for _ in range(c["layers"])])
        self.norm = RMSNorm(c["hidden"])
        self.head_dim = c["hidden"] // c["heads"]
        # random frozen base: N(0, 0.02) like HF's initializer_range
        for name, p in self.named_parameters():
            if ".experts." in name or ".shared." in name:
                continue
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            p.requires_grad_(False)

    def forward(self, ids):
        T = ids.shape[1]
        cos, sin = (t.to(ids.device) for t in rope_cos_sin(T, self.head_dim))
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return F.linear(self.norm(x), self.embed_tokens.weight)  # tied lm_head


def make_batch(T, V, gen, P=None):
    """One sequence: P prompt tokens routed to a random step expert, then three step segments."""
    if P is None:
        P = min(32, T // 4)  # same split as bench/train.ts
    seg = (T - P) // 3
    ids = torch.randint(0, V, (1, T), generator=gen)
    prompt_expert = int(torch.randint(0, N_STEP_EXPERTS, (1,), generator=gen))
    step = torch.tensor([prompt_expert if t < P else min(2, (t - P) // seg) for t in range(T)])
    masks = [(step == e).to(torch.float32).view(1, T, 1) for e in range(N_STEP_EXPERTS)]
    labels = ids.clone()
    labels[:, :P] = -100  # loss on the chain tokens only
    return ids, labels, masks, P


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--intermediate", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--prompt", type=int, help="prompt tokens (no loss) at the start (default min(32, seq / 4))")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after 1 warm-up step")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--threads", type=int, help="torch intra-op (and OpenBLAS) threads (default: all usable cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny shape (hidden 64, 2 layers, vocab 256, seq 64)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda); steps are timed after a synchronize")
    args = ap.parse_args()

    base = QUICK if args.quick else SMOLLM_135M
    c = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in base.items()}
    c["rank"], c["lora_alpha"] = args.rank, 2 * args.rank  # alpha 32 at rank 16
    if c["hidden"] % c["heads"] or c["heads"] % c["kv_heads"] or (c["hidden"] // c["heads"]) % 2:
        ap.error("hidden must divide into heads (even head dim) and heads into kv-heads")
    if args.steps < 1:
        ap.error("--steps must be >= 1")

    # torch's default is the number of *physical* cores (1 on some 2-vCPU VMs): use every usable core
    threads = THREADS
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.perf_counter()
    dev = torch.device(args.device)
    model = Llama(c).to(dev)
    lora_params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in lora_params)
    n_base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    opt = torch.optim.AdamW(lora_params, lr=2e-4, weight_decay=0.0)
    ids, labels, masks, P = make_batch(c["seq"], c["vocab"], gen, args.prompt)
    ids, labels, masks = ids.to(dev), labels.to(dev), [m.to(dev) for m in masks]
    Routing.masks = masks
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"train_torch: built in {time.perf_counter() - t0:.1f}s: base {n_base / 1e6:.1f}M frozen, "
          f"lora {n_lora / 1e6:.2f}M trainable, torch {torch.__version__}, {threads} threads, "
          f"attention {'sdpa' if HAS_SDPA else 'manual (no sdpa in this torch)'}", file=sys.stderr)

    def train_step():
        opt.zero_grad(set_to_none=True)
        logits = model(ids)
        # next-token loss: position t predicts token t+1, over chain targets only
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, c["vocab"]), labels[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params, 1.0)
        opt.step()
        return float(loss)

    step_ms = []
    for i in range(1 + args.steps):
        sync()
        t = time.perf_counter()
        loss = train_step()
        sync()
        ms = (time.perf_counter() - t) * 1e3
        if i > 0:
            step_ms.append(ms)
        print(f"train_torch: {'warm-up' if i == 0 else f'step {i}'}: {ms:.0f} ms, loss {loss:.4f}", file=sys.stderr)

    med = statistics.median(step_ms)
    out = {
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "shape": {"hidden": c["hidden"], "intermediate": c["intermediate"], "layers": c["layers"],
                  "heads": c["heads"], "kvHeads": c["kv_heads"], "vocab": c["vocab"]},
        "seq": c["seq"],
        "prompt": P,
        "tokens_per_s": c["seq"] / (med / 1e3),
        "step_ms_median": med,
        "step_ms": step_ms,
        "peak_rss_mb": peak_rss_mb(),
        "params_lora": n_lora,
        "params_base": n_base,
        "rank": c["rank"],
        "experts": N_STEP_EXPERTS + 1,
        "attention": "sdpa" if HAS_SDPA else "manual",
        "thread_env": THREAD_ENV,
        "final_loss": loss,
        "steps": args.steps,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
