"""How the project writes a count in words, for people to read: "1 object", "2 objects" (the
page's web/dom.js plural says it the same way)."""


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
