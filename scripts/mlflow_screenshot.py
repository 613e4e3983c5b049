"""Screenshot of the MLflow UI for the README: the experiment's runs and the registered model with its
aliases, stacked in one PNG. Not part of CI (needs a browser): headless Chromium from Debian's
`chromium` package against a local `mlflow ui` on 127.0.0.1.

    python scripts/mlflow_screenshot.py [--params params.yaml] [--out docs/mlflow_ui.png]

Uses the project's tracking store (MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns/mlflow.db), the
experiment `registry.experiment` and the model `registry.model_name`.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from diffinject.config import load_params, section
from diffinject.tracking import store
from diffinject.tracking.registry_config import RegistryConfig

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1600, 900)  # browser viewport, pixels
UI_START_TIMEOUT_S = 60
# Milliseconds of page time Chromium lets the single-page app run (fetch runs, render) before the shot.
RENDER_BUDGET_MS = 20000
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"mlflow ui exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)
    raise SystemExit(f"{url}: mlflow ui did not answer within {UI_START_TIMEOUT_S} s")


def screenshot(browser: str, url: str, out: Path) -> Image.Image:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--virtual-time-budget={RENDER_BUDGET_MS}",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)
    return Image.open(out).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "mlflow_ui.png")
    args = parser.parse_args()
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("no Chromium found (apt-get install -y chromium)")
    cfg = section(load_params(args.params), "registry", RegistryConfig)
    uri = store.tracking_uri(REPO)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        raise SystemExit(f"{uri}: no experiment {cfg.experiment!r} (run the pipeline's register stage first)")
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                           "--host", "127.0.0.1", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/health", ui)
        runs_page = f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
        pages = [runs_page, f"{base}/#/models/{cfg.model_name}?workflowType=machine_learning"]
        with tempfile.TemporaryDirectory() as tmp:
            shots = [screenshot(browser, url, Path(tmp) / f"{i}.png") for i, url in enumerate(pages)]
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    sheet = Image.new("RGB", (WINDOW[0], sum(s.height for s in shots)), "white")
    y = 0
    for shot in shots:
        sheet.paste(shot, (0, y))
        y += shot.height
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"{args.out}: runs of experiment {cfg.experiment!r} and model {cfg.model_name!r} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
