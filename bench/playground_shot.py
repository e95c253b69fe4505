"""Open the playground of a running `groundup serve` in headless Chromium, send a prompt, wait for the streamed
reply and its attention heatmap, and save a screenshot.

    python bench/playground_shot.py --model FOLDER [--prompt "..."] [--out docs/serve_playground.png]

Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and selenium (a dev
dependency). Not part of `make test`: installing a browser is too heavy for CI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import free_port, start  # bench/serve.py: a groundup serve subprocess on a free port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="Write a Python function that adds two numbers.")
    ap.add_argument("--out", default="docs/serve_playground.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--driver", default="/usr/bin/chromedriver")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    server = start([sys.executable, "-m", "groundup", "serve", args.model, "--port", str(port)], port,
                   Path("/tmp/playground_shot_server.log"))
    url = f"http://127.0.0.1:{port}/"
    try:
        opts = webdriver.ChromeOptions()
        opts.binary_location = args.chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
            opts.add_argument(flag)
        driver = webdriver.Chrome(service=Service(args.driver), options=opts)
        try:
            driver.get(url)
            wait = WebDriverWait(driver, 300)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
            driver.find_element(By.ID, "temperature").send_keys("")  # the defaults: 0.7, 64 tokens
            driver.find_element(By.ID, "prompt").send_keys(args.prompt)
            driver.find_element(By.ID, "send").click()
            wait.until(lambda d: "tokens in" in d.find_element(By.ID, "stats").text)  # the stream has ended
            reply = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text
            if not reply.strip():
                raise SystemExit("the playground showed no streamed text")
            driver.find_element(By.ID, "attn").click()
            wait.until(lambda d: d.execute_script("return document.getElementById('heat').width") > 0)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
            print(f"streamed {len(reply)} characters: {reply[:80]!r}...; {driver.find_element(By.ID, 'stats').text}")
            print(f"wrote {args.out}")
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
