"""COTI (controllable textual inversion, Yang et al.; seed 001): a weak class's
TI token trained on in active cycles, its training pool grown each cycle by the
best-scored candidates. Cycle 0 is the class's TI token (rule
textual_inversion, on its seed images). Each cycle c >= 1:

1. the token so far draws `generated` images (X_TI, with the study's sampling
   settings);
2. the candidates - the paper's pool of unlabelled real images not yet in
   the training pool: `coti.pool`, a folder of images, or (unset) the study's
   training images, the class's unused ones ("real") and every other class's
   with their labels ignored ("pool"; never a val, test or judge image); X_TI
   itself only with `coti.self_training` (the token then trains on its own
   samples) - get COTI's two scores on its 0-10 scale, in the baseline
   classifier's feature space (the filter's, for the paper's CLIP image
   encoder): S_con = 10 x the least cosine similarity to the pool (Eq. 8);
   S_aes = 10 x the filter's k-NN on-class score (offline there is no
   aesthetic model; the stand-in scores how far into the class's region of
   the training images an image falls: d_other / (d_own + d_other), a real
   candidate's distance to itself left out. The baseline's probability of the
   class would not do: a weak class is one the baseline seldom predicts, and
   it gives its own images ~0);
3. X_TI's mean scores gamma_aes, gamma_con (Eq. 9, 10) weigh them,
   S_int = (1 - gamma_aes/10) S_aes + (1 - gamma_con/10) S_con (Eq. 11),
   and give the indicator phi = 10 sin(pi gamma_aes/20) sin(pi gamma_con/20)
   (Eq. 12) - X_TI is scored for these whether or not it is a candidate;
4. when phi fell below the last cycle's, the lr is multiplied by lr_decay and
   the pool frozen (the paper's dynamic schedule); else the `per_cycle` best
   candidates by S_int join the pool;
5. the token trains `steps` more steps on the pool from where it was.

Every cycle writes its token, its scored candidates and a marker keyed on all
that came before it: a killed job resumes after its last finished cycle (and
inside a cycle at TI's checkpoint), to the same token bit for bit."""
from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .defaults import COTI_DEFAULTS, TI_DEFAULTS
from .util import TibalanceError, derive_seed, file_digest, fingerprint, read_json, write_csv, write_json

log = logging.getLogger(__name__)

# candidate: whether the row may join the pool (X_TI's rows are scored for the
# gammas; candidates only with coti.self_training); rank -1 for the others
CANDIDATE_COLUMNS = ["cycle", "path", "source", "candidate", "s_aes", "s_con", "s_int", "rank", "chosen"]
CYCLE_COLUMNS = ["cycle", "pool_before", "added", "pool", "candidates", "gamma_aes", "gamma_con", "phi", "frozen",
                 "lr", "steps", "final_loss"]


def scores(quality: np.ndarray, feats: np.ndarray, pool_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S_aes, S_con) of each row on 0-10: its quality (0-1) x 10; its least
    cosine similarity to the pool's features (Eq. 8) x 10, floored at 0."""
    if len(pool_feats) == 0:
        raise TibalanceError("coti: the training pool is empty")
    from .filtering import _unit

    least = (_unit(feats) @ _unit(pool_feats).T).min(axis=1) if len(feats) else np.zeros(0)
    return 10.0 * np.asarray(quality, float), 10.0 * np.clip(least, 0.0, 1.0)


def on_class(feats: np.ndarray, own: np.ndarray, other: np.ndarray, k: int, self_rows: list) -> np.ndarray:
    """The filter's k-NN score of each row (filtering.knn_scores): 1 in the
    class's region, 0 in another's; self_rows[i]: the row of `own` that row i
    is (a real image: its zero distance to itself left out), or None."""
    from .filtering import knn_scores

    return knn_scores(feats, own, other, k, self_rows=self_rows)


def indicator(gamma_aes: float, gamma_con: float) -> float:
    """phi (Eq. 12): largest when both mean scores are high together."""
    return float(10.0 * math.sin(math.pi * gamma_aes / 20.0) * math.sin(math.pi * gamma_con / 20.0))


def select(cands: pd.DataFrame, gamma_aes: float, gamma_con: float, b: int, frozen: bool) -> pd.DataFrame:
    """cands (path, source, s_aes, s_con; candidate: whether it may be chosen,
    all when absent) with s_int (Eq. 11), rank among the candidates (0: best;
    ties by path; -1 for the others) and chosen: the b best, none when the
    pool is frozen."""
    out = cands.copy()
    if "candidate" not in out:
        out["candidate"] = True
    out["s_int"] = (1 - gamma_aes / 10.0) * out["s_aes"] + (1 - gamma_con / 10.0) * out["s_con"]
    rows = [i for i in range(len(out)) if out["candidate"].iloc[i]]
    order = sorted(rows, key=lambda i: (-out["s_int"].iloc[i], out["path"].iloc[i]))
    rank = np.full(len(out), -1)
    rank[order] = np.arange(len(order))
    out["rank"] = rank
    out["chosen"] = out["candidate"] & (out["rank"] >= 0) & (out["rank"] < b) & (not frozen)
    return out


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def pool_images(folder: str) -> list[str]:
    """coti.pool: the image files under `folder` (recursively, sorted)."""
    root = Path(folder)
    if not root.is_dir():
        raise TibalanceError(f"coti.pool: {folder} is not a folder")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise TibalanceError(f"coti.pool: {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return paths


class _Study:
    """What every cycle of one class's job reads: the class, its real images, the
    settings, the baseline classifier."""

    def __init__(self, model, cls, cls_name, manifest, seeds_csv, classifier, ti, c, sampling, seed,
                 features=None):
        from .classifier import TrainedClassifier, predict
        from .defaults import FILTER_DEFAULTS
        from .filtering import read_train_features
        from .util import pick_device

        self.model, self.cls, self.name, self.manifest = model, cls, cls_name, manifest
        self.ti, self.c, self.sampling, self.seed = ti, c, sampling, seed
        m = pd.read_csv(manifest, dtype=str)
        self.seeds = list(pd.read_csv(seeds_csv, dtype=str)["path"])
        if not self.seeds:
            raise TibalanceError(f"coti: class {cls}: seed list {seeds_csv} is empty")
        real = sorted(m[(m["split"] == "train") & (m["label"] == cls)]["path"])
        self.unused = [p for p in real if p not in set(self.seeds)]
        self.clf = TrainedClassifier.load(classifier, device=pick_device("auto"))
        if cls not in self.clf.classes:
            raise TibalanceError(f"coti: {classifier} does not classify class {cls!r}")
        self.placeholder = ti["placeholder"].format(cls=cls)
        # the training images' features (rule train_features, else computed here): the class's region
        train = m[m["split"] == "train"].reset_index(drop=True)
        feats = read_train_features(features, train) if features else predict(self.clf, list(train["path"]))[1]
        is_own = (train["label"] == cls).to_numpy()
        if is_own.all():
            raise TibalanceError(f"coti: class {cls}: no training image of another class to score against")
        self.own, self.other = feats[is_own], feats[~is_own]
        self.own_row = {p: i for i, p in enumerate(train["path"][is_own])}
        self.knn = int(FILTER_DEFAULTS["k"])
        self.feat = dict(zip(train["path"], feats))  # every image's features, computed once
        if c.get("pool"):  # the user's unlabelled images
            self.candidates = {p: "pool" for p in pool_images(c["pool"])}
            self.feat.update(zip(self.candidates, predict(self.clf, list(self.candidates))[1]))
        else:  # the class's unused training images, then every other class's, labels ignored
            others = sorted(set(train["path"][~is_own]))
            self.candidates = {**{p: "real" for p in self.unused}, **{p: "pool" for p in others}}

    def generate(self, cycle: int, embeds: str, d: Path) -> list[str]:
        from .sampling import sample_class

        s = {**self.sampling, "n_images": int(self.c["generated"])}
        sample_class(self.model, "ti", self.cls, self.name, s, derive_seed(self.seed, "coti", cycle),
                     self.manifest, str(d / "generated.csv"), str(d / "generated"), embeds=embeds,
                     placeholder=self.placeholder, num_vectors=int(self.ti["num_vectors"]))
        return list(pd.read_csv(d / "generated.csv", dtype=str)["path"])

    def score(self, cycle: int, pool: list[str], generated: list[str]) -> tuple[pd.DataFrame, float, float]:
        """The cycle's candidates (the real pool's images not yet in the training
        pool; X_TI only with coti.self_training) scored against the pool;
        (table, gamma_aes, gamma_con): X_TI's mean scores."""
        from .classifier import predict

        self.feat.update(zip(generated, predict(self.clf, generated)[1]))
        in_pool = set(pool)
        real = [p for p in self.candidates if p not in in_pool]
        paths = real + generated
        feats = np.stack([self.feat[p] for p in paths])
        quality = on_class(feats, self.own, self.other, self.knn, [self.own_row.get(p) for p in paths])
        s_aes, s_con = scores(quality, feats, np.stack([self.feat[p] for p in pool]))
        table = pd.DataFrame({"cycle": cycle, "path": paths,
                              "source": [self.candidates[p] for p in real] + ["generated"] * len(generated),
                              "s_aes": s_aes, "s_con": s_con})
        gen = table["source"] == "generated"
        table["candidate"] = ~gen | bool(self.c.get("self_training"))
        return table, float(table.loc[gen, "s_aes"].mean()), float(table.loc[gen, "s_con"].mean())

    def train(self, cycle: int, pool: list[str], lr: float, init: str, d: Path) -> dict:
        from .inversion import train_textual_inversion

        settings = {**self.ti, "steps": int(self.c["steps"]), "lr": lr}
        return train_textual_inversion(self.model, pool, self.cls, self.name, settings,
                                       derive_seed(self.seed, "coti", cycle, "train"),
                                       str(d / "learned_embeds.safetensors"), str(d / "loss.csv"),
                                       str(d / "preview.png"), str(d / "resume"), init_embeds=init)


def _cycle(st: _Study, cycle: int, state: dict, d: Path) -> dict:
    """One active cycle from `state` (pool, lr, phi, embeds); returns the next state."""
    generated = st.generate(cycle, state["embeds"], d)
    if not generated:
        raise TibalanceError(f"coti: class {st.cls}: cycle {cycle} drew no image (coti.generated)")
    cands, g_aes, g_con = st.score(cycle, state["pool"], generated)
    phi = indicator(g_aes, g_con)
    frozen = state["phi"] is not None and phi < state["phi"]
    lr = state["lr"] * float(st.c["lr_decay"]) if frozen else state["lr"]
    cands = select(cands, g_aes, g_con, int(st.c["per_cycle"]), frozen)
    added = list(cands[cands["chosen"]].sort_values("rank")["path"])
    pool = state["pool"] + added
    log.info("class %s, cycle %d: gamma_aes %.3f, gamma_con %.3f, phi %.3f%s; %d of %d candidates added, pool %d,"
             " lr %.3g", st.cls, cycle, g_aes, g_con, phi, " (fell: lr decayed, pool frozen)" if frozen else "",
             len(added), len(cands), len(pool), lr)
    result = st.train(cycle, pool, lr, state["embeds"], d)
    write_csv(cands[CANDIDATE_COLUMNS], d / "candidates.csv")
    row = {"cycle": cycle, "pool_before": len(state["pool"]), "added": len(added), "pool": len(pool),
           "candidates": int(cands["candidate"].sum()), "gamma_aes": g_aes, "gamma_con": g_con, "phi": phi, "frozen": frozen,
           "lr": lr, "steps": int(st.c["steps"]), "final_loss": result.get("final_loss")}
    return {"pool": pool, "lr": lr, "phi": phi, "embeds": str(d / "learned_embeds.safetensors"), "row": row}


# names how candidates are scored: a change of the scoring changes it, and no cycle scored otherwise is resumed
SCORING = "s_con: least cosine to the pool; s_aes: the filter's k-NN on-class score; candidates: the real pool"


def _key(st: _Study, ti_embeds: str, classifier: str, features: str | None) -> str:
    """Everything the first cycle's result depends on (each later cycle chains on it)."""
    from .generator import model_digest

    return fingerprint({"model": st.model, "model_digest": model_digest(st.model), "cls": st.cls, "name": st.name,
                        "seeds": [[p, file_digest(p)] for p in st.seeds],
                        "candidates": [[p, file_digest(p)] for p in st.candidates],
                        "token": file_digest(ti_embeds), "classifier": file_digest(classifier),
                        "features": file_digest(features) if features else None, "scoring": SCORING,
                        "ti": {k: v for k, v in st.ti.items() if k != "log_every"},
                        "coti": {k: v for k, v in st.c.items() if k != "cycles"},  # more cycles keep those run
                        "sampling": {k: v for k, v in st.sampling.items() if k not in ("n_images", "strength")},
                        "seed": st.seed})


def train_coti(model: str, cls: str, cls_name: str, manifest: str, seeds_csv: str, ti_embeds: str,
               classifier: str, ti_settings: dict, coti_settings: dict, sampling_settings: dict, seed: int,
               cycle_dir: str, embeds_out: str, cycles_out: str, candidates_out: str, preview_out: str,
               stop_after: int | None = None, features: str | None = None) -> dict:
    """The class's COTI token from its TI token (ti_embeds): embeds_out (the
    learned_embeds format), the cycles table (one row a cycle, 0 = the TI
    token), every cycle's scored candidates, the last cycle's preview. Each
    cycle's files are kept under cycle_dir/cycle_<c>/.

    features: the training images' features (rule train_features; else computed here).
    stop_after: end after that many cycles (tests use it to simulate a kill)."""
    c = {**COTI_DEFAULTS, **(coti_settings or {})}
    ti = {**TI_DEFAULTS, **(ti_settings or {})}
    if int(c["cycles"]) < 1 or int(c["per_cycle"]) < 1 or int(c["generated"]) < 1:
        raise TibalanceError(f"coti: class {cls}: cycles, per_cycle and generated must each be at least 1 ({c})")
    st = _Study(model, cls, cls_name, manifest, seeds_csv, classifier, ti, c, dict(sampling_settings or {}), seed,
                features)
    key = _key(st, ti_embeds, classifier, features)
    state = {"pool": list(st.seeds), "lr": float(c["lr"] or ti["lr"]), "phi": None, "embeds": ti_embeds,
             "row": {"cycle": 0, "pool_before": 0, "added": len(st.seeds), "pool": len(st.seeds), "candidates": 0,
                     "lr": float(ti["lr"]), "steps": int(ti["steps"]), "frozen": False}}
    rows, resumed = [state["row"]], 0
    for cycle in range(1, int(c["cycles"]) + 1):
        key = fingerprint({"before": key, "cycle": cycle})
        d = Path(cycle_dir) / f"cycle_{cycle}"
        done = d / "done.json"
        if done.exists() and read_json(done).get("key") == key and (d / "learned_embeds.safetensors").exists():
            state = {**read_json(done)["state"], "embeds": str(d / "learned_embeds.safetensors")}
            resumed = cycle
        else:
            done.unlink(missing_ok=True)
            state = _cycle(st, cycle, state, d)
            write_json(done, {"key": key, "state": state})  # last: the cycle counts as finished only now
        rows.append(state["row"])
        if stop_after is not None and cycle >= stop_after and cycle < int(c["cycles"]):
            return {"stopped_after_cycle": cycle}
    if resumed:
        log.info("class %s: cycles 1-%d were finished before; resumed after cycle %d", cls, resumed, resumed)
    last = Path(cycle_dir) / f"cycle_{int(c['cycles'])}"
    for src, dst in ((state["embeds"], embeds_out), (last / "preview.png", preview_out)):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, f"{dst}.tmp")
        os.replace(f"{dst}.tmp", dst)
    write_csv(pd.DataFrame(rows, columns=CYCLE_COLUMNS), cycles_out)
    tables = [pd.read_csv(Path(cycle_dir) / f"cycle_{k}" / "candidates.csv", dtype={"path": str, "source": str})
              for k in range(1, int(c["cycles"]) + 1)]
    write_csv(pd.concat(tables, ignore_index=True)[CANDIDATE_COLUMNS], candidates_out)
    chosen = pd.concat(tables, ignore_index=True)
    chosen = chosen[chosen["chosen"].astype(str).str.lower() == "true"]
    return {"cycles": int(c["cycles"]), "pool": len(state["pool"]), "lr": state["lr"], "phi": state["phi"],
            "resumed_after_cycle": resumed, "added_real": int((chosen["source"] == "real").sum()),
            "added_pool": int((chosen["source"] == "pool").sum()),
            "added_generated": int((chosen["source"] == "generated").sum())}
