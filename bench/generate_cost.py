"""What one token generate costs in-process, against the cryptography it cannot do without.

In one run, on the same objects, best of several repeats (``timeit``):

(a) the floor: the work a generate fundamentally needs, done with ready cipher objects and no
    framing at all: three SHA-256 (identity hash, first-level hash, raw UID), one draw of the 80
    random bytes (response key and four IVs) and the four AES-256-GCM seals (site layer, master
    layer, refresh token, refresh envelope) over plaintexts of the real sizes;
(b) the wire layer's generate: normalise and hash the email, first-level hash, salt bucket, raw
    UID, ``issue_identity`` (advertising token, refresh token, refresh envelope; randomness drawn
    once) and ``success_identity_json``, over keys and a salt prepared once, as a snapshot holds
    them, so every cipher comes from the cache;
(c) the request envelope: ``parse_request`` of a base64 generate request and ``seal_response`` +
    ``frame_response`` of the answer from (b);
(d) the least that Python can do for (b) and (c) together: the same library calls, on inputs of
    the same sizes, written out in one function over ready ciphers, with no check, no branch and
    no call into the project (only the cost counts: its tokens are of the real sizes, not
    checked against a reader). What (b)+(c) costs above (d) is the project's structure; what
    (d) costs above (a) plus the envelope's floor is the interpreter's, and no arrangement of
    Python removes it.

It prints microseconds per call and the ratios (b)/(a), ((b)+(c))/(a), ((b)+(c))/(d) and
(d) over the floor. The envelope's own cryptographic floor (one GCM open, one seal, one 12-byte
draw) is printed for reference. Nothing is asserted: on a shared machine absolute figures drift;
compare the ratios.

    .venv/bin/python bench/generate_cost.py [--repeat 7] [--budget 0.2]
"""

from __future__ import annotations

import argparse
import binascii
import hashlib
import json
import os
import struct
import timeit
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from uid2_operator.wire.encoding import b64encode
from uid2_operator.wire.envelope import (
    DEFAULT_TIMESTAMP_WINDOW,
    frame_response,
    parse_request,
    seal_request,
    seal_response,
)
from uid2_operator.wire.identity import hash_identity, normalize_email
from uid2_operator.wire.keys import EncryptionKey
from uid2_operator.wire.raw_uid import bucket_index, first_level_hash, raw_uid_v2
from uid2_operator.wire.refresh import issue_identity, success_identity_json
from uid2_operator.wire.scope import IdentityScope, IdentityType

NOW_MS: Final = 1_700_000_000_000
EMAIL: Final = "User.Name+promo@example.com"
FIRST_LEVEL_SALT: Final = "bench-first-level-salt"
BUCKETS: Final = 1 << 20
SITE_ID: Final = 1001
DAY_S: Final = 86_400

# Plaintext sizes of the four seals of a generate (raw UID v2, 32 bytes).
SITE_PLAIN: Final = 36 + 32
MASTER_PLAIN: Final = 33 + 12 + SITE_PLAIN + 16
REFRESH_PLAIN: Final = 90
ENVELOPE_PLAIN: Final = 258
RANDOM_BYTES: Final = 32 + 4 * 12


def _key(key_id: int, keyset_id: int) -> EncryptionKey:
    now_s = NOW_MS // 1000
    return EncryptionKey(
        id=key_id,
        keyset_id=keyset_id,
        created=now_s - 2 * DAY_S,
        activates=now_s - DAY_S,
        expires=now_s + 60 * DAY_S,
        secret=os.urandom(32),
    )


def best_us(fn: Callable[[], object], repeat: int, budget_s: float) -> float:
    """Best per-call time in µs over ``repeat`` runs of about ``budget_s`` seconds each."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * budget_s / 0.2))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


Case = Callable[[], object]


def floor_case(keys: tuple[EncryptionKey, ...], salt: str) -> Case:
    """(a) the cryptographic floor, with ready ciphers and nothing around them."""
    site, master, refresh = keys
    c0, c1, c2, c3 = (AESGCM(k.secret) for k in (site, master, refresh, refresh))
    p0, p1, p2, p3 = (
        os.urandom(n) for n in (SITE_PLAIN, MASTER_PLAIN, REFRESH_PLAIN, ENVELOPE_PLAIN)
    )
    email_bytes = normalize_email(EMAIL).encode()
    salted = os.urandom(44 + len(FIRST_LEVEL_SALT))
    uid_input = os.urandom(44 + len(salt))
    sha256, urandom, iv = hashlib.sha256, os.urandom, os.urandom(12)

    def floor() -> object:
        sha256(email_bytes).digest()
        sha256(salted).digest()
        sha256(uid_input).digest()
        urandom(RANDOM_BYTES)
        c0.encrypt(iv, p0, None)
        c1.encrypt(iv, p1, None)
        c2.encrypt(iv, p2, None)
        return c3.encrypt(iv, p3, None)

    return floor


def generate_case(keys: tuple[EncryptionKey, ...], salt: str) -> Callable[[], bytes]:
    """(b) the wire layer's generate, from the email to the success JSON."""
    site, master, refresh = keys

    def generate() -> bytes:
        digest = hash_identity(normalize_email(EMAIL))
        flh = first_level_hash(digest, FIRST_LEVEL_SALT)
        bucket_index(flh, BUCKETS)
        raw_uid = raw_uid_v2(flh, salt)
        body = issue_identity(
            now_ms=NOW_MS,
            identity_lifetime_s=3 * DAY_S,
            refresh_lifetime_s=30 * DAY_S,
            refresh_after_s=3600,
            master_key=master,
            site_key=site,
            refresh_key=refresh,
            site_id=SITE_ID,
            privacy_bits=1,
            established_ms=NOW_MS,
            raw_uid=raw_uid,
            first_level_hash=flh,
            scope=IdentityScope.UID2,
            identity_type=IdentityType.EMAIL,
            random=os.urandom,
            draw_once=True,
        )
        return success_identity_json(body)

    return generate


def envelope_cases(secret: bytes, answer: bytes) -> tuple[Case, Case]:
    """(c) open a base64 request and seal + frame the answer; and its cryptographic floor."""
    request = json.dumps({"email": EMAIL}).encode()
    body = b64encode(
        seal_request(request, secret=secret, now_ms=NOW_MS, nonce=os.urandom(8), random=os.urandom)
    ).encode("ascii")

    def envelope() -> object:
        opened = parse_request(
            body,
            octet_stream=False,
            secret=secret,
            now_ms=NOW_MS,
            window=DEFAULT_TIMESTAMP_WINDOW,
            scope=IdentityScope.UID2,
        )
        sealed = seal_response(
            answer, secret=secret, nonce=opened.nonce, now_ms=NOW_MS, random=os.urandom
        )
        return frame_response(sealed, opened.binary)

    ready = AESGCM(secret)
    request_iv = os.urandom(12)
    request_sealed = ready.encrypt(request_iv, os.urandom(16 + len(request)), None)
    answer_plain = os.urandom(16 + len(answer))

    def envelope_floor() -> object:
        ready.decrypt(request_iv, request_sealed, None)
        return ready.encrypt(os.urandom(12), answer_plain, None)

    return envelope, envelope_floor


def inlined_case(keys: tuple[EncryptionKey, ...], salt: str, secret: bytes) -> Case:
    """(d) the calls of (b) and (c) in one function: base64 and open the request, read its
    timestamp, nonce and JSON, normalise, three SHA-256, one draw, four packed and sealed token
    layers, four base64 encodings, the answer's JSON by formatting, and the sealed answer."""
    site, master, refresh = keys
    site_c, master_c, refresh_c, client_c = (
        AESGCM(k) for k in (site.secret, master.secret, refresh.secret, secret)
    )
    plain = struct.pack(">qQ", NOW_MS, 7) + json.dumps({"email": EMAIL}).encode()
    request_iv = os.urandom(12)
    body = binascii.b2a_base64(
        b"\x01" + request_iv + client_c.encrypt(request_iv, plain, None), newline=False
    )
    salted_suffix = FIRST_LEVEL_SALT.encode()
    salt_bytes = salt.encode()
    stamp, token_head = struct.Struct(">qQ"), struct.Struct(">BBi")
    site_prefix, master_prefix = struct.Struct(">iqiiqq"), struct.Struct(">qqiBiii")
    refresh_prefix = struct.Struct(">qqiBiiiqiiqB")
    envelope_json = b'{"refresh_token":"%s","refresh_response_key":"%s"}'
    answer_json = (
        b'{"body":{"advertising_token":"%s","refresh_token":"%s","identity_expires":%d,'
        b'"refresh_expires":%d,"refresh_from":%d,"refresh_response_key":"%s"},'
        b'"status":"success"}'
    )
    a2b, b2a, sha256, urandom, loads = (
        binascii.a2b_base64,
        binascii.b2a_base64,
        hashlib.sha256,
        os.urandom,
        json.loads,
    )
    now = NOW_MS

    def inlined() -> bytes:
        data = a2b(body)
        opened = client_c.decrypt(data[1:13], data[13:], None)
        _, nonce = stamp.unpack_from(opened)
        email = loads(opened[16:])["email"].strip().lower()
        digest = sha256(email.encode()).digest()
        flh = sha256(b2a(digest, newline=False) + salted_suffix).digest()
        raw_uid = sha256(b2a(flh, newline=False) + salt_bytes).digest()
        block = urandom(92)
        response_key, refresh_iv, site_iv = block[:32], block[32:44], block[44:56]
        master_iv, envelope_iv, answer_iv = block[56:68], block[68:80], block[80:92]
        inner = (
            token_head.pack(0x10, 3, refresh.id)
            + refresh_iv
            + refresh_c.encrypt(
                refresh_iv,
                refresh_prefix.pack(now, now, 0, 2, 0, 0, SITE_ID, 0, 0, 1, now, 0) + flh,
                None,
            )
        )
        site_plain = site_prefix.pack(SITE_ID, 0, 0, 1, now, now) + raw_uid
        master_plain = (
            master_prefix.pack(now, now, 0, 2, 0, 0, site.id)
            + site_iv
            + site_c.encrypt(site_iv, site_plain, None)
        )
        advertising = (
            b2a(
                token_head.pack(0x10, 4, master.id)
                + master_iv
                + master_c.encrypt(master_iv, master_plain, None),
                newline=False,
            )
            .replace(b"+", b"-")
            .replace(b"/", b"_")
            .rstrip(b"=")
        )
        key_text = b2a(response_key, newline=False)
        wrapped = envelope_json % (b2a(inner, newline=False), key_text)
        refresh_text = b2a(
            token_head.pack(0x10, 0, refresh.id)[:5]
            + envelope_iv
            + refresh_c.encrypt(envelope_iv, wrapped, None),
            newline=False,
        )
        answer = answer_json % (advertising, refresh_text, now, now, now, key_text)
        return b2a(
            answer_iv + client_c.encrypt(answer_iv, stamp.pack(now, nonce) + answer, None),
            newline=False,
        )

    return inlined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per repeat")
    args = parser.parse_args()

    keys = (_key(4, 11), _key(1, -1), _key(2, -2))  # site, master, refresh
    salt = b64encode(os.urandom(33))
    generate = generate_case(keys, salt)
    secret = os.urandom(32)
    envelope, envelope_floor = envelope_cases(secret, generate())

    a = best_us(floor_case(keys, salt), args.repeat, args.budget)
    b = best_us(generate, args.repeat, args.budget)
    c = best_us(envelope, args.repeat, args.budget)
    e = best_us(envelope_floor, args.repeat, args.budget)
    d = best_us(inlined_case(keys, salt, secret), args.repeat, args.budget)
    print(f"one generate, in-process (µs per call, best of {args.repeat})")
    print(f"  (a) cryptographic floor of a generate        {a:7.2f}")
    print(f"  (b) wire-level generate                      {b:7.2f}")
    print(f"  (c) envelope parse_request + seal_response   {c:7.2f}")
    print(f"      (cryptographic floor of the envelope     {e:7.2f})")
    print(f"  (d) (b) and (c) inlined, no checks           {d:7.2f}")
    print(f"  (b)/(a)                          {b / a:6.2f}")
    print(f"  ((b)+(c))/(a)                    {(b + c) / a:6.2f}")
    print(f"  ((b)+(c))/((a)+envelope floor)   {(b + c) / (a + e):6.2f}")
    print(f"  ((b)+(c))/(d)                    {(b + c) / d:6.2f}")
    print(f"  (d)/((a)+envelope floor)         {d / (a + e):6.2f}")


if __name__ == "__main__":
    main()
