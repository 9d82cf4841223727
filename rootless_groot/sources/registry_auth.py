"""Registry authentication: ``WWW-Authenticate`` challenges, credentials lookup, bearer tokens.

Credentials, first found wins:
  1. ``--username``/``--password`` (Garden passes these);
  2. ``$REGISTRY_AUTH_FILE``, else ``$XDG_RUNTIME_DIR/containers/auth.json`` and
     ``~/.config/containers/auth.json`` (podman/skopeo);
  3. ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``: ``credHelpers[host]``, then
     ``credsStore`` (both through ``docker-credential-NAME get``), then ``auths[...].auth``.

Secrets never reach a log line or an error message: errors name the host and the file only.
"""
from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import log
from ..errors import ImageError
from ..jsonutil import loads_strict
from .registry_http import MAX_ERROR_BODY, host_of, read_capped

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
MAX_TOKEN_BODY = 1 << 20
MAX_CONFIG_FILE = 1 << 20
DEFAULT_TOKEN_LIFETIME = 60
HELPER_TIMEOUT = 30


class AuthError(ImageError):
    """Credentials are missing, wrong, or the registry refused them."""


@dataclass
class Challenge:
    scheme: str  # lower-case
    params: dict[str, str] = field(default_factory=dict)


# ---- WWW-Authenticate ----------------------------------------------------------------------

_TOKEN_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
_TOKEN68_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/")


def parse_challenges(values: list[str] | str) -> list[Challenge]:
    """RFC 7235 challenges from one or more header values (quoted strings with ``\\`` escapes)."""
    if isinstance(values, str):
        values = [values]
    out: list[Challenge] = []
    for text in values:
        i, n = 0, len(text)
        current: Challenge | None = None
        while i < n:
            while i < n and text[i] in " \t,":
                i += 1
            start = i
            while i < n and text[i] in _TOKEN_CHARS:
                i += 1
            token = text[start:i]
            if not token:
                i += 1  # a stray character
                continue
            j = i
            while j < n and text[j] in " \t":
                j += 1
            if current is not None and j < n and text[j] == "=":
                i = j + 1
                while i < n and text[i] in " \t":
                    i += 1
                if i < n and text[i] == '"':
                    i += 1
                    chars = []
                    while i < n and text[i] != '"':
                        if text[i] == "\\" and i + 1 < n:
                            i += 1
                        chars.append(text[i])
                        i += 1
                    i += 1  # the closing quote
                    value = "".join(chars)
                else:
                    vstart = i
                    while i < n and text[i] not in ", \t":
                        i += 1
                    value = text[vstart:i]
                current.params[token.lower()] = value
                continue
            current = Challenge(token.lower())
            out.append(current)
            # A token68 credential (``Negotiate abc==``) right after the scheme: skip it.
            k = j
            while k < n and text[k] in _TOKEN68_CHARS:
                k += 1
            m = k
            while m < n and text[m] == "=":
                m += 1
            rest = text[m:].lstrip(" \t")
            if k > j and (not rest or rest[0] == ","):
                i = m
    return out


def pick_challenge(challenges: list[Challenge]) -> Challenge | None:
    """Bearer over Basic (containerd's order); other schemes are not supported."""
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme == scheme:
                return c
    return None


# ---- credentials ---------------------------------------------------------------------------

def _read_json_file(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuthError(f"cannot read credentials file {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG_FILE:
        raise AuthError(f"credentials file {path} is too large")
    try:
        return loads_strict(data, f"credentials file {path}")
    except ImageError:
        raise AuthError(f"credentials file {path} is not valid JSON") from None


def _normalise_key(key: str) -> str:
    k = key.strip().lower()
    for prefix in ("https://", "http://"):
        k = k.removeprefix(prefix)
    for suffix in ("/v1/", "/v2/", "/v1", "/v2"):
        k = k.removesuffix(suffix)
    k = k.rstrip("/")
    if k in ("index.docker.io", "registry-1.docker.io"):
        k = "docker.io"
    elif k.startswith(("index.docker.io/", "registry-1.docker.io/")):
        k = "docker.io/" + k.split("/", 1)[1]
    return k


def _decode_auth(value: Any, path: str) -> tuple[str, str] | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        text = base64.b64decode(value, validate=False).decode()
    except (ValueError, UnicodeDecodeError):
        raise AuthError(f"credentials file {path} has a malformed `auth` entry") from None
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise AuthError(f"credentials file {path} has a malformed `auth` entry")
    return user, password


def _from_auths(doc: dict[str, Any], registry: str, repository: str, path: str) -> tuple[str, str] | None:
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        return None
    by_key = {_normalise_key(k): v for k, v in auths.items() if isinstance(v, dict)}
    # Most specific first: host/ns/repo, host/ns, host.
    parts = repository.split("/")
    candidates = [f"{registry}/{'/'.join(parts[:i])}" for i in range(len(parts), 0, -1)] + [registry]
    for key in candidates:
        entry = by_key.get(key)
        if entry is not None:
            creds = _decode_auth(entry.get("auth"), path)
            if creds:
                return creds
    return None


def _helper_server(registry: str) -> str:
    return DOCKER_HUB_AUTH_KEY if registry == "docker.io" else registry


def run_credential_helper(name: str, registry: str) -> tuple[str, str] | None:
    """``docker-credential-NAME get``; None when it has nothing for this registry."""
    import subprocess

    if not name or "/" in name or name.startswith("."):
        raise AuthError(f"invalid credential helper name `{name}`")
    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run([program, "get"], input=_helper_server(registry).encode(), capture_output=True,
                              timeout=HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise AuthError(f"credential helper {program} is configured for {registry} but not installed") from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {program} timed out") from None
    if proc.returncode != 0:
        # "credentials not found in native keychain" is the normal miss; never echo the output.
        log.debug("registry.credential-helper-miss", helper=program, registry=registry)
        return None
    try:
        doc = loads_strict(proc.stdout[:MAX_CONFIG_FILE], f"output of {program}")
    except ImageError:
        raise AuthError(f"credential helper {program} printed malformed output") from None
    user, secret = doc.get("Username"), doc.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    if user == "<token>":  # an identity token: needs the OAuth2 flow, not supported
        log.debug("registry.identity-token-skipped", helper=program, registry=registry)
        return None
    return user, secret


def auth_files(env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Candidate files, in lookup order, as (kind, path); kind is ``containers`` or ``docker``."""
    env = os.environ if env is None else env
    home = env.get("HOME") or os.path.expanduser("~")
    out: list[tuple[str, str]] = []
    if env.get("REGISTRY_AUTH_FILE"):
        out.append(("containers", env["REGISTRY_AUTH_FILE"]))
    else:
        if env.get("XDG_RUNTIME_DIR"):
            out.append(("containers", os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json")))
        out.append(("containers", os.path.join(home, ".config", "containers", "auth.json")))
    docker_dir = env.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    out.append(("docker", os.path.join(docker_dir, "config.json")))
    return out


def find_credentials(registry: str, repository: str, username: str | None = None, password: str | None = None,
                     env: dict[str, str] | None = None,
                     helper: Callable[[str, str], tuple[str, str] | None] = run_credential_helper,
                     ) -> tuple[str, str] | None:
    """(username, password) for ``registry`` (``host[:port]``, ``docker.io`` for Docker Hub), or None."""
    if username or password:
        if not (username and password is not None):
            raise AuthError("--username and --password must be given together")
        return username, password
    for kind, path in auth_files(env):
        doc = _read_json_file(path)
        if doc is None:
            continue
        helpers = doc.get("credHelpers")
        if isinstance(helpers, dict):
            for key, name in helpers.items():
                if _normalise_key(key) == registry and isinstance(name, str):
                    creds = helper(name, registry)
                    if creds:
                        log.debug("registry.credentials", registry=registry, source=f"credHelpers in {path}")
                        return creds
        creds = _from_auths(doc, registry, repository, path)
        if creds:
            log.debug("registry.credentials", registry=registry, source=path)
            return creds
        store = doc.get("credsStore")
        if kind == "docker" and isinstance(store, str) and store:
            creds = helper(store, registry)
            if creds:
                log.debug("registry.credentials", registry=registry, source=f"credsStore in {path}")
                return creds
    return None


# ---- the authenticator -----------------------------------------------------------------------

class Authenticator:
    """Holds what a source knows about one registry endpoint's auth: scheme, token, credentials.

    Built in ``resolve()`` (the parent); forked layer workers inherit the token and the
    credentials, and re-authenticate on their own when the token has expired.
    """

    def __init__(self, transport: Any, registry: str, endpoint: str, repository: str,
                 credentials: Callable[[], tuple[str, str] | None]):
        self.transport = transport
        self.registry = registry  # the name credentials are stored under
        self.endpoint = endpoint  # scheme://host[:port] of the API
        self.repository = repository
        self._credentials_fn = credentials
        self._credentials: tuple[str, str] | None = None
        self._credentials_loaded = False
        self.scheme: str | None = None
        self.params: dict[str, str] = {}
        self.scopes: set[str] = {f"repository:{repository}:pull"}
        self.token: str | None = None
        self.expires = 0.0

    def credentials(self) -> tuple[str, str] | None:
        if not self._credentials_loaded:
            self._credentials = self._credentials_fn()
            self._credentials_loaded = True
        return self._credentials

    def header(self, url: str) -> str | None:
        """Authorization for a request to the registry's own origin (the transport checks origin)."""
        if self.scheme == "bearer" and self.token:
            return f"Bearer {self.token}"
        if self.scheme == "basic":
            creds = self.credentials()
            if creds:
                return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        return None

    def refresh_if_expired(self) -> None:
        if self.scheme == "bearer" and self.token and time.time() >= self.expires:
            self.fetch_token()

    def on_unauthorized(self, resp: Any, had_auth: bool, attempt: int) -> bool:
        """Handle a 401: True if the request should be sent again with new authorization.

        A token sent on the first attempt may have expired (a forked worker inherits its
        parent's): it is renewed once. A token fetched for this very request that is refused
        again means access is denied, unless the registry asks for more scope
        (``insufficient_scope``), which is granted once.
        """
        values = resp.headers.get("WWW-Authenticate") or ""
        chosen = pick_challenge(parse_challenges(values))
        resp.close()
        if chosen is None:
            raise AuthError(f"registry {self.registry} requires an unsupported authentication scheme")
        if chosen.scheme == "basic":
            if had_auth:
                raise AuthError(f"wrong credentials for registry {self.registry}: access denied")
            self.scheme = "basic"
            if not self.credentials():
                raise AuthError(f"registry {self.registry} requires authentication: use --username/--password, "
                                "or log in with `podman login`/`docker login`")
            return True
        new_scopes = set((chosen.params.get("scope") or "").split()) - self.scopes
        if had_auth and attempt > 0 and not new_scopes:
            return False
        self.scheme = "bearer"
        self.params = chosen.params
        self.scopes |= new_scopes
        self.fetch_token()
        return True

    def fetch_token(self) -> None:
        realm = self.params.get("realm")
        if not realm or not realm.lower().startswith(("https://", "http://")):
            raise AuthError(f"registry {self.registry} sent a bearer challenge without a usable realm")
        from urllib.parse import urlencode

        query = []
        if self.params.get("service"):
            query.append(("service", self.params["service"]))
        for scope in sorted(self.scopes):
            query.append(("scope", scope))
        creds = self.credentials()
        if creds:
            query.append(("account", creds[0]))
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode() if creds else None
        resp = self.transport.request("GET", url, {"Accept": "application/json"},
                                      auth_for=(lambda _u: basic) if basic else None, what="token")
        realm_host = host_of(realm)
        if resp.status_code in (401, 403):
            resp.close()
            if creds:
                raise AuthError("unable to retrieve auth token: invalid username/password: wrong credentials "
                                f"for registry {self.registry} (the token server {realm_host} refused them)")
            raise AuthError(f"registry {self.registry} requires authentication: use --username/--password, "
                            "or log in with `podman login`/`docker login`")
        if resp.status_code != 200:
            read_capped(resp, MAX_ERROR_BODY, "token error")
            raise AuthError(f"token server {realm_host} for registry {self.registry} answered HTTP {resp.status_code}")
        body = read_capped(resp, MAX_TOKEN_BODY, f"token from {realm_host}")
        try:
            doc = loads_strict(body, f"token from {realm_host}")
        except ImageError:
            raise AuthError(f"token server {realm_host} sent a malformed answer") from None
        token = doc.get("access_token") or doc.get("token")
        if not isinstance(token, str) or not token:
            raise AuthError(f"token server {realm_host} sent no token")
        expires_in = doc.get("expires_in")
        if (isinstance(expires_in, bool) or not isinstance(expires_in, (int, float))
                or not DEFAULT_TOKEN_LIFETIME <= expires_in <= 366 * 86400):  # NaN, 1e400: the default
            expires_in = DEFAULT_TOKEN_LIFETIME
        self.token = token
        self.expires = time.time() + float(expires_in) - 5
        log.debug("registry.token", registry=self.registry, scopes=sorted(self.scopes), expires_in=expires_in)
