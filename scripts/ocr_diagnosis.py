"""Why can the embedded model not write? (issue 33, item 1)

``--part fonts``: EasyOCR (the task's exact scorer, ``OcrReward``) on *clean rendered* 64×64 signs as a
function of font size and string length (strings from the task alphabet), and per letter of A–Z on
single-letter signs at one font size: what the scorer itself can read at the model's resolution.

``--part model``: the model's OCR reward on train strings against test strings (memorising vs
composing), per string length and per character position, sampled with the evaluation protocol
(Euler ODE, the model's eval steps, per-image noise seeds).

Writes one JSON file (``--out``) and prints the tables.

    python scripts/ocr_diagnosis.py --part fonts --n 40 --out results/ocr_diagnosis/fonts.json
    python scripts/ocr_diagnosis.py --part model --prompts 48 --images 6 --out results/ocr_diagnosis/v2d.json
"""

from __future__ import annotations

import argparse
import json
import string
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch


def _render_signs(texts: list[str], font: int, seed: int, face: str = "sans-bold") -> tuple[list[np.ndarray], list[int]]:
    from alignbench.world.layout import scene_for_sign
    from alignbench.world.scene import WorldConfig, render

    cfg = WorldConfig(font_size_min=font, font_size_max=font, sign_font=face)
    rng = np.random.default_rng(seed)
    images, used = [], []
    for t in texts:
        scene = scene_for_sign(t, rng, cfg)
        images.append(render(scene, cfg))
        used.append(scene.signs[0].font_size)
    return images, used


def fonts_part(n: int, sizes: list[int], lengths: list[int], letter_font: int, per_letter: int,
               seed: int, face: str = "sans-bold", alphabet: str | None = None) -> dict:
    """Exact-read share and mean reward of EasyOCR on clean signs per (font size, length), and the
    per-letter exact-read share and confusions on single letters at ``letter_font``."""
    from alignbench.rewards.ocr import OcrReward, ocr_reward
    from alignbench.world.prompts import OCR_ALPHABET

    reader = OcrReward()
    rng = np.random.default_rng(seed)
    alphabet = alphabet or OCR_ALPHABET
    table = []
    for size in sizes:
        for length in lengths:
            texts = ["".join(rng.choice(list(alphabet), size=length)) for _ in range(n)]
            images, used = _render_signs(texts, size, seed + size * 10 + length, face)
            reads = [r[0] for r in reader.read_many(images)]
            rewards = [ocr_reward(r, t) for r, t in zip(reads, texts, strict=True)]
            exact = [r.replace(" ", "").lower() == t.lower() for r, t in zip(reads, texts, strict=True)]
            table.append({"font": size, "length": length, "n": n, "font_used_mean": float(np.mean(used)),
                          "exact": float(np.mean(exact)), "reward": float(np.mean(rewards))})
            print(json.dumps(table[-1]))
    letters = {}
    for ch in string.ascii_uppercase:
        images, _ = _render_signs([ch] * per_letter, letter_font, seed + ord(ch), face)
        reads = [r[0].replace(" ", "") for r in reader.read_many(images)]
        letters[ch] = {"exact": float(np.mean([r.upper() == ch for r in reads])),
                       "reads": dict(sorted(defaultdict(int, {r: reads.count(r) for r in set(reads)}).items()))}
    print(json.dumps({k: v["exact"] for k, v in letters.items()}))
    return {"face": face, "alphabet": alphabet, "sizes": table, "letter_font": letter_font,
            "per_letter": per_letter, "letters": letters}


def model_part(source: str | None, prompts: int, images: int, seed: int) -> dict:
    """The model's OCR reward on ``prompts`` train and test prompts × ``images`` noises, by split,
    string length and character position (a position counts as right when the read string has the
    target's letter at that index)."""
    from alignbench.evaluation import noise_seed
    from alignbench.models.spec import get_model
    from alignbench.rewards.ocr import ocr_target
    from alignbench.task import get_task

    spec = get_model("tiny-shapes", **({"source": source, "revision": "diagnostic"} if source else {}))
    bb = spec.load("cpu")
    task = get_task("ocr")
    reward = task.reward("shapes")
    out: dict = {"source": source or "package:weights/tiny-shapes", "images_per_prompt": images}
    for split in ("train", "test"):
        recs = task.prompts(split)[:prompts]
        pairs = [(p, j) for p in range(len(recs)) for j in range(images)]
        lat = []
        for s in range(0, len(pairs), 64):
            part = pairs[s:s + 64]
            emb = bb.encode_prompts([recs[p]["prompt"] for p, _ in part])
            lat.append(bb.sample_ode(emb, [noise_seed(seed, p, j) for p, j in part], spec.eval_steps))
        imgs = (bb.decode(torch.cat(lat)).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        det = reward.details(list(imgs), [recs[p]["prompt"] for p, _ in pairs], [recs[p] for p, _ in pairs])
        by_len, by_pos = defaultdict(list), defaultdict(list)
        for (p, _), d in zip(pairs, det, strict=True):
            t = ocr_target(recs[p]["prompt"])
            by_len[len(t)].append(d["ocr"])
            read = d["recognized"].replace(" ", "").upper()
            for i, ch in enumerate(t.upper()):
                by_pos[i].append(float(i < len(read) and read[i] == ch))
        out[split] = {"n": len(det), "reward": float(np.mean([d["ocr"] for d in det])),
                      "exact": float(np.mean([d["exact"] for d in det])),
                      "by_length": {k: {"n": len(v), "reward": float(np.mean(v))} for k, v in sorted(by_len.items())},
                      "by_position": {k: {"n": len(v), "right": float(np.mean(v))} for k, v in sorted(by_pos.items())}}
        print(split, json.dumps(out[split]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["fonts", "model"], required=True)
    ap.add_argument("--n", type=int, default=40, help="fonts: signs per (font size, length)")
    ap.add_argument("--sizes", default="13,16,18,20,22,24,28")
    ap.add_argument("--lengths", default="1,2,3,4")
    ap.add_argument("--letter-font", type=int, default=22)
    ap.add_argument("--per-letter", type=int, default=8)
    ap.add_argument("--face", default="sans-bold", help="fonts: sign typeface (sans-bold, mono-bold)")
    ap.add_argument("--alphabet", default=None, help="fonts: letters of the strings (default: the task's)")
    ap.add_argument("--source", default=None, help="model: pipeline directory (default: the shipped weights)")
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.part == "fonts":
        res = fonts_part(a.n, [int(x) for x in a.sizes.split(",")], [int(x) for x in a.lengths.split(",")],
                         a.letter_font, a.per_letter, a.seed, a.face, a.alphabet)
    else:
        res = model_part(a.source, a.prompts, a.images, a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"args": vars(a), **res}, indent=1))


if __name__ == "__main__":
    main()
