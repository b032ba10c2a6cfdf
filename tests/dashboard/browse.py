"""Drives the dashboard in headless Chromium (selenium, WebDriver) for
tests/dashboard.rs.

    browse.py URL SCREENSHOT_DIR

Waits until the page shows three members, all live; saves
`three-members.png`; prints `READY` and waits for a line on stdin (the
test stops a member meanwhile); then waits until the page shows two
members, all live, and (up to 5 s more) an event saying one left, and
saves `two-members.png`. Prints one JSON line per
step. Exits 1, with the page's rows and a screenshot, if a wait times out.
"""

import json
import os
import shutil
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service


def browser():
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,720"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def shown(page):
    """The member rows and the members card, read in one turn of the page's
    script (the page replaces its rows every second: elements found one
    call earlier may be gone)."""
    return page.execute_script(
        "return {rows: [...document.querySelectorAll('#members tr.member')]"
        ".map(r => ({id: r.dataset.id, state: r.dataset.state, rate: r.cells[5].textContent})),"
        " count: document.getElementById('member-count').textContent};")


def until(page, members, limit, shots, name, rated=False):
    """Waits until the page shows `members` rows, all live (and, if `rated`,
    each with a request rate: two polls seen); seconds taken."""
    began = time.monotonic()
    while True:
        now = shown(page)
        rows, count = now["rows"], now["count"]
        live = all(r["state"] == "live" and (not rated or r["rate"] != "–") for r in rows)
        if len(rows) == members and live and count == str(members):
            return time.monotonic() - began, rows
        if time.monotonic() - began > limit:
            page.save_screenshot(os.path.join(shots, "failed-" + name + ".png"))
            sys.stderr.write(f"after {limit} s the page shows {rows} (members card {count!r}), "
                             f"not {members} live members\n")
            sys.exit(1)
        time.sleep(0.05)


def departure(page, limit):
    """The page's events once one says a member left (or after `limit`
    seconds, whatever they are: the caller checks them)."""
    began = time.monotonic()
    while True:
        events = page.execute_script(
            "return [...document.querySelectorAll('#events li')].map(li => li.textContent);")
        if any("left the view" in e for e in events) or time.monotonic() - began > limit:
            return events
        time.sleep(0.05)


def main():
    url, shots = sys.argv[1], sys.argv[2]
    page = browser()
    try:
        page.get(url)
        seconds, rows = until(page, 3, 20, shots, "three", rated=True)
        page.save_screenshot(os.path.join(shots, "three-members.png"))
        print(json.dumps({"step": "three", "seconds": seconds, "rows": rows,
                          "title": page.title}), flush=True)
        print("READY", flush=True)
        sys.stdin.readline()
        seconds, rows = until(page, 2, 10, shots, "two")
        # The rows follow the committed view at once; its events are
        # written by the directory's task as it takes the view, a moment
        # later: wait (bounded) for the departure before reading them.
        events = departure(page, 5)
        page.save_screenshot(os.path.join(shots, "two-members.png"))
        print(json.dumps({"step": "two", "seconds": seconds, "rows": rows, "events": events}),
              flush=True)
    finally:
        page.quit()


if __name__ == "__main__":
    main()
