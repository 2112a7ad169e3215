"""Synthetic mammogram phantoms with a known lesion mask and label (numpy only, no torch).

A phantom is a 2-D full-field "mammogram" as it would be stored in Pixel Data
(MONOCHROME2: higher value = brighter = denser tissue), with a ground-truth
lesion mask. It is deterministic per seed (``numpy.random.default_rng(seed)``).

Orientation (stored grid = display grid, as a radiologist sees it). The
DICOM/ACR convention for mammography (DICOM PS3.3 C.8.11.7 Mammography Image
Module, Patient Orientation examples; IHE Mammography Image profile hanging)
shows the images of the two breasts back to back, chest walls facing each other:

* LEFT breast (``L``): chest wall on the image's LEFT edge, nipple pointing to
  the right (Patient Orientation ``A\\R`` for LCC, ``A\\FR`` for LMLO);
* RIGHT breast (``R``): chest wall on the image's RIGHT edge, nipple pointing to
  the left (Patient Orientation ``P\\L`` for RCC, ``P\\FL`` for RMLO).

Row 0 is the top of the image (head side / axilla for MLO). On MLO views the
pectoral muscle is a bright triangle in the upper corner on the chest-wall side;
CC views have none.

Findings and labels: ``normal`` and ``benign_mass`` (circumscribed oval mass)
are label 0 (benign); ``malignant_mass`` (irregular, spiculated mass) and
``calcifications`` (a cluster of fine pleomorphic calcifications) are label 1
(malignant). ``finding=None`` picks one of the four by seed, so labels are
balanced. All sizes are relative to the image height, so a phantom generated at
any ``shape`` looks the same to a model after resizing; calcification specks are
about 1 % of the height across (a few pixels at a 256-pixel model input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

FINDINGS: tuple[str, ...] = ("normal", "benign_mass", "malignant_mass", "calcifications")
MALIGNANT_FINDINGS: frozenset[str] = frozenset({"malignant_mass", "calcifications"})
LATERALITIES: tuple[str, ...] = ("L", "R")
VIEWS: tuple[str, ...] = ("CC", "MLO")
DENSITY_CATEGORIES: tuple[str, ...] = ("A", "B", "C", "D")
#: fraction of the breast that is fibroglandular, per ACR BI-RADS density category
_DENSITY_FRACTION: dict[str, float] = {"A": 0.12, "B": 0.30, "C": 0.52, "D": 0.72}
#: field of view: the image height covers this many millimetres
_FIELD_OF_VIEW_MM = 240.0


@dataclass(frozen=True)
class Phantom:
    """One synthetic mammogram and its ground truth.

    ``image`` is uint16 (H, W) stored values, MONOCHROME2, all ``< 2**bits_stored``;
    ``mask`` is bool (H, W), True on lesion pixels (all False for ``normal``);
    ``label`` is 0 (benign, incl. normal) or 1 (malignant). ``density`` is the
    ACR BI-RADS category (A-D) of the parenchyma. See the module docstring for
    the orientation convention.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    finding: str
    laterality: str
    view: str
    bits_stored: int
    pixel_spacing_mm: float
    seed: int
    density: str = "B"

    @property
    def chest_wall_side(self) -> str:
        """``"left"`` or ``"right"``: the image edge that holds the chest wall."""
        return "left" if self.laterality == "L" else "right"


def _check_choice(name: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"generate_phantom: {name}={value!r} is not one of {', '.join(allowed)}")


def _powerlaw_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float,
                    fmin: float = 0.0) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise with power spectrum ~ 1/f**beta (float32).

    Frequencies are in cycles per *image height*, so the texture scales with the image.
    ``fmin`` (cycles/height) removes the lowest frequencies.
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None] * h
    fx = np.fft.rfftfreq(w)[None, :] * h
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[f < max(fmin, 1e-9)] = 0.0
    amp[0, 0] = 0.0
    white = rng.standard_normal((h, w)).astype(np.float32)
    out = np.fft.irfft2(np.fft.rfft2(white) * amp, s=(h, w)).astype(np.float32)
    out -= out.mean()
    std = float(out.std())
    return out / std if std > 0 else out


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Monotone-chain convex hull of (N, 2) points; returns the hull vertices in order."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) <= 2:
        return np.asarray(pts, dtype=np.float64)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.asarray(lower[:-1] + upper[:-1], dtype=np.float64)


def _inside_polygon(yy: np.ndarray, xx: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Boolean grid: which (y, x) points are inside the convex polygon ``poly`` ((N, 2) as (y, x))."""
    if len(poly) < 3:
        return np.zeros(yy.shape, dtype=bool)
    inside = np.ones(yy.shape, dtype=bool)
    n = len(poly)
    # orientation of the hull (monotone chain gives counter-clockwise in (y, x) coordinates)
    for i in range(n):
        y0, x0 = poly[i]
        y1, x1 = poly[(i + 1) % n]
        cross = (y1 - y0) * (xx - x0) - (x1 - x0) * (yy - y0)
        inside &= cross <= 0
    if not inside.any():  # the other winding
        inside = np.ones(yy.shape, dtype=bool)
        for i in range(n):
            y0, x0 = poly[i]
            y1, x1 = poly[(i + 1) % n]
            inside &= (y1 - y0) * (xx - x0) - (x1 - x0) * (yy - y0) >= 0
    return inside


def _segment_distance(yy, xx, y0, x0, y1, x1):
    """Distance of each grid point to the segment (y0, x0)-(y1, x1) and the position t in [0, 1] along it."""
    dy, dx = y1 - y0, x1 - x0
    length2 = dy * dy + dx * dx
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(length2, 1e-9), 0.0, 1.0)
    py, px = y0 + t * dy, x0 + t * dx
    return np.sqrt((yy - py) ** 2 + (xx - px) ** 2), t


def generate_phantom(seed: int, *, finding: str | None = None, laterality: str | None = None,
                     view: str | None = None, shape: tuple[int, int] = (1024, 832),
                     bits_stored: int = 12) -> Phantom:
    """Generate the phantom for ``seed`` (deterministic: same arguments, same pixels).

    ``finding`` / ``laterality`` / ``view`` default to a seeded choice (uniform
    over :data:`FINDINGS`, ``L``/``R``, ``CC``/``MLO``); giving one does not
    change the rest of the phantom's random draws. ``shape`` is (rows, columns),
    each at least 64; ``bits_stored`` is 8 to 16 (12 and 16 are the usual ones).
    Raises ``ValueError`` for an unknown choice, a too-small shape or bit depth.
    """
    _check_choice("finding", finding, FINDINGS)
    _check_choice("laterality", laterality, LATERALITIES)
    _check_choice("view", view, VIEWS)
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 64:
        raise ValueError(f"generate_phantom: shape={shape!r} must be (rows, columns), each >= 64")
    if not 8 <= int(bits_stored) <= 16:
        raise ValueError(f"generate_phantom: bits_stored={bits_stored!r} must be between 8 and 16")
    h, w = int(shape[0]), int(shape[1])
    rng = np.random.default_rng(int(seed))
    u = rng.uniform

    # --- choices (always drawn, so that overriding one keeps the others' streams) ---
    drawn_finding = FINDINGS[int(rng.integers(len(FINDINGS)))]
    drawn_lat = LATERALITIES[int(rng.integers(2))]
    drawn_view = VIEWS[int(rng.integers(2))]
    density = DENSITY_CATEGORIES[int(rng.choice(4, p=[0.15, 0.35, 0.35, 0.15]))]
    finding = finding or drawn_finding
    laterality = laterality or drawn_lat
    view = view or drawn_view

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # --- breast outline, canonical orientation: chest wall at column 0 (a LEFT breast) ---
    if view == "CC":
        cy = h * u(0.46, 0.54)
        a = h * u(0.36, 0.45)
        b = w * u(0.58, 0.82)
        shear = 0.0
    else:
        cy = h * u(0.40, 0.50)
        a = h * u(0.46, 0.56)
        b = w * u(0.58, 0.80)
        shear = u(0.10, 0.25)
    ys = (yy - cy - shear * xx) / a
    xs = xx / b
    theta = np.arctan2(ys, xs)
    wobble = np.ones_like(theta)
    for k in range(2, 6):
        wobble += u(0.0, 0.025) * np.cos(k * theta + u(0, 2 * np.pi))
    rho = np.sqrt(ys * ys + xs * xs) / wobble          # 0 at the chest wall centre, 1 at the skin
    breast = rho <= 1.0

    pectoral = np.zeros((h, w), dtype=bool)
    if view == "MLO":
        pw = w * u(0.22, 0.38)
        ph = h * u(0.38, 0.60)
        bow = u(-0.15, 0.15)
        pn = xx / pw + yy / ph
        pectoral = (pn + bow * (xx / pw) * (yy / ph) < 1.0)

    # thickness fall-off towards the skin (compressed breast)
    skin_px = max(1.5, h * 0.004)
    scale_px = float(min(a, b))
    edge_dist = np.clip((1.0 - rho) * scale_px, 0.0, None)      # approx. distance to the skin in px
    thickness = np.sqrt(np.clip(edge_dist / (0.12 * scale_px), 0.0, 1.0))
    thickness[~breast] = 0.0

    # --- parenchyma: fibroglandular tissue of the seeded density category ---
    fat = u(0.20, 0.28)
    field = _powerlaw_noise(rng, (h, w), beta=u(2.8, 3.3), fmin=1.5)
    prior = np.exp(-((yy - cy - shear * xx) / (0.75 * a)) ** 2) * np.exp(-((xs - 0.40) / 0.45) ** 2)
    drive = field + 2.2 * prior
    fraction = _DENSITY_FRACTION[density] * u(0.85, 1.15)
    inner = breast & (rho < 0.97)
    threshold = np.quantile(drive[inner], 1.0 - fraction) if inner.any() else 0.0
    gland = 1.0 / (1.0 + np.exp(-(drive - threshold) / 0.45))
    gland_amp = u(0.20, 0.30)
    fine = _powerlaw_noise(rng, (h, w), beta=2.2, fmin=8.0)
    tissue_value = fat + gland_amp * gland + 0.025 * fine * (0.4 + gland)

    # faint curvilinear structures (ducts, vessels) converging towards the nipple
    nipple_y, nipple_x = cy + shear * b, b
    for _ in range(int(rng.integers(3, 7))):
        sy = cy + a * u(-0.8, 0.8)
        sx = b * u(0.0, 0.25)
        d, t = _segment_distance(yy, xx, sy, sx, nipple_y + a * u(-0.1, 0.1), nipple_x * u(0.8, 0.95))
        tissue_value += u(0.02, 0.04) * np.exp(-(d / (h * 0.0025)) ** 2) * (0.5 + 0.5 * t)

    # --- lesion ---
    mask = np.zeros((h, w), dtype=bool)
    lesion = np.zeros((h, w), dtype=np.float32)
    if finding != "normal":
        ok = (breast & ~pectoral & (rho > 0.15) & (rho < 0.70) & (xx > 0.2 * b)
              & (yy > 0.06 * h) & (yy < 0.94 * h))
        step = max(1, h // 128)
        cand = np.argwhere(ok[::step, ::step]) * step
        if len(cand) == 0:  # pragma: no cover - the outline always leaves room
            cand = np.argwhere(breast & ~pectoral)
        ly, lx = (float(v) for v in cand[int(rng.integers(len(cand)))])
        # everything of the lesion lies within 0.18 h of its centre: work in that window
        ext = int(np.ceil(0.18 * h)) + 2
        win = (slice(max(0, int(ly) - ext), min(h, int(ly) + ext + 1)),
               slice(max(0, int(lx) - ext), min(w, int(lx) + ext + 1)))
        wy, wx = yy[win], xx[win]
        les, msk = lesion[win], mask[win]        # views: in-place updates land in lesion / mask
        dy, dx = wy - ly, wx - lx
        if finding in ("benign_mass", "malignant_mass"):
            radius = h * u(0.030, 0.052)
            angle = u(0, np.pi)
            ca, sa = np.cos(angle), np.sin(angle)
            ry, rx = radius, radius * u(0.60, 0.95) if finding == "benign_mass" else radius * u(0.8, 1.0)
            py = (dy * ca + dx * sa) / ry
            px = (-dy * sa + dx * ca) / rx
            phi = np.arctan2(py, px)
            r = np.sqrt(py * py + px * px)
            if finding == "benign_mass":  # circumscribed, gently lobulated
                r = r / (1.0 + u(0.0, 0.06) * np.cos(2 * phi + u(0, 2 * np.pi)))
            else:  # irregular, indistinct core
                irregular = np.ones_like(phi)
                for k in range(3, 9):
                    irregular += u(0.03, 0.09) * np.cos(k * phi + u(0, 2 * np.pi))
                r = r / irregular
            core = r <= 1.0
            amp = u(0.17, 0.27)
            les += amp * np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0)) + amp * 0.35 * core
            msk |= core
            if finding == "malignant_mass":
                width = h * u(0.0028, 0.0042)
                n_spic = int(rng.integers(10, 19))
                base_angles = np.sort(u(0, 2 * np.pi, n_spic))
                for ang in base_angles:
                    length = radius * u(1.3, 2.6)
                    y0, x0 = ly, lx
                    y1, x1 = ly + np.sin(ang) * (radius * 0.6 + length), lx + np.cos(ang) * (radius * 0.6 + length)
                    d, t = _segment_distance(wy, wx, y0, x0, y1, x1)
                    taper = width * (1.2 - 0.8 * t)
                    line = np.exp(-(d / taper) ** 2) * (1.0 - 0.6 * t)
                    les += u(0.13, 0.20) * line
                    msk |= (d <= taper) & (t > 0)
        else:  # clustered fine pleomorphic calcifications
            cluster = h * u(0.022, 0.040)
            n = int(rng.integers(7, 16))
            centres = []
            for _ in range(n):
                rr = cluster * np.sqrt(u(0, 1))
                aa = u(0, 2 * np.pi)
                centres.append((ly + rr * np.sin(aa), lx + rr * np.cos(aa)))
            centres_arr = np.asarray(centres)
            for sy, sx in centres_arr:
                sr = h * u(0.0045, 0.0075)          # speck radius: ~1.1-1.9 px at a 256-row input
                elong = u(1.0, 2.0)
                ang = u(0, np.pi)
                ca, sa = np.cos(ang), np.sin(ang)
                qy = ((wy - sy) * ca + (wx - sx) * sa) / (sr * elong)
                qx = (-(wy - sy) * sa + (wx - sx) * ca) / sr
                q2 = qy * qy + qx * qx
                les += u(0.45, 0.65) * np.exp(-q2 * 1.5)
                msk |= q2 <= 4.0
            hull = _convex_hull(centres_arr)
            msk |= _inside_polygon(wy, wx, hull)
        mask &= breast & ~pectoral

    # --- compose (normalised units, then stored values) ---
    value = np.full((h, w), 0.03, dtype=np.float32)
    body = (tissue_value + lesion) * thickness
    value += body
    if view == "MLO":
        muscle = 0.03 + fat + u(0.33, 0.43) + 0.03 * fine
        value = np.where(pectoral, np.maximum(muscle, value), value)
    skin = breast & (edge_dist <= skin_px)
    value += 0.07 * skin
    value += rng.normal(0.0, 0.006, size=(h, w)).astype(np.float32) * (0.4 + np.sqrt(np.clip(value, 0, None)))

    max_value = 2 ** int(bits_stored) - 1
    gain = u(0.80, 0.95)
    stored = np.clip(np.rint(value * gain * max_value), 0, max_value).astype(np.uint16)
    if laterality == "R":
        stored = stored[:, ::-1]
        mask = mask[:, ::-1]
    return Phantom(
        image=np.ascontiguousarray(stored),
        mask=np.ascontiguousarray(mask),
        label=int(finding in MALIGNANT_FINDINGS),
        finding=finding,
        laterality=laterality,
        view=view,
        bits_stored=int(bits_stored),
        pixel_spacing_mm=round(_FIELD_OF_VIEW_MM / h, 6),
        seed=int(seed),
        density=density,
    )


def phantom_dataset(seeds: Iterable[int], **kwargs) -> Iterator[Phantom]:
    """Yield :func:`generate_phantom` ``(seed, **kwargs)`` for each seed, lazily."""
    for seed in seeds:
        yield generate_phantom(int(seed), **kwargs)


def breast_mask(phantom: Phantom) -> np.ndarray:
    """Bool (H, W): pixels clearly above the background (breast incl. pectoral muscle and skin)."""
    max_value = 2 ** phantom.bits_stored - 1
    return phantom.image > 0.08 * max_value
