"""The command line as an operator meets it when something is wrong: one line saying what and what
to do, never a traceback (unless `--debug`); operator commands that refuse the embedded store;
`serve` saying where it listens; the Redis eviction guard; `demo --keep-serving` telling how to try it."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import redis
import uvicorn
from click.testing import CliRunner, Result
from rich.console import Console

from opcore_hooks import cli as cli_module
from opcore_hooks import demo, worker
from opcore_hooks.crypto import generate_master_key
from opcore_hooks.host import Host
from opcore_hooks.store import check_eviction_policy
from opcore_hooks.testing import ADMIN_TOKEN, WEBHOOK_SECRET
from plugins.richpanel import plugin as richpanel
from plugins.richpanel import stores as richpanel_stores
from plugins.zendesk import plugin as zendesk

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once
PLACEHOLDER = "redis://the-test-host.invalid:6379/0"  # never dialled: Host.from_env is the test's host

OPERATOR_COMMANDS = {
    "stores-show": ["stores", "show", "store_123"],
    "stores-set-richpanel": ["stores", "set", "richpanel", "store_123", "--api-key", "rp_live_0123456789abcdef"],
    "stores-set-zendesk": ["stores", "set", "zendesk", "store_123", "--subdomain", "acme"],
    "stores-teams": ["stores", "teams", "store_123"],
    "stores-groups": ["stores", "groups", "store_123"],
    "dead-letters-list": ["dead-letters", "list"],
    "dead-letters-replay": ["dead-letters", "replay", "--store", "store_123"],
    "keys-rotate": ["keys", "rotate"],
}


@pytest.fixture
def env(monkeypatch) -> None:
    """An operator's environment with every secret set and no Redis yet."""
    for name in [n for n in os.environ if n.startswith("OPCORE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPCORE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("OPCORE_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("OPCORE_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("OPCORE_RICHPANEL_API_URL", "http://127.0.0.1:1")  # no test may reach a real helpdesk
    monkeypatch.setenv("OPCORE_ZENDESK_API_URL", "http://127.0.0.1:1/{subdomain}")


@pytest.fixture
def nothing_starts(monkeypatch) -> None:
    """Neither a server nor worker processes may start: the command must stop before."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("started although it should have stopped with one line")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)
    monkeypatch.setattr(worker, "run_processes", refuse)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli_module.build_cli(), list(args), catch_exceptions=False)


def one_line(result: Result, exit_code: int) -> str:
    """The single `opcore: ...` line the command answered with, after checking nothing else came."""
    assert "Traceback" not in result.output
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opcore: "), result.stderr
    return lines[0]


# -- an unreachable Redis: every operator command, serve and worker ----------------------------

@pytest.mark.parametrize("args", [*OPERATOR_COMMANDS.values(), ["serve"], ["worker"]],
                         ids=[*OPERATOR_COMMANDS, "serve", "worker"])
def test_an_unreachable_redis_is_one_line_and_exit_3(env, nothing_starts, monkeypatch, args):
    monkeypatch.setenv("OPCORE_REDIS_URL", UNREACHABLE)
    line = one_line(run(*args), 3)
    assert "cannot reach Redis" in line and "127.0.0.1:1" in line and "OPCORE_REDIS_URL" in line


def test_a_malformed_redis_url_names_the_variable_without_echoing_it(env, monkeypatch):
    monkeypatch.setenv("OPCORE_REDIS_URL", "localhost:6379-with-s3cret")
    line = one_line(run("dead-letters", "list"), 2)
    assert "OPCORE_REDIS_URL" in line and "redis://" in line and "s3cret" not in line


def test_debug_shows_the_traceback_instead(env):
    """Through the real process: the one line and exit 3, or with --debug Python's own traceback."""
    environ = {**os.environ, "OPCORE_REDIS_URL": UNREACHABLE, "PYTHONPATH": str(ROOT)}
    plain = subprocess.run([sys.executable, "runner.py", "stores", "show", "store_123"], cwd=ROOT, env=environ,
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 3, plain.stderr
    assert plain.stderr.strip().splitlines() == [plain.stderr.strip()] and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "runner.py", "--debug", "stores", "show", "store_123"], cwd=ROOT,
                           env=environ, capture_output=True, text=True, timeout=60)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "redis.exceptions.ConnectionError" in debug.stderr


# -- bad values and settings --------------------------------------------------------------------

BAD_VALUES = {
    "log-level": (["--log-level", "nonsense", "plugins"], "--log-level"),
    "demo-quota": (["demo", "--quota", "0"], "--quota"),
    "demo-window": (["demo", "--window", "0"], "--window"),
    "serve-port": (["serve", "--port", "99999"], "--port"),
    "serve-threads": (["serve", "--threads", "0"], "--threads"),
    "worker-processes": (["worker", "--processes", "0"], "--processes"),
    "richpanel-sandbox-rate": (["richpanel-sandbox", "--error-rate", "2"], "--error-rate"),
    "zendesk-sandbox-share": (["zendesk-sandbox", "--other-apps", "1"], "--other-apps"),
}


@pytest.mark.parametrize(("args", "option"), list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_a_bad_value_is_a_usage_error_naming_the_option(env, nothing_starts, args, option):
    result = run(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Invalid value for '{option}'" in result.stderr


@pytest.mark.parametrize(("variable", "value", "args", "problem"), [
    ("OPCORE_STRICT_PLUGINS", "maybe", ["plugins"], "valid boolean"),  # read before click parses anything
    ("OPCORE_RICHPANEL_QUOTA", "-5", ["serve"], "greater than or equal to 1"),
    ("OPCORE_ZENDESK_API_URL", "https://zendesk.example", ["worker"], "must hold {subdomain}"),
])
def test_a_bad_variable_is_one_line_naming_it(env, nothing_starts, monkeypatch, capsys, variable, value, args,
                                              problem):
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("OPCORE_REDIS_URL", PLACEHOLDER)  # the worker's check comes first otherwise
    monkeypatch.setattr(sys, "argv", ["opcore", *args])
    with pytest.raises(SystemExit) as stopped:
        cli_module.main()  # as the console script runs it
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"opcore: invalid configuration: {variable}: ") and problem in line
    assert value not in line  # a value may be a secret: never echoed


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "richpanel-sandbox", "zendesk-sandbox"])
def test_a_port_in_use_is_one_line(env, busy_port, command):
    line = one_line(run(command, "--port", str(busy_port)), 2)
    assert f"cannot listen on 127.0.0.1:{busy_port}" in line and "--port" in line


# -- operator commands refuse the embedded store -------------------------------------------------

@pytest.mark.parametrize("args", list(OPERATOR_COMMANDS.values()), ids=list(OPERATOR_COMMANDS))
def test_operator_commands_refuse_the_embedded_store(env, monkeypatch, args):
    def no_host(cls: Any, **kwargs: Any) -> Host:
        raise AssertionError("an empty in-process store was opened")

    monkeypatch.setattr(Host, "from_env", classmethod(no_host))
    line = one_line(run(*args), 2)
    command = " ".join(itertools.takewhile(lambda arg: arg != "store_123" and not arg.startswith("-"), args))
    assert line.startswith(f"opcore: `opcore {command}` works on the deployment's Redis")
    assert "OPCORE_REDIS_URL is not set" in line
    assert run(*command.split(), "--help").exit_code == 0  # reading how to use it needs no Redis


@pytest.fixture
def deployment(make_host, monkeypatch) -> Host:
    """The test's Redis as the deployment's: OPCORE_REDIS_URL set as an operator's is, and every
    `Host.from_env()` the commands make returns this host instead of dialling it."""
    monkeypatch.setenv("OPCORE_REDIS_URL", PLACEHOLDER)
    host = make_host({"richpanel": richpanel, "zendesk": zendesk}, master_key=None)
    monkeypatch.setattr(Host, "from_env", classmethod(lambda cls, **kw: host))
    return host


def test_a_stored_key_without_opcore_master_key_is_one_line(env, deployment, make_host, monkeypatch):
    sealer = make_host({"richpanel": richpanel})  # the deployment's other processes have the key
    monkeypatch.delenv("OPCORE_MASTER_KEY")
    deployment.redis.hset(richpanel_stores.settings_key(deployment, "store_123"),
                          mapping={"api_key": sealer.vault.encrypt("store_123", "api_key", "rp_live_0123456789"),
                                   "enabled": "1"})
    for args in (["stores", "show", "store_123"], ["stores", "teams", "store_123"], ["keys", "rotate"]):
        line = one_line(run(*args), 2)
        assert "OPCORE_MASTER_KEY is not set" in line and "opcore keys generate" in line


# -- serve says where it listens -----------------------------------------------------------------

def test_serve_logs_the_url_it_answers_on_once_ready(env, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="opcore.cli")
    answered: dict[str, Any] = {}

    async def one_request_then_stop(self: uvicorn.Server) -> None:
        [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("opcore serving on ")]
        answered["line"] = line
        url = re.match(r"opcore serving on (\S+) ", line).group(1)  # type: ignore[union-attr]
        answered["status"] = (await asyncio.to_thread(httpx.get, f"{url}/healthz", timeout=5)).status_code

    monkeypatch.setattr(uvicorn.Server, "main_loop", one_request_then_stop)
    result = run("serve", "--port", "0", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert answered["status"] == 200
    assert re.fullmatch(r"opcore serving on http://127\.0\.0\.1:\d+ \(web tier and 1 worker thread, embedded "
                        r"store: nothing survives this process\)", answered["line"])


# -- the Redis guard -----------------------------------------------------------------------------

def _policy(client: redis.Redis, monkeypatch, answer: Any) -> None:
    def config_get(pattern: str) -> dict[str, str]:
        if isinstance(answer, Exception):
            raise answer
        return {pattern: answer}

    monkeypatch.setattr(client, "config_get", config_get)


def test_the_guard_warns_about_an_evicting_redis_and_nothing_else(redis_client, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="opcore.store")
    # As the test's Redis really is: fakeredis knows no CONFIG; the real one runs noeviction.
    assert check_eviction_policy(redis_client) is None
    _policy(redis_client, monkeypatch, "noeviction")
    assert check_eviction_policy(redis_client) is None
    _policy(redis_client, monkeypatch, redis.exceptions.NoPermissionError("NOPERM this user has no permissions "
                                                                           "to run the 'config|get' command"))
    assert check_eviction_policy(redis_client) is None  # managed Redis: nothing to read, nothing to say
    assert not caplog.records
    _policy(redis_client, monkeypatch, "allkeys-lru")
    assert check_eviction_policy(redis_client) == "allkeys-lru"
    [record] = caplog.records
    assert record.levelno == logging.WARNING and "\n" not in record.getMessage()
    assert "allkeys-lru" in record.getMessage() and "maxmemory-policy noeviction" in record.getMessage()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_check_the_eviction_policy_at_start(env, make_host, monkeypatch, caplog, command):
    caplog.set_level(logging.WARNING, logger="opcore.store")
    host = make_host()
    _policy(host.redis, monkeypatch, "volatile-lru")
    monkeypatch.setattr(cli_module, "_host", lambda **kw: host)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    monkeypatch.setattr(worker, "run_processes", lambda processes, threads, make: 0)
    embedded = run(command)
    assert embedded.exit_code == (2 if command == "worker" else 0), embedded.output  # a worker needs Redis
    assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]  # embedded: nothing to check
    monkeypatch.setenv("OPCORE_REDIS_URL", PLACEHOLDER)
    assert run(command).exit_code == 0
    [warning] = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert "volatile-lru" in warning.getMessage()


# -- demo --keep-serving prints what following the README needs --------------------------------

def _curl(line: str) -> httpx.Response:
    """Run the `curl ...` at the end of a printed line as curl would."""
    args = shlex.split(line[line.index("curl "):])[1:]
    method, headers, data = "GET", {}, None
    while len(args) > 1:
        flag, value, args = args[0], args[1], args[2:]
        if flag == "-X":
            method = value
        elif flag == "-H":
            name, _, text = value.partition(": ")
            headers[name] = text
        elif flag == "-d":
            method, data = ("POST" if method == "GET" else method), value
    return httpx.request(method, args[0], headers=headers, content=data, timeout=10)


def _readme_note(tickets_url: str) -> dict[str, Any] | None:
    """The note the printed message curl makes, once the stand-in shows it."""
    [account] = _curl(f"curl {tickets_url}").json()["accounts"]
    notes = [note for ticket in account["tickets"] for note in ticket["notes"] if "scroll wheel" in note["body"]]
    return notes[0] if notes else None


def test_demo_keep_serving_prints_credentials_and_requests_that_work(monkeypatch):
    from plugins.richpanel.demo import RichpanelDemo
    from plugins.zendesk.demo import ZendeskDemo

    for name in ("OPCORE_RICHPANEL_API_URL", "OPCORE_RICHPANEL_QUOTA", "OPCORE_RICHPANEL_WINDOW_SECONDS",
                 "OPCORE_ZENDESK_API_URL", "OPCORE_ZENDESK_WINDOW_SECONDS"):
        monkeypatch.setenv(name, os.environ.get(name, "unset"))  # the demo points them at its stand-ins
    out = io.StringIO()
    tried: dict[str, Any] = {}

    def try_it_while_serving() -> None:
        printed = out.getvalue()
        tried["printed"] = printed
        tried["settings"] = [_curl(line) for line in printed.splitlines() if "store settings: curl" in line]
        [claim] = [line for line in printed.splitlines() if "a claim for" in line and "curl" in line]
        tried["claim"] = _curl(claim)
        [message] = [line for line in printed.splitlines() if "a message of that claim" in line and "curl" in line]
        tried["message"] = _curl(message)
        [tickets] = [line for line in printed.splitlines() if "stand-in's tickets and their notes: curl" in line]
        deadline = time.monotonic() + 20  # a note waits 2 s after its message, then its turn
        while (note := _readme_note(tickets.split()[-1])) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        tried["note"] = note
        tried["widgets"] = [httpx.get(line.strip(), timeout=10) for line in printed.splitlines()
                            if "/widgets/" in line and "token=" in line and "curl" not in line]

    monkeypatch.setattr(demo, "_serve_until_interrupted", try_it_while_serving)
    code = demo.run([RichpanelDemo(), ZendeskDemo()], count=4, quota=50, window=1, keep_serving=True,
                    console=Console(file=out, width=200))
    assert code == 0, out.getvalue()
    printed = tried["printed"]
    assert re.search(r"export OPCORE_ADMIN_TOKEN=\S{16,} OPCORE_WEBHOOK_SECRET=\S{16,}", printed)
    assert [answer.status_code for answer in tried["settings"]] == [200, 200]
    assert {answer.json()["store_id"] for answer in tried["settings"]} == {"demo-richpanel", "demo-zendesk"}
    assert tried["claim"].status_code == 202 and tried["claim"].json()["status"] == "accepted"
    assert tried["message"].status_code == 202 and tried["message"].json()["status"] == "accepted"
    assert tried["note"] is not None, "the pasted message never became a note"
    assert tried["note"]["public"] is False  # the customer is sent nothing
    assert "&lt;photo attached&gt; &amp; the scroll wheel" in tried["note"]["body"]  # Richpanel's HTML, escaped
    assert [answer.status_code for answer in tried["widgets"]] == [200, 200]
    assert "ana@example.com" in printed
    # The run itself mirrored its claims' messages, each as one private note, and said so.
    rows = {line.split("│")[1].strip(): line for line in printed.splitlines() if "-claim-00" in line}
    assert "2 private" in rows["demo-richpanel-claim-000"] and "2 private" in rows["demo-zendesk-claim-000"]
    said = " ".join(printed.split())  # the console wraps long lines
    assert "4 messages, each one private note on its claim's ticket in created_at order" in said
    assert "nothing public written to a ticket after its creation" in said
