"""Every shipped inventory is checked before a migration can trip over it (issue 12, item 2).

1. `ansible-inventory --list` parses every source of the inventory without a warning. The AWS
   inventories find their replication host through the aws_ec2 plugin: here a moto server answers,
   holding one instance tagged as the provision phase tags it, so the plugin really runs.
2. Every play of the phases (migrate.yml, rollback.yml, cleanup.yml) that runs on the inventory's hosts
   is run against the inventory with each role replaced by a stub (the role's own defaults, vars and
   meta/argument_specs.yml; its task files reduced to their role inclusions). Ansible then validates every
   role's arguments as it would at the start of the real role, templating each one from the inventory:
   a variable the inventory lacks fails here (`'ge_state_dir' is undefined`). Every task that runs an
   engine module (`library/ge_*`, community.postgresql) becomes an assertion that the interpreter it
   would run under holds the engine: `ge_engine_python` on the hosts (the venv of the replication
   host), or the controller's own python. Secrets are the vault template's placeholders; nothing
   connects to any host or database.
Plays on the controller (`hosts: localhost`: the AWS calls of provision and cleanup) are left out: their
variables come from AWS as the run goes, and tests/aws runs them against moto.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.aws.conftest import Moto, start_moto, stop_moto
from tests.conftest import ROOT

BIN = Path(sys.executable).parent
INVENTORIES = sorted(p.name for p in (ROOT / "inventories").iterdir() if (p / "hosts.yml").is_file())
PHASES = ["rollback.yml", "cleanup.yml"]  # besides what migrate.yml imports
# Modules that import the engine (or psycopg) where they run.
ENGINE_MODULES = {p.stem for p in (ROOT / "library").glob("ge_*.py")}
ENGINE_COLLECTIONS = ("community.postgresql.",)
TASK_KEYWORDS = {
    "name", "vars", "when", "loop", "loop_control", "with_items", "with_dict", "register", "delegate_to",
    "run_once", "become", "become_user", "changed_when", "failed_when", "no_log", "tags", "notify", "until",
    "retries", "delay", "environment", "check_mode", "ignore_errors", "args", "async", "poll", "listen",
    "module_defaults", "any_errors_fatal", "throttle", "timeout", "diff", "collections", "delegate_facts",
    "local_action", "connection", "ignore_unreachable", "debugger",
}
JINJA_WORDS = {"and", "or", "not", "in", "is", "if", "else", "true", "false", "True", "False", "none", "None"}
INTERPRETER = ("{{ (ansible_delegated_vars.values() | first).ansible_python_interpreter | default('(discovered)')"
               " if ansible_delegated_vars is defined else ansible_python_interpreter | default('(discovered)') }}")
PORT = int(os.environ.get("GE_MOTO_PORT_BASE", 57300 + os.getpid() % 50 * 2)) + 1


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _aws_sources(inventory: Path) -> list[dict[str, Any]]:
    return [_load(p) for p in sorted(inventory.glob("*.yml")) if (_load(p) or {}).get("plugin") == "amazon.aws.aws_ec2"]


def _env(moto: Moto | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_DEPRECATION_WARNINGS="0",
               PATH=f"{BIN}:{os.environ['PATH']}")
    if moto is not None:
        env.update(AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    return env


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = start_moto(PORT, tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    stop_moto(server)


def _tag_replication_host(moto: Moto, source: dict[str, Any]) -> str:
    """One running instance carrying the tags the aws_ec2 source filters on (as provision tags it)."""
    filters = {k[len("tag:"):]: v for k, v in source["filters"].items() if k.startswith("tag:")}
    name = f"ge-{filters['ge:migration']}-replication"
    for region in source["regions"]:
        ec2 = boto3.client("ec2", endpoint_url=moto.url, region_name=region, aws_access_key_id="testing",
                           aws_secret_access_key="testing")
        tags = [{"Key": k, "Value": v} for k, v in {**filters, "Name": name}.items()]
        ec2.run_instances(ImageId="ami-1e749f67", MinCount=1, MaxCount=1, InstanceType="t3.medium",
                          TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
    return name


@pytest.fixture
def inventory_env(request: pytest.FixtureRequest, moto: Moto) -> tuple[Path, dict[str, str], list[str]]:
    """(inventory directory, environment, extra ansible-playbook arguments) for one shipped inventory."""
    inventory = ROOT / "inventories" / request.param
    moto.reset()
    hosts = [_tag_replication_host(moto, source) for source in _aws_sources(inventory)]
    extra: list[str] = []
    vault = inventory / "group_vars/all/vault.yml.example"
    if vault.exists() and not (inventory / "group_vars/all/vault.yml").exists():
        extra += ["-e", f"@{vault}"]
    return inventory, _env(moto if hosts else None), extra


@pytest.mark.parametrize("inventory_env", INVENTORIES, indirect=True)
def test_inventory_lists_every_group(inventory_env: tuple[Path, dict[str, str], list[str]]) -> None:
    inventory, env, _ = inventory_env
    proc = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inventory), "--list"], cwd=ROOT, env=env,
                          text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # Expected: the shipped inventories name each group's one host after the group, on purpose; the
    # aws_ec2 plugin gives each instance its EC2 tags as the host variable `tags`.
    expected = ("Found both group and host with same name", "Found variable using reserved name 'tags'")
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line and not line.endswith(expected)
                and not any(e in line for e in expected)]
    assert not warnings, proc.stderr
    listing = json.loads(proc.stdout)
    for group in ("source", "replication", "target"):
        assert listing.get(group, {}).get("hosts"), f"{inventory.name}: no host in group {group}: {proc.stdout[:2000]}"


# --- the stubbed phases -------------------------------------------------------------------------------

def _action(task: dict[str, Any]) -> str:
    keys = [k for k in task if k not in TASK_KEYWORDS]
    return keys[0] if keys else ""


def _short(action: str) -> str:
    return action.rsplit(".", 1)[-1] if action.startswith("ansible.builtin.") else action


def _is_engine(action: str) -> bool:
    return action in ENGINE_MODULES or action.startswith(ENGINE_COLLECTIONS)


def _identifiers(expr: str) -> set[str]:
    """Variable names a condition reads: not filters, tests, attributes or keywords."""
    expr = re.sub(r"(['\"]).*?\1", "''", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", expr):
        before = expr[:m.start()].rstrip()
        if before.endswith(("|", ".")) or re.search(r"\bis(\s+not)?$", before) or m.group() in JINJA_WORDS:
            continue
        names.add(m.group())
    return names


def _conditions(task: dict[str, Any]) -> list[str]:
    when = task.get("when", [])
    return [str(w) for w in (when if isinstance(when, list) else [when])]


class Stubber:
    """Writes stub roles: real defaults/vars/meta, task files reduced to inclusions and interpreter checks."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.roles_dir = out / "roles"

    def _keep_when(self, task: dict[str, Any], known: set[str]) -> list[str]:
        # Conditions on registered results, facts or loop items cannot be evaluated without running the
        # tasks: such a task counts as run, which checks more, never less.
        return [w for w in _conditions(task) if _identifiers(w) <= known - SET_AT_RUN]

    def task_file(self, real: Path, dest: Path, known: set[str]) -> None:
        if dest.exists():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        stub = self.tasks(_load(real), str(real.relative_to(ROOT)), known | _ge_names(real), real.parent)
        dest.write_text(yaml.safe_dump(stub or [{"name": "Nothing to check", "ansible.builtin.meta": "noop"}]))

    def tasks(self, tasks: list[dict[str, Any]] | None, where: str, known: set[str],
              playbook_dir: Path | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for task in tasks or []:
            when = self._keep_when(task, known)
            if "block" in task:
                inner = (self.tasks(task["block"], where, known, playbook_dir)
                         + self.tasks(task.get("rescue"), where, known, playbook_dir)
                         + self.tasks(task.get("always"), where, known, playbook_dir))
                if inner:
                    block: dict[str, Any] = {"block": inner}
                    for key in ("vars", "delegate_to"):
                        if key in task:
                            block[key] = task[key]
                    if when:
                        block["when"] = when
                    out.append(block)
                continue
            action = _action(task)
            short = _short(action)
            stub: dict[str, Any] = {"name": task.get("name", short)}
            if short in ("include_role", "import_role"):
                args = dict(task[action])
                stub[f"ansible.builtin.{short}"] = {k: v for k, v in args.items() if k in ("name", "tasks_from")}
                self.role(args["name"])
            elif short in ("include_tasks", "import_tasks"):
                arg = task[action]
                rel = arg if isinstance(arg, str) else arg.get("file")
                stub[f"ansible.builtin.{short}"] = rel
                if playbook_dir is not None:  # a playbook's own task file: stubbed next to the stubbed plays
                    self.task_file(playbook_dir / rel, self.out / rel, known)
            elif _is_engine(action):
                label = re.sub(r"\{\{.*?\}\}", "...", str(task.get("name", action)))
                stub["name"] = f"Interpreter of {where}: {label}"
                stub["ansible.builtin.assert"] = {
                    "that": ["__ge_check_interpreter == ge_engine_python"
                             " or __ge_check_interpreter | dirname == ansible_playbook_python | dirname"],
                    "fail_msg": (f"{where}: '{label}' runs {action} under {{{{ __ge_check_interpreter }}}}, "
                                 "which lacks the engine; expected ge_engine_python ({{ ge_engine_python }}) "
                                 "or the controller's python: set ansible_python_interpreter in the play"),
                    "quiet": True,
                }
                # The interpreter Ansible would use: on delegation, the delegated host's variables (which
                # play and task variables override), else this host's.
                stub["vars"] = {**task.get("vars", {}), "__ge_check_interpreter": INTERPRETER}
            elif task.get("delegate_to") not in (None, "localhost", "127.0.0.1"):
                # Play variables reach delegated tasks: an engine interpreter set for the play must not be
                # what another inventory host runs its modules under.
                label = re.sub(r"\{\{.*?\}\}", "...", str(task.get("name", action)))
                stub["name"] = f"Interpreter of {where}: {label}"
                stub["ansible.builtin.assert"] = {
                    "that": ["__ge_delegate not in groups['all'] or __ge_check_interpreter in __ge_own"],
                    "fail_msg": (f"{where}: '{label}' is delegated to {{{{ __ge_delegate }}}} but runs under "
                                 "{{ __ge_check_interpreter }}, not that host's own python ({{ __ge_own | first }}): "
                                 "give the task ansible_python_interpreter of the host it is delegated to"),
                    "quiet": True,
                }
                stub["vars"] = {**task.get("vars", {}), "__ge_check_interpreter": INTERPRETER,
                                "__ge_delegate": "{{ ansible_delegated_vars.keys() | first }}",
                                "__ge_own": "{{ [hostvars[__ge_delegate].ansible_python_interpreter"
                                            " | default('(discovered)')] + AUTO }}".replace(
                                                "AUTO", "['auto', 'auto_silent', 'auto_legacy', 'auto_legacy_silent']")}
                for key in ("loop", "loop_control", "with_items"):
                    if key in task:
                        stub[key] = task[key]
            else:
                continue
            for key in ("vars", "delegate_to"):
                if key in task and key not in stub:
                    stub[key] = task[key]
            if when:
                stub["when"] = when
            out.append(stub)
        return out

    def role(self, name: str) -> None:
        dest = self.roles_dir / name
        if dest.exists():
            return
        real = ROOT / "roles" / name
        dest.mkdir(parents=True)
        for sub in ("defaults", "vars", "meta"):
            if (real / sub).is_dir():
                (dest / sub).symlink_to(real / sub)
        known = set(_load(real / "defaults/main.yml") or {}) if (real / "defaults/main.yml").exists() else set()
        known |= {"groups", "inventory_hostname", "ansible_check_mode"}
        (dest / "tasks").mkdir()
        for path in sorted((real / "tasks").glob("*.yml")):
            stub = self.tasks(_load(path), f"roles/{name}/tasks/{path.name}", known | _ge_names(path))
            (dest / "tasks" / path.name).write_text(yaml.safe_dump(stub or [{"name": "Nothing to check",
                                                                             "ansible.builtin.meta": "noop"}]))

    def playbook(self, path: Path) -> list[dict[str, Any]]:
        plays: list[dict[str, Any]] = []
        for play in _load(path):
            if "import_playbook" in play or "ansible.builtin.import_playbook" in play:
                continue
            if play.get("hosts") == "localhost":
                continue
            known = set(play.get("vars", {})) | {"groups", "ansible_run_tags"} | _ge_names(path)
            roles = []
            for entry in play.get("roles", []):
                name = entry if isinstance(entry, str) else entry["role"]
                self.role(name)
                roles.append({"role": name, **({"vars": entry["vars"]} if isinstance(entry, dict) and "vars" in entry
                                               else {})})
            plays.append({
                "name": f"{path.name}: {play.get('name', '')}",
                "hosts": play["hosts"],
                "gather_facts": False,
                "vars": play.get("vars", {}),
                "roles": roles,
                "tasks": self.tasks(play.get("pre_tasks", []) + play.get("tasks", []), path.name, known, path.parent),
            })
        return plays


def _ge_names(path: Path) -> set[str]:
    """ge_* inventory settings a condition in this file reads: the inventory must define them or default them."""
    return set(re.findall(r"\bge_[a-z0-9_]+", path.read_text()))


def _set_at_run() -> set[str]:
    """Names that tasks register or set_fact: they exist only while the real tasks run."""
    names: set[str] = set()

    def walk(tasks: Any) -> None:
        for task in tasks if isinstance(tasks, list) else []:
            if not isinstance(task, dict):
                continue
            for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks"):
                walk(task.get(key))
            if isinstance(task.get("register"), str):
                names.add(task["register"])
            facts = task.get("ansible.builtin.set_fact", task.get("set_fact"))
            if isinstance(facts, dict):
                names.update(facts)

    for path in [*ROOT.glob("playbooks/**/*.yml"), *ROOT.glob("roles/*/tasks/*.yml")]:
        walk(_load(path))
    return names


SET_AT_RUN = _set_at_run()


def _phase_playbooks() -> list[Path]:
    imported = [ROOT / entry["ansible.builtin.import_playbook"] for entry in _load(ROOT / "migrate.yml")]
    return imported + [ROOT / "playbooks" / name for name in PHASES]


@pytest.fixture(scope="module")
def stubbed_phases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubbed-phases")
    stubber = Stubber(out)
    plays = [play for path in _phase_playbooks() for play in stubber.playbook(path)]
    (out / "phases.yml").write_text(yaml.safe_dump(plays, sort_keys=False))
    # What the plays derive from the inventory (the connection descriptions), read next to the playbook.
    (out / "group_vars").symlink_to(ROOT / "playbooks/group_vars")
    return out


@pytest.mark.parametrize("inventory_env", INVENTORIES, indirect=True)
def test_every_role_gets_its_variables_and_the_engine_interpreter(
        inventory_env: tuple[Path, dict[str, str], list[str]], stubbed_phases: Path) -> None:
    inventory, env, extra = inventory_env
    env = dict(env, ANSIBLE_ROLES_PATH=str(stubbed_phases / "roles"))
    # The switches that make cutover and cleanup run, so their roles are checked too.
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(stubbed_phases / "phases.yml"), *extra,
           "-e", json.dumps({"ge_cutover": True, "ge_cleanup": True})]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
    failures = [line for line in proc.stdout.splitlines() if line.startswith(("fatal:", "failed:"))
                or "is undefined" in line or "lacks the engine" in line]
    assert proc.returncode == 0, (f"inventories/{inventory.name}: {len(failures)} failure(s):\n"
                                  + "\n".join(failures[:40]) + "\n" + proc.stdout[-4000:] + proc.stderr[-2000:])
    # The check itself ran: every role of the phases on the hosts validated its arguments.
    validated = set(re.findall(r"^TASK \[(\w+) : Validating arguments against arg spec", proc.stdout, re.M))
    assert validated >= {"preflight", "replication_host", "prepare_target", "replication_role_function", "access",
                         "capture", "dump", "transfer", "restore", "sync", "verify", "cutover", "cleanup"}, validated
    assert "TASK [sync : Interpreter of roles/sync/tasks/wait.yml" in proc.stdout


# --- the sync as a systemd service (issue 12, item 5) ---------------------------------------------------

@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_sync_unit_passes_systemd_analyze_verify(direction: str, tmp_path: Path) -> None:
    """roles/sync's unit, rendered by Ansible as the role renders it, is a unit systemd accepts."""
    analyze = "/usr/bin/systemd-analyze"
    if not Path(analyze).exists():
        pytest.skip("systemd-analyze is not installed")
    role = ROOT / "roles/sync"
    unit = f"great-escape-sync-shop-prod-{direction}.service"
    role_vars = {
        **_load(role / "vars/main.yml"), "sync_name": "shop-prod", "sync_direction": direction, "sync_unit_name": unit,
        "sync_service_user": "root", "sync_python": sys.executable, "sync_config": str(tmp_path / "great-escape.yml"),
    }
    proc = subprocess.run([str(BIN / "ansible"), "localhost", "-c", "local", "-m", "ansible.builtin.template",
                           "-a", f"src={role}/templates/great-escape-sync.service.j2 dest={tmp_path / unit}",
                           "-e", json.dumps(role_vars)], cwd=ROOT, env=_env(None), text=True, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / unit).read_text()
    assert f"supervise run --config {tmp_path / 'great-escape.yml'}" in text
    assert ("--reverse" in text) == (direction == "reverse")
    assert "Restart=on-failure" in text and "WantedBy=multi-user.target" in text
    verify = subprocess.run([analyze, "verify", str(tmp_path / unit)], text=True, capture_output=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
