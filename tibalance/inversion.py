"""Textual Inversion: learn a placeholder token's embedding from a class's seed
images on a frozen Stable Diffusion pipeline - the first user of the
adaptation skeleton (`adapt.fit`): only which parameters train (the new rows
of the token embedding matrix) and how they are saved (diffusers'
load_textual_inversion format) are here."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from .adapt import OBJECT_TEMPLATES, STYLE_TEMPLATES, Adaptation, fit  # noqa: F401 - part of this module's interface
from .defaults import TI_DEFAULTS  # noqa: F401 - part of this module's interface
from .util import TibalanceError, file_digest

log = logging.getLogger(__name__)


def placeholder_tokens(placeholder: str, num_vectors: int) -> list[str]:
    """diffusers' multi-vector convention: '<x>', '<x>_1', '<x>_2', …"""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]


def expand_placeholder(text: str, placeholder: str, num_vectors: int) -> str:
    return text.replace(placeholder, " ".join(placeholder_tokens(placeholder, num_vectors)))


def initializer_word(cls_name: str, setting: str) -> str | None:
    if setting == "random":
        return None
    if setting == "auto":
        words = [w for w in re.split(r"[^A-Za-z0-9]+", cls_name) if w]
        return (words[-1] if words else cls_name).lower()
    return setting


class _Rows:
    """The trainable embedding rows and how to restore all the others."""

    def __init__(self, text_encoder, token_ids: list[int]):
        self.emb = text_encoder.get_input_embeddings()
        self.ids = torch.tensor(token_ids)
        self.original = self.emb.weight.detach().clone()

    @torch.no_grad()
    def restore_others(self):
        # the learned rows aside, the whole original back, the learned rows in again: the
        # same matrix as restoring the kept rows through a mask, without the mask's copy
        w = self.emb.weight
        ids = self.ids.to(w.device)
        learned = w[ids].clone()
        w.copy_(self.original)  # copy_ converts device and dtype
        w[ids] = learned

    def learned(self) -> torch.Tensor:
        return self.emb.weight.detach()[self.ids.to(self.emb.weight.device)].float().cpu().clone()



# SDXL's learned embeddings: one file, a tensor per text encoder under these keys
# (the layout of SDXL embeddings in the wild, which diffusers' documentation loads
# with load_textual_inversion once per encoder)
XL_KEYS = ("clip_l", "clip_g")


class TokenAdaptation(Adaptation):
    """A new word: its embedding row(s) train, in every text encoder the prompts
    go through (SDXL: both); every other row is restored after each step
    (AdamW's weight decay would move them)."""

    label = "TI"
    config_key = "ti"

    def __init__(self, cls: str, cls_name: str, settings: dict, seed: int, embeds_out: str,
                 init_embeds: str | None = None):
        self.cls, self.s, self.seed, self.embeds_out = cls, settings, seed, embeds_out
        self.init_embeds = init_embeds  # a learned token to go on from (COTI's cycles), else the initializer
        self.placeholder = settings["placeholder"].format(cls=cls)
        self.n_vec = int(settings["num_vectors"])
        self.tokens = placeholder_tokens(self.placeholder, self.n_vec)
        self.subject = " ".join(self.tokens)
        self.word = initializer_word(cls_name, settings["initializer"])

    def _add(self, tok, te, which: int):
        n_vec = self.n_vec
        if tok.add_tokens(self.tokens) != n_vec:
            raise TibalanceError(f"ti.placeholder: {self.placeholder!r} (class {self.cls}) is already a token "
                                 "of the tokenizer")
        ids = tok.convert_tokens_to_ids(self.tokens)
        te.resize_token_embeddings(len(tok), mean_resizing=False)
        weight = te.get_input_embeddings().weight
        with torch.no_grad():
            if self.init_embeds:
                init = self._learned(which).to(weight.device)
            elif self.word is None:  # the first encoder's draw is the one-encoder families' (the same seed)
                g = torch.Generator().manual_seed(self.seed + which)
                init = torch.randn(n_vec, weight.shape[1], generator=g).to(weight.device) * weight[:-n_vec].std()
            else:
                init_ids = tok.encode(self.word, add_special_tokens=False)
                if not init_ids:
                    raise TibalanceError(f"ti.initializer: {self.word!r} (class {self.cls}) encodes to no token")
                if len(init_ids) > 1 and which == 0:
                    log.info("initializer %r is %d tokens; starting from their mean embedding", self.word,
                             len(init_ids))
                init = weight[init_ids].mean(0, keepdim=True).expand(n_vec, -1)
            weight[ids] = init.to(weight.dtype)
        weight.requires_grad_(True)
        return ids, weight, _Rows(te, ids)

    def _learned(self, which: int) -> torch.Tensor:
        """Text encoder `which`'s rows of the token in init_embeds (this class's, n_vec of them)."""
        from safetensors.torch import load_file

        state = load_file(self.init_embeds)
        key = XL_KEYS[which] if len(state) > 1 or self.placeholder not in state else self.placeholder
        rows = state.get(key)
        if rows is None or rows.shape[0] != self.n_vec:
            raise TibalanceError(f"{self.init_embeds}: no {self.n_vec}-vector token {key!r} to go on from "
                                 f"(class {self.cls})")
        return rows

    def prepare(self, pipe, device):
        from .generator import text_pairs

        added = [self._add(tok, te, i) for i, (tok, te) in enumerate(text_pairs(pipe))]
        self.weights = [w for _, w, _ in added]
        self.rows = [r for _, _, r in added]
        self.xl = len(added) > 1
        log.info("class %s: token %s (%d vector(s)) in %d text encoder(s), initializer %r", self.cls,
                 self.placeholder, self.n_vec, len(added), self.word if self.word else "random")
        return list(self.weights)

    def after_step(self):
        for rows in self.rows:
            rows.restore_others()

    def state(self, opt):
        out = []
        for w, rows in zip(self.weights, self.rows):
            st = opt.state.get(w, {})
            ids = rows.ids.to(w.device)
            out.append({"rows": rows.learned(), "adam_step": float(st["step"]) if st else 0.0,
                        "exp_avg": st["exp_avg"][ids].cpu().clone() if st else None,
                        "exp_avg_sq": st["exp_avg_sq"][ids].cpu().clone() if st else None})
        return {"encoders": out}

    def load_state(self, ck, opt):
        encoders = ck["encoders"] if "encoders" in ck else [ck]  # a checkpoint of one encoder's older layout
        for w, rows, c in zip(self.weights, self.rows, encoders, strict=True):
            ids = rows.ids.to(w.device)
            with torch.no_grad():
                w[ids] = c["rows"].to(w.device, w.dtype)
            if c["exp_avg"] is None:
                continue
            st = opt.state[w]  # AdamW state, rebuilt: only the trainable rows matter
            st["step"] = torch.tensor(c["adam_step"])
            for k in ("exp_avg", "exp_avg_sq"):
                st[k] = torch.zeros_like(w, memory_format=torch.preserve_format)
                st[k][ids] = c[k].to(w.device, w.dtype)

    def save(self):
        from safetensors.torch import save_file

        Path(self.embeds_out).parent.mkdir(parents=True, exist_ok=True)
        learned = [rows.learned().contiguous() for rows in self.rows]
        save_file(dict(zip(XL_KEYS, learned)) if self.xl else {self.placeholder: learned[0]}, self.embeds_out)


def load_token(pipe, embeds: str, placeholder: str) -> None:
    """A learned token into the pipeline with diffusers' own loader: the file's
    one tensor (SD 1.x, 2.x), or for SDXL its clip_l tensor into the first text
    encoder and its clip_g tensor into the second."""
    from .generator import is_xl, text_pairs

    if not is_xl(pipe):
        pipe.load_textual_inversion(embeds, token=placeholder)
        return
    from safetensors.torch import load_file

    state = load_file(embeds)
    if set(XL_KEYS) - set(state):
        raise TibalanceError(f"{embeds}: holds {sorted(state)}, not SDXL's {' and '.join(XL_KEYS)} (a token "
                             "learned on another generator family?)")
    for key, (tok, te) in zip(XL_KEYS, text_pairs(pipe), strict=True):
        pipe.load_textual_inversion(state[key], token=placeholder, tokenizer=tok, text_encoder=te)


def train_textual_inversion(model: str, seed_paths: list[str], cls: str, cls_name: str, settings: dict,
                            seed: int, embeds_out: str, loss_out: str, preview_out: str,
                            resume_dir: str, stop_after: int | None = None,
                            return_pipeline: bool = False, init_embeds: str | None = None) -> dict:
    """Learn `<cls>` from seed_paths; writes learned_embeds.safetensors (diffusers'
    load_textual_inversion format), a loss CSV and a preview grid.

    stop_after: end the run after that many steps (tests use it to simulate a kill).
    return_pipeline: also return the trained pipeline (tests inspect its weights).
    init_embeds: a learned token (this function's output) to train on from
    instead of the initializer word (COTI's cycles)."""
    s = {**TI_DEFAULTS, **(settings or {})}
    if not seed_paths:
        raise TibalanceError(f"textual_inversion: class {cls!r} has an empty seed list")
    identity = {"cls": cls, "name": cls_name, **({"init": file_digest(init_embeds)} if init_embeds else {})}
    return fit(model, seed_paths, cls, s, seed, TokenAdaptation(cls, cls_name, s, seed, embeds_out, init_embeds),
               identity, loss_out, preview_out, resume_dir, stop_after, return_pipeline)


def nearest_words(model: str, embeds: str, placeholder: str, k: int = 5) -> list[dict]:
    """The k vocabulary tokens whose embeddings lie closest (cosine) to each
    vector of the learned token, per text encoder (seed 000's analysis: the
    learned flowers sat near "hibiscus", "fleur" and each other). Rows:
    encoder, vector, rank, word (the BPE token, its end-of-word mark dropped),
    cosine."""
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from .generator import load_pipeline, text_pairs

    state = load_file(embeds)
    pipe = load_pipeline(model)
    pairs = text_pairs(pipe)
    learned = [state[key] for key in XL_KEYS] if len(pairs) > 1 else [next(iter(state.values()))]
    rows = []
    for e, ((tok, te), vecs) in enumerate(zip(pairs, learned, strict=True)):
        vocab = te.get_input_embeddings().weight.detach().float()
        sims = F.normalize(vecs.float(), dim=1) @ F.normalize(vocab, dim=1).T  # [vectors, vocabulary]
        for v, row in enumerate(sims):
            top = torch.topk(row, k)
            for rank, (score, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                word = tok.convert_ids_to_tokens(idx).replace("</w>", "")
                rows.append({"encoder": e, "vector": v, "rank": rank, "word": word, "cosine": round(score, 4)})
    log.info("%s: nearest words %s", placeholder, ", ".join(r["word"] for r in rows if r["encoder"] == 0
                                                              and r["vector"] == 0))
    return rows
