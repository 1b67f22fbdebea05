"""Runs schemathesis with every check against a real `quench serve` (started by tests/schemathesis/run).

Starts its own nats-server (ephemeral port, temporary store) and `target/debug/quench serve`
with a temporary config holding one admin token, seeds a run parked on an approval gate, a
finished run and a dead letter so the endpoints have something to show, then runs
`schemathesis run --checks all` against the served OpenAPI document within a time budget.
Fails on any schemathesis failure, and if the service is not still healthy afterwards.
Extra arguments go to `schemathesis run` (e.g. `--seed N` to repeat a run).
"""

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
QUENCH = ROOT / "target" / "debug" / "quench"
VENV = ROOT / "target" / "schemathesis-venv"
# schemathesis' own budget (it fuzzes until it is spent); tests/schemathesis/run stops
# everything at 100 s.
BUDGET_SECONDS = 45
EXAMPLES_PER_OPERATION = 40

GATE_PLAYBOOK = """schema: quench.playbook/v1
name: gate
on:
  finding:
    kinds: [test.gate]
steps:
  - id: decide
    uses: approval
    with:
      approvers: [schemathesis@example.com]
      question: Revoke?
      choices: [revoke, keep]
      timeout: 1h
      on_timeout: keep
"""

NOTE_PLAYBOOK = """schema: quench.playbook/v1
name: note
on:
  finding:
    kinds: [test.note]
steps:
  - id: say
    uses: note
    with:
      message: "noted {{ finding.resource.id }}"
"""


def finding(id_, kind, key_id):
    return {
        "schema": "quench.finding/v1", "id": id_, "kind": kind, "severity": "high",
        "title": "schemathesis seed", "detected_at": "2026-11-20T10:00:00Z",
        "source": {"scanner": "schemathesis"},
        "resource": {"provider": "openai", "type": "api_key", "id": key_id, "project_id": "proj_1"},
    }


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def eventually(what, check, within=20.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"schemathesis step: timed out waiting for {what}")


def start_nats(directory):
    ports = directory / "ports"
    ports.mkdir()
    process = subprocess.Popen(
        ["nats-server", "-a", "127.0.0.1", "-p", "-1", "-js",
         "-sd", str(directory / "jetstream"), "--ports_file_dir", str(ports)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    found = []

    def port_file():
        for entry in ports.iterdir():
            urls = json.loads(entry.read_text()).get("nats") or []
            if urls:
                found.append(urls[0].rsplit(":", 1)[1])
                return True
        return False

    eventually("nats-server's port file", port_file, within=10)
    return process, f"nats://127.0.0.1:{found[0]}"


def publish_raw(nats_url, subject, payload):
    """A core NATS publish of raw bytes (the service's stream captures it): a dead letter."""
    host, port = nats_url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        reader = connection.makefile("rb")
        reader.readline()  # INFO
        connection.sendall(b'CONNECT {"verbose":false}\r\n')
        connection.sendall(f"PUB {subject} {len(payload)}\r\n".encode() + payload + b"\r\nPING\r\n")
        if not reader.readline().startswith(b"PONG"):
            raise SystemExit("schemathesis step: nats-server did not take the raw message")


def stop(process, grace):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(extra):
    with tempfile.TemporaryDirectory(prefix="quench-schemathesis-") as temp:
        directory = Path(temp)
        nats, nats_url = start_nats(directory)
        service = None
        log = directory / "serve.log"
        try:
            token = secrets.token_hex(24)
            digest = hashlib.sha256(token.encode()).hexdigest()
            config = directory / "quench.toml"
            config.write_text(
                f'[[api.tokens]]\nname = "schemathesis@example.com"\nrole = "admin"\nsha256 = "{digest}"\n'
            )
            playbooks = directory / "playbooks"
            playbooks.mkdir()
            (playbooks / "gate.yaml").write_text(GATE_PLAYBOOK)
            (playbooks / "note.yaml").write_text(NOTE_PLAYBOOK)
            listen = f"127.0.0.1:{free_port()}"
            base = f"http://{listen}"
            with open(log, "wb") as log_file:
                service = subprocess.Popen(
                    [str(QUENCH), "serve", "--config", str(config), "--nats", nats_url,
                     "--listen", listen, "--store", str(directory / "state"),
                     "--playbooks", str(playbooks)],
                    stdout=subprocess.DEVNULL, stderr=log_file,
                    env={**os.environ, "RUST_LOG": "info", "NO_COLOR": "1"},
                )
            eventually("quench serve to be ready",
                       lambda: requests.get(f"{base}/readyz", timeout=2).status_code == 200)

            findings = directory / "findings.jsonl"
            findings.write_text("\n".join(json.dumps(item) for item in [
                finding("f-gate", "test.gate", "key_gate"),
                finding("f-note", "test.note", "key_note"),
            ]) + "\n")
            subprocess.run([str(QUENCH), "publish", "--nats", nats_url, str(findings)],
                           check=True, stdout=subprocess.DEVNULL)
            publish_raw(nats_url, "quench.findings.schemathesis", b"not json")
            auth = {"Authorization": f"Bearer {token}"}
            eventually("two runs", lambda: len(requests.get(
                f"{base}/api/v1/runs", headers=auth, timeout=2).json()["runs"]) == 2)
            eventually("a dead letter", lambda: requests.get(
                f"{base}/api/v1/dlq", headers=auth, timeout=2).json()["messages"])

            command = [
                str(VENV / "bin" / "schemathesis"),
                "--config-file", str(HERE / "schemathesis.toml"),
                "run", f"{base}/api/openapi.json",
                "--checks", "all",
                "--header", f"Authorization: Bearer {token}",
                "--max-examples", str(EXAMPLES_PER_OPERATION),
                "--max-time", str(BUDGET_SECONDS),
                # One worker: with two, hypothesis parses lambda sources with `ast` in two
                # threads at once, and CPython before 3.11.8 shares the AST converter's recursion
                # counter between threads (gh-106905): a run failed on "AST constructor recursion
                # depth mismatch" in GET /api/v1/audit, a Python race rather than a quench fault.
                "--workers", "1",
                "--request-timeout", "10",
                "--generation-database", "none",
                "--no-color",
                *extra,
            ]
            print("schemathesis step: " + " ".join(
                "<token>" if token in part else part for part in command), flush=True)
            result = subprocess.run(command, cwd=directory)

            healthy = service.poll() is None and requests.get(
                f"{base}/healthz", timeout=2).status_code == 200
            if not healthy:
                print("schemathesis step: quench serve is not healthy after the run", flush=True)
            if result.returncode != 0 or not healthy:
                print("--- the end of quench serve's log ---")
                print("\n".join(log.read_text(errors="replace").splitlines()[-40:]))
                return 1
            return 0
        finally:
            if service is not None:
                stop(service, grace=25)
            stop(nats, grace=5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
