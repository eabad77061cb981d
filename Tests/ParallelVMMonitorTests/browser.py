#!/usr/bin/env python3
"""Drives headless Chromium through its DevTools protocol (over --remote-debugging-pipe, so no socket is
needed) against the monitor's task list: waits for a running task, clicks its kill button, waits until the
page shows it killed, then kills every other running task the same way until the dispatch has finished.

Usage: browser.py CHROMIUM URL TIMEOUT_SECONDS [SCREENSHOT.png]
Prints `seen=TASK`, `killed=TASK` and finally `finished=1`; exits 1 with a reason on stderr otherwise.
With a PNG path it only waits for a running task and saves a picture of the page (the README's).
"""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, chromium):
        self.profile = tempfile.mkdtemp(prefix="parallelvm-chromium-")
        to_browser_read, self.to_browser = os.pipe()
        self.from_browser, from_browser_write = os.pipe()

        def descriptors():
            # The protocol pipe is fd 3 (commands in) and fd 4 (replies out) of the browser.
            os.dup2(to_browser_read, 3)
            os.dup2(from_browser_write, 4)

        self.process = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--remote-debugging-pipe", "--user-data-dir=" + self.profile,
             "--window-size=1000,620", "--hide-scrollbars", "about:blank"],
            # 3 and 4 are listed too: descriptors not passed are closed after preexec_fn has run.
            pass_fds=(3, 4, to_browser_read, from_browser_write), preexec_fn=descriptors,
            # A group of its own, so that close() ends its helper processes too.
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.buffer = b""
        self.next_id = 0
        self.session = None

    def send(self, method, params=None, session=True):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def read(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_browser, 65536)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def close(self):
        # Ask the browser to quit, then end whatever of its process group is left: its helpers may still be
        # writing into the profile after the main process is gone.
        try:
            self.send("Browser.close", session=False)
        except (OSError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        for _ in range(50):
            try:
                shutil.rmtree(self.profile)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def wait_for(browser, expression, deadline, what):
    while time.monotonic() < deadline:
        value = browser.evaluate(expression)
        if value:
            return value
        time.sleep(0.1)
    page = browser.evaluate("document.body ? document.body.innerText : ''")
    sys.exit(f"timed out waiting for {what}; the page says:\n{page}")


def main():
    chromium, url, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    deadline = time.monotonic() + timeout
    browser = Browser(chromium)
    try:
        browser.open(url)
        running = "(document.querySelector('tr.task[data-state=\"running\"]') || {dataset: {}}).dataset.task"
        task = wait_for(browser, running, deadline, "a running task")
        print(f"seen={task}", flush=True)
        if len(sys.argv) > 4:
            time.sleep(1)
            picture = browser.send("Page.captureScreenshot", {"format": "png"})["data"]
            with open(sys.argv[4], "wb") as file:
                file.write(base64.b64decode(picture))
            return
        browser.evaluate(f"document.querySelector('tr.task[data-task=\"{task}\"] button.kill').click()")
        wait_for(browser, f"(document.querySelector('tr.task[data-task=\"{task}\"]') || {{dataset: {{}}}})"
                 f".dataset.state === 'killed'", deadline, f"task {task} shown as killed")
        print(f"killed={task}", flush=True)
        # End the run: kill what else runs until the dispatch reports that it has finished.
        finished = "(document.getElementById('dispatch') || {dataset: {}}).dataset.finished === 'true'"
        while not browser.evaluate(finished):
            if time.monotonic() > deadline:
                sys.exit("timed out waiting for the dispatch to finish")
            browser.evaluate("for (const b of document.querySelectorAll('button.kill:not([disabled])')) b.click()")
            time.sleep(0.2)
        print("finished=1", flush=True)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
