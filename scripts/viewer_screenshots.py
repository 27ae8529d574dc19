"""Screenshots of the HTML case viewer for the README, from the synthetic demo set only.

    python scripts/viewer_screenshots.py                       # trains the demo model with lungs first (~10 min on 2 busy CPU cores)
    python scripts/viewer_screenshots.py --ckpt best.ckpt      # a model with a lung output

Trains (unless ``--ckpt``) the demo model with a lung output on the built-in synthetic set, evaluates it
with ``--viewer true`` on a second synthetic set (another seed), and saves the index and one
case view from headless Chromium to ``docs/images/viewer_index.png`` and ``viewer_case.png``.
Needs selenium (``pip install -e ".[test]"``), chromium and chromedriver.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(work: Path) -> Path:
    """The README's demo model (configs/demo.yaml on the built-in synthetic set) with a lung output."""
    from covidseg.fit import main as fit

    fit(["--config", str(REPO / "configs" / "demo.yaml"), "--data.lung_masks", "true", "--data.num_workers", "0", "--trainer.max_epochs", "6",
         "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(work / "runs")])  # fmt: skip
    return next((work / "runs").rglob("best.ckpt"))


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, help="a covidseg checkpoint with a lung output (default: train one)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--work", type=Path, help="keep the data, model and report here (default: a temporary folder)")
    a = p.parse_args()

    from covidseg.data.synthetic import generate
    from covidseg.evaluate import main as evaluate

    work = a.work or Path(tempfile.mkdtemp(prefix="viewer_shots_"))
    ckpt = a.ckpt or train(work)
    data = generate(work / "test", cases=10, slices=12, size=128, seed=7)
    report = work / "report"
    evaluate(["--ckpt", str(ckpt), "--data.root", str(data), "--output", str(report), "--viewer", "true"])

    a.out.mkdir(parents=True, exist_ok=True)
    driver = browser(1180, 760)
    try:
        driver.get((report / "index.html").as_uri())
        driver.find_element("css selector", "th[data-key=dice]").click()  # worst cases first
        time.sleep(1.0)
        driver.save_screenshot(str(a.out / "viewer_index.png"))
        href = driver.find_element("css selector", "#cases tbody tr td[data-key=name] a").get_attribute("href")
        driver.set_window_size(1180, 900)
        driver.get(href)
        time.sleep(1.0)
        driver.save_screenshot(str(a.out / "viewer_case.png"))
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    if errors:
        raise SystemExit(f"console errors: {errors}")
    print(f"wrote {a.out / 'viewer_index.png'} and {a.out / 'viewer_case.png'} (report: {report})")


if __name__ == "__main__":
    main()
