"""docker-compose.yml, the Dockerfile and the container entrypoint, checked without a Docker engine.

* The compose file is parsed with PyYAML and checked: services, profiles, pinned images, healthchecks, named
  volumes, the API key wiring (from the environment only), the read-only image mount, the schedule.
* ``docker-compose config`` (Debian's ``docker-compose`` package: no engine needed) validates it for real when it
  is installed; only that check is skipped when it is not, and only outside CI.
* The Dockerfile's basics: pinned base image, non-root user, no convert extra by default, an entrypoint that exists
  and is in the build context (.dockerignore).
* docker/entrypoint.sh is run for real: with a stub ``clipindex`` (arguments, exit codes, SIGTERM), then with the
  real CLI on the tiny model, as the container would run it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
QDRANT_NODES = ("qdrant-node1", "qdrant-node2", "qdrant-node3")
#: the first Qdrant release that keeps collection metadata (where clipindex records the model)
MIN_QDRANT = (1, 16, 0)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def services(compose: dict[str, Any], profile: str | None) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if (profile in s.get("profiles", [None]))}


def volume(spec: str) -> tuple[str, str, str]:
    """``SOURCE:TARGET[:MODE]`` (the source may hold ``${VAR:?message}``) -> (source, target, mode)."""
    match = re.fullmatch(r"(.+):(/[^:]*)(?::(ro|rw))?", spec)
    assert match, spec
    return match.group(1), match.group(2), match.group(3) or "rw"


def required_var(value: str, name: str) -> bool:
    """``${NAME:?message}``: compose refuses to start without it."""
    return re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", value) is not None


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    assert set(services(compose, None)) == {"qdrant", "clipindex"}  # what `docker compose up -d` starts
    assert set(services(compose, "cluster")) == {*QDRANT_NODES, "clipindex-cluster"}
    assert set(services(compose, "convert")) == {"convert"}
    assert "version" not in compose  # the Compose specification, no legacy version key


@pytest.mark.parametrize("name", ["qdrant", *QDRANT_NODES])
def test_qdrant_services_are_pinned_healthy_persistent_and_keyed(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    match = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.(\d+)", service["image"])
    assert match, f"{name}: pin a release, not {service['image']!r}"
    assert tuple(map(int, match.groups())) >= MIN_QDRANT
    # healthcheck: an HTTP probe of /readyz on the REST port (no curl in the image: bash /dev/tcp)
    check = service["healthcheck"]
    assert check["test"][0] == "CMD" and "/dev/tcp/127.0.0.1/6333" in check["test"][-1]
    assert "/readyz" in check["test"][-1] and " 200 " in check["test"][-1]
    assert {"interval", "timeout", "retries"} <= set(check)
    # storage on a named volume
    storage = [v for v in service["volumes"] if v.endswith(":/qdrant/storage")]
    assert len(storage) == 1 and storage[0].split(":")[0] in compose["volumes"]
    # the API key comes from the environment, and compose refuses to start without it
    assert required_var(service["environment"]["QDRANT__SERVICE__API_KEY"], "QDRANT_API_KEY")
    assert service["restart"] == "unless-stopped"
    for port in service.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"{name}: publish the REST port on localhost only"


@pytest.mark.parametrize(("name", "qdrant"), [("clipindex", "qdrant"), ("clipindex-cluster", "qdrant-node1")])
def test_clipindex_services_ingest_on_a_schedule_against_the_server(
    compose: dict[str, Any], name: str, qdrant: str
) -> None:
    service = compose["services"][name]
    env = service["environment"]
    assert env["CLIPINDEX_QDRANT_URL"] == f"http://{qdrant}:6333"
    assert required_var(env["QDRANT_API_KEY"], "QDRANT_API_KEY")
    assert env["CLIPINDEX_MODEL_DIR"] == "/models/clip-vit-base-patch32"
    assert re.fullmatch(r"\$\{CLIPINDEX_INTERVAL:-\d+\}", env["CLIPINDEX_INTERVAL"])
    assert env["CLIPINDEX_PRUNE"] == "1" and float(env["CLIPINDEX_TIMEOUT"]) > 0
    assert service["depends_on"][qdrant]["condition"] == "service_healthy"
    assert service["build"]["context"] == "." and "args" not in service["build"]  # the runtime image
    assert service["command"] == ["schedule", "/images"]
    volumes = service["volumes"]
    mounts = {volume(v)[1]: volume(v) for v in volumes}
    assert mounts["/images"][2] == "ro" and required_var(mounts["/images"][0], "IMAGES_DIR")
    assert mounts["/models"] == ("./models", "/models", "ro") and mounts["/state"][2] == "rw"
    for source, _, _ in mounts.values():
        assert source.startswith(("${", "./")) or source in compose["volumes"]
    assert service["read_only"] is True and service["init"] is True and service["restart"] == "unless-stopped"


def test_cluster_profile_bootstraps_three_peers_and_creates_a_sharded_replicated_collection(
    compose: dict[str, Any],
) -> None:
    nodes = [compose["services"][n] for n in QDRANT_NODES]
    for i, node in enumerate(nodes, start=1):
        assert node["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        command = node["command"]
        assert command[0] == "./qdrant" and command[command.index("--uri") + 1] == f"http://qdrant-node{i}:6335"
        if i == 1:
            assert "--bootstrap" not in command
        else:
            assert command[command.index("--bootstrap") + 1] == "http://qdrant-node1:6335"
            assert node["depends_on"]["qdrant-node1"]["condition"] == "service_healthy"
    assert len({n["volumes"][0] for n in nodes}) == 3  # one volume per peer
    env = compose["services"]["clipindex-cluster"]["environment"]
    shards, replicas = int(env["CLIPINDEX_SHARDS"]), int(env["CLIPINDEX_REPLICAS"])
    assert shards >= len(nodes) and 2 <= replicas <= len(nodes)
    assert set(compose["services"]["clipindex-cluster"]["depends_on"]) == set(QDRANT_NODES)


def test_convert_profile_builds_the_convert_extra_into_the_models_folder(compose: dict[str, Any]) -> None:
    convert = compose["services"]["convert"]
    assert convert["build"]["args"]["EXTRAS"] == "convert"
    assert convert["command"][0] == "convert" and convert["command"][-2:] == [
        "--output",
        "/models/clip-vit-base-patch32",
    ]
    assert "./models:/models" in convert["volumes"]
    assert (REPO / "models" / "README.md").is_file()  # the bind-mounted folder exists in a fresh clone
    assert convert["image"] != compose["services"]["clipindex"]["image"]


def test_no_secret_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    for line in text.splitlines():
        if re.search(r"API_KEY\s*[:=]", line):
            assert "${QDRANT_API_KEY:?" in line, f"an API key must come from the environment: {line.strip()}"


def docker_compose() -> str | None:
    found = shutil.which("docker-compose")
    if found is None and os.environ.get("CI"):
        pytest.fail("CI must install Debian's docker-compose (apt-get install docker-compose) to validate the file")
    return found


def test_docker_compose_config_validates_the_file(tmp_path: Path) -> None:
    exe = docker_compose()
    if exe is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose); outside CI only")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QDRANT", "CLIPINDEX", "COMPOSE", "DOCKER"))}
    args = [exe, "--project-directory", str(REPO), "-f", str(COMPOSE)]
    ok = subprocess.run(
        [*args, "config"], env=dict(env, QDRANT_API_KEY="k", IMAGES_DIR=str(tmp_path)), capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert resolved["services"]["clipindex"]["environment"]["QDRANT_API_KEY"] == "k"
    assert resolved["services"]["clipindex"]["volumes"][0] == f"{tmp_path}:/images:ro"
    with_cluster = subprocess.run(
        [*args, "--profile", "cluster", "config", "--services"],
        env=dict(env, QDRANT_API_KEY="k", IMAGES_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
    )
    assert with_cluster.returncode == 0 and set(QDRANT_NODES) <= set(with_cluster.stdout.split())
    # without the API key (or the images folder) compose refuses to run, and says which variable is missing
    for missing in ("QDRANT_API_KEY", "IMAGES_DIR"):
        given = {"QDRANT_API_KEY": "k", "IMAGES_DIR": str(tmp_path)}
        del given[missing]
        refused = subprocess.run([*args, "config"], env=dict(env, **given), capture_output=True, text=True)
        assert refused.returncode != 0 and missing in refused.stderr, refused.stderr


# --- Dockerfile -------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerignored(path: str) -> bool:
    patterns = [
        p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    parts = path.split("/")
    return any(fnmatch.fnmatch("/".join(parts[: i + 1]), p) for p in patterns for i in range(len(parts)))


def test_dockerfile_basics() -> None:
    steps = dockerfile_instructions()
    froms = [rest for kw, rest in steps if kw == "FROM"]
    assert len(froms) == 1 and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", froms[0]), froms  # pinned patch release
    users = [rest for kw, rest in steps if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the container must not run as root"
    run = " ".join(rest for kw, rest in steps if kw == "RUN")
    assert re.search(r"useradd .*--uid (\d+)", run) and "pip install" in run
    args = dict(rest.split("=", 1) for kw, rest in steps if kw == "ARG" and "=" in rest)
    assert args["EXTRAS"] == '""', "the default image is the runtime: no convert extra (no torch)"
    assert "torch" not in run.split("pip install", 1)[1].split("&&")[0]
    # the entrypoint exists, is copied from the build context, and is what the container runs
    entrypoint = [rest for kw, rest in steps if kw == "ENTRYPOINT"]
    assert len(entrypoint) == 1
    target = entrypoint[0].strip('[]"')
    copies = {rest.split()[-1]: rest.split()[:-1] for kw, rest in steps if kw == "COPY"}
    assert copies[target] == ["docker/entrypoint.sh"] and ENTRYPOINT.is_file()
    assert os.stat(ENTRYPOINT).st_mode & stat.S_IXUSR and f"chmod 0755 {target}" in run
    cmd = [rest for kw, rest in steps if kw == "CMD"]
    assert cmd == ['["schedule", "/images"]']
    # every COPY source is in the build context, and the heavy or private folders are not
    for sources in copies.values():
        for source in sources:
            assert (REPO / source).exists() and not dockerignored(source), source
    for heavy in (".git", ".venv", "models", "tests", ".venv/lib/python3.11/site-packages/torch"):
        assert dockerignored(heavy), heavy
    env_lines = " ".join(rest for kw, rest in steps if kw == "ENV")
    assert (
        "CLIPINDEX_MODEL_DIR=/models/clip-vit-base-patch32" in env_lines and "CLIPINDEX_STATE_DIR=/state" in env_lines
    )


# --- the entrypoint, run for real ---------------------------------------------------------------------------------

STUB = """#!/bin/sh
echo "$*" >> "$STUB_LOG"
[ -n "${STUB_SLEEP:-}" ] && sleep "$STUB_SLEEP"
exit "${STUB_EXIT:-0}"
"""


@pytest.fixture
def stub_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "clipindex"
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPINDEX_")}
    return dict(env, PATH=f"{bin_dir}:{env['PATH']}", STUB_LOG=str(tmp_path / "calls.log"))


def calls(env: dict[str, str]) -> list[str]:
    return Path(env["STUB_LOG"]).read_text().splitlines()


def test_entrypoint_schedule_runs_ingest_with_its_flags_and_reports_exit_codes(stub_env: dict[str, str]) -> None:
    env = dict(
        stub_env,
        CLIPINDEX_RUNS="2",
        CLIPINDEX_INTERVAL="0",
        CLIPINDEX_PRUNE="1",
        CLIPINDEX_SHARDS="6",
        CLIPINDEX_REPLICAS="2",
        STUB_EXIT="75",
    )
    result = subprocess.run([str(ENTRYPOINT), "schedule", "/images"], env=env, capture_output=True, text=True)
    assert result.returncode == 75
    assert calls(env) == ["ingest /images --prune --shards 6 --replicas 2"] * 2
    assert result.stderr.count("another ingest holds the lock (exit 75)") == 2
    # anything but `schedule` is a clipindex command
    result = subprocess.run(
        [str(ENTRYPOINT), "search", "a red car", "--limit", "3"], env=stub_env, capture_output=True, text=True
    )
    assert result.returncode == 0 and calls(stub_env)[-1] == "search a red car --limit 3"
    bad = subprocess.run([str(ENTRYPOINT), "schedule"], env=dict(stub_env, CLIPINDEX_INTERVAL="1h"))
    assert bad.returncode == 2


def test_entrypoint_stops_promptly_on_sigterm(stub_env: dict[str, str]) -> None:
    env = dict(stub_env, CLIPINDEX_INTERVAL="3600", STUB_SLEEP="30")
    proc = subprocess.Popen([str(ENTRYPOINT), "schedule", "/images"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (Path(env["STUB_LOG"]).exists() and calls(env)):
        time.sleep(0.05)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # what `docker stop` sends (through init)
    proc.wait(timeout=10)
    assert proc.returncode == 143 and time.monotonic() - started < 5


@pytest.mark.slow
def test_entrypoint_runs_the_real_ingest_as_the_container_would(tmp_path: Path, tiny_model_dir: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted(os.listdir(REPO / "images"))[:3]:
        shutil.copy(REPO / "images" / name, images / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPINDEX_", "QDRANT_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        CLIPINDEX_MODEL_DIR=str(tiny_model_dir),
        CLIPINDEX_DATA_DIR=str(tmp_path / "data"),
        CLIPINDEX_STATE_DIR=str(tmp_path / "state"),
        CLIPINDEX_RUNS="2",
        CLIPINDEX_INTERVAL="0",
        CLIPINDEX_PRUNE="1",
    )
    result = subprocess.run(
        [str(ENTRYPOINT), "schedule", str(images)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    # not a terminal: each summary line starts with its ISO 8601 time
    summaries = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if " indexed " in line]
    assert all(
        re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line) for line in result.stdout.splitlines() if " indexed " in line
    )
    assert summaries[0].startswith("indexed 3 ") and summaries[1].startswith("indexed 0 ")  # the 2nd run: no-op
    assert "unchanged 3" in summaries[1] and "\r" not in result.stderr  # no progress bar in the logs
