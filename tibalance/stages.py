"""One function per DAG job, with plain arguments. workflow/scripts/*.py call
these; the tests call them too."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from .defaults import SEEDS_DEFAULTS
from .evaluation import evaluate, split_metrics
from .filtering import kept_mask
from .util import Sidecar, TibalanceError, read_json, write_csv, write_json, write_markdown

log = logging.getLogger(__name__)


def prepare_data(data_cfg: dict, seed: int, manifest: str, classes: str, skipped: str,
                 image_dir: str, meta: str) -> None:
    from .data import build_manifest

    side = Sidecar(seed)
    m = build_manifest(data_cfg, seed, manifest, classes, skipped, image_dir)
    side.write(meta, images=len(m))


def train_baseline(manifest: str, classes: str, clf_cfg: dict, seed: int,
                   model_out: str, predictions_out: str, metrics_out: str, meta: str) -> None:
    from .data import load_manifest
    from .training import train_classifier

    side = Sidecar(seed)
    m = load_manifest(manifest)
    order = read_json(classes)["classes"]
    train = m[m["split"] == "train"]
    clf = train_classifier(train["path"], train["label"], order, clf_cfg, seed, progress_desc="baseline",
                           checkpoint=str(Path(model_out).parent / "resume" / "baseline.pt"))
    clf.save(model_out)
    pred = evaluate(clf, m)
    write_csv(pred, predictions_out)
    metrics = split_metrics(pred, order)
    write_json(metrics_out, metrics)
    log.info("baseline: %s", metrics)
    side.write(meta, train_images=len(train))


def analyse_confusion(predictions: str, classes: str, analysis_cfg: dict,
                      per_class_out: str, confusion_out: str, weak_out: str) -> list[str]:
    from .analysis import analyse

    info = read_json(classes)
    pred = pd.read_csv(predictions, dtype={"label": str, "pred": str, "split": str})
    weak = analyse(pred, info["classes"], analysis_cfg, per_class_out, confusion_out, weak_out, info.get("names"))
    from .retrain import to_markdown

    write_markdown(Path(per_class_out).with_suffix(".md"), to_markdown(pd.read_csv(per_class_out), pm_pairs=False),
                   "Baseline per class (val)")
    log.info("weak classes: %s", weak)
    return weak


def select_seeds(cls: str, manifest: str, model: str, seeds_cfg: dict,
                 seeds_out: str, sheet_out: str) -> None:
    from .classifier import TrainedClassifier, predict
    from .data import load_manifest
    from .seeds import contact_sheet, select_seed_indices

    m = load_manifest(manifest)
    cand = m[(m["split"] == "train") & (m["label"] == cls)].reset_index(drop=True)
    if cand.empty:
        raise TibalanceError(f"select_seeds: class {cls!r} has no training images in {manifest}")
    clf = TrainedClassifier.load(model)
    probs, feats = predict(clf, list(cand["path"]))
    conf = probs[:, clf.classes.index(cls)]
    s = {**SEEDS_DEFAULTS, **seeds_cfg}
    n = int(s["n"])
    idx, note = select_seed_indices(feats, conf, n, float(s["candidate_fraction"]), s.get("replicate_seed"))
    if len(idx) < n:
        log.warning("class %s: %s", cls, note)
    else:
        log.info("class %s: %s", cls, note)
    out = pd.DataFrame({"rank": range(len(idx)), "path": cand["path"][idx].to_list(),
                        "prob_true": conf[idx]})
    write_csv(out, seeds_out)
    contact_sheet(list(out["path"]), sheet_out,
                  captions=[f"p={p:.2f}" for p in out["prob_true"]])


# --------------------------------------------------------------------------- generative half

def build_generator(tiny_cfg: dict, seed: int, out_dir: str, meta: str) -> None:
    from .tiny import build_tiny

    side = Sidecar(seed)
    build_tiny(out_dir, tiny_cfg, seed)
    side.write(meta, kind="tiny", settings=tiny_cfg)


def pretrain_vae(manifest: str, classes: str, tiny_cfg: dict, vae_cfg: dict, seed: int, out_dir: str,
                 meta: str) -> None:
    """The demo generator's first phase: its VAE (beside the baseline: it needs no UNet)."""
    from .pretrain import pretrain_vae as phase1
    from .util import pick_device

    side = Sidecar(seed)
    device = pick_device(vae_cfg.get("device", "auto"))
    result = phase1(manifest, read_json(classes), out_dir, tiny_cfg, vae_cfg, seed, device=device,
                    resume=str(Path(out_dir) / "resume" / "vae.pt"))
    side.write(meta, kind="pretrain_vae", settings={"tiny": tiny_cfg, "pretrain": vae_cfg}, **result)


def pretrain_generator(manifest: str, classes: str, vae_meta: str, tiny_cfg: dict, pretrain_cfg: dict, seed: int,
                       out_dir: str, loss_out: str, meta: str) -> None:
    """The second phase: UNet and text encoder on the VAE's latents; the whole pipeline."""
    from pathlib import Path

    from .pretrain import pretrain_unet
    from .util import pick_device

    side = Sidecar(seed)
    device = pick_device(pretrain_cfg.get("device", "auto"))
    vae = read_json(vae_meta)
    result = pretrain_unet(manifest, read_json(classes), str(Path(vae_meta).parent / "pretrain_vae"), out_dir,
                           tiny_cfg, pretrain_cfg, seed, device=device, loss_out=loss_out,
                           resume=str(Path(out_dir).parent / "pretrain_resume" / "unet.pt"))
    side.write(meta, kind="pretrain", settings={"tiny": tiny_cfg, "pretrain": pretrain_cfg},
               images=vae["images"], vae_reconstruction_mse=vae["vae_reconstruction_mse"], **result)


def generator_quality(model: str, classifier: str, classes: str, pretrain_meta: str, pretrain_cfg: dict, seed: int,
                      out_csv: str, out_md: str, grid_png: str, meta: str) -> None:
    """The baseline classifier's accuracy on the generator's images of each class it learned."""

    from .pretrain import generator_quality as quality
    from .retrain import display_names, to_markdown
    from .util import pick_device

    side = Sidecar(seed)
    learned = read_json(pretrain_meta)["classes"]
    df = quality(model, classifier, read_json(classes), learned, pretrain_cfg["template"],
                 int(pretrain_cfg["quality_images"]), int(pretrain_cfg["quality_steps"]),
                 float(pretrain_cfg["quality_guidance"]), seed, device=pick_device(pretrain_cfg.get("device", "auto")),
                 grid_out=grid_png)
    total = {"class": "all (mean)", "prompt": "", "n": int(df["n"].sum()), "accuracy": float(df["accuracy"].mean()),
             "most_often": "", "most_often_share": float("nan")}
    df = display_names(pd.concat([df, pd.DataFrame([total])], ignore_index=True), read_json(classes)["names"])
    write_csv(df, out_csv)
    chance = 1.0 / len(read_json(classes)["classes"])
    write_markdown(out_md, to_markdown(df.fillna("")) + f"\nChance level: {chance:.4f} "
                   f"(the classifier knows {len(read_json(classes)['classes'])} classes).\n", "Generator quality")
    log.info("generator quality: mean accuracy %.3f over %d classes", total["accuracy"], len(learned))
    side.write(meta, accuracy=total["accuracy"])


def _seed_paths(cls: str, seeds_csv: str) -> list[str]:
    seeds = pd.read_csv(seeds_csv, dtype=str)
    if seeds.empty:
        raise TibalanceError(f"class {cls}: seed list {seeds_csv} is empty")
    return list(seeds["path"])


def textual_inversion(cls: str, classes: str, seeds_csv: str, model: str, ti_cfg: dict, seed: int,
                      embeds_out: str, loss_out: str, preview_out: str, resume_dir: str, meta: str) -> None:
    from .inversion import train_textual_inversion

    side = Sidecar(seed)
    name = read_json(classes)["names"][cls]
    result = train_textual_inversion(model, _seed_paths(cls, seeds_csv), cls, name, ti_cfg, seed,
                                     embeds_out, loss_out, preview_out, resume_dir)
    side.write(meta, **result)


def token_neighbours(tokens: dict[str, str], model: str, placeholder: str, out_csv: str, k: int = 5) -> None:
    """The nearest vocabulary tokens of each learned token ({"ti": embeds, "coti": embeds})."""
    from .inversion import nearest_words

    rows = [{"token": name, **r} for name, path in tokens.items() for r in nearest_words(model, path, placeholder, k)]
    write_csv(pd.DataFrame(rows, columns=["token", "encoder", "vector", "rank", "word", "cosine"]), out_csv)


def coti(cls: str, classes: str, manifest: str, seeds_csv: str, ti_embeds: str, classifier: str, model: str,
         ti_cfg: dict, coti_cfg: dict, sampling_cfg: dict, seed: int, cycle_dir: str, embeds_out: str,
         cycles_out: str, candidates_out: str, preview_out: str, meta: str, features: str | None = None) -> None:
    from .coti import train_coti

    side = Sidecar(seed)
    name = read_json(classes)["names"][cls]
    side.write(meta, **train_coti(model, cls, name, manifest, seeds_csv, ti_embeds, classifier, ti_cfg, coti_cfg,
                                  sampling_cfg, seed, cycle_dir, embeds_out, cycles_out, candidates_out,
                                  preview_out, features=features))


def lora(cls: str, kind: str, classes: str, seeds_csv: str, model: str, lora_cfg: dict, seed: int,
         out_dir: str, loss_out: str, preview_out: str, resume_dir: str, meta: str,
         embeds: str | None = None, placeholder: str | None = None, num_vectors: int = 1) -> None:
    from .lora import train_lora

    side = Sidecar(seed)
    name = read_json(classes)["names"][cls]
    result = train_lora(model, _seed_paths(cls, seeds_csv), cls, name, lora_cfg, seed, out_dir, loss_out,
                        preview_out, resume_dir, kind=kind, embeds=embeds, placeholder=placeholder,
                        num_vectors=num_vectors)
    side.write(meta, **result)


def lora_shared(seeds_csvs: dict[str, str], embeds: dict[str, str], tokens: dict[str, dict], model: str,
                lora_cfg: dict, seed: int, out_dir: str, loss_out: str, preview_out: str, resume_dir: str,
                meta: str) -> None:
    """Diff-II's shared adapter: seeds_csvs and embeds {class: file}, tokens
    {class: placeholder, num_vectors}."""
    from .lora import train_shared_lora

    side = Sidecar(seed)
    seeds = {c: _seed_paths(c, f) for c, f in seeds_csvs.items()}
    toks = {c: {**tokens[c], "embeds": embeds[c]} for c in seeds}
    result = train_shared_lora(model, seeds, toks, lora_cfg, seed, out_dir, loss_out, preview_out, resume_dir)
    side.write(meta, classes=sorted(seeds), **result)


def sample(cls: str, mode: str, classes: str, manifest: str, model: str, sampling_cfg: dict, seed: int,
           out_csv: str, image_dir: str, meta: str, **inputs) -> None:
    """inputs: embeds, placeholder, num_vectors, lora, lora_prompt_name, diff_ii, inversions (sample_class's);
    the genie modes: genie, baseline_model, predictions (genie.sample_genie's)."""
    from .defaults import GENIE_DEFAULTS, GENIE_MODES, I2I_MODES

    side = Sidecar(seed)
    info = read_json(classes)
    name = info["names"][cls]
    if mode in GENIE_MODES:
        from .genie import sample_genie

        inputs.pop("inversions", None)
        new = sample_genie(model, mode, cls, name, sampling_cfg, seed, manifest, out_csv, image_dir,
                           classes=info["classes"], **inputs)
        g = {**GENIE_DEFAULTS, **(inputs.get("genie") or {})}
        side.write(meta, generated=new, unet_steps=_unet_steps(out_csv, sampling_cfg,
                                                               g["levels"] if mode == "genie_ada" else None))
        return
    from .sampling import sample_class

    new = sample_class(model, mode, cls, name, sampling_cfg, seed, manifest, out_csv, image_dir, **inputs)
    d = inputs.get("diff_ii")
    side.write(meta, generated=new, unet_steps=_unet_steps(out_csv, sampling_cfg, image_to_image=mode in I2I_MODES),
               **({"split_ratio": d["split_ratio"]} if mode == "diff_ii" and d else {}))


def _unet_steps(out_csv: str, sampling_cfg: dict, levels=None, image_to_image: bool = True) -> int:
    """A sample table's denoising steps (cost.unet_steps on its strength column;
    every step for each image of a mode that denoises from noise, diff_ii's
    interpolation strengths aside)."""
    from .cost import unet_steps
    from .defaults import SAMPLING_DEFAULTS

    steps = int({**SAMPLING_DEFAULTS, **(sampling_cfg or {})}["steps"])
    strengths = pd.read_csv(out_csv)["strength"].tolist()
    return unet_steps(strengths if image_to_image else [None] * len(strengths), steps, levels)


def invert(cls: str, classes: str, manifest: str, model: str, sampling_cfg: dict, diff_ii_cfg: dict,
           out_csv: str, out_dir: str, meta: str, **inputs) -> None:
    """inputs: embeds, placeholder, num_vectors, lora, lora_prompt_name (the concept's)."""
    from .sampling import invert_job

    side = Sidecar(None)
    name = read_json(classes)["names"][cls]
    side.write(meta, **invert_job(model, cls, name, manifest, sampling_cfg, diff_ii_cfg, out_csv, out_dir, **inputs))


def sample_grid(cls: str, seeds_csv: str, sample_csvs: dict[str, str], out_png: str, per_row: int = 8) -> None:
    """Rows: real seed images, then one row per sampling mode (raw, ti, …)."""
    from .seeds import contact_sheet

    paths, caps = [], []
    for label, csv in [("real", seeds_csv)] + list(sample_csvs.items()):
        row = list(pd.read_csv(csv, dtype=str)["path"])[:per_row]
        paths += row + [None] * (per_row - len(row))
        caps += [label if row else f"{label}: 0 images"] + [label] * (per_row - 1)
    contact_sheet(paths, out_png, cols=per_row, captions=caps)


# --------------------------------------------------------------------------- evaluation

def fid(cls: str, manifest: str, model: str, sample_csvs: dict[str, str], metrics_cfg: dict,
        out_json: str, cache_root: str, meta: str) -> None:
    """FID/KID of each sampling mode's images against the class's real val images
    (never test: FID informs settings, and the test split is read only by the
    final evaluation).

    A set of fewer than 2 images (a class already at its target size gets 0)
    has no FID: its row says so instead of stopping the job."""
    from .data import load_manifest
    from .fid import MIN_IMAGES, fid_kid
    from .util import pick_device

    side = Sidecar()
    m = load_manifest(manifest)
    real = list(m[(m["label"] == cls) & (m["split"] == "val")]["path"])
    device = str(pick_device("auto"))
    rows = []
    for network in metrics_cfg.get("networks", ["classifier"]):
        for method, csv in sample_csvs.items():
            fake = list(pd.read_csv(csv, dtype=str)["path"])
            if len(fake) < MIN_IMAGES or len(real) < MIN_IMAGES:
                note = f"not computed: {len(fake)} synthetic and {len(real)} real images (needs {MIN_IMAGES} of each)"
                rows.append({"method": method, "network": network, "fid": None, "kid_mean": None, "kid_std": None,
                             "n_real": len(real), "n_fake": len(fake), "note": note})
                log.info("class %s %s %s: FID %s", cls, method, network, note)
                continue
            r = fid_kid(real, fake, network, classifier=model, inception_weights=metrics_cfg.get("inception_weights"),
                        cache_root=cache_root, real_cache_name=f"{cls}-real", device=device)
            rows.append({"method": method, **r})
            log.info("class %s %s %s: FID %.3f KID %.4f", cls, method, network, r["fid"], r["kid_mean"])
    write_json(out_json, {"class": cls, "rows": rows})
    side.write(meta)


def lpips(cls: str, filtered_csvs: dict[str, str], metrics_cfg: dict, out_json: str, meta: str) -> None:
    """Each sampling mode's kept images' diversity in LPIPS (tibalance.perceptual),
    beside FID: their mean pairwise distance."""
    from .perceptual import LPIPS_DEFAULTS, set_diversity

    cfg = {**LPIPS_DEFAULTS, **{k: v for k, v in metrics_cfg.items() if v is not None}}
    if not cfg.get("lpips_weights"):
        raise TibalanceError("metrics.lpips: no AlexNet weights file (metrics.lpips_weights, or the one "
                             "fetch_weights downloads)")
    side = Sidecar()
    rows = set_diversity(filtered_csvs, cfg["lpips_weights"], int(cfg["lpips_images"]), int(cfg["lpips_size"]))
    for r in rows:
        log.info("class %s %s: LPIPS diversity %s over %d of %d kept images", cls, r["mode"], r["lpips"],
                 r["n_used"], r["n_kept"])
    write_json(out_json, {"class": cls, "rows": rows})
    side.write(meta)


def frozen_features(manifest: str, model: str, below: str, augment: str, out: str, meta: str) -> None:
    from .frozen import write_frozen_features

    side = Sidecar(None)
    side.write(meta, images=write_frozen_features(manifest, model, below, augment, out))


def train_features(manifest: str, model: str, out: str, meta: str) -> None:
    from .filtering import write_train_features

    side = Sidecar(None)
    side.write(meta, images=write_train_features(manifest, model, out))


def filter_samples(cls: str, samples_csv: str, manifest: str, model: str, filter_cfg: dict, out_csv: str,
                   meta: str, features: str | None = None) -> None:
    from .filtering import filter_class

    side = Sidecar(None)
    side.write(meta, **filter_class(cls, samples_csv, manifest, model, filter_cfg, out_csv, features))


def judge_pool(data_cfg: dict, seed: int, per_class: int, out_csv: str, image_dir: str) -> None:
    from .data import build_judge_pool

    build_judge_pool(data_cfg, seed, per_class, out_csv, image_dir)


def noise_images(cls: str, manifest: str, n: int, seed: int, image_dir: str, out_csv: str, meta: str) -> None:
    """The `noise` method's pure-noise images of a weak class, from its real training images' pixel statistics."""
    from .data import load_manifest
    from .rebalance import noise_images as draw

    side = Sidecar(seed)
    m = load_manifest(manifest)
    real = sorted(m[(m["split"] == "train") & (m["label"] == cls)]["path"])
    paths = draw(real, n, seed, image_dir)
    write_csv(pd.DataFrame({"path": paths, "label": cls, "noise": True}), out_csv)
    side.write(meta, images=len(paths))


def oracle_images(data_cfg: dict, seed: int, cls: str, n: int, judge_per_class: int, out_csv: str,
                  image_dir: str, meta: str) -> None:
    """The real_oracle method's images of one weak class (see data.build_oracle_set)."""
    from .data import build_oracle_set

    side = Sidecar(seed)
    df = build_oracle_set(data_cfg, seed, cls, n, judge_per_class, out_csv, image_dir)
    side.write(meta, images=len(df), wanted=int(n))


def train_judge(pool_csv: str, manifest: str, classes: str, clf_cfg: dict, seed: int,
                model_out: str, metrics_out: str, meta: str) -> None:
    from .judge import train_judge as train

    side = Sidecar(seed)
    metrics = train(pool_csv, manifest, classes, clf_cfg, seed, model_out, metrics_out)
    side.write(meta, val_accuracy=metrics["val_accuracy"])


def judge(cls: str, judge_model: str, manifest: str, filtered_csvs: dict[str, str], out_json: str) -> None:
    from .judge import judge_class

    judge_class(cls, judge_model, manifest, filtered_csvs, out_json)


def read_synthetic(csvs: list[str], use_filter: bool = True, limit: int | None = None) -> dict[str, list[str]]:
    """Synthetic image paths per class from sample tables; a filtered table
    (with a `kept` column) contributes only its kept images unless use_filter
    is False. limit: only the first `limit` images of each table (image i is
    the same whatever the count: its seed and start image depend on i alone)."""
    synthetic: dict[str, list[str]] = {}
    for csv in csvs:
        t = pd.read_csv(csv, dtype={"path": str, "label": str})
        if limit is not None:
            t = t.iloc[:limit]
        if use_filter and "kept" in t:
            t = t[kept_mask(t)]
        for label, grp in t.groupby("label"):
            synthetic.setdefault(label, []).extend(grp["path"])
    return synthetic


def _weighting(method: str, ts: pd.DataFrame, order: list[str], clf_cfg: dict, retrain_cfg: dict) -> dict:
    """What re-balances the run inside the training loop: reweight / drw /
    cmo_drw: the class weights of the run's own training counts, and the epoch
    they start at (the deferral; 0 for reweight); cmo / cmo_drw: CMO's mixing
    (retrain.cmo); deferred_<method>: the rows held back (its added images),
    the epoch they join at and whether every class is drawn equally often from
    it (retrain.defer_sampler); noise: OPeN's noise (purenoise.PureNoise) from the
    deferral epoch, every class drawn equally often from it; {} for other methods."""
    from .defaults import DEFERRED_METHODS
    from .rebalance import CMO_DEFAULTS, NOISE_DEFAULTS, REWEIGHT_DEFAULTS, class_weights, defer_epoch

    start = defer_epoch(retrain_cfg.get("defer_epoch"), int(clf_cfg["epochs"]))
    if method == "noise":
        from .purenoise import PureNoise

        share = float({**NOISE_DEFAULTS, **(retrain_cfg.get("noise") or {})}["share"])
        return {"noise": PureNoise.of(ts["path"], ts["label"], order, share, start, int(clf_cfg["image_size"])),
                "hold_until": start, "balanced": True}
    if method in DEFERRED_METHODS:
        sampler = retrain_cfg.get("defer_sampler", "balanced")
        return {"held": ts["added"].tolist(), "hold_until": start, "balanced": sampler == "balanced"}
    out = {"cmo": {**CMO_DEFAULTS, **(retrain_cfg.get("cmo") or {})}} if method in ("cmo", "cmo_drw") else {}
    if method in ("reweight", "drw", "cmo_drw"):
        r = {**REWEIGHT_DEFAULTS, **(retrain_cfg.get("reweight") or {})}
        counts = ts.groupby("label").size().to_dict()
        out.update({"class_weights": class_weights(counts, order, r["weights"], float(r["beta"])),
                    "weight_from_epoch": 0 if method == "reweight" else start})
    return out


def retrain(method: str, seed: int, manifest: str, classes: str, weak_json: str, synthetic_csvs: list[str],
            clf_cfg: dict, retrain_cfg: dict, metrics_out: str, meta: str, variant: dict | None = None,
            init_model: str | None = None, frozen_cache: str | None = None,
            predictions_out: str | None = None) -> None:
    """One retraining run. variant (the ablation): {"limit": N or None, "filter": bool}
    trains on the first N synthetic images, with or without the filter. init_model:
    the baseline classifier to fine-tune (retrain.init: baseline). frozen_cache: the
    frozen_features file of init_model (with classifier.freeze_below): the frozen
    stages' outputs of the test images (and with augment flip of the training images).
    predictions_out: the per-image test predictions (path, label, pred), which the
    report's intervals and tests read."""
    from .analysis import per_class_metrics
    from .data import load_manifest
    from .retrain import build_training_set
    from .training import train_classifier

    side = Sidecar(seed)
    m = load_manifest(manifest)
    order = read_json(classes)["classes"]
    weak_classes = read_json(weak_json)["classes"]
    variant = variant or {}
    synthetic = read_synthetic(synthetic_csvs, use_filter=variant.get("filter", True), limit=variant.get("limit"))
    if method.startswith("real_oracle@"):  # the oracle's images, as many per class as the method kept
        filtered = [c for c in synthetic_csvs if "kept" in pd.read_csv(c, nrows=0).columns]
        kept = read_synthetic(filtered)
        oracle = read_synthetic([c for c in synthetic_csvs if c not in filtered])
        synthetic = {c: paths[:len(kept.get(c, []))] for c, paths in oracle.items()}
        log.info("%s: %s real images (the method's kept counts)", method, {c: len(v) for c, v in synthetic.items()})
    train = m[m["split"] == "train"]
    noise = None
    if method == "noise_static":  # the noise tables (rule noise_images)
        noise, synthetic = read_synthetic(synthetic_csvs), {}
    combined = method.startswith("oversample+")
    if combined:  # the oversample part's count: the mode's before the filter
        balanced = {c: len(v) for c, v in read_synthetic(synthetic_csvs, use_filter=False).items()}
    else:  # oversample, noise_static: the count sampling makes for the class (retrain.refill, from the workflow)
        balanced = {c: int(n) for c, n in (retrain_cfg.get("refill") or {}).items()}
    ts = build_training_set(train, weak_classes, "real_oracle" if method.startswith("real_oracle@") else method,
                            synthetic, retrain_cfg.get("mix", "add"), seed, balanced=balanced, noise=noise)
    swap_p = float(retrain_cfg.get("combine_p", 0.5) if combined else retrain_cfg.get("replace_p", 0.5))
    from .rebalance import cmo_epochs

    weighting = _weighting(method, ts, order, clf_cfg, retrain_cfg)
    clf = train_classifier(ts["path"], ts["label"], order, clf_cfg, seed, augment_flags=ts["classic"],
                           progress_desc=f"{method} seed {seed}", alternatives=ts["alternatives"],
                           replace_p=swap_p, init=init_model, frozen_cache=frozen_cache, **weighting,
                           checkpoint=str(Path(metrics_out).parent / "resume" / "checkpoint.pt"))
    frozen = None
    if frozen_cache:
        from .frozen import open_features

        below = clf_cfg["freeze_below"]
        frozen = (open_features(frozen_cache, init_model, below, int(clf_cfg["image_size"])), below)
    pred = evaluate(clf, m, splits=("test",), frozen=frozen)
    if predictions_out:
        write_csv(pred[["path", "label", "pred"]], predictions_out)
    pc = per_class_metrics(pred["label"], pred["pred"], order).set_index("class")
    metrics = {"method": method, "seed": seed, **({"variant": variant} if variant else {}),
               **split_metrics(pred, order)["test"],
               "per_class_accuracy": pc["accuracy"].to_dict(),
               "weak_accuracy": float(pc.loc[weak_classes, "accuracy"].mean()) if weak_classes else float("nan"),
               "train_counts": ts.groupby("label").size().to_dict(),
               **({"swap_p": swap_p, "swappable": int(ts["alternatives"].map(bool).sum())} if combined else {}),
               **({"noise_images": {c: len(v) for c, v in noise.items()}} if noise is not None else {}),
               **({"noise": {"p": dict(zip(order, weighting["noise"].p.tolist())),
                             "from_epoch": weighting["noise"].from_epoch}} if "noise" in weighting else {}),
               **{k: v for k, v in weighting.items() if k not in ("held", "noise")},
               **({"held_images": int(sum(weighting["held"]))} if "held" in weighting else {}),
               **({"cmo_epochs": cmo_epochs(weighting["cmo"], int(clf_cfg["epochs"]))} if "cmo" in weighting else {})}
    write_json(metrics_out, metrics)
    side.write(meta, train_images=len(ts))


def report(*args, **kwargs) -> None:
    """The result tables, plots, significance table and verdict: tibalance.report.write_report's arguments."""
    from .report import write_report

    write_report(*args, **kwargs)


def cost(jobs: list[dict], methods: list[str], out_csv: str, methods_csv: str, out_md: str,
         classes: str | None = None, concept: str = "ti", genie: str = "raw") -> None:
    """The cost tables from every job's benchmark file and sidecar."""

    from . import cost as c
    from .retrain import display_names

    rows = c.job_rows(jobs)
    stages_t, methods_t = c.stage_table(rows), c.method_table(rows, methods, concept, genie)
    stages_t = display_names(stages_t, read_json(classes)["names"] if classes else {})
    write_csv(stages_t, out_csv)
    write_csv(methods_t, methods_csv)
    write_markdown(out_md, c.markdown(stages_t, methods_t, missing=int(rows["wall_s"].isna().sum()), jobs=rows,
                                      replicates=c.replicate_table(rows)),
                   "What the study cost")
    log.info("cost: %d jobs, %.1f min of job wall time", len(rows), rows["wall_s"].sum() / 60)
