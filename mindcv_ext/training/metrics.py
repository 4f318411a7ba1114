"""The per-run metrics file (JSON lines) and its PNG plot (Pillow only).

Rows: {"kind": "step", "epoch", "step", "global_step", "loss", "lr", "img_s"} every log_interval steps and
{"kind": "epoch", "epoch", "train_loss", "lr", "val_top1", "val_top5", "val_loss", "time_s", "img_s"} per epoch.
On resume, rows of epochs after the checkpoint's are dropped: they describe work the checkpoint does not hold
and that is about to be redone, so every epoch appears exactly once.
"""
import json
import math
import os
from typing import Dict, List, Optional

__all__ = ["MetricsLog", "plot_curves"]


class MetricsLog:
    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def rows(self) -> List[Dict]:
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: nothing after it is trustworthy
        return out

    def start(self, resumed_epoch: Optional[int]) -> List[Dict]:
        """Fresh run: empty file. Resumed run: keep the rows of epochs <= resumed_epoch. Returns the kept rows."""
        if not self.enabled:
            return []
        kept = [] if resumed_epoch is None else [r for r in self.rows() if r.get("epoch", 0) <= resumed_epoch]
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)
        return kept

    def append(self, row: Dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
            f.flush()  # in the page cache now: survives the process being killed


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no nan/inf
    return v


# --- plot -------------------------------------------------------------------------------------------------------

_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 520, 360, 64, 16, 30, 44
_COLORS = {"train loss": (31, 119, 180), "val loss": (255, 127, 14), "val top-1": (44, 160, 44),
           "val top-5": (148, 103, 189), "val mIoU": (44, 160, 44), "val mAcc": (148, 103, 189),
           "lr": (214, 39, 40)}


_CLASSIFICATION = (("val top-1", "val_top1"), ("val top-5", "val_top5"))


def plot_curves(rows: List[Dict], path: str, scores=_CLASSIFICATION, score_title: str = "accuracy (%)",
                lr: bool = False, x_label: str = "epoch", x_scale: float = 1.0) -> Optional[str]:
    """Panels against epochs (times x_scale, named x_label: train_seg.py's "epochs" are val_interval iterations,
    drawn as iterations): loss (train steps, val per epoch), the val scores
    per epoch ((legend name, row key) pairs: train.py's top-1/top-5, train_seg.py's mIoU/mAcc) and, with `lr`,
    the learning rate of the logged steps."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:  # Pillow comes with MindSpore; without it we just skip the picture
        return None
    steps = [r for r in rows if r.get("kind") == "step" and _finite(r.get("loss"))]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    spe = {}  # steps per epoch, per epoch: a resumed run may have another batch size or data size
    for r in steps:
        spe[r["epoch"]] = max(spe.get(r["epoch"], 1), r["step"])
    loss_series = {
        "train loss": [(r["epoch"] - 1 + r["step"] / spe[r["epoch"]], r["loss"]) for r in steps]
        or [(r["epoch"], r["train_loss"]) for r in epochs if _finite(r.get("train_loss"))],
        "val loss": [(r["epoch"], r["val_loss"]) for r in epochs if _finite(r.get("val_loss"))],
    }
    acc_series = {name: [(r["epoch"], r[key]) for r in epochs if _finite(r.get(key))] for name, key in scores}
    panels = [("loss", loss_series), (score_title, acc_series)]
    if lr:
        panels.append(("learning rate", {"lr": [(r["epoch"] - 1 + r["step"] / spe[r["epoch"]], r["lr"])
                                                for r in steps if _finite(r.get("lr"))]}))
    image = Image.new("RGB", (len(panels) * _W, _H), "white")
    font = ImageFont.load_default()
    for i, (title, series) in enumerate(panels):
        series = {name: [(x * x_scale, y) for x, y in pts] for name, pts in series.items()}
        _panel(ImageDraw.Draw(image), font, i * _W, title, series, x_label)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    image.save(tmp)
    os.replace(tmp, path)
    return path


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _panel(draw, font, x0: int, title: str, series: Dict[str, list], x_label: str = "epoch") -> None:
    points = [p for pts in series.values() for p in pts]
    left, top, right, bottom = x0 + _PAD_L, _PAD_T, x0 + _W - _PAD_R, _H - _PAD_B
    draw.text((left, 8), title, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    if not points:
        draw.text((left + 10, top + 10), "no data yet", fill="gray", font=font)
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xlo, xhi = min(0.0, min(xs)), max(xs) if max(xs) > 0 else 1.0
    ylo, yhi = min(ys), max(ys)
    if yhi - ylo < 1e-9:
        ylo, yhi = ylo - 0.5, yhi + 0.5
    pad = 0.05 * (yhi - ylo)
    ylo, yhi = ylo - pad, yhi + pad

    def to_px(x, y):
        return (left + (x - xlo) / (xhi - xlo) * (right - left), bottom - (y - ylo) / (yhi - ylo) * (bottom - top))

    for t in _ticks(ylo, yhi):
        _, py = to_px(xlo, t)
        draw.line([left, py, right, py], fill=(230, 230, 230))
        draw.text((x0 + 4, py - 5), f"{t:.4g}", fill="black", font=font)
    for t in _ticks(xlo, xhi):
        px, _ = to_px(t, ylo)
        draw.line([px, bottom, px, bottom + 4], fill="black")
        draw.text((px - 6, bottom + 6), f"{t:g}", fill="black", font=font)
    draw.text(((left + right) // 2 - 3 * len(x_label), _H - 16), x_label, fill="black", font=font)
    # Legend in the right-hand corner the curves end away from (loss falls, accuracy rises).
    ends = [pts[-1][1] for pts in series.values() if pts]
    curves_end_high = sum(ends) / len(ends) > (ylo + yhi) / 2
    legend_y = bottom - 4 - 14 * len(ends) if curves_end_high else top + 4
    for name, pts in series.items():
        if not pts:
            continue
        color = _COLORS.get(name, (0, 0, 0))
        pixels = [to_px(x, y) for x, y in pts]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for px, py in pixels if len(pixels) <= 60 else []:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        draw.line([right - 90, legend_y + 6, right - 72, legend_y + 6], fill=color, width=3)
        draw.text((right - 68, legend_y), name, fill="black", font=font)
        legend_y += 14
