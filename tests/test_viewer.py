"""The HTML case viewer (``--viewer true``): what predict and evaluate write, and the pages in a
real browser (headless Chromium through selenium; skipped with a reason when it is missing,
required in CI through ``COVIDSEG_BROWSER_TESTS=required``)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from covidseg.data.overlay import layer, overlay
from covidseg.data.synthetic import generate_volumes, make_volume_with_lungs
from covidseg.data.volumes import apply_window
from covidseg.evaluate import main as evaluate_main
from covidseg.predict import main as predict_main
from covidseg.viewer import ViewerWriter


def _page_data(page: Path) -> dict:
    text = page.read_text()
    start = text.index('type="application/json">') + len('type="application/json">')
    return json.loads(text[start : text.index("</script>", start)])


def _volume(path: Path, display: np.ndarray) -> None:
    """8-bit demo display slices ``[Z, H, W]`` as an int16 volume in physical HU (``synthetic.DEMO_HU``)."""
    from covidseg.data.synthetic import DEMO_HU

    hu = np.rint(np.interp(display, *DEMO_HU)).astype(np.int16)
    data = np.stack([s.T[::-1, ::-1] for s in hu], axis=-1)  # [X, Y, Z], RAS
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1])), path)


@pytest.fixture(scope="module")
def predicted_volumes(lung_ckpt, tiny_data, tmp_path_factory) -> Path:
    """predict --lungs --viewer on two small NIfTI volumes (6 and 3 slices) and a broken one."""
    folder = tmp_path_factory.mktemp("vols")
    slices = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((tiny_data / "images").glob("*.png"))[:6]])
    _volume(folder / "ct_a.nii.gz", slices)
    _volume(folder / "ct_b.nii.gz", slices[3:])
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    out = tmp_path_factory.mktemp("pred_vols") / "out"
    assert predict_main(["--ckpt", str(lung_ckpt), "--input", str(folder), "--output", str(out), "--lungs", "true", "--viewer", "true", "--device", "cpu"]) == 1
    return out


@pytest.fixture(scope="module")
def predicted_slices(tiny_ckpt, tiny_data, tmp_path_factory) -> Path:
    """predict --viewer on a folder of PNG slices grouped into cases by --case_regex."""
    out = tmp_path_factory.mktemp("pred_png") / "out"
    args = ["--ckpt", str(tiny_ckpt), "--input", str(tiny_data / "images"), "--output", str(out), "--case_regex", r"^(case\d+)_", "--viewer", "--device", "cpu"]  # a bare --viewer is true
    assert predict_main(args) == 0
    return out


@pytest.fixture(scope="module")
def evaluated(lung_ckpt, tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "report"
    evaluate_main(["--ckpt", str(lung_ckpt), "--data.root", str(tiny_data), "--output", str(out), "--viewer", "true", "--device", "cpu"])
    return out


# -- what is written ----------------------------------------------------------------------------
def test_layer_colours_match_the_overlay():
    pred, truth = np.array([[1, 1, 0, 0]], bool), np.array([[1, 0, 1, 0]], bool)
    rgba = layer(pred, truth)
    assert rgba[0, :, 3].tolist() == [255, 255, 255, 0]
    blended = overlay(np.zeros((1, 4)), pred, truth, alpha=1.0)  # alpha 1: the tint itself
    assert np.allclose(rgba[0, :3, :3] / 255, blended[0, :3], atol=1 / 255)
    assert layer(pred)[0, :, 3].tolist() == [255, 255, 0, 0]


def test_predict_volumes_lists_every_case_with_burden(predicted_volumes):
    index = _page_data(predicted_volumes / "index.html")
    rows = {r["name"]: r for r in index["rows"]}
    assert set(rows) == {"ct_a", "ct_b", "broken"}
    assert rows["broken"]["status"].startswith("failed: ") and "thumb" not in rows["broken"]
    with open(predicted_volumes / "summary.csv", newline="") as f:
        summary = {Path(r["input"]).name: r for r in csv.DictReader(f)}
    for name, slices in (("ct_a", 6), ("ct_b", 3)):
        row, want = rows[name], summary[f"{name}.nii.gz"]
        assert row["status"].startswith("ok") and row["slices"] == slices
        # the same numbers as summary.csv: one definition of involvement and grade; these few
        # slices cannot cover the lungs, so neither grades them and both say why
        assert want["severity"] == "" and want["qc"] not in ("", "ok")
        assert row["status"] == f"ok; not graded: {want['qc']}" and row.get("involvement_percent") is None and row.get("grade") is None
        assert row["lesion_ml"] == pytest.approx(float(want["lesion_ml"]))
        assert row["lung_ml"] == pytest.approx(float(want["lung_ml"]))
        folder = predicted_volumes / "viewer" / name
        assert len(list(folder.glob("ct_*.jpg"))) == len(list(folder.glob("ov_*.png"))) == slices
        assert cv2.imread(str(folder / "ov_0000.png"), cv2.IMREAD_UNCHANGED).shape == (2 * 80, 80, 4)  # lesion layer over lung outline
        case = _page_data(predicted_volumes / row["href"])
        assert [s["lesion_pixels"] for s in case["case"]["slices"]] == [int(v) for v in _display_sums(predicted_volumes / f"{name}_mask.nii.gz")]
    keys = [c["key"] for c in index["columns"]]
    assert {"lesion_ml", "lung_ml"} <= set(keys) and "dice" not in keys


def _display_sums(mask_path: Path) -> np.ndarray:
    from covidseg.data.volumes import to_display

    img = nib.load(mask_path)
    return to_display(np.asanyarray(img.dataobj), img.affine).reshape(img.shape[2], -1).sum(1)


def test_predict_slices_grouped_by_case(predicted_slices):
    rows = _page_data(predicted_slices / "index.html")["rows"]
    assert [r["name"] for r in rows] == [f"case{i:03d}" for i in range(8)]
    assert all(r["slices"] == 4 and r["status"] == "ok" and "lesion_ml" not in r for r in rows)


def test_existing_viewer_is_refused_without_overwrite(tiny_ckpt, predicted_slices, tiny_data, capsys):
    args = ["--ckpt", str(tiny_ckpt), "--input", str(tiny_data / "images" / "case000_00.png"), "--output", str(predicted_slices), "--viewer", "true"]
    with pytest.raises(SystemExit) as exit_:
        predict_main(args)
    assert exit_.value.code == 2 and "index.html" in capsys.readouterr().err


def test_evaluate_adds_dice_and_truth(evaluated):
    index = _page_data(evaluated / "index.html")
    assert {"dice", "truth_involvement_percent", "truth_grade", "involvement_percent", "grade"} <= {c["key"] for c in index["columns"]}
    metrics = json.loads((evaluated / "metrics.json").read_text())
    table = {c["case_id"]: c for c in metrics["lungs"]["severity"]["cases_table"]}
    rows = {r["name"]: r for r in index["rows"]}
    assert set(rows) == {f"case{i:03d}" for i in range(8)}
    with open(evaluated / "per_image.csv", newline="") as f:
        images = list(csv.DictReader(f))
    for name, row in rows.items():
        # the case's Dice pools its slices' counts: 2 TP / (truth + predicted), TP = Dice_i (g_i + p_i) / 2
        mine = [r for r in images if r["case_id"] == name]
        sizes = [int(r["gt_pixels"]) + int(r["pred_pixels"]) for r in mine]
        pooled = sum(float(r["dice"]) * n for r, n in zip(mine, sizes)) / sum(sizes) if sum(sizes) else 1.0
        assert row["dice"] == pytest.approx(pooled, abs=1e-6), name
        assert row["truth_involvement_percent"] == pytest.approx(table[name]["true_percent"])
        assert row["involvement_percent"] == pytest.approx(table[name]["pred_percent"])
    # per-case Dice of slices: the pooled counts of the case, not a mean of slice Dice
    with open(evaluated / "per_image.csv", newline="") as f:
        per_image = [r for r in csv.DictReader(f) if r["case_id"] == "case000"]
    case = _page_data(evaluated / rows["case000"]["href"])["case"]
    assert [s["truth_pixels"] for s in case["slices"]] == [int(r["gt_pixels"]) for r in per_image]
    assert [s["lesion_pixels"] for s in case["slices"]] == [int(r["pred_pixels"]) for r in per_image]


def test_a_512_volume_stays_small(tmp_path):
    """Bytes per slice of a 512x512 synthetic CT (real CT compresses worse: docs/PERFORMANCE.md)."""
    hu, labels, lungs = make_volume_with_lungs(np.random.default_rng(0), 12, 512)
    writer = ViewerWriter(tmp_path, "size", lungs=True)
    for image, lesion, lung in zip(apply_window(hu), labels > 0, lungs > 0):
        writer.add_slice("big", image / 255.0, lesion, lungs=lung, kind="volume", ml_per_voxel=0.001)
    writer.write()
    folder = tmp_path / "viewer" / "big"
    assert cv2.imread(str(folder / "ct_0000.jpg")).shape[:2] == (256, 256)
    per_slice = sum(p.stat().st_size for p in folder.glob("*_0*")) / 12
    assert per_slice * 300 < 3e6, f"{per_slice / 1e3:.1f} kB per slice"


def test_cost_script_runs():
    """scripts/viewer_cost.py (docs/PERFORMANCE.md), on a few small slices so it cannot rot."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "viewer_cost.py"
    out = subprocess.run([sys.executable, str(script), "-n", "3", "--size", "96"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("3 slices 96x96 (synthetic): ") and "MB" in out


def test_evaluate_volumes_has_3d_dice(tiny_ckpt, tmp_path):
    data = generate_volumes(tmp_path / "vols", cases=2, slices=5, size=64, layout="manifest")
    out = tmp_path / "report"
    evaluate_main(["--ckpt", str(tiny_ckpt), "--data.root", str(data), "--data.lesion_labels", "[1, 2]", "--output", str(out), "--viewer", "true", "--device", "cpu"])
    with open(out / "per_case.csv", newline="") as f:
        per_case = {r["case_id"]: r for r in csv.DictReader(f)}
    rows = {r["name"]: r for r in _page_data(out / "index.html")["rows"]}
    assert set(rows) == set(per_case) == {"case000", "case001"}
    for name, row in rows.items():
        assert row["slices"] == 5
        assert row["dice"] == pytest.approx(float(per_case[name]["dice"]))
        assert row["truth_ml"] == pytest.approx(float(per_case[name]["truth_ml"]))
        assert row["lesion_ml"] == pytest.approx(float(per_case[name]["pred_ml"]))


def test_predict_and_its_rebuild_add_a_volume_through_one_function(tmp_path):
    """``prediction.viewing.add_volume`` is the one slice loop of a predicted volume, for the live
    viewer (``volumes``) and the rebuilt one (``viewer_rebuild``): every slice in order, labelled
    ``slice K of N``, a right/left lung map (1/2) and a lesion label map read as masks."""
    from covidseg.prediction import viewer_rebuild, volumes
    from covidseg.prediction.viewing import add_volume

    assert volumes.add_volume is add_volume and viewer_rebuild.add_volume is add_volume
    got = []

    class Recorder:
        def add_slice(self, case, image, pred, **kw):
            got.append((case, image, pred, kw))

    slices = np.stack([np.full((8, 8), 50 * k, np.uint8) for k in range(3)])
    mask = np.zeros((3, 8, 8), np.uint8)
    mask[1, 2:4, 2:4] = 2
    lungs = np.zeros((3, 8, 8), np.uint8)
    lungs[:, :, :4], lungs[:, :, 4:] = 1, 2
    add_volume(Recorder(), "c", slices, mask, normalization="minmax", source="c.nii.gz", ml_per_voxel=0.01, lungs=lungs, classes=mask)
    assert [kw["label"] for *_, kw in got] == ["slice 1 of 3", "slice 2 of 3", "slice 3 of 3"]
    assert all(kw["kind"] == "volume" and kw["source"] == "c.nii.gz" and kw["ml_per_voxel"] == 0.01 for *_, kw in got)
    assert all(pred.dtype == bool and kw["lungs"].dtype == bool and kw["lungs"].all() for _, _, pred, kw in got)
    assert [int(pred.sum()) for _, _, pred, _ in got] == [0, 4, 0]
    assert got[1][3]["classes"] is not None and int(got[1][3]["classes"].max()) == 2
    assert all(0.0 <= image.min() <= image.max() <= 1.0 for _, image, _, _ in got)


# -- in a browser -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("COVIDSEG_BROWSER_TESTS") == "required"  # set by .ci/run: CI must not skip them
    chrome = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if not (webdriver and chrome and driver_path):
        missing = ", ".join(n for n, ok in (("selenium", webdriver), ("chromium", chrome), ("chromedriver", driver_path)) if not ok)
        reason = f"headless browser tests need {missing} (pip install -e '.[test]'; apt-get install chromium chromium-driver)"
        pytest.fail(reason + " and COVIDSEG_BROWSER_TESTS=required") if required else pytest.skip(reason)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.binary_location = chrome
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _errors(driver) -> list[str]:
    """Console errors since the last call (failed loads, JavaScript exceptions)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _open(driver, page: Path) -> None:
    _errors(driver)  # drop what earlier pages logged
    driver.get(page.resolve().as_uri())


def _wait(driver, condition, what: str, timeout: float = 10):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), message=what)


def _names(driver) -> list[str]:
    return [tr.get_attribute("data-case") for tr in driver.find_elements("css selector", "#cases tbody tr")]


def _drawn(driver, index: int) -> bool:
    return driver.find_element("id", "slice").get_attribute("data-drawn") == str(index)


def test_index_lists_and_sorts(browser, predicted_volumes):
    _open(browser, predicted_volumes / "index.html")
    _wait(browser, lambda d: len(_names(d)) == 3, "three rows")
    assert sorted(_names(browser)) == ["broken", "ct_a", "ct_b"]
    rows = {r["name"]: r for r in _page_data(predicted_volumes / "index.html")["rows"]}
    header = browser.find_element("css selector", "th[data-key=slices]")
    header.click()
    assert _names(browser) == ["ct_b", "ct_a", "broken"]  # ascending, missing last
    header.click()
    assert _names(browser) == ["ct_a", "ct_b", "broken"]
    browser.find_element("css selector", "th[data-key=name]").click()
    assert _names(browser) == sorted(rows)
    cells = browser.find_elements("css selector", "td[data-key=status]")
    assert any(c.text == rows["ct_a"]["status"] and "not graded" in c.text for c in cells)  # as summary.csv: too few slices for a grade
    thumbs = browser.find_elements("css selector", "img.thumb")
    _wait(browser, lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", t) for t in thumbs), "thumbnails")
    assert _errors(browser) == []


def test_case_view_scrolls_every_slice(browser, predicted_volumes):
    from selenium.webdriver.common.keys import Keys

    data = _page_data(predicted_volumes / "viewer" / "ct_a.html")
    n, start = len(data["case"]["slices"]), data["case"]["start"]
    _open(browser, predicted_volumes / "viewer" / "ct_a.html")
    _wait(browser, lambda d: _drawn(d, start), "the most involved slice drawn")
    canvas = browser.find_element("id", "slice")
    first = canvas.screenshot_as_png
    # the slider: every slice shows, with its overlay loaded
    for k in range(n):
        browser.execute_script("const s = document.getElementById('slider'); s.value = arguments[0]; s.dispatchEvent(new Event('input'));", k)
        _wait(browser, lambda d: _drawn(d, k), f"slice {k} drawn")
    other = (start + 1) % n
    browser.execute_script("const s = document.getElementById('slider'); s.value = arguments[0]; s.dispatchEvent(new Event('input'));", other)
    _wait(browser, lambda d: _drawn(d, other), "slice drawn")
    assert canvas.screenshot_as_png != first
    assert browser.find_element("id", "slice-label").text == f"{other + 1} / {n}"
    # arrow keys and the mouse wheel
    browser.find_element("tag name", "body").send_keys(Keys.ARROW_LEFT if other else Keys.ARROW_RIGHT)
    expected = other - 1 if other else 1
    _wait(browser, lambda d: d.find_element("id", "slider").get_attribute("value") == str(expected), "arrow key moved a slice")
    browser.execute_script("arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: 120, cancelable: true}))", canvas)
    assert browser.find_element("id", "slider").get_attribute("value") == str(min(expected + 1, n - 1))
    # the strip: a click at its left end goes to the first slice
    from selenium.webdriver import ActionChains

    strip = browser.find_element("id", "strip")
    ActionChains(browser).move_to_element_with_offset(strip, -strip.size["width"] // 2 + 2, 0).click().perform()
    assert canvas.get_attribute("data-slice") == "0"
    assert browser.find_elements("id", "show-lungs")  # a lung model: the outline toggle
    assert _errors(browser) == []


def test_overlay_toggle_changes_pixels(browser, evaluated):
    rows = _page_data(evaluated / "index.html")["rows"]
    page = evaluated / rows[0]["href"]
    start = _page_data(page)["case"]["start"]
    _open(browser, page)
    _wait(browser, lambda d: _drawn(d, start), "slice drawn")
    assert len(browser.find_elements("css selector", "ul.legend li")) == 4  # TP, FP, FN, lungs
    canvas = browser.find_element("id", "slice")
    shown = canvas.screenshot_as_png
    browser.find_element("id", "show-lesion").click()
    hidden = canvas.screenshot_as_png
    assert hidden != shown
    browser.find_element("id", "show-lesion").click()
    assert canvas.screenshot_as_png == shown
    _open(browser, evaluated / "index.html")
    _wait(browser, lambda d: len(_names(d)) == 8, "eight rows")
    browser.find_element("css selector", "th[data-key=dice]").click()
    dice = [r["dice"] for r in sorted(rows, key=lambda r: r["dice"])]
    assert [next(r["dice"] for r in rows if r["name"] == name) for name in _names(browser)] == dice
    assert _errors(browser) == []


def test_png_cases_in_the_browser(browser, predicted_slices):
    _open(browser, predicted_slices / "index.html")
    _wait(browser, lambda d: len(_names(d)) == 8, "eight rows")
    browser.find_element("css selector", "td[data-key=name] a").click()
    _wait(browser, lambda d: d.find_elements("id", "slice") and d.find_element("id", "slice").get_attribute("data-drawn") is not None, "case view")
    assert browser.find_element("id", "slider").get_attribute("max") == "3"
    assert not browser.find_elements("id", "show-lungs")
    assert _errors(browser) == []


@pytest.mark.parametrize("breakage", ["missing image", "javascript error"])
def test_a_broken_page_is_detected(browser, predicted_volumes, tmp_path, breakage):
    copy = tmp_path / "out"
    shutil.copytree(predicted_volumes, copy)
    start = _page_data(copy / "viewer" / "ct_b.html")["case"]["start"]
    if breakage == "missing image":
        (copy / "viewer" / "ct_b" / f"ct_{start:04d}.jpg").unlink()
    else:
        js = copy / "viewer" / "viewer.js"
        js.write_text(js.read_text().replace('"use strict";', '"use strict"; undefinedFunction();', 1))
    _open(browser, copy / "viewer" / "ct_b.html")
    errors = _wait(browser, lambda d: _errors(d), "a console error")
    assert any(("ct_" in e) if breakage == "missing image" else ("undefinedFunction" in e) for e in errors), errors


def test_class_model_slices_show_ground_glass_and_consolidation_apart(browser, tmp_path):
    """Issue 33: the viewer colours the two classes apart (amber, magenta) with a legend."""
    from covidseg.data.overlay import CLASS_RGB

    labels = np.zeros((64, 64), np.uint8)
    labels[10:30, 10:30] = 1
    labels[40:55, 40:55] = 2
    writer = ViewerWriter(tmp_path, "classes", lungs=False, classes=True)
    writer.add_slice("case", np.full((64, 64), 0.3, np.float32), labels > 0, classes=labels, kind="image")
    writer.write()
    ov = cv2.cvtColor(cv2.imread(str(tmp_path / "viewer" / "case" / "ov_0000.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    assert ov[20, 20].tolist() == [*np.rint(CLASS_RGB[1] * 255).astype(int), 255]
    assert ov[47, 47].tolist() == [*np.rint(CLASS_RGB[2] * 255).astype(int), 255]
    assert ov[2, 2, 3] == 0
    _open(browser, tmp_path / "viewer" / "case.html")
    _wait(browser, lambda d: d.find_elements("css selector", "ul.legend li"), "legend")
    legend = [li.text for li in browser.find_elements("css selector", "ul.legend li")]
    assert legend == ["predicted ground-glass", "predicted consolidation"]
    assert _errors(browser) == []
