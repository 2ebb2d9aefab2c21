"""The OpenAPI document and the server agree at the edge of every input.

Every operation of the served document is walked. Each path parameter, query parameter and body
field is tried, one at a time with everything else valid, with values taken from its own schema
and from one shared pool of awkward text. Each value is judged by the document first (a small
JSON Schema evaluator, below), then sent:

* a value the schema forbids (wrong type, ``null`` where the field is not nullable, one past a
  bound, one character or item too many or too few, text its pattern excludes, an unknown field,
  a missing required one, a body that is not an object) must be refused with a 4xx the operation
  documents;
* a value the schema allows (each bound, the longest and shortest text, the most items, ``null``
  where nullable, every enum member, pool text the pattern admits) must be accepted, or refused
  only for a reason no schema can state: a target that does not exist (404), a conflict with
  stored state (409), or one of the rules in ``UNSTATED``;
* an integer written with a fraction (``42.0``), which JSON Schema counts as the integer 42, must
  be refused all the same, and the field's description must say so.

Targets that a request consumes (a key to revoke, a token to revoke, a participant to disable) are
made fresh, and made again after each request that succeeds, so every value meets the state its
route expects.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import quote

import anyio
import httpx
import pytest
from admin_api_harness import CLIENT_HOST, PREFIX, AdminEnv, open_admin_env, sqlite_settings

from uid2_operator.domain.participants import MAX_SITE_ID, MIN_SITE_ID
from uid2_operator.domain.roles import AdminRole, ClientRole
from uid2_operator.services.context import SYSTEM
from uid2_operator.web.admin_api import create_admin_app
from uid2_operator.web.admin_api.routing import Operation

OWNER = 500
OTHER = 501
PARTICIPANTS = (MIN_SITE_ID, OWNER, OTHER)  # at the start
# A baseline's site id that each request replaces with one never used: a body that creates a
# participant must not conflict with the one the previous request created.
UNUSED_SITE = 999_999
_unused_sites = itertools.count(1_000_000)
ALL_CLIENT_ROLES = [role.value for role in ClientRole]
REGISTRABLE = frozenset({"example.com", "example.org"})
FLOAT_NOTE = "42.0"  # what a description says when it warns that 42.0 is not an integer here

# Text the pool tries in every string field, path and query parameter. No lone surrogates: JSON
# Schema has no way to refuse them (the document says text must be valid Unicode).
TEXT_POOL: tuple[str, ...] = (
    *("", "x", " ", "x y", "  padded  ", "\u00a0nbsp\u3000", "\u2028", "\ufeff", "\u200b"),
    *("tab\there", "nul\x00", "del\x7f", "nel\x85", "line\n", "é", "名前", "😀"),
    *("-", "a/b", "a:b", "a@b", "a\\b", "#"),
    *("ops@example.com", " ops@example.com ", "ops@example", "ops@@example.com"),
    *("o ps@example.com", "@example.com", "ops@example.com\u00a0", "ops@exa\u200bmple.com"),
    *("example.com", " example.com ", "EXAMPLE.org", "https://example.com", "example.com:443"),
    *("example.com/path", "sub.example.com", "com", "com.example.app", " com.example.app "),
    *("com.example app",),
    *("GENERATOR", "generator", " Mapper ", "\u00a0optout", "\u0131d_reader", "\u017fharer"),
    *("ID-READER", "WIZARD", "READ_ONLY", "super_user", "\u017fuper_u\u017fer"),
    *("maintainer\u3000", "\u0130D_READER"),
    *("dsp", " DSP ", "data_provider", "advertiser\u00a0", "martian", "Publisher"),
    *("owner_only", "bidders", "list", "LIST"),
    *("UID2-C-L-500-abcDEF", "UID2-A-L-0-abcDEF", "UID2-C-L-2147483647-abcDEF"),
    *("UID2-C-L-0500-abcDEF", "UID2-C-L-500-abcDE", "UID2-C-L-12345678901-abcDEF"),
    *("UID2-c-L-500-abcDEF", "UID2-C-L-500-abcDEF.x"),
    *("23456789ab", "0000000000", "23456789a", "23456789abc"),
)
# Padding that keeps text inside a pattern while it grows to the longest length allowed.
PADS = (" ", "n")


# ------------------------------------------------------------------ the JSON Schema evaluator


def _is_integer(value: Any) -> bool:
    """JSON Schema's integer: a number with no fractional part, 42.0 included."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": _is_integer,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _matches(pattern: str, text: str) -> bool:
    # ECMA-262's '$' matches only at the end; Python's also before a final line break.
    python = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
    return re.search(python, text) is not None


def allows(schema: dict[str, Any], value: Any) -> bool:
    """Whether ``value`` is valid against ``schema``: the keywords the admin document uses."""
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        if not any(_TYPES[name](value) for name in names):
            return False
    if "enum" in schema and not any(_same(value, member) for member in schema["enum"]):
        return False
    if "const" in schema and not _same(value, schema["const"]):
        return False
    checks = [
        *_number_checks(schema, value),
        *_string_checks(schema, value),
        *_array_checks(schema, value),
        *_object_checks(schema, value),
        *(allows(part, value) for part in schema.get("allOf", [])),
    ]
    if "anyOf" in schema:
        checks.append(any(allows(part, value) for part in schema["anyOf"]))
    if "if" in schema:
        branch = "then" if allows(schema["if"], value) else "else"
        checks.append(allows(schema.get(branch, {}), value))
    return all(checks)


def _same(value: Any, member: Any) -> bool:
    return bool(value == member and type(value) is type(member)) or (
        _is_integer(value) and _is_integer(member) and value == member
    )


def _number_checks(schema: dict[str, Any], value: Any) -> list[bool]:
    if not _TYPES["number"](value):
        return []
    return [
        "minimum" not in schema or value >= schema["minimum"],
        "maximum" not in schema or value <= schema["maximum"],
    ]


def _string_checks(schema: dict[str, Any], value: Any) -> list[bool]:
    if not isinstance(value, str):
        return []
    return [
        len(value) >= schema.get("minLength", 0),
        "maxLength" not in schema or len(value) <= schema["maxLength"],
        "pattern" not in schema or _matches(schema["pattern"], value),
    ]


def _array_checks(schema: dict[str, Any], value: Any) -> list[bool]:
    if not isinstance(value, list):
        return []
    return [
        len(value) >= schema.get("minItems", 0),
        "maxItems" not in schema or len(value) <= schema["maxItems"],
        all(allows(schema.get("items", {}), item) for item in value),
    ]


def _object_checks(schema: dict[str, Any], value: Any) -> list[bool]:
    if not isinstance(value, dict):
        return []
    properties = schema.get("properties", {})
    return [
        all(name in value for name in schema.get("required", [])),
        schema.get("additionalProperties", True) is not False
        or all(name in properties for name in value),
        all(allows(properties[name], item) for name, item in value.items() if name in properties),
    ]


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    return False


# ------------------------------------------------------------------ values from a schema


def _kinds(schema: dict[str, Any]) -> list[str]:
    kinds = schema.get("type", [])
    return kinds if isinstance(kinds, list) else [kinds]


def _unique(values: list[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(json.dumps(value), value)
    return list(seen.values())


def text_values(schema: dict[str, Any]) -> list[str]:
    """The pool, enum members, and text at (and one past) each length bound of ``schema``."""
    values = [*TEXT_POOL, *(v for v in schema.get("enum", []) if isinstance(v, str))]
    longest = schema.get("maxLength")
    if longest is not None:
        values.append("n" * (longest + 1))
        grown = _grown(schema, values, longest)
        if grown is not None:
            values += grown
    shortest = schema.get("minLength", 0)
    if shortest:
        values += ["n" * shortest, "n" * (shortest - 1)]
    return _unique(values)


def _grown(schema: dict[str, Any], seeds: list[str], length: int) -> list[str] | None:
    """Text of exactly ``length`` characters the schema allows, and the same one longer."""
    for seed in seeds:
        if not seed or len(seed) > length or not allows(schema, seed):
            continue
        for pad in PADS:
            fill = pad * (length - len(seed))
            for longest, longer in (
                (seed + fill, seed + fill + pad),
                (fill + seed, pad + fill + seed),
            ):
                if allows(schema, longest):
                    return [longest, longer]
    return None


def json_values(schema: dict[str, Any]) -> list[Any]:
    """Values of every JSON type, and the edges of the types ``schema`` takes."""
    kinds = _kinds(schema)
    values: list[Any] = [None, True, False, 1.5, [], {}, str(OTHER), OTHER, "x"]
    if "integer" in kinds:
        low, high = schema["minimum"], schema["maximum"]
        values += [low, high, low - 1, high + 1, float(low), float(high)]
    if "string" in kinds:
        values += text_values(schema)
    if "array" in kinds:
        values += _array_values(schema)
    return _unique(values)


def _array_values(schema: dict[str, Any]) -> list[Any]:
    item = schema.get("items", {})
    items = json_values(item)
    values: list[Any] = [[value] for value in items]
    good = sorted(
        (value for value in items if allows(item, value) and not _has_float(value)),
        key=lambda value: len(json.dumps(value)),
    )
    if good:
        most = schema.get("maxItems")
        if most is not None:
            values += [[good[0]] * most, [good[0]] * (most + 1)]
        fewest = schema.get("minItems", 0)
        if fewest > 1:
            values += [[good[0]] * fewest, [good[0]] * (fewest - 1)]
        values.append(good[:2])
    return values


def path_or_query_values(schema: dict[str, Any]) -> list[str]:
    if "integer" in _kinds(schema):
        low, high = schema["minimum"], schema["maximum"]
        return [str(low), str(high), str(low - 1), str(high + 1), "x", "3.5"]
    return text_values(schema)


def text_allows(schema: dict[str, Any], text: str) -> bool:
    """Whether a path or query value (always text) is valid: integers as decimal digits."""
    if "integer" in _kinds(schema):
        return re.fullmatch(r"-?[0-9]+", text) is not None and allows(schema, int(text))
    return allows(schema, text)


# ------------------------------------------------------------------ the world and its targets


@dataclass(frozen=True)
class Try:
    where: str
    value: Any
    allowed: bool
    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None
    has_body: bool = False
    description: str = ""

    @property
    def float_integer(self) -> bool:
        """Allowed only because JSON Schema counts 42.0 as an integer."""
        return self.allowed and _has_float(self.value)


Factory = Callable[[AdminEnv], str]


def _participant(env: AdminEnv, *, enabled: bool = True) -> str:
    credentials = env.services.credentials
    site = next(_unused_sites)
    view = credentials.create_participant(
        SYSTEM,
        name=f"target {site}",
        type="publisher",
        site_id=site,
        roles=ALL_CLIENT_ROLES,
    )
    if not enabled:
        credentials.set_participant_enabled(SYSTEM, view.site_id, False)
    return str(view.site_id)


def _key(env: AdminEnv, *, disabled: bool = False, rotated: bool = False) -> str:
    credentials = env.services.credentials
    key_id = credentials.create_key(
        SYSTEM, site_id=OWNER, name="target", roles=["GENERATOR"]
    ).key_id
    if disabled:
        credentials.disable_key(SYSTEM, key_id)
    if rotated:
        credentials.rotate_key(SYSTEM, key_id, grace_days=1)
    return key_id


def _token(env: AdminEnv) -> str:
    issued = env.services.admin.create_admin_token(SYSTEM, name="target", roles=["READ_ONLY"])
    return issued.token_id


def _keypair(env: AdminEnv, *, disabled: bool = False) -> str:
    sharing = env.services.sharing
    subscription_id = sharing.create_keypair(SYSTEM, site_id=OWNER, name="target").subscription_id
    if disabled:
        sharing.set_keypair_disabled(SYSTEM, subscription_id, True)
    return subscription_id


FIXED: dict[str, Factory] = {
    "site_id": lambda env: str(OWNER),
    "key_id": lambda env: cast(str, env.app.state.bounds_key_id),
    "token_id": lambda env: env.token_ids[AdminRole.READ_ONLY],
    "subscription_id": lambda env: cast(str, env.app.state.bounds_subscription_id),
}
# Targets a request consumes or must find in a given state: made fresh, and made again after
# each request that succeeds.
FRESH: dict[str, dict[str, Factory]] = {
    "disableParticipant": {"site_id": _participant},
    "enableParticipant": {"site_id": lambda env: _participant(env, enabled=False)},
    "setParticipantRoles": {"site_id": _participant},  # no key holds a role it could lose
    **{
        op: {"key_id": _key}
        for op in (
            "renameKey",
            "setKeyRoles",
            "disableKey",
            "revokeKey",
            "rotateKey",
            "rotateKeySecret",
        )
    },
    "enableKey": {"key_id": lambda env: _key(env, disabled=True)},
    "retireKeyNow": {"key_id": lambda env: _key(env, rotated=True)},
    "revokeAdminToken": {"token_id": _token},
    "disableKeypair": {"subscription_id": _keypair},
    "deleteKeypair": {"subscription_id": _keypair},
    "enableKeypair": {"subscription_id": lambda env: _keypair(env, disabled=True)},
}
# Valid bodies; each field is varied on each of them in turn.
BASELINES: dict[str, list[dict[str, Any]]] = {
    "createParticipant": [
        {
            "name": "new",
            "type": "publisher",
            "site_id": UNUSED_SITE,
            "roles": ["GENERATOR"],
            "contacts": ["o@example.com"],
        }
    ],
    "setParticipantRoles": [{"roles": ["GENERATOR"]}],
    "createKey": [{"site_id": OWNER, "name": "k", "roles": ["GENERATOR"], "expires_in_days": 10}],
    "renameKey": [{"name": "renamed"}],
    "setKeyRoles": [{"roles": ["MAPPER"]}],
    "revokeKey": [{"reason": "leaked"}],
    "rotateKey": [{"grace_days": 1, "name": "successor"}],
    "rotateKeySecret": [{"grace_days": 1}],
    "createAdminToken": [{"name": "ops", "roles": ["READ_ONLY"]}],
    "setSharing": [
        {"mode": "list", "sites": [OTHER], "types": ["dsp"], "rotate": False},
        {"mode": "owner_only", "rotate": False},
    ],
    "setDomainNames": [{"domain_names": ["example.com"]}],
    "setAppNames": [{"app_names": ["com.example.app"]}],
    "createKeypair": [{"site_id": OWNER, "name": "kp", "contact": "ops@example.com"}],
}


def _participant_ids(env: AdminEnv) -> set[int]:
    with env.services.store.read() as tx:
        return {p.site_id for p in tx.participants.list_all()}


def _not_participants(env: AdminEnv, value: Any) -> bool:
    sites = value if isinstance(value, list) else []
    return not set(sites) <= _participant_ids(env)


def _no_next_site(env: AdminEnv, value: Any) -> bool:
    return value is None and MAX_SITE_ID in _participant_ids(env)


def _not_registrable(env: AdminEnv, value: Any) -> bool:
    names = value if isinstance(value, list) else []
    return any(isinstance(n, str) and n.strip().lower() not in REGISTRABLE for n in names)


# Rules no JSON Schema can state, by operation and where the value went: when the predicate
# holds for the value tried (and the store as it is), a 422 for a value the schema allows is
# expected.
UNSTATED: dict[tuple[str, str], Callable[[AdminEnv, Any], bool]] = {
    # Without a site id, the next one above the highest: none once the largest is taken.
    ("createParticipant", "body site_id"): _no_next_site,
    # A registrable domain under the Public Suffix List: data, not a pattern.
    ("setDomainNames", "body domain_names"): _not_registrable,
    # A sharing list names participants: stored data, not a range.
    ("setSharing", "body sites"): _not_participants,
}


class _NoServices:
    store = None
    credentials = None
    admin = None


ROUTE_TABLE: tuple[Operation, ...] = create_admin_app(cast(Any, _NoServices())).state.operations
# Every operation that takes any input: a path parameter, a query string or a body.
OPERATIONS = [op for op in ROUTE_TABLE if op.path_params or op.query or op.body is not None]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminEnv]:
    with open_admin_env(sqlite_settings(tmp_path_factory.mktemp("openapi-bounds"))) as opened:
        credentials = opened.services.credentials
        for site in PARTICIPANTS:
            credentials.create_participant(
                SYSTEM, name=f"site {site}", type="publisher", site_id=site, roles=ALL_CLIENT_ROLES
            )
        opened.app.state.bounds_key_id = _key(opened)
        opened.app.state.bounds_subscription_id = _keypair(opened)
        document = opened.client.request("GET", PREFIX + "/openapi.json").json()
        opened.app.state.bounds_document = document
        yield opened


# ------------------------------------------------------------------ the walk


def _tries(op: Operation, doc: dict[str, Any]) -> Iterator[Try]:
    baselines = BASELINES.get(op.operation_id, [{}])
    for parameter in doc.get("parameters", []):
        schema, name, where = parameter["schema"], parameter["name"], parameter["in"]
        for text in path_or_query_values(schema):
            if where == "path" and text in ("", ".", ".."):
                continue  # not a path segment: another route, or none
            target = {name: text}
            yield Try(
                f"{where} {name}",
                text,
                text_allows(schema, text),
                path=target if where == "path" else {},
                query=target if where == "query" else {},
                description=schema.get("description", ""),
                body=baselines[0] if op.body is not None else None,
                has_body=op.body is not None,
            )
    if "requestBody" not in doc:
        return
    schema = doc["requestBody"]["content"]["application/json"]["schema"]
    properties: dict[str, Any] = schema["properties"]
    for base in baselines:
        yield Try("body", base, allows(schema, base), body=base, has_body=True)
        for wrong in ([base], "text", {**base, "surprise": 1}):
            yield Try("body", wrong, allows(schema, wrong), body=wrong, has_body=True)
        for name in schema.get("required", []):
            body = {k: v for k, v in base.items() if k != name}
            yield Try(f"body without {name}", body, allows(schema, body), body=body, has_body=True)
        for name, prop in properties.items():
            for value in json_values(prop):
                body = {**base, name: value}
                yield Try(
                    f"body {name}",
                    value,
                    allows(schema, body),
                    body=body,
                    has_body=True,
                    description=prop.get("description", ""),
                )


async def _send(
    client: httpx.AsyncClient, env: AdminEnv, op: Operation, attempt: Try, made: dict[str, str]
) -> tuple[int, str]:
    """Send ``attempt``; path parameters it does not try are filled with a target, from ``made``
    (targets made fresh and not consumed yet: a request that succeeds empties it)."""
    fresh = FRESH.get(op.operation_id, {})
    path = op.path
    for name in re.findall(r"{([a-z_]+)}", op.path):
        value = attempt.path.get(name)
        if value is None and name in fresh:
            value = made[name] if name in made else made.setdefault(name, fresh[name](env))
        elif value is None:
            value = FIXED[name](env)
        path = path.replace("{" + name + "}", quote(value, safe=""))
    kwargs: dict[str, Any] = {"params": attempt.query or None, "headers": env.auth()}
    if attempt.has_body:
        body = attempt.body
        if isinstance(body, dict) and body.get("site_id") == UNUSED_SITE:
            body = {**body, "site_id": next(_unused_sites)}
        kwargs["content"] = json.dumps(body).encode()
        kwargs["headers"]["Content-Type"] = "application/json"
    response = await client.request(op.method, PREFIX + path, **kwargs)
    if response.is_success:
        made.clear()
    code = response.json()["error"]["code"] if response.status_code >= 400 else ""
    return response.status_code, code


def _verdict(
    env: AdminEnv, op: Operation, doc: dict[str, Any], attempt: Try, status: int
) -> str | None:
    """Why ``status`` disagrees with the document for ``attempt``, or None when it agrees."""
    documented = {int(s) for s in doc["responses"]}
    if attempt.float_integer:
        if status != 422:
            return "an integer written with a fraction was not refused"
        described = FLOAT_NOTE in attempt.description
        return None if described else "refused as it should be, but the description does not say so"
    if not attempt.allowed:
        refused = 400 <= status < 500 and status not in (401, 403, 405) and status in documented
        return None if refused else "the document forbids it, but the server did not refuse it"
    unstated = UNSTATED.get((op.operation_id, attempt.where))
    agreed = (
        status == op.status
        or (status in (404, 409) and status in documented)
        or (status == 422 and unstated is not None and unstated(env, attempt.value))
    )
    return None if agreed else "the document allows it, but the server refused it"


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return repr(text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)")


async def _walk(env: AdminEnv, op: Operation, doc: dict[str, Any]) -> list[str]:
    """Every try of ``op`` over one connection; the disagreements found."""
    disagreements: list[str] = []
    made: dict[str, str] = {}
    transport = httpx.ASGITransport(app=env.app, client=(CLIENT_HOST, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
        for attempt in _tries(op, doc):
            status, code = await _send(client, env, op, attempt, made)
            problem = _verdict(env, op, doc, attempt, status)
            if problem is not None:
                allowed = "allows" if attempt.allowed else "forbids"
                disagreements.append(
                    f"{attempt.where} = {_shown(attempt.value)}: schema {allowed}, "
                    f"server {status} {code}: {problem}"
                )
    return disagreements


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.operation_id)
def test_the_document_and_the_server_agree_at_every_input_bound(
    env: AdminEnv, op: Operation
) -> None:
    document: dict[str, Any] = env.app.state.bounds_document
    doc = document["paths"][op.full_path][op.method.lower()]
    if op.body is not None and op.body.fields and any(f.required for f in op.body.fields):
        assert op.operation_id in BASELINES, f"{op.operation_id}: give it a valid body"
    disagreements = anyio.run(_walk, env, op, doc)
    assert disagreements == [], f"{op.method} {op.path}:\n" + "\n".join(disagreements)
