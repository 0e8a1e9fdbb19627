"""The decode behind every real-dataset reader: every PIL mode to the right 8-bit image (issue 8, item 2), and a
parallel, resumable, cached first decode with a stated cost (item 9)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fernb.data import decode as D
from fernb.data import readers as R
from fernb.data.dataset import FERDataset
from fernb.data.errors import BadFaceBoxError, CorruptImageError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNB_CACHE", str(tmp_path / "cache"))


# ---- item 2: every mode PIL opens -> the right 8-bit image -----------------------------------------------------------
H, W = 6, 8
RAMP = np.arange(H * W, dtype=np.float64).reshape(H, W) / (H * W - 1)       # 0 .. 1 across the image


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma as PIL computes it (16-bit fixed point)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def case_1():
    a = (np.indices((H, W)).sum(0) % 2).astype(bool)
    return Image.fromarray(a), "PNG", np.where(a, 255, 0).astype(np.uint8)


def case_L():
    a = np.rint(RAMP * 255).astype(np.uint8)
    return Image.fromarray(a, "L"), "PNG", a


def _alpha():
    alpha = np.full((H, W), 255, np.uint8)
    alpha[:, W // 2:] = 0                       # right half transparent
    alpha[0, :] = 128                           # first row half transparent
    return alpha


def case_LA():
    grey = np.rint(RAMP * 255).astype(np.uint8)
    alpha = _alpha()
    im = Image.fromarray(np.dstack([grey, alpha]), "LA")
    return im, "PNG", np.rint(grey * (alpha / 255.0)).astype(np.uint8)


def case_P():
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 150, 100]
    index = (np.indices((H, W)).sum(0) % 5).astype(np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(palette + [0] * (768 - len(palette)))
    rgb = np.asarray(palette, np.uint8).reshape(-1, 3)[index]
    return im, "PNG", rgb


def case_P_transparency():
    im, fmt, rgb = case_P()
    im.info["transparency"] = 1                 # palette entry 1 (red) is transparent -> black
    index = np.asarray(im)
    rgb = rgb.copy()
    rgb[index == 1] = 0
    return im, fmt, rgb


def case_RGB():
    rgb = np.dstack([np.rint(RAMP * 255), np.rint((1 - RAMP) * 255), np.full((H, W), 77)]).astype(np.uint8)
    return Image.fromarray(rgb, "RGB"), "PNG", rgb


def case_RGBA():
    _, _, rgb = case_RGB()
    alpha = _alpha()
    im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    return im, "PNG", np.rint(rgb * (alpha[..., None] / 255.0)).astype(np.uint8)


def case_CMYK():
    cmyk = np.dstack([np.rint(RAMP * 255), np.full((H, W), 40), np.rint((1 - RAMP) * 200),
                      np.full((H, W), 30)]).astype(np.uint8)
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    rgb = np.dstack([np.rint((255 - x) * (255 - k) / 255) for x in (c, m, y)]).astype(np.uint8)
    return Image.fromarray(cmyk, "CMYK"), "TIFF", rgb


def case_I16():
    a = np.rint(RAMP * 65535).astype(np.uint16)
    return Image.fromarray(a), "PNG", np.rint(a / 65535.0 * 255).astype(np.uint8)


def case_I16_dark():
    a = np.rint(RAMP * 4000).astype(np.uint16)  # a dim 16-bit image: dark, not stretched
    return Image.fromarray(a), "PNG", np.rint(a / 65535.0 * 255).astype(np.uint8)


def case_I_8bit_range():
    a = np.rint(RAMP * 255).astype(np.int32)
    return Image.fromarray(a), "TIFF", a.astype(np.uint8)


def case_I_16bit_range():
    a = np.rint(RAMP * 65535).astype(np.int32)
    return Image.fromarray(a), "TIFF", np.rint(a / 65535.0 * 255).astype(np.uint8)


def case_I_wide_range():
    a = (np.rint(RAMP * 2_000_000) - 1_000_000).astype(np.int32)
    return Image.fromarray(a), "TIFF", np.rint((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)


def case_F_unit():
    a = RAMP.astype(np.float32)
    return Image.fromarray(a), "TIFF", np.rint(a.astype(np.float64) * 255).astype(np.uint8)


def case_F_255():
    a = (RAMP * 255).astype(np.float32)
    return Image.fromarray(a), "TIFF", np.rint(a.astype(np.float64)).astype(np.uint8)


CASES = {"1": case_1, "L": case_L, "LA": case_LA, "P": case_P, "P+transparency": case_P_transparency,
         "RGB": case_RGB, "RGBA": case_RGBA, "CMYK": case_CMYK, "I;16": case_I16, "I;16 dim": case_I16_dark,
         "I 0..255": case_I_8bit_range, "I 0..65535": case_I_16bit_range, "I wide": case_I_wide_range,
         "F 0..1": case_F_unit, "F 0..255": case_F_255}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_decodes_to_the_right_8bit_image(tmp_path, name, channels):
    im, fmt, expected = CASES[name]()
    path = tmp_path / f"img.{fmt.lower()}"
    im.save(path, format=fmt)
    with Image.open(path) as check:                     # the file really is in the mode under test
        assert check.mode == im.mode
    # size W x H is not square: load_image would centre-crop, so compare on to_8bit + the full-frame path
    with Image.open(path) as opened:
        got = np.asarray(D.to_8bit(opened, channels))
    want = expected if expected.ndim == 2 else (luma(expected) if channels == 1 else expected)
    if want.ndim == 2 and channels == 3:
        want = np.repeat(want[..., None], 3, axis=2)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, f"{name}: {got} vs {want}"


def test_16bit_png_is_not_white_through_a_reader(tmp_path):
    """The reported bug: a 16-bit grey PNG came out all white (convert("L") clips at 255)."""
    root = tmp_path / "SFEW2"
    folder = root / "Train" / "Train_Aligned_Faces" / "Happy"
    folder.mkdir(parents=True)
    a = np.full((32, 32), 30000, np.uint16)             # mid grey in 16 bits
    Image.fromarray(a).save(folder / "Film_000001.png")
    ds = R.load_sfew(root, size=48, channels=1)
    assert int(ds.images.float().mean()) == round(30000 / 65535 * 255)   # 117, not 255


def test_unknown_mode_is_a_corrupt_image_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(path)
    monkeypatch.setattr(D, "to_8bit", lambda im, c: (_ for _ in ()).throw(ValueError("image mode 'XYZ' ...")))
    with pytest.raises(CorruptImageError, match=r"x\.png.*XYZ"):
        D.load_image(str(path), 48, 1)


def test_jpeg_draft_decode_matches_a_full_decode(tmp_path):
    """Large JPEGs are decoded at reduced scale by the JPEG decoder; the result stays close to a full decode."""
    yy, xx = np.mgrid[0:762, 0:562]
    img = np.dstack([(xx / 562 * 255), (yy / 762 * 255), ((xx + yy) % 256)]).astype(np.uint8)
    path = tmp_path / "face.jpg"
    Image.fromarray(img).save(path, quality=95)
    fast = D.load_image(str(path), 64, 3, box=(50, 100, 450, 600))
    full = D.load_image(str(path), 64, 3, box=(50, 100, 450, 600), draft=False)
    assert fast.shape == full.shape == (3, 64, 64)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3


def test_box_is_checked_before_decoding(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (40, 30)).save(path)
    with pytest.raises(BadFaceBoxError, match=r"-50,-50,-10,-10 \(from list line 9\) lies outside the 40x30"):
        D.load_image(str(path), 48, 3, box=(-50, -50, -10, -10), where="list line 9")
    assert D.load_image(str(path), 48, 3, box=(-5, -5, 20, 20)).shape == (3, 48, 48)   # partly outside: clamped


# ---- item 9: parallel, resumable, cached, with a stated cost --------------------------------------------------------
def grey_items(n):
    return [(i, None, None) for i in range(n)]


class CountingLoader:
    """item -> a (1, 48, 48) image of value i % 256; raises RuntimeError at call number `fail_at` (an interrupt)."""

    def __init__(self, fail_at=None):
        self.calls = 0
        self.fail_at = fail_at
        self.seen = []

    def __call__(self, item):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("interrupted")
        self.seen.append(item[0])
        return np.full((1, 48, 48), item[0] % 256, np.uint8)


def run_decode(items, loader, cache, **kw):
    return D.decode_items(items, loader, size=48, channels=1, keys=[str(i[0]) for i in items],
                          describe=lambda it: f"item {it[0]}", name="toy", cache=cache, **kw)


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_decode_resumes_with_only_the_rest(tmp_path, workers):
    items = grey_items(1000)
    first = CountingLoader(fail_at=650)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_decode(items, first, tmp_path, chunk_size=128, workers=workers)
    parts = sorted((tmp_path).glob("toy-*.parts/part-*.pt"))
    assert len(parts) == 5                               # chunks 0..639 finished before the interrupt
    second = CountingLoader()
    out = run_decode(items, second, tmp_path, chunk_size=128, workers=workers)
    assert second.calls == 1000 - 5 * 128 and min(second.seen) == 640      # nothing decoded twice
    assert out.decoded_now == 360
    assert torch.equal(out.images[:, 0, 0, 0], torch.arange(1000) % 256)
    assert not list(tmp_path.glob("toy-*.parts")) and len(list(tmp_path.glob("toy-*.pt"))) == 1
    third = CountingLoader()
    again = run_decode(items, third, tmp_path, chunk_size=128, workers=workers)
    assert third.calls == 0 and again.decoded_now == 0 and torch.equal(again.images, out.images)


def test_killed_decode_resumes(tmp_path):
    """A decode killed with SIGKILL (no cleanup at all) leaves its finished chunks; the next run decodes the rest."""
    script = textwrap.dedent(f"""
        import time, numpy as np
        from fernb.data import decode as D
        def slow(item):
            time.sleep(0.004)
            return np.full((1, 48, 48), item[0] % 256, np.uint8)
        items = [(i, None, None) for i in range(3000)]
        D.decode_items(items, slow, size=48, channels=1, keys=[str(i) for i in range(3000)], describe=str,
                       name="toy", cache={str(tmp_path)!r}, chunk_size=100, workers=1, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, FERNB_HEADLESS="1"))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("toy-*.parts/part-*.pt"))) < 3:
        time.sleep(0.05)
        assert proc.poll() is None, "the decode finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(tmp_path.glob("toy-*.parts/part-*.pt")))
    assert 3 <= done < 30
    loader = CountingLoader()
    out = run_decode(grey_items(3000), loader, tmp_path, chunk_size=100, workers=1)
    assert loader.calls == 3000 - 100 * done
    assert torch.equal(out.images[:, 0, 0, 0], torch.arange(3000) % 256)


def test_reader_decode_resumes_after_an_interrupt(tmp_path, monkeypatch):
    """The same through a reader: an interrupt mid-decode, then a second load that decodes only the rest."""
    from test_readers import make_rafdb

    codes = {f"train_{i:05d}.jpg": 1 + i % 7 for i in range(1, 301)}
    root = make_rafdb(tmp_path / "RAF-DB", codes)
    monkeypatch.setattr(D, "CHUNK_BYTES", 50 * 3 * 48 * 48)
    monkeypatch.setattr(D, "CHUNK_MIN", 50)
    real = D.load_image
    calls = []

    def flaky(path, *a, **k):
        calls.append(path)
        if len(calls) == 170:
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(D, "load_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        R.load_rafdb(root, size=48, workers=1)
    calls.clear()
    ds = R.load_rafdb(root, size=48, workers=1)
    assert len(calls) == 300 - 150 and len(ds) == 300              # 3 chunks of 50 were on disk
    assert ds.info["cache_file"].endswith(".pt")
    calls.clear()
    R.load_rafdb(root, size=48, workers=2)
    assert calls == []                                              # the finished cache: nothing decoded


def test_failed_items_are_retried_from_the_cache(tmp_path):
    items = grey_items(10)

    def broken(item):
        if item[0] == 3:
            raise CorruptImageError("cannot decode image 3")
        return np.full((1, 48, 48), item[0], np.uint8)

    with pytest.raises(CorruptImageError):
        run_decode(items, broken, tmp_path)
    with pytest.warns(UserWarning, match="1 unreadable image"):
        skipped = run_decode(items, broken, tmp_path, skip_bad=True)
    assert skipped.keep.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9] and skipped.skipped == ["item 3"]
    fixed = CountingLoader()
    out = run_decode(items, fixed, tmp_path)                       # the file was repaired: tried again
    assert fixed.calls == 1 and len(out.keep) == 10 and out.images[3, 0, 0, 0] == 3


def test_parallel_decode_equals_sequential(tmp_path):
    from test_readers import make_rafdb

    codes = {f"train_{i:05d}.jpg": 1 + i % 7 for i in range(1, 201)}
    root = make_rafdb(tmp_path / "RAF-DB", codes)
    one = R.load_rafdb(root, size=48, workers=1, cache=False)
    two = R.load_rafdb(root, size=48, workers=2, cache=False)
    assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)


def test_progress_bar_shown_and_quiet(tmp_path, monkeypatch, capsys):
    items = grey_items(600)
    monkeypatch.delenv("FERNB_HEADLESS", raising=False)
    run_decode(items, CountingLoader(), None, workers=1)
    assert "decoding toy" in capsys.readouterr().err
    run_decode(items, CountingLoader(), None, workers=1, progress=False)
    assert "decoding toy" not in capsys.readouterr().err
    monkeypatch.setenv("FERNB_HEADLESS", "1")
    run_decode(items, CountingLoader(), None, workers=1)
    assert "decoding toy" not in capsys.readouterr().err


# the cost table of data/README.md: N * (C * H * W + 8) bytes, checked against real saved files
@pytest.mark.parametrize("size,channels", [(48, 1), (64, 3), (112, 3)])
def test_cache_cost_formula_matches_saved_files(tmp_path, size, channels):
    n = 1000
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8)
    ds = FERDataset(images=images, labels=torch.randint(0, 7, (n,)), name="cost")
    assert images.nbytes + ds.labels.nbytes == D.cache_bytes(n, size, channels)       # memory
    ds.save(tmp_path / "ds.pt")
    on_disk = (tmp_path / "ds.pt").stat().st_size
    assert 0 <= on_disk - D.cache_bytes(n, size, channels) < 8 * 1024, on_disk           # disk: + a few KB
    out = run_decode_sized(tmp_path, n, size, channels)
    decoded_file = list(tmp_path.glob("cost-*.pt"))[0].stat().st_size
    assert 0 <= decoded_file - D.cache_bytes(n, size, channels, label_bytes=0) < 8 * 1024
    assert out.images.shape == (n, channels, size, size)


def run_decode_sized(folder, n, size, channels):
    def load(item):
        return np.random.default_rng(item[0]).integers(0, 256, (channels, size, size), dtype=np.uint8)
    items = grey_items(n)
    return D.decode_items(items, load, size=size, channels=channels, keys=[str(i) for i in range(n)],
                          describe=str, name="cost", cache=folder, progress=False)
