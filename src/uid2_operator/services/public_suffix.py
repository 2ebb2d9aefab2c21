"""The Public Suffix List lookup behind the client-side origin check (``domain.origins``).

Backed by the ``publicsuffixlist`` package, which ships a copy of the list and is read from disk
here only: no network fetch ever happens, so the check behaves the same offline and cannot be
steered by whoever answers a download. Private suffixes (``github.io``, ``blogspot.com``...) are
honoured, as the reference's Guava ``topPrivateDomain`` does: two customers of one hosting
provider must not count as one site. Unknown top-level labels are *not* assumed to be suffixes, so
a host under no listed suffix has no registrable domain and is refused.

The list ages with the installed package; upgrading the package refreshes it.
"""

from __future__ import annotations

import functools

from publicsuffixlist import PublicSuffixList

from uid2_operator.domain.origins import RegistrableDomain


@functools.cache
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList(accept_unknown=False, only_icann=False)


def registrable_domain_lookup() -> RegistrableDomain:
    """A callable from a lowercase ASCII host to its registrable domain, or ``None`` when the host
    is itself a public suffix or under none. The bundled list is parsed once per process."""
    suffixes = _suffix_list()

    def registrable_domain(host: str) -> str | None:
        if not host or host.startswith(".") or ".." in host:
            return None
        found = suffixes.privatesuffix(host)
        return found if isinstance(found, str) else None

    return registrable_domain
