"""Drawing of the ``acdc-phantom`` patients: a population of short-axis cine-MRI-like hearts.

On real ACDC (Bernard et al., IEEE TMI 2018) three labeled patients do not cover the
population: the 100 patients come from five diagnostic groups of 20 (normal, myocardial
infarction, dilated and hypertrophic cardiomyopathy, abnormal right ventricle), were scanned
over six years on two scanners with varying fields of view, and their hearts differ in
position, size, orientation, shape and contrast. That is why UNet-L trained on 3 patients
reaches 51.7 mean Dice against UNet-F's 91.5 (You et al., IPMI 2023, Table 1), with the RV
worst, and it is the room semi-supervised methods compete in. This module draws patients that
differ in the same ways, while every single image stays readable (the variability is between
patients, not noise inside an image: contrasts have floors, noise stays below them):

* anatomy: one of ACDC's five groups, 6 patients each (cavity size, wall thickness,
  contraction, RV size, a thinned infarct sector, septal hypertrophy, a flattened septum),
  field-of-view zoom (heart size on screen), scan-plane rotation, heart position, LV-to-RV
  direction, RV shape and reach along the stack, papillary muscles;
* appearance: tissue contrasts drawn per patient (surroundings darker or brighter than the
  myocardium, RV blood dimmer or brighter than LV blood, fat from 0.4 to 2.5 times as bright
  as blood, so that after per-volume min-max normalisation some hearts are much darker than
  others), gamma, blur, bias-field strength, noise level;
* unlabelled look-alikes, from none to about ten per patient: bright vessels, bright discs
  with a wall as thick as a myocardium (LV look-alikes), bright crescents with a dark rim
  (RV look-alikes), fat blobs, pericardial fluid hugging the epicardium.

Shapes are written in "anatomy coordinates" (pixels at zoom 1, where a pixel is 1.5 mm) and
the pixel grid is mapped onto them by the patient's zoom and scan-plane rotation.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

IMAGE_SIZE = 112
BASE_PIXEL_MM = 1.5  # in-plane spacing at zoom 1 (the zoom divides it)
#: ACDC's diagnostic groups: (LV cavity radius, wall thickness, ES/ED cavity radius, RV scale)
GROUPS = {
    "NOR": ((10, 14), (3.0, 4.5), (0.60, 0.72), (0.9, 1.2)),
    "MINF": ((12, 17), (2.5, 4.0), (0.76, 0.85), (0.9, 1.2)),
    "DCM": ((15, 19), (2.5, 3.5), (0.78, 0.86), (0.9, 1.3)),
    "HCM": ((8, 11), (5.5, 8.0), (0.55, 0.68), (0.85, 1.1)),
    "RV": ((9, 13), (3.0, 4.5), (0.60, 0.75), (1.5, 2.1)),
}
#: range of the outer LV radius on screen (px at IMAGE_SIZE)
HEART_PX = (22.0, 36.0)
#: thinnest myocardium on screen (px at IMAGE_SIZE): thinner would be lost at the 64 px CPU preset
MYO_PX = 3.5
#: smallest myocardium-to-surroundings contrast, as a fraction of the blood's intensity
MIN_CONTRAST = 0.2


def _ellipse(xx, yy, cx, cy, rx, ry, angle=0.0):
    """Boolean mask of a rotated ellipse (radii in px)."""
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 < 1.0


def patient_group(index: int, version: int) -> str:
    """Diagnostic group of patient ``index`` (1-based). ACDC has 20 patients of each group; here
    every run of five consecutive patients holds each group once, in an order drawn per run."""
    block, position = divmod(index - 1, len(GROUPS))
    order = np.random.default_rng([version, 0, block]).permutation(len(GROUPS))
    return list(GROUPS)[order[position]]


class Anatomy:
    """Per-patient shape (drawn once, shared by the ED and ES frames) of a patient of ``group``;
    its look-alikes come from a generator of their own, so that changing how they are drawn
    leaves the heart as it was."""

    def __init__(self, rng: np.random.Generator, group: str, lookalike_rng: np.random.Generator):
        u = rng.uniform
        self.group = group
        lv_r, myo, es_r, rv_scale = GROUPS[self.group]
        self.lv_radius, self.myo = u(*lv_r), u(*myo)
        self.es_shrink, self.rv_scale = u(*es_r), u(*rv_scale)
        self.es_thicken = u(1.3, 1.6) if self.group != "MINF" else u(1.05, 1.25)  # scar barely thickens
        self.es_rv_shrink = u(0.7, 0.85) if self.group != "RV" else u(0.85, 0.93)
        self.rv_angle = np.pi + u(-1.2, 1.2)  # direction from LV to RV (in anatomy coordinates)
        # RV: (radial extent, tangential extent, tangential shift, centre offset) relative to the LV
        self.rv_shape = (u(0.6, 1.0) * self.rv_scale, u(1.0, 1.7) * min(self.rv_scale, 1.4), u(-5, 5), u(0.7, 0.95))
        # LV + RV in outer LV radii: along their axis from the LV's far wall (-1) to the RV's far
        # edge (+reach), across it +-rv_shape[1]; the zoom sets the heart's size on screen (outer
        # LV radius drawn log-uniformly from HEART_PX, myocardium no thinner than MYO_PX), but
        # the whole heart must fit in the image
        reach = self.rv_shape[3] + self.rv_shape[0]
        span = max((1 + reach) / 2, self.rv_shape[1])
        outer = self.lv_radius + self.myo
        half = IMAGE_SIZE / 2
        fit = half - 10  # px: a margin for the drift along the stack, the RV wall and a thicker wall
        on_screen = min(np.exp(u(np.log(HEART_PX[0]), np.log(HEART_PX[1]))), fit / span)
        self.zoom = float(max(on_screen / outer, MYO_PX / self.myo))
        self.plane_angle = u(-0.6, 0.6)  # scan-plane rotation of the whole image
        self.n_slices = int(rng.integers(8, 13))
        pix = round(BASE_PIXEL_MM / self.zoom, 3)
        self.spacing = (float(rng.choice([5.0, 6.5, 8.0, 10.0])), pix, pix)
        self.body = (half + u(-4, 4), half + u(-3, 5), u(46, 54), u(36, 44), u(-0.15, 0.15))
        self.fat = u(2.5, 5.0)
        # the heart sits anywhere it fits: its centre (LV + RV) is off the image centre by up
        # to the room left; the LV centre (x, y) at the base follows
        room = max(fit / self.zoom - span * outer, 0.0)
        direction = np.array([np.cos(self.rv_angle), np.sin(self.rv_angle)])
        dist, angle = np.sqrt(u(0, 1)), u(0, 2 * np.pi)  # uniform over a disc
        centre = half + room * dist * np.array([np.cos(angle), np.sin(angle)])
        self.heart = centre - (reach - 1) / 2 * outer * direction
        self.drift = rng.normal(0, 2, size=2)  # centre shift from base to apex
        # the LV is a little flattened toward the RV; an overloaded RV flattens the septum into a "D"
        self.ellipticity = u(0.8, 1.0) if self.group != "RV" else u(0.62, 0.8)
        # wall thickness varies around the ring: (amplitude, angle of the thickest part; 0 = septum)
        self.myo_wave = (u(0.05, 0.3), u(0, 2 * np.pi))
        if self.group == "HCM":  # hypertrophy is often asymmetric, thickest at the septum
            self.myo_wave = (u(0.15, 0.35), u(-0.5, 0.5))
        # an infarct thins a sector of the wall: (centre angle, half width, remaining fraction)
        self.infarct = (u(0, 2 * np.pi), u(0.5, 1.1), u(0.35, 0.6)) if self.group == "MINF" else None
        self.rv_reach = u(0.55, 0.95)  # fraction of the stack (from the base) where the RV shows
        self.papillary = [(u(0, 2 * np.pi), u(1.0, 2.4)) for _ in range(int(rng.integers(0, 4)))]
        self.lungs = [(u(20, 28), u(-14, -4), u(14, 24), u(10, 16), u(-0.4, 0.4)) for _ in range(2)]
        self.liver = (u(-22, -10), u(14, 26), u(14, 22), u(10, 16))
        self.aorta = (u(-6, 10), u(22, 28), u(3.5, 5.0))
        self.lookalikes = _draw_lookalikes(lookalike_rng)


def _draw_lookalikes(rng: np.random.Generator) -> list[tuple]:
    """Unlabelled structures that resemble the labelled ones; how many varies by patient.

    Each is (kind, x, y, radius, extra, (t0, t1)): a position inside the body (fractions of its
    radii), a radius in px, a kind-specific extra and the part of the stack it spans (0 base,
    1 apex). Kinds: ``vessel`` a bright blood-like disc, ``ring`` a bright disc with a dark wall
    as thick as a myocardium (a look-alike of the LV with its wall), ``crescent`` a bright
    crescent with a dark rim (a look-alike of the RV), ``fat`` a bright fat blob, ``fluid``
    pericardial fluid hugging the epicardium (for it x is an angle from the side away from the
    RV and y a half width in radians)."""
    u = rng.uniform
    n = min(int(rng.poisson(u(1.0, 8.0))), 10)
    kinds = rng.choice(["vessel", "ring", "crescent", "fat", "fluid"], size=n, p=[0.25, 0.25, 0.15, 0.2, 0.15])
    out = []
    for kind in kinds:
        t0 = u(0, 0.7)
        span = (t0, min(t0 + u(0.2, 1.0), 1.0))
        if kind == "fluid":
            out.append((kind, u(-0.8, 0.8), u(0.6, 1.2), u(1.5, 4.0), 0.0, span))
            continue
        dist, angle = np.sqrt(u(0, 1)), u(0, 2 * np.pi)  # uniform over the body's inner part
        x, y = 0.75 * dist * np.cos(angle), 0.75 * dist * np.sin(angle)
        extra = {"vessel": 0.0, "ring": u(2.0, 4.0), "crescent": u(0.3, 0.6), "fat": 0.0}[kind]
        out.append((kind, x, y, u(3.0, 8.0), extra, span))
    return out


class Appearance:
    """Per-patient scanner and sequence: tissue contrasts, gamma, blur, bias field, noise."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        blood = u(0.7, 1.0)
        # the tissue around the heart is darker than the myocardium in some patients (whose
        # myocardium is then mid-grey) and brighter in others
        if rng.random() < 0.5:
            myo = blood * u(0.3, 0.5)
            soft = myo * u(0.2, 0.5)
        else:
            myo = blood * u(0.1, 0.35)
            soft = myo + blood * u(0.2, 0.45)
        rv_blood = blood * u(0.65, 1.1)
        # fat (the body's rim, fat blobs) is much brighter than blood in some patients: after the
        # per-volume min-max normalisation their hearts are darker, as bright fat or flow
        # artefacts make them in real scans
        fat = blood * np.exp(u(np.log(0.4), np.log(2.5)))
        tissue = {"blood": blood, "rv_blood": rv_blood, "myo": myo, "soft": soft, "fat": fat,
                  "lung": u(0.0, 0.08), "liver": u(0.2, 0.65), "spine": u(0.1, 0.3), "fluid": u(0.6, 1.0)}
        # the sequence's gamma maps every tissue's intensity (images are piecewise constant before blur)
        self.gamma = float(np.exp(u(np.log(0.6), np.log(1.7))))
        self.tissue = t = {k: v ** self.gamma for k, v in tissue.items()}
        # keep the epicardium visible after gamma: the surroundings differ from the myocardium by
        # at least MIN_CONTRAST of the blood's intensity
        step = MIN_CONTRAST * t["blood"]
        if abs(t["soft"] - t["myo"]) < step:
            t["soft"] = t["myo"] + step if t["soft"] > t["myo"] else max(t["myo"] - step, 0.0)
        self.blur = u(0.4, 0.9)
        self.bias = u(0.1, 0.45)  # the bias field spans exp(-bias) .. exp(bias) over the image
        # noise level varies by patient but stays well below the myocardium's contrasts
        self.noise = min(u(0.01, 0.04), min(abs(t["soft"] - t["myo"]), abs(t["blood"] - t["myo"])) / 3)
        self.scale = u(150, 900)


def _anatomy_grid(a: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Pixel grid mapped to anatomy coordinates by the patient's zoom and scan-plane rotation."""
    half = IMAGE_SIZE / 2
    py, px = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64) - half
    c, s = np.cos(a.plane_angle), np.sin(a.plane_angle)
    return (c * px + s * py) / a.zoom + half, (-s * px + c * py) / a.zoom + half


def draw_frame(a: Anatomy, look: Appearance, rng: np.random.Generator, es: bool) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (image int16 (Z, Y, X), label uint8 (Z, Y, X))."""
    nz = a.n_slices
    xx, yy = _anatomy_grid(a)
    shrink, thicken, rv_shrink = (a.es_shrink, a.es_thicken, a.es_rv_shrink) if es else (1.0, 1.0, 1.0)
    t_ = look.tissue
    bx, by, brx, bry, bang = a.body
    image = np.zeros((nz, IMAGE_SIZE, IMAGE_SIZE))
    label = np.zeros((nz, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for z in range(nz):
        t = z / (nz - 1)  # 0 at the base, 1 at the apex
        img = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
        body = _ellipse(xx, yy, bx, by, brx, bry, bang)
        img[body] = t_["fat"]
        img[_ellipse(xx, yy, bx, by, brx - a.fat, bry - a.fat, bang)] = t_["soft"]
        for side, (ldx, ldy, lrx, lry, lang) in zip((-1, 1), a.lungs):
            img[_ellipse(xx, yy, bx + side * ldx, by + ldy, lrx, lry, lang)] = t_["lung"]
        lx, ly, lrx, lry = a.liver
        grow = 0.5 + 0.7 * t  # the liver shows more toward the apex
        img[_ellipse(xx, yy, bx + lx, by + ly, lrx * grow, lry * grow) & body] = t_["liver"]
        img[_ellipse(xx, yy, bx, by + bry - 8, 6, 5)] = t_["spine"]
        ax, ay, ar = a.aorta
        img[_ellipse(xx, yy, bx + ax, by + ay, ar, ar)] = t_["blood"]

        cx, cy = a.heart + a.drift * t
        c, s = np.cos(a.rv_angle), np.sin(a.rv_angle)
        u = (xx - cx) * c + (yy - cy) * s  # u points from the LV toward the RV
        v = -(xx - cx) * s + (yy - cy) * c
        r = np.sqrt((u / a.ellipticity) ** 2 + v ** 2)
        phi = np.arctan2(v, u)
        size_z = 1.0 - 0.5 * t ** 2  # smaller toward the apex
        cavity_r = a.lv_radius * size_z * shrink * (0.0 if t == 1.0 and nz > 9 else 1.0)
        wave = 1 + a.myo_wave[0] * np.cos(phi - a.myo_wave[1])
        if a.infarct is not None:
            centre, width, keep = a.infarct
            off = np.angle(np.exp(1j * (phi - centre)))  # wrapped angular distance to the scar
            wave = wave * (1 - (1 - keep) * np.clip(1 - np.abs(off) / width, 0, 1))
        wall = a.myo * thicken * (0.8 + 0.2 * size_z) * wave
        cavity = r < cavity_r
        epi = r < cavity_r + wall
        epi_now = cavity_r + a.myo * thicken
        rv = np.zeros_like(cavity)
        rv_wall = np.zeros_like(cavity)
        if t < a.rv_reach:
            fade = (1 - (t / a.rv_reach) ** 2) ** 0.5 * rv_shrink
            ra_f, rb_f, v_shift, offset = a.rv_shape
            epi_r = a.lv_radius * size_z + a.myo
            rcx, rcy = epi_r * offset, v_shift
            ra, rb = max(epi_r * ra_f * fade, 1.0), max(epi_r * rb_f * (0.5 + 0.5 * fade), 1.0)
            inside = ((u - rcx) / ra) ** 2 + ((v - rcy) / rb) ** 2
            rv = (inside < 1.0) & ~(r < cavity_r + wall + 0.8)
            rv_wall = (inside < (1.0 + 2.2 / min(ra, rb)) ** 2) & ~rv & ~epi
        img[(r < cavity_r + wall + 3) | rv_wall] = t_["soft"]  # pericardial tissue
        img[rv_wall] = t_["myo"]
        _draw_lookalikes_into(img, a, t_, (xx, yy), body, t, r, phi, epi_now)
        img[rv] = t_["rv_blood"]
        img[epi] = t_["myo"]
        img[cavity] = t_["blood"]
        papillary = np.zeros_like(cavity)
        for ang, pr in a.papillary if cavity_r > 0 else ():
            pr = min(pr, 0.25 * cavity_r)  # a small (ES, hypertrophic) cavity is not filled by them
            px = cx + (cavity_r - pr - 0.5) * np.cos(a.rv_angle + ang)
            py = cy + (cavity_r - pr - 0.5) * np.sin(a.rv_angle + ang)
            papillary |= _ellipse(xx, yy, px, py, pr, pr) & cavity
        img[papillary] = t_["myo"]
        lab = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        lab[rv] = 1
        lab[epi & ~cavity] = 2
        lab[cavity] = 3  # papillary muscles belong to the LV cavity label, as in ACDC
        image[z] = gaussian_filter(img, look.blur * rng.uniform(0.85, 1.15)) * rng.uniform(0.95, 1.05)
        label[z] = lab
    return _acquire(image, look, rng), label


def _draw_lookalikes_into(img, a: Anatomy, t_, grid, body, t, r, phi, epi_now) -> None:
    """Paint the patient's look-alikes into slice ``img`` (drawn before the heart, never over it)."""
    xx, yy = grid
    bx, by, brx, bry, _ = a.body
    for kind, x, y, rad, extra, (t0, t1) in a.lookalikes:
        if not t0 <= t <= t1:
            continue
        if kind == "fluid":  # a crescent on the side away from the RV (phi = pi there)
            off = np.abs(np.angle(np.exp(1j * (phi - np.pi - x))))
            img[(r > epi_now + 0.5) & (r < epi_now + 0.5 + rad) & (off < y) & body] = t_["fluid"]
            continue
        cx, cy = bx + x * brx, by + y * bry
        if kind == "ring":
            img[_ellipse(xx, yy, cx, cy, rad + extra, rad + extra) & body] = t_["myo"]
            img[_ellipse(xx, yy, cx, cy, rad, rad * 0.9) & body] = t_["fluid"]
        elif kind == "crescent":  # a disc with a bite taken out of it, and a thin dark rim
            disc = _ellipse(xx, yy, cx, cy, rad * 1.6, rad)
            bite = _ellipse(xx, yy, cx + rad * extra * 2, cy + rad * 0.6, rad * 1.2, rad * 0.8)
            img[_ellipse(xx, yy, cx, cy, rad * 1.6 + 1.5, rad + 1.5) & ~bite & body] = t_["myo"]
            img[disc & ~bite & body] = t_["rv_blood"]
        else:
            img[_ellipse(xx, yy, cx, cy, rad, rad * 0.85) & body] = t_["blood" if kind == "vessel" else "fat"]


def _acquire(image: np.ndarray, look: Appearance, rng: np.random.Generator) -> np.ndarray:
    """Bias field, Rician noise and the scanner's intensity scale (int16, as on disk)."""
    nz, size = image.shape[0], image.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    gx, gy = (xx - size / 2) / size * 2, (yy - size / 2) / size * 2
    coef = rng.normal(0, 1, size=5)
    log_bias = coef[0] * gx + coef[1] * gy + coef[2] * gx * gy + coef[3] * gx ** 2 + coef[4] * gy ** 2
    bias = np.exp(log_bias / np.abs(log_bias).max() * look.bias)  # bounded: a coil's shading, not a hot corner
    zbias = 1 + rng.normal(0, 0.04) * np.linspace(-1, 1, nz)
    image = image * bias[None] * zbias[:, None, None]
    # Rician noise: magnitude of a complex signal with Gaussian noise on both channels
    sigma = look.noise
    image = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    return np.round(image * look.scale).astype(np.int16)
