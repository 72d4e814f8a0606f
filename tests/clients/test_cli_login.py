"""login --password-stdin, the saved credentials (0600, per server), transparent refresh,
logout; secrets never printed."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.clients.conftest import EMAIL, PASSWORD, Live

NO_KEY = {"AGENTRY_API_KEY": None}


def _saved(config_home: Path, live: Live) -> dict:
    path = config_home / "agentry" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())[live.url]


def test_login_refresh_logout(ctl, live: Live, config_home: Path) -> None:
    r = ctl("login", "--email", EMAIL, "--password-stdin", stdin=PASSWORD + "\n", env=NO_KEY)
    assert r.code == 0, r.stderr
    assert r.stdout == ""
    assert PASSWORD not in r.stderr
    saved = _saved(config_home, live)
    assert saved["email"] == EMAIL
    assert saved["access_token"] not in r.stderr

    r = ctl("whoami", env=NO_KEY)
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["email"] == EMAIL

    # An access token the server refuses is refreshed with the saved refresh token, and the
    # new (rotated) pair is saved.
    path = config_home / "agentry" / "credentials.json"
    data = json.loads(path.read_text())
    data[live.url]["access_token"] = "expired.or.revoked"
    path.write_text(json.dumps(data))
    r = ctl("whoami", env=NO_KEY)
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["email"] == EMAIL
    refreshed = _saved(config_home, live)
    assert refreshed["access_token"] != "expired.or.revoked"
    assert refreshed["refresh_token"] != saved["refresh_token"]

    # A refresh token presented twice is refused (and revokes the login): exit 3, no loop.
    data = json.loads(path.read_text())
    data[live.url].update(access_token="expired.or.revoked", refresh_token=saved["refresh_token"])
    path.write_text(json.dumps(data))
    r = ctl("whoami", env=NO_KEY)
    assert r.code == 3
    assert "unauthorized" in r.stderr

    r = ctl("logout", env=NO_KEY)
    assert r.code == 0, r.stderr
    assert live.url not in json.loads(path.read_text())
    r = ctl("whoami", env=NO_KEY)
    assert r.code == 3
    assert "unauthorized" in r.stderr


def test_login_refusals(ctl, live: Live, config_home: Path) -> None:
    r = ctl("login", "--email", EMAIL, "--password-stdin", stdin="wrong-password\n", env=NO_KEY)
    assert r.code == 3
    assert "unauthorized" in r.stderr
    # No prompt when stdin is not a terminal, and no --password flag at all.
    r = ctl("login", "--email", EMAIL, stdin=PASSWORD, env=NO_KEY)
    assert r.code == 2
    r = ctl("login", "--email", EMAIL, "--password", PASSWORD, env=NO_KEY)
    assert r.code == 2
    assert not (config_home / "agentry" / "credentials.json").exists()


def test_api_key_created_with_agentryctl_drives_the_cli(ctl, live: Live) -> None:
    project = live.project()
    r = ctl(
        "api-keys",
        "create",
        "ci",
        "-p",
        project["slug"],
        env={"AGENTRY_API_KEY": None, "AGENTRY_TOKEN": live.token},
    )
    assert r.code == 0, r.stderr
    key = json.loads(r.stdout)
    assert key["project_id"] == project["id"]
    r = ctl("projects", "list", env={"AGENTRY_API_KEY": key["key"]})
    assert [p["id"] for p in json.loads(r.stdout)] == [project["id"]]
