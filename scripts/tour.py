#!/usr/bin/env python3
"""The README's tour, run as tests: every ```sh block under "## Tour", command by command,
against a fresh embedded server, checking what the README shows.

What a comment after a command (inline, or on the lines below it) asserts:
  # 404 {"type":…}          the HTTP status of the command's last curl, then a body fragment
  # {"status":"ok"}         a body fragment; `…` (or `...`) matches anything
  # 412: the key is …       a status alone (a word after it is prose)
  # exit 3                  the command's exit code (otherwise 0 is required)
  # → report with token 2   a line of plain output (`…` matches anything)
  # event: change / …       (after `curl -N`) each named event must arrive
  # RateLimit: "burst";r=…  (after `curl -i`) a response header and its value
  # anything else           prose; the command must still succeed (exit 0, and an HTTP
                            status below 400 for curl unless one is shown)
A fragment is matched against each line of output, JSON lines re-serialised compactly in the
server's key order, so write JSON fragments in the order the server answers them.

Placeholders: `<id>`, `<lease_id>`, `<cursor>`, `<permit>` take the latest value of that field in an earlier
command's JSON output (`<id>` also any ULID printed by the CLI). `localhost:8700`, the RESP port
6380 and any other `127.0.0.1:PORT` a command starts a server on are mapped to free ports.
```toml blocks are appended to ./mortar.toml in the tour's directory and the server restarts
before the next block, as the README asks a reader to do. A `mortar serve` line without
`--listen` replaces the tour server for the rest of its block (a user stops the first one); one
with `--listen` runs beside it. Long-running commands (`curl -N`, workers, watchers, `bench`)
keep running while the rest of their block runs, as in another terminal; at the block's end
(after at least 3 s) they are stopped and must not have failed, and their output is checked.

Usage: scripts/tour.py --bin target/debug/mortar [--readme README.md] [--only TEXT] [-v]
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

LONG_RUNNING = [r"\bcurl\b.*\s-N\b", r"\bjobs work\b", r"\bconfig watch\b", r"\bconfig run\b",
                r"\bmortar bench\b"]
STATUS_MARK = "__tour_status="
CURL_PRELUDE = "curl() { command curl -w '%{stderr}" + STATUS_MARK + "%{http_code}\\n' \"$@\"; }\n"
ULID = re.compile(r"\b01[0-9A-HJKMNP-TV-Z]{24}\b", re.I)
CI = os.environ.get("CI") == "true"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- README parsing

def blocks(readme):
    """(kind, first line number, lines) of each fenced block under ## Tour."""
    out, in_tour, kind, start, body = [], False, None, 0, []
    for n, line in enumerate(open(readme, encoding="utf-8"), 1):
        line = line.rstrip("\n")
        if line.startswith("## "):
            in_tour = line.strip() == "## Tour"
        if kind is None and line.startswith("```") and in_tour:
            kind, start, body = line[3:].strip(), n + 1, []
        elif kind is not None and line.startswith("```"):
            out.append((kind, start, body))
            kind = None
        elif kind is not None:
            body.append(line)
    return out


def split_comment(line):
    """(code, comment) — the comment starts at a `#` outside quotes after whitespace."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), None


def complete(code):
    try:
        shlex.split(code)
        return not code.endswith("\\")
    except ValueError:
        return False


def commands(lines, first):
    """[(line number, shell text, [comments])] of one sh block."""
    out, acc, acc_line = [], "", 0
    for n, line in enumerate(lines, first):
        if not acc:
            code, comment = split_comment(line)
            if not code:
                if comment is not None and out:
                    out[-1][2].append(comment)
                continue
            acc, acc_line = code, n
        else:
            acc += "\n" + line
        if complete(acc):
            code, comment = split_comment(acc) if "\n" not in acc else (acc, None)
            if "\n" in acc:  # a trailing comment on the last line of a continued command
                head, _, last = acc.rpartition("\n")
                last_code, comment = split_comment(last)
                code = head + "\n" + last_code
            out.append((acc_line, code, [comment] if comment else []))
            acc = ""
    if acc:
        out.append((acc_line, acc, []))
    return out


# ---------------------------------------------------------------- expectations

def scan_fragment(text):
    """The balanced JSON-ish fragment at the start of text (strings respected)."""
    depth, i, quote = 0, 0, False
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        elif c.isspace() and depth <= 0:
            break
        i += 1
    return text[:i]


def pattern(fragment):
    pieces = re.split(r"…|\.\.\.", fragment)
    return re.compile(".*?".join(re.escape(p) for p in pieces), re.S)


class Expect:
    def __init__(self, comments):
        self.status, self.exit, self.fragments, self.events, self.headers = None, 0, [], [], []
        for c in comments:
            if c.startswith("→ "):
                self.fragments.append(c[2:].strip())
                continue
            m = re.match(r"exit (\d+)\b", c)
            if m:
                self.exit = int(m.group(1))
                continue
            if re.match(r"(event|id|data): ", c):
                self.events += re.findall(r"event: ([\w.]+)", c)
                continue
            if re.match(r"[A-Z][A-Za-z-]*: \S", c) and not c.startswith("Scopes"):
                for name, value in re.findall(r"([A-Z][A-Za-z-]*): (.+?)(?=\s{3,}[A-Z][A-Za-z-]*: |$)", c):
                    self.headers.append((name.lower(), pattern(value.strip())))
                continue
            m = re.match(r"(\d{3})\b:?\s*(.*)", c)
            if m:
                self.status, c = int(m.group(1)), m.group(2)
            if c[:1] in ("{", "[", '"'):
                self.fragments.append(scan_fragment(c))


def normalise(stdout):
    lines = []
    for line in stdout.splitlines():
        try:
            lines.append(json.dumps(json.loads(line), ensure_ascii=False, separators=(",", ":")))
        except ValueError:
            lines.append(line)
    try:  # a pretty-printed document
        lines.append(json.dumps(json.loads(stdout), ensure_ascii=False, separators=(",", ":")))
    except ValueError:
        pass
    return lines


def capture(stdout):
    """The first id / lease_id / cursor / permit in a command's JSON output, else the first ULID printed."""
    found = {}

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                if k in ("id", "lease_id", "cursor", "next_cursor", "permit") and isinstance(x, str):
                    found.setdefault("cursor" if k == "next_cursor" else k, x)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    for line in [stdout] + stdout.splitlines():
        try:
            walk(json.loads(line))
        except ValueError:
            continue
    ulid = ULID.search(stdout)
    if ulid and "id" not in found:
        found["id"] = ulid.group(0)
    return found


# ---------------------------------------------------------------- servers and commands

class Tour:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.http, self.resp = free_port(), free_port()
        self.ports = {8700: self.http, 6380: self.resp}
        self.values = {}
        self.failures = []
        self.server = None
        self.extra = []
        self.background = []
        self.spawned = 0
        bindir = os.path.join(work, ".bin")
        os.makedirs(bindir)
        os.symlink(os.path.abspath(args.bin), os.path.join(bindir, "mortar"))
        self.base_env = dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"],
                             MORTAR_URL=f"http://127.0.0.1:{self.http}", NO_COLOR="1",
                             MORTAR_LISTEN=f"127.0.0.1:{self.http}",
                             MORTAR_CACHE__RESP_LISTEN=f"127.0.0.1:{self.resp}")
        for k in ("MORTAR_TOKEN", "MORTAR_DATABASE_URL", "MORTAR_REDIS_URL", "RUST_LOG"):
            self.base_env.pop(k, None)
        self.env = dict(self.base_env)

    def rewrite(self, code):
        code = re.sub(r"(localhost|127\.0\.0\.1):8700\b", f"127.0.0.1:{self.http}", code)
        code = re.sub(r"(-p\s+)6380\b", rf"\g<1>{self.resp}", code)
        if re.search(r"\bmortar serve\b", code) and "--print-config" not in code:
            listen = r"(--(?:resp-)?listen\s+127\.0\.0\.1:)(\d+)"
            for _, port in re.findall(listen, code):
                self.ports.setdefault(int(port), free_port())
            code = re.sub(listen, lambda m: f"{m.group(1)}{self.ports[int(m.group(2))]}", code)
        pg = os.environ.get("MORTAR_TEST_DATABASE_URL")
        if pg:
            code = code.replace("postgres://postgres@127.0.0.1/test", pg)
        redis = os.environ.get("MORTAR_TEST_REDIS_URL")
        if redis:
            code = code.replace("redis://127.0.0.1:6379", redis)
        for name in ("id", "lease_id", "cursor", "permit"):
            if f"<{name}>" in code:
                if name not in self.values:
                    raise LookupError(f"<{name}>: no earlier command printed one")
                code = code.replace(f"<{name}>", self.values[name])
        return code

    def spawn(self, code, env):
        """A command in its own process group, its output in files (a pipe nobody reads while
        it runs would fill up and stall a server's logging)."""
        self.spawned += 1
        out = [open(os.path.join(self.work, f".out-{self.spawned}-{n}"), "w+", encoding="utf-8")
               for n in (1, 2)]
        proc = subprocess.Popen(["bash", "-c", CURL_PRELUDE + code], cwd=self.work, env=env,
                                stdin=subprocess.DEVNULL, stdout=out[0], stderr=out[1],
                                start_new_session=True)
        proc.outputs = out
        return proc

    @staticmethod
    def outputs(proc):
        texts = []
        for f in proc.outputs:
            f.seek(0)
            texts.append(f.read())
            f.close()
        return texts

    def finish(self, proc, timeout):
        """Wait for proc (SIGTERM then SIGKILL past timeout): (exit code or None if stopped, stdout, stderr)."""
        try:
            proc.wait(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
            self.stop(proc)
        return (code, *self.outputs(proc))

    def wait_healthy(self, proc, url, what):
        deadline = time.time() + 60
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}: {self.outputs(proc)[1][-2000:]}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{what} did not answer {url}/healthz within 60 s")

    def start_server(self, code="mortar serve"):
        self.server = self.spawn(code, self.env)
        self.wait_healthy(self.server, f"http://127.0.0.1:{self.http}", f"`{code}`")

    def stop(self, proc):
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def serve(self, code):
        """A `mortar serve` line: beside the tour server with --listen, instead of it without."""
        m = re.search(r"--listen\s+127\.0\.0\.1:(\d+)", code)
        if m:
            proc = self.spawn(code, self.env)
            self.extra.append(proc)
            self.wait_healthy(proc, f"http://127.0.0.1:{m.group(1)}", f"`{code}`")
        else:
            self.stop(self.server)
            self.start_server(code)

    def run(self, line, raw, comments):
        if self.args.only and self.args.only not in raw:
            return
        expect = Expect(comments)
        try:
            code = self.rewrite(raw)
        except LookupError as e:
            return self.fail(line, raw, str(e))
        m = re.fullmatch(r"export (\w+)=(.+)", code.strip())
        if m:  # the shell evaluates the value; the tour keeps it for the rest of the block
            value = subprocess.run(["bash", "-c", f"{code}\nprintf %s \"${m.group(1)}\""], env=self.env,
                                   cwd=self.work, capture_output=True, text=True, check=True).stdout
            self.env[m.group(1)] = value
            return self.ok(line, raw)
        program = shlex.split(code)[0] if "=" not in shlex.split(code)[0] else "mortar"
        if program not in ("mortar", "curl", "eval", "printf") and not shutil.which(program):
            if CI:
                return self.fail(line, raw, f"`{program}` is not installed (CI=true)")
            print(f"  skip  README.md:{line}: `{program}` is not installed")
            return None
        if re.search(r"\bmortar serve\b", code) and "--print-config" not in code:
            try:
                self.serve(code)
            except RuntimeError as e:
                return self.fail(line, raw, str(e))
            return self.ok(line, raw)
        proc = self.spawn(code, self.env)
        if any(re.search(p, code) for p in LONG_RUNNING):
            self.background.append((line, raw, expect, proc, time.time()))
            time.sleep(1)  # let it connect before the next command
            return None
        code, stdout, stderr = self.finish(proc, 90)
        if code is None:
            return self.fail(line, raw, "still running after 90 s", stdout, stderr)
        return self.check(line, raw, expect, code, stdout, stderr)

    def finish_background(self):
        """Stop the block's long-running commands (each ran at least 3 s) and check them."""
        for line, raw, expect, proc, started in self.background:
            time.sleep(max(0.0, started + 3 - time.time()))
            self.check(line, raw, expect, *self.finish(proc, 0))
        self.background = []

    def check(self, line, raw, expect, code, stdout, stderr):
        """code None: a long-running command that was still running when stopped."""
        if code is not None and code != expect.exit:
            return self.fail(line, raw, f"exit {code}, expected {expect.exit}", stdout, stderr)
        statuses = [int(s) for s in re.findall(STATUS_MARK + r"(\d+)", stderr)]
        stderr = re.sub(STATUS_MARK + r"\d+\n", "", stderr)
        if statuses:
            status = statuses[-1]
            if expect.status is not None and status != expect.status:
                return self.fail(line, raw, f"HTTP {status}, README shows {expect.status}", stdout, stderr)
            if expect.status is None and not 0 < status < 400:
                return self.fail(line, raw, f"HTTP {status}", stdout, stderr)
        elif expect.status is not None and code is not None:
            return self.fail(line, raw, "no HTTP status to check (no curl ran)", stdout, stderr)
        text = normalise(stdout)
        for fragment in expect.fragments:
            if not any(pattern(fragment).search(t) for t in text):
                return self.fail(line, raw, f"output does not show {fragment}", stdout, stderr)
        for event in expect.events:
            if f"event: {event}" not in stdout:
                return self.fail(line, raw, f"no `event: {event}` arrived", stdout, stderr)
        head = stdout.split("\r\n\r\n")[0] if expect.headers else ""
        for name, value in expect.headers:
            got = re.findall(rf"^(?i:{re.escape(name)}): (.*?)\r?$", head, re.M)
            if not any(value.search(g) for g in got):
                return self.fail(line, raw, f"header {name} is {got}, README shows {value.pattern}", stdout, stderr)
        self.values.update(capture(stdout))
        return self.ok(line, raw)

    def ok(self, line, raw):
        print(f"  ok    README.md:{line}: {raw.splitlines()[0][:100]}")

    def fail(self, line, raw, why, stdout="", stderr=""):
        self.failures.append(line)
        print(f"  FAIL  README.md:{line}: {raw.splitlines()[0][:100]}\n        {why}")
        for name, text in (("stdout", stdout), ("stderr", stderr)):
            if text.strip():
                print(f"        {name}: " + text.strip()[-1500:].replace("\n", "\n          "))

    def tour(self):
        restart = False
        for kind, first, lines in blocks(self.args.readme):
            if kind == "toml":
                with open(os.path.join(self.work, "mortar.toml"), "a", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n\n")
                restart = True
                continue
            if kind != "sh":
                continue
            if restart or self.server is None or self.server.poll() is not None:
                self.stop(self.server)
                self.start_server()
                restart = False
            print(f"block at README.md:{first}")
            for line, code, comments in commands(lines, first):
                self.run(line, code, comments)
            self.finish_background()
            for proc in self.extra:
                self.stop(proc)
            self.extra = []
            if self.env != self.base_env:  # the block changed the server or the environment
                self.env = dict(self.base_env)
                restart = True
            elif any(re.search(r"\bmortar serve\b", c) and "--listen" not in c and "--print-config" not in c
                     for _, c, _ in commands(lines, first)):
                restart = True
        self.stop(self.server)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", required=True, help="the mortar binary")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--only", help="run only commands containing this text")
    parser.add_argument("--keep", action="store_true", help="keep the tour directory")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mortar-tour-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    tour = Tour(args, work)
    try:
        tour.tour()
    finally:
        tour.stop(tour.server)
        for proc in tour.extra + [b[3] for b in tour.background]:
            tour.stop(proc)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if tour.failures:
        print(f"README tour: {len(tour.failures)} command(s) failed (lines {tour.failures})")
        sys.exit(1)
    print("README tour: every command ran as shown")


if __name__ == "__main__":
    main()
