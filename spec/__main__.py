"""``python -m attnspec``: print the clause catalog (ID, spec section, first line of the text)."""

from attnspec import CATALOG, SPEC_VERSION

print(f"attnspec spec {SPEC_VERSION}: {len(CATALOG)} clauses")
for clause_id in sorted(CATALOG):
    c = CATALOG[clause_id]
    print(f"{clause_id:28} {c.section:11} {c.title}")
