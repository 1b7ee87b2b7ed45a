"""How the project's messages write, for people to read, a count ("1 object", "2 objects"; the
page's web/dom.js plural says it the same way) and a phrase the person typed."""


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def quoted(text: str) -> str:
    """A phrase the person typed, in a message: in double quotes, as the page quotes it."""
    return f'"{text}"'
