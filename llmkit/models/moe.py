"""A sparse mixture-of-experts MLP (Shazeer et al. 2017; Switch, Mixtral, Qwen2-MoE) and the
router losses that keep it trained evenly.

Each token's hidden state goes to a router (``gate``, a bias-free Linear to one logit per expert);
the softmax of the logits picks the `experts_per_token` most probable experts, whose outputs are
summed weighted by those probabilities (renormalised to sum to one, as Mixtral does, or not, as
Qwen2-MoE does by default). Qwen2-MoE adds a shared expert every token passes through, scaled by a
sigmoid gate. Dispatch is capacity-free: no token is dropped, however unevenly the router chooses.

Dispatch sorts the (token, expert) assignments by expert, gathers the tokens into one tensor,
runs each expert once on its contiguous slice and scatters the weighted results back with
`index_add_`: one Python iteration per expert, none per token. Experts are ordinary `MLP`s with
Llama's names (``experts.3.gate_proj``), so LoRA and quantisation reach them by module surgery
like any other Linear.

While the Trainer records (`record_router`), every MoE layer keeps its router logits of the
current forward pass; `router_losses` turns them into the load-balancing loss of Switch /
Mixtral (computed over all layers' tokens together, exactly as transformers'
``load_balancing_loss_func``), the z-loss of ST-MoE, and statistics to log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import MLP


class MoE(nn.Module):
    """The mixture-of-experts MLP of one block (HF's ``mlp``: ``gate``, ``experts.N``, and for
    Qwen2-MoE ``shared_expert`` and ``shared_expert_gate``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k, self.renormalize = config.experts_per_token, config.router_renormalize
        # the router losses' weights travel with the layer, so that whatever wraps the model
        # (a policy with a value head, DDP) trains with them
        self.aux_coef, self.z_coef = config.router_aux_loss_coef, config.router_z_loss_coef
        self.gate = nn.Linear(config.dim, config.n_experts, bias=False)
        expert = config.replace(n_experts=0, hidden_dim=config.expert_hidden_dim)
        self.experts = nn.ModuleList(MLP(expert) for _ in range(config.n_experts))
        if config.shared_expert_hidden_dim:
            self.shared_expert = MLP(expert.replace(hidden_dim=config.shared_expert_hidden_dim))
            self.shared_expert_gate = nn.Linear(config.dim, 1, bias=False)
        else:
            self.shared_expert = None
        self.recording = False  # set by `record_router`: keep the router logits for the losses
        self.router_logits: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # (logits, real-token mask)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits (tokens, experts), and each token's chosen experts (tokens, k) with their
        weights (tokens, k): in fp32 when renormalised (Mixtral), else in the logits' dtype
        (Qwen2-MoE), as transformers keeps them."""
        logits = self.gate(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            return logits, chosen, weights / weights.sum(dim=-1, keepdim=True)
        return logits, chosen, weights.to(logits.dtype)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """`tokens` (batch, seq; True for real tokens) leaves padding out of the router losses."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits, chosen, weights = self.route(flat)
        if self.recording and self.training and torch.is_grad_enabled():
            self.router_logits.append((logits, None if tokens is None else tokens.reshape(-1)))
        out = dispatch(flat, chosen, weights, self.experts)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.view(shape)


def dispatch(x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor, experts: nn.ModuleList) -> torch.Tensor:
    """Σ_j weights[t, j] · experts[chosen[t, j]](x[t]) for every token t, without a loop over
    tokens: the assignments sorted by expert, each expert run once on its slice, the weighted
    outputs added back into their tokens' rows (in expert order, as transformers adds them; in
    fp32, rounded once to x's dtype)."""
    k = chosen.shape[1]
    flat = chosen.reshape(-1)
    order = flat.argsort(stable=True)
    token = order // k
    counts = torch.bincount(flat, minlength=len(experts)).tolist()  # one host sync per layer
    gathered = x.index_select(0, token)
    outputs = []
    training = torch.is_grad_enabled()
    for expert, part in zip(experts, gathered.split(counts)):
        # while training an idle expert still runs (on no rows), so that it has a (zero) gradient:
        # DDP waits for a gradient from every parameter
        if part.shape[0] or training:
            outputs.append(expert(part))
    if not outputs:  # no tokens at all
        return torch.zeros_like(x)
    y = torch.cat(outputs) * weights.reshape(-1, 1).index_select(0, order)
    total = torch.zeros(x.shape, dtype=torch.promote_types(y.dtype, torch.float32), device=x.device)
    return total.index_add_(0, token, y.to(total.dtype)).to(x.dtype)


# ------------------------------------------------------------------------------ router losses
def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def record_router(model: nn.Module, on: bool = True) -> bool:
    """Make every MoE layer of `model` keep its router logits while training (for
    `router_losses`), or stop; False when the model has none."""
    layers = moe_layers(model)
    for layer in layers:
        layer.recording = on
        layer.router_logits.clear()
    return bool(layers)


def clear_router(model: nn.Module) -> None:
    """Drop recorded logits (those of an activation-checkpointing recompute, say)."""
    for layer in moe_layers(model):
        layer.router_logits.clear()


@dataclass
class RouterLosses:
    """The router losses of one forward pass and what they were computed from."""

    aux_loss: torch.Tensor  # load balancing: n_experts · Σ_e f_e · P_e (top-k at perfect balance: k)
    z_loss: torch.Tensor  # mean over real tokens of logsumexp(router logits)²
    penalty: torch.Tensor | None  # aux weight · aux_loss + z weight · z_loss (None: both weights 0)
    tokens_per_expert: list[float] = field(default_factory=list)  # share of the assignments each expert got
    entropy: float = 0.0  # mean entropy of the routing distribution, nats (log n_experts: uniform)
    layer_load_max: float = 0.0  # the most lopsided layer's busiest expert over an even share

    def metrics(self) -> dict[str, float | list[float]]:
        share = self.tokens_per_expert
        return {"moe_aux_loss": float(self.aux_loss.detach()), "moe_z_loss": float(self.z_loss.detach()),
                "moe_router_entropy": self.entropy,
                "moe_load_max": max(share) * len(share),  # the busiest expert's load over an even share (1 = even)
                "moe_layer_load_max": self.layer_load_max,
                "moe_tokens_per_expert": [round(s, 4) for s in share]}


def load_balancing_loss(logits: list[torch.Tensor], top_k: int, masks: list[torch.Tensor | None] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch / Mixtral's auxiliary loss over the router logits of every layer taken as one set of
    tokens: n_experts · Σ_e f_e · P_e, with f_e the share of top-k assignments that went to expert
    e (counted per rank of the k, as transformers does) and P_e the mean router probability of e,
    both over real tokens only when `masks` (one per logits tensor; True = real) are given, as
    transformers' ``load_balancing_loss_func`` with an attention mask. Also returns the assignment
    counts per expert."""
    masks = masks or [None] * len(logits)
    every = torch.cat(logits)
    n_experts = every.shape[-1]
    probs = F.softmax(every.float(), dim=-1)
    chosen = probs.topk(top_k, dim=-1).indices.reshape(-1)
    if all(m is None for m in masks):
        counts = torch.bincount(chosen, minlength=n_experts).float()
        rows, mean_probs = every.shape[0], probs.mean(dim=0)
    else:
        keep = torch.cat([torch.ones(t.shape[0], dtype=torch.bool, device=t.device) if m is None else m.bool()
                          for t, m in zip(logits, masks)]).float()
        counts = torch.zeros(n_experts, device=every.device).index_add_(0, chosen, keep.repeat_interleave(top_k))
        rows = keep.sum()
        mean_probs = (probs * keep[:, None]).sum(dim=0) / rows
    return n_experts * torch.sum(counts / rows * mean_probs), counts


def _real(pair: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    """The rows of recorded router logits that belong to real tokens."""
    logits, mask = pair
    return logits if mask is None else logits[mask.bool()]


def router_losses(model: nn.Module) -> RouterLosses | None:
    """The router losses of what `model`'s MoE layers recorded since the last call (None when
    nothing was recorded), weighted by the model's `router_aux_loss_coef` and
    `router_z_loss_coef`; the recordings are cleared."""
    layers = [m for m in moe_layers(model) if m.router_logits]
    if not layers:
        return None
    recorded = [m.router_logits for m in layers]
    for m in layers:
        m.router_logits = []
    aux_coef, z_coef, top_k = layers[0].aux_coef, layers[0].z_coef, layers[0].top_k
    weighted = bool(aux_coef or z_coef)
    pairs = [pair for passes in recorded for pair in passes]
    with torch.set_grad_enabled(weighted and torch.is_grad_enabled()):  # no graph kept only to log
        aux, counts = load_balancing_loss([p[0] for p in pairs], top_k, [p[1] for p in pairs])
        real = torch.cat([_real(p) for p in pairs]).float()
        z = torch.logsumexp(real, dim=-1).square().mean()
        penalty = aux_coef * aux + z_coef * z if weighted else None
    with torch.no_grad():
        logp = F.log_softmax(real, dim=-1)
        entropy = float(-(logp.exp() * logp).sum(-1).mean())
        n_experts = real.shape[-1]
        loads = []
        for passes in recorded:  # pooled shares can hide one collapsed layer
            chosen = torch.cat([_real(p) for p in passes]).topk(top_k, dim=-1).indices.reshape(-1)
            layer_counts = torch.bincount(chosen, minlength=n_experts)
            loads.append(layer_counts.max() / layer_counts.sum().clamp(min=1) * n_experts)
        share = (counts / counts.sum().clamp(min=1)).tolist()
    return RouterLosses(aux, z, penalty, share, entropy, float(torch.stack(loads).max()))
