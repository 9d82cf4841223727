"""WWW-Authenticate parsing and the credentials lookup order."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from rootless_groot.sources.registry_auth import (
    AuthError,
    Challenge,
    auth_files,
    find_credentials,
    parse_challenges,
    pick_challenge,
    run_credential_helper,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ---- challenges ------------------------------------------------------------------------------

def test_bearer_challenge_with_quoted_values_and_scope_containing_colons():
    (c,) = parse_challenges('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                            'scope="repository:samalba/my-app:pull,push"')
    assert c == Challenge("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                                     "scope": "repository:samalba/my-app:pull,push"})


def test_escapes_unquoted_values_and_case_insensitive_scheme():
    (c,) = parse_challenges(r'BASIC Realm="a \"quoted\" realm", charset=UTF-8')
    assert c.scheme == "basic"
    assert c.params == {"realm": 'a "quoted" realm', "charset": "UTF-8"}


def test_several_challenges_in_one_header_and_across_headers():
    cs = parse_challenges(['Negotiate abc==, Basic realm="r"', 'Bearer realm="https://t/x",error="insufficient_scope"'])
    assert [c.scheme for c in cs] == ["negotiate", "basic", "bearer"]
    assert cs[2].params["error"] == "insufficient_scope"
    assert pick_challenge(cs).scheme == "bearer"


def test_scheme_without_params_then_another():
    cs = parse_challenges("Basic, Bearer realm=x")
    assert [(c.scheme, c.params) for c in cs] == [("basic", {}), ("bearer", {"realm": "x"})]


def test_pick_challenge_basic_and_unsupported():
    assert pick_challenge(parse_challenges('Basic realm="x"')).scheme == "basic"
    assert pick_challenge(parse_challenges("Digest realm=x, nonce=y")) is None
    assert pick_challenge([]) is None


# ---- credentials -------------------------------------------------------------------------------

@pytest.fixture
def env(tmp_path):
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    run = tmp_path / "run"
    (run / "containers").mkdir(parents=True)
    return {"HOME": str(home), "XDG_RUNTIME_DIR": str(run)}


def write(path, doc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f)


def no_helper(name, registry):
    raise AssertionError("no helper expected")


def test_flags_win_over_every_file(env):
    write(os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json"), {"auths": {"h:5000": {"auth": b64("f:p")}}})
    assert find_credentials("h:5000", "r", "flag", "pw", env=env, helper=no_helper) == ("flag", "pw")


def test_username_without_password_is_an_error(env):
    with pytest.raises(AuthError):
        find_credentials("h", "r", "user", None, env=env, helper=no_helper)


def test_auth_file_order(env, tmp_path):
    runtime = os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json")
    docker = os.path.join(env["HOME"], ".docker", "config.json")
    write(docker, {"auths": {"h:5000": {"auth": b64("docker:1")}}})
    assert find_credentials("h:5000", "r", env=env, helper=no_helper) == ("docker", "1")
    write(runtime, {"auths": {"h:5000": {"auth": b64("runtime:2")}}})
    assert find_credentials("h:5000", "r", env=env, helper=no_helper) == ("runtime", "2")
    explicit = str(tmp_path / "explicit.json")
    write(explicit, {"auths": {"h:5000": {"auth": b64("explicit:3")}}})
    env2 = dict(env, REGISTRY_AUTH_FILE=explicit)
    assert find_credentials("h:5000", "r", env=env2, helper=no_helper) == ("explicit", "3")
    # REGISTRY_AUTH_FILE replaces the containers files, docker's config is still a fallback
    assert [k for k, _ in auth_files(env2)] == ["containers", "docker"]


def test_docker_hub_key_and_namespaced_keys(env):
    docker = os.path.join(env["HOME"], ".docker", "config.json")
    write(docker, {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:pw")},
                             "quay.io/team": {"auth": b64("team:pw")}, "quay.io": {"auth": b64("any:pw")}}})
    assert find_credentials("docker.io", "library/debian", env=env, helper=no_helper) == ("hub", "pw")
    assert find_credentials("quay.io", "team/app", env=env, helper=no_helper) == ("team", "pw")
    assert find_credentials("quay.io", "other/app", env=env, helper=no_helper) == ("any", "pw")
    assert find_credentials("ghcr.io", "x", env=env, helper=no_helper) is None


def test_cred_helpers_then_creds_store(env):
    docker = os.path.join(env["HOME"], ".docker", "config.json")
    write(docker, {"credHelpers": {"h:5000": "one"}, "credsStore": "two", "auths": {"h:5000": {}}})
    calls = []

    def helper(name, registry):
        calls.append((name, registry))
        return ("u-" + name, "s") if name == "two" else None

    assert find_credentials("h:5000", "r", env=env, helper=helper) == ("u-two", "s")
    assert calls == [("one", "h:5000"), ("two", "h:5000")]


def test_malformed_auth_never_echoes_the_secret(env):
    docker = os.path.join(env["HOME"], ".docker", "config.json")
    write(docker, {"auths": {"h": {"auth": b64("no-colon-secret")}}})
    with pytest.raises(AuthError) as e:
        find_credentials("h", "r", env=env, helper=no_helper)
    assert "secret" not in str(e.value) and docker in str(e.value)


def test_duplicate_keys_in_auth_file_are_refused(env):
    docker = os.path.join(env["HOME"], ".docker", "config.json")
    with open(docker, "w") as f:
        f.write('{"auths": {}, "auths": {}}')
    with pytest.raises(AuthError):
        find_credentials("h", "r", env=env, helper=no_helper)


def test_real_credential_helper_protocol(tmp_path, monkeypatch):
    script = tmp_path / "docker-credential-fake"
    script.write_text('#!/bin/sh\nread server\n[ "$1" = get ] || exit 3\n'
                      'if [ "$server" = "https://index.docker.io/v1/" ]; then\n'
                      '  echo \'{"ServerURL":"x","Username":"hubuser","Secret":"s3cret"}\'\nelse\n'
                      '  echo "credentials not found in native keychain"; exit 1\nfi\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert run_credential_helper("fake", "docker.io") == ("hubuser", "s3cret")
    assert run_credential_helper("fake", "other:5000") is None
    with pytest.raises(AuthError, match="not installed"):
        run_credential_helper("missing-helper", "docker.io")
    with pytest.raises(AuthError):
        run_credential_helper("../evil", "docker.io")
