"""The EAGLE-style draft head (`spectune distill --kind head`): a light model that drafts from the
target's own hidden states, and the drafter that runs it.

Why: a small draft model must rebuild, from tokens alone, what the target already knows at every
position; the target's last hidden state (the feature its output layer reads) carries it. EAGLE
(Li et al., 2024) drafts at the feature level: at position i the head reads the target's feature
f_i and the embedding of the next token x_(i+1), and predicts f_(i+1); the target's own output
layer turns that into the draft's token x_(i+2). Further drafts feed the head's predicted feature
back in place of the target's. The head is a projection (2H -> H) and one decoder layer of the
target's architecture (with its final norm): about 1/30 of SmolLM2-135M's layers.

It shares the target's input embeddings and output layer (not saved with it: the draft folder
holds the projection, the layer and the vocabulary, and is bound to its target, checked by hash,
at load). Optionally its output is a reduced vocabulary, the target's most frequent tokens on the
distillation data: the output layer is by far the largest product a one-layer draft makes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

WEIGHTS = "draft_head.safetensors"


class DraftHead(torch.nn.Module):
    """fc: (B, T, 2H) -> (B, T, H), then `body`, a base model of the target's architecture with
    `num_hidden_layers` layers fed by inputs_embeds. `vocab` (N,): the target token ids it drafts."""

    def __init__(self, config, vocab: torch.Tensor):
        super().__init__()
        from transformers import AutoModel

        self.config = config
        hidden = config.hidden_size
        self.fc = torch.nn.Linear(2 * hidden, hidden, bias=True)
        self.body = AutoModel.from_config(config, dtype=torch.float32)
        self.body.get_input_embeddings().requires_grad_(False)  # vocabulary of 1: fed inputs_embeds, never ids
        self.register_buffer("vocab", vocab.long())
        self.out: torch.nn.Linear | None = None  # the target's output rows for `vocab`, set by bind()

    @classmethod
    def for_target(cls, target, layers: int, vocab: torch.Tensor) -> DraftHead:
        """A head for `target`: its last `layers` layers and final norm as the starting body, and
        fc = [I | I], the residual-stream picture of "what was known + the new token"."""
        config = copy.deepcopy(target.config)
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[-layers:]
        config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id = 1, None, None, None
        head = cls(config, vocab)
        stack = target.get_decoder()
        n = len(stack.layers)
        with torch.no_grad():
            for i in range(layers):
                head.body.layers[i].load_state_dict(stack.layers[n - layers + i].state_dict())
            head.body.norm.load_state_dict(stack.norm.state_dict())
            eye = torch.eye(config.hidden_size)
            head.fc.weight.copy_(torch.cat([eye, eye], 1))
            head.fc.bias.zero_()
        return head

    def forward(self, feats: torch.Tensor, embeds: torch.Tensor, attention_mask=None, position_ids=None,
                cache=None) -> torch.Tensor:
        """Predicted next features (B, T, H) from target features and next-token embeddings (B, T, H)."""
        from .decode.engine import cache_kwargs

        x = self.fc(torch.cat([feats, embeds], -1))  # (B, T, H)
        out = self.body(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=cache is not None, **cache_kwargs(self.body, cache))
        return out.last_hidden_state

    def bind(self, target) -> DraftHead:
        """Take the target's output rows for this head's vocabulary (a copy of N rows, not saved)."""
        out = target.get_output_embeddings()
        if hasattr(out, "weight_int8"):  # an int8 target (--quantize int8): its rows, dequantized
            weight = out.weight_int8[self.vocab].float() * out.scale[self.vocab].float()[:, None]  # (N, H)
        else:
            weight = out.weight.detach()[self.vocab].float()  # (N, H)
        self.out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.out.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
        return self

    # The training loop's save/load calls, in safetensors; the config says what the folder is.
    def save_pretrained(self, folder, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("out.")}
        save_file(state, str(folder / WEIGHTS))
        (folder / "config.json").write_text(json.dumps({"spectune_draft": "head", "body": self.config.to_dict()},
                                                       indent=1))

    @classmethod
    def from_pretrained(cls, folder, use_safetensors: bool = True, **_) -> DraftHead:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import AutoConfig

        from .errors import SpectuneError

        try:
            meta = json.loads((Path(folder) / "config.json").read_text())
            body = dict(meta["body"])
            config = AutoConfig.for_model(body.pop("model_type"), **body)
            state = load_file(str(Path(folder) / WEIGHTS))
            head = cls(config, state["vocab"])
            head.load_state_dict(state)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:  # missing, cut or foreign
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise SpectuneError(f"not a readable draft head ({type(e).__name__}: {first}); distil it again with "
                                "`spectune distill --kind head`", where=str(folder)) from None
        return head.eval()


class HeadDrafter:
    """Drafts with a DraftHead for one row. The engine hands it the target's features of every
    position it keeps (`observe`); `propose` runs the head over the positions it has not seen with
    true features, then autoregressively on its own predicted features."""

    costly = True
    observes = True  # the engine passes this drafter the target's final hidden states

    def __init__(self, head: DraftHead, target):
        self.head, self.target = head, target
        self.model = head  # what the engine weighs: bytes read per draft token (fc, layer, output rows)
        self.embed = target.get_input_embeddings()
        self.vocab_size = target.get_output_embeddings().out_features
        self.pending: list[torch.Tensor] = []  # (n_i, H): target features of positions the head has not read
        self.observed = 0  # positions whose target features were handed over
        self.cache = None
        self.done = 0  # head positions in its cache computed from true target features

    def fork(self) -> HeadDrafter:
        return HeadDrafter(self.head, self.target)

    def observe(self, hidden: torch.Tensor) -> None:
        """The target's features (n, H) for the next n positions of the context, in order."""
        self.pending.append(hidden)
        self.observed += hidden.shape[0]

    @torch.no_grad()
    def propose(self, context: list[int], k: int, sampling, generator):
        from transformers import DynamicCache

        from .decode.sampling import distribution, pick

        n = len(context) - 1  # context[-1] is the token the target has not seen: features 0..n-1 are known
        if self.observed != n or n < 1:
            raise RuntimeError(f"draft head: {self.observed} target features for a context of {len(context)}")
        if self.cache is None:
            self.cache = DynamicCache(config=self.head.config)
        if self.cache.get_seq_length() > self.done:  # drop the positions fed with the head's own features
            self.cache.crop(self.done - self.cache.get_seq_length())  # a negative count: tokens to drop
        # Position i reads (f_i, x_(i+1)) and predicts f_(i+1), whose token is x_(i+2). The positions
        # before `done` are in the head's cache; the pending features are those of done .. n-1.
        start = self.done
        feats = torch.cat(self.pending).unsqueeze(0)  # (1, n - start, H)
        self.pending = []
        x = self.embed(torch.tensor([context[start + 1 : n + 1]]))  # (1, n - start, H)
        pos = torch.arange(start, n).unsqueeze(0)
        f = self.head(feats.to(x.dtype), x, position_ids=pos, cache=self.cache)[:, -1:]
        self.done = n
        tokens, qs = [], []
        seen = torch.tensor(context)
        for i in range(k):
            logits = torch.full((self.vocab_size,), float("-inf"), dtype=f.dtype)  # (V,): 0 outside the vocab
            logits[self.head.vocab] = self.head.out(f[0, -1])
            q = distribution(logits, seen, sampling)
            t = pick(q, generator)
            tokens.append(t)
            qs.append(q)
            seen = torch.cat([seen, torch.tensor([t])])
            if i + 1 < k:
                f = self.head(f, self.embed(torch.tensor([[t]])), position_ids=torch.tensor([[n + i]]),
                              cache=self.cache)
        return tokens, torch.stack(qs)


def head_drafter(head: DraftHead, target) -> HeadDrafter:
    """The head bound to the target's output layer, in the target's dtype (int8 for an int8 target)."""
    head = head.float().bind(target)
    if getattr(target.config, "spectune_quantized", None) == "int8":
        from .quantize import quantize_int8

        return HeadDrafter(quantize_int8(head), target)
    return HeadDrafter(head.to(target.get_input_embeddings().weight.dtype).eval(), target)
