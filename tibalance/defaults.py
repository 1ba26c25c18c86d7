"""Settings' defaults of the generative stages, in a module without heavy
imports: the Snakefile reads them at parse time (every snakemake start, and on
a cluster every job), which must not pay for importing torch."""

TI_DEFAULTS = {
    "placeholder": "<{cls}>",
    "initializer": "auto",        # auto: the class name's last word; a word; or 'random'
    "num_vectors": 1,
    "steps": 500,
    "lr": 5.0e-3,
    "lr_schedule": "constant",    # constant | cosine | linear
    "warmup_steps": 0,
    "batch_size": 4,
    "resolution": None,           # None: the generator's own size (generator.native_resolution)
    "learnable_property": "object",
    "templates": None,            # None: the built-in list for learnable_property
    "augment_variants": 8,        # augmented copies of each seed image encoded once
    "mixed_precision": "auto",    # auto (bf16/fp16 on GPU, fp32 on CPU) | no | fp16 | bf16
    "checkpoint_every": 100,
    "log_every": 50,              # step losses flushed from the device every N steps
    "preview_images": 4,
    "preview_steps": 20,
    "device": "auto",
}


# LoRA shares the adaptation skeleton's keys with TI (steps … device) and adds
# the adapter's shape.
LORA_DEFAULTS = {
    "rank": 4,
    "alpha": 4,                   # the update is scaled by alpha / rank
    "target_modules": ["to_q", "to_k", "to_v", "to_out.0"],   # the UNet's attention projections
    "train_text_encoder": False,  # also adapters on the text encoder's attention (q/k/v/out_proj)
    "prompt_name": None,          # lora prompts name the class by this instead of its name
    "steps": 500,
    "lr": 1.0e-4,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "batch_size": 4,
    "resolution": None,           # None: the generator's own size
    "learnable_property": "object",
    "templates": None,
    "augment_variants": 8,
    "mixed_precision": "auto",
    "checkpoint_every": 100,
    "log_every": 50,              # step losses flushed from the device every N steps
    "preview_images": 4,
    "preview_steps": 20,
    "device": "auto",
}


PRETRAIN_DEFAULTS = {
    "exclude": "auto",          # classes it never sees: 'auto' = fewer than half the largest class's train images
    "template": "a photo of a {}",
    "vae_steps": 400,
    "vae_lr": 1.0e-3,
    "kl_weight": 1.0e-6,
    "unet_steps": 3000,
    "lr": 1.0e-3,
    "warmup_steps": 100,
    "batch_size": 64,
    "caption_dropout": 0.1,     # empty caption, for classifier-free guidance
    "ema_decay": 0.999,
    "train_text_encoder": True,
    "hflip": True,
    "device": "auto",
    "quality_images": 32,
    "quality_steps": 25,
    "quality_guidance": 4.0,
}

# the settings of the pretraining's VAE phase (its own job): an edit of any other
# key (the UNet's steps, lr, ...) reruns the UNet phase only
PRETRAIN_VAE_KEYS = ("exclude", "vae_steps", "vae_lr", "kl_weight", "batch_size", "hflip",
                     "mixed_precision", "device")


SEEDS_DEFAULTS = {
    "n": 8,                       # seed images per weak class
    "candidate_fraction": 0.5,    # the most confidently on-class share of its train images they are chosen among
}

TINY_DEFAULTS = {  # generator.build: tiny / pretrain: the SD-architecture model's size
    "resolution": 32,
    "unet_channels": [32, 64],
    "vae_channels": [32, 64],
    "text_hidden": 32,
    "text_layers": 2,
    "attention_head_dim": 8,
    "latent_channels": 4,
}

FILTER_DEFAULTS = {"method": "knn", "k": 5, "quantile": 0.25, "threshold": 0.5}
FILTER_METHODS = ("knn", "prob", "none")

SAMPLING_DEFAULTS = {
    # a count per class, or a target the class is refilled to: "median" / "max"
    # (the median / largest train class size) or {"fill_to": N}
    "n_images": 100,
    "batch_size": "auto",     # auto: on a GPU what fits in its free memory, on a CPU 8
    "scheduler": "dpmpp",     # dpmpp (DPM-Solver++) | ddim | euler | pndm
    "steps": 25,
    "guidance_scale": 7.5,
    "resolution": None,       # None: the generator's own size (512 for SD 1.5, 768 for SD 2.x)
    "templates": ["a photo of a {}"],
    "negative_prompt": "",
    "prompt_name": None,      # raw prompts use this instead of the class name (e.g. sword lily -> gladiolus)
    "strength": 0.5,          # ti_i2i, lora_i2i: how far each real image is noised before denoising (0: kept, 1: pure noise)
    "device": "auto",
}


DIFF_II_DEFAULTS = {
    # what the inversions and the denoising are conditioned on: the class tokens
    # with one LoRA shared by the classes (ti_shared_lora, the paper's; rule
    # lora_shared), or per class: ti | lora | ti_lora | coti; auto: the shared one
    # where more than one class gets images, the token where one does
    "concept": "auto",
    "split_ratio": "auto",    # the share of the denoising steps under the suffixed prompt; auto: the paper's rule
                              # (0.3 at 5 shots, 0.1 at 10, 1.0 long-tailed: paper_split_ratio)
    # context suffixes of the first stage's prompt (the paper's come from a captioner and an LLM)
    "suffixes": ["on a plain background", "in natural light", "in a close-up photo", "seen from the side",
                 "in a cluttered scene", "outdoors", "indoors", "in soft shadow"],
    "suffix_file": None,      # a text file of suffixes, one per line (replaces the list)
    "inversion_refine": 0,    # fixed-point refinements of each DDIM inversion step (0: plain, the paper's)
}


def paper_split_ratio(shots: int, long_tailed: bool) -> float:
    """Diff-II's split ratio by its paper's rule (diff_ii.split_ratio: auto):
    1.0 on long-tailed data; else by the class's real training images, 0.3 at 5
    shots and 0.1 at 10 (up to 7 shots the 5-shot value, from 8 the 10-shot
    one, and for every larger class)."""
    if long_tailed:
        return 1.0
    return 0.3 if int(shots) <= 7 else 0.1


# GeNIe (Koohpayegani et al.): image-to-image from the training images of the
# classes the baseline confuses with the weak class, prompted with the weak
# class, at a noise level that changes the class and keeps the layout (genie.py)
GENIE_DEFAULTS = {
    "confusers": 3,            # the classes most confused with the weak one on val (an integer, or "all")
    "concept": "raw",          # what the prompt names the weak class by: raw (its name, the paper's) | ti | lora | ti_lora
    "level": 0.8,              # genie: the one noise level (the paper's 0.8)
    "levels": [0.5, 0.6, 0.7, 0.8, 0.9],  # genie_ada: the levels each start image is edited at, one kept
    "early_stop": None,        # genie_ada: a share of the way to the class's mean past which no higher level is made
    "filter": "none",          # the filter method of these modes: none keeps the near-boundary images (the paper's)
}

# feedback-guided sampling (Askari-Hemmat et al.): mode fg_i2i, ti_i2i with the
# baseline classifier's criterion gradient added to the latents (feedback.py)
FEEDBACK_DEFAULTS = {
    "scale": 0.1,              # each guided step's move, in units of the latents' spread (0: ti_i2i's images)
    "share": 0.5,              # the first share of the denoising steps that are guided
    "criterion": "entropy",    # entropy (towards where the baseline is unsure) | loss (on the weak class)
}

# COTI (controllable textual inversion): the class's TI token trained on in
# active cycles; each cycle its samples and the class's unused real training
# images are scored and the top ones join the training pool (coti.py)
COTI_DEFAULTS = {
    "cycles": 3,              # active cycles after the TI token (the paper ran until its indicator plateaued)
    "per_cycle": 4,           # B: candidates added to the training pool a cycle (the paper: 10)
    "generated": 8,           # images the last cycle's token draws a cycle: candidates, and the scores' weights
    "steps": 100,             # training steps a cycle (every other training setting: the ti section's)
    "lr": None,               # None: ti.lr
    "lr_decay": 0.5,          # the lr's factor when the indicator falls below the last cycle's (the pool frozen then)
    "pool": None,             # a folder of unlabelled real images, the paper's pool (None: the study's training
                              # images, the class's unused ones and every other class's, labels ignored)
    "self_training": False,   # the token's own samples among the candidates too (not the paper's)
}


# Below this many images on either side FID/KID are computed but marked in the
# tables (config metrics.min_images): FID's bias grows as 1/N (Chong & Forsyth,
# "Effectively Unbiased FID", CVPR 2020) and KID's variance is large, so such a
# value is not comparable with one from a full-size set.
FID_RELIABLE_IMAGES = 100


# The registry of the study's names: rules, schema enums (a test compares),
# tables and docs take them from here.
# the methods a retraining run trains with (retrain.methods), in the tables' order
# the methods that train on synthetic images (ablation.methods)
SYNTHETIC_METHODS = ("raw_sd", "ti", "ti_i2i", "lora", "lora_i2i", "ti_lora", "diff_ii", "coti", "genie", "genie_ada",
                     "fg_i2i")
# synthetic on top of oversampling: the oversample set, each of whose weak-class
# images (real or repeated) is swapped for one of the mode's kept synthetic images
# with probability retrain.combine_p, drawn anew each epoch
COMBINED_METHODS = tuple(f"oversample+{m}" for m in SYNTHETIC_METHODS)
# the yardstick at a synthetic method's own count: real_oracle's held-back real
# images cut to as many as that method kept (per class and replicate), so that
# "a method reaches x% of the oracle" compares training sets of one size
ORACLE_AT_METHODS = tuple(f"real_oracle@{m}" for m in SYNTHETIC_METHODS)
# the rows that measure the study rather than propose a method (never "best")
YARDSTICK_METHODS = ("real_oracle", *ORACLE_AT_METHODS)
# the long-tail literature's re-balancing without a generator: OPeN (fresh pure
# noise in class-balanced draws from the deferral epoch, DAR-BN: purenoise.py),
# its old form as an ablation (noise PNGs drawn once among the oversampled
# images, undeferred, no DAR-BN: rebalance.noise_images), class-weighted loss,
# the same deferred (DRW), minority images CutMix-ed onto the batch (CMO) and CMO
# with DRW (rebalance.py)
REBALANCE_METHODS = ("noise", "noise_static", "reweight", "drw", "cmo", "cmo_drw")
# the re-balancing deferred (OSeD's runs, Cao et al.'s DRS): the method's
# training set, but its added images (and swaps) only from retrain.defer_epoch on,
# the real images alone before it (noise is OPeN deferred already)
DEFERRED_METHODS = tuple(f"deferred_{m}" for m in ("oversample", *SYNTHETIC_METHODS))
# rows kept as a named ablation of a paper's method (its older, unfaithful form): a study opts into them
ABLATION_ROWS = ("noise_static",)
METHODS = ("baseline", "oversample", *REBALANCE_METHODS, "real_oracle", *ORACLE_AT_METHODS, *SYNTHETIC_METHODS,
           *COMBINED_METHODS, *DEFERRED_METHODS)


def undeferred(method: str) -> str:
    """The method a deferred_<method> defers (the method itself otherwise)."""
    return method[len("deferred_"):] if method in DEFERRED_METHODS else method
# the sampling modes (results/samples/<mode>/)
MODES = ("raw", "ti", "ti_i2i", "lora", "lora_i2i", "ti_lora", "diff_ii", "coti", "genie", "genie_ada", "fg_i2i")
# the modes that sample with a learned token of the class: {mode: the token's job}
# (textual_inversion's, or coti's: the same token trained on in active cycles)
TOKEN_OF = {"ti": "ti", "ti_i2i": "ti", "ti_lora": "ti", "coti": "coti", "fg_i2i": "ti"}
TOKEN_MODES = tuple(TOKEN_OF)
# the modes that sample with one of the class's LoRA adapters: {mode: adapter kind}
LORA_ADAPTER = {"lora": "lora", "lora_i2i": "lora", "ti_lora": "ti_lora"}
LORA_MODES = tuple(LORA_ADAPTER)
# the real-image-guided modes: image-to-image from the class's real training images
I2I_MODES = ("ti_i2i", "lora_i2i", "fg_i2i")
# GeNIe's modes: image-to-image from other classes' training images (genie.py)
GENIE_MODES = ("genie", "genie_ada")
# the concepts diff_ii can sample on (diff_ii.concept): the class's token with the
# adapter every adapted class shares (Diff-II's), the token, the lora adapter,
# both, or COTI's token
DIFF_II_CONCEPTS = ("auto", "ti_shared_lora", "ti", "lora", "ti_lora", "coti")
# the adapter of concept ti_shared_lora: one for the study (results/lora/ti_shared)
SHARED_ADAPTER = "ti_shared"


def uses(mode: str, concept: str = "ti", genie: str = "raw") -> tuple[str | None, str | None]:
    """(the token the mode samples with: "ti" (textual_inversion's), "coti"
    (coti's) or None; the LoRA adapter it samples with or None); diff_ii on its
    concept (diff_ii.concept), the genie modes on theirs (genie.concept)."""
    if mode == "diff_ii":
        if concept in ("ti_shared_lora", "auto"):  # auto: the token, and the shared adapter where it resolves to it
            return "ti", SHARED_ADAPTER
        mode = concept
    if mode in GENIE_MODES:
        mode = genie
    return TOKEN_OF.get(mode), LORA_ADAPTER.get(mode)
