"""Run the project's modules through `ansible` with the project's ansible.cfg."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

ANSIBLE = str(Path(sys.executable).with_name("ansible"))


def run_module(module: str, args: dict[str, Any], check: bool = False) -> dict[str, Any]:
    """Run a project module on localhost with the project's ansible.cfg; the module's result as a dict."""
    cmd = [ANSIBLE, "localhost", "-i", "localhost,", "-c", "local", "-m", module, "-a", json.dumps(args),
           "-e", json.dumps({"ansible_python_interpreter": sys.executable})]
    if check:
        cmd.append("--check")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert "{" in out, f"ansible printed no result ({proc.returncode}): {proc.stderr[-3000:]}"
    # profile_tasks (ansible.cfg) prints a timing line before the JSON document.
    doc, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])
    return doc["plays"][0]["tasks"][0]["hosts"]["localhost"]
